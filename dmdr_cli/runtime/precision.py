"""Devices, dtypes and optimizers: bf16 frozen networks and fp32 trainable masters on GPU, fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from ..errors import DmdrError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def setup_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for the fp32 master weights' matmuls
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def frozen_dtype(model_dtype: str, device: torch.device) -> torch.dtype:
    """dtype of frozen weights: the recipe's on GPU; fp32 on CPU (bf16 matmuls are slow and inexact there)."""
    return DTYPES[model_dtype] if device.type == "cuda" else torch.float32


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mixed_precision == "no":
        return None
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, train_cfg, device: torch.device,
                   world_size: int = 1, bucket_view: bool = True) -> torch.optim.Optimizer:
    """AdamW (or 8-bit AdamW) over `params`; with `train.sharding: optimizer` and several processes, wrapped in
    torch's ZeroRedundancyOptimizer: the same optimizer class and param groups, each rank holding the state of
    its 1/N of the parameters and broadcasting them after its step.

    `bucket_view` makes the parameters views into the optimizer's flat broadcast buffers. Only one optimizer
    over the same parameters may do so: a second one re-points them to its own buffers and the first would
    then broadcast into buffers the parameters no longer use (the ODE warm start's optimizer passes False)."""
    kwargs = dict(lr=lr, betas=tuple(train_cfg.betas), weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise DmdrError("train.optimizer is adamw8bit but bitsandbytes is not installed: pip install 'dmdr[bnb]' "
                            "(CUDA only), or set train.optimizer=adamw") from None
        if device.type != "cuda":
            raise DmdrError("train.optimizer adamw8bit needs a CUDA GPU: set train.optimizer=adamw to run on CPU")
        cls = bnb.optim.AdamW8bit
    else:
        cls, kwargs = torch.optim.AdamW, dict(kwargs, fused=device.type == "cuda")
    if getattr(train_cfg, "sharding", "none") == "optimizer" and world_size > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        # parameters_as_bucket_view: after its step each rank broadcasts its shard as a few flat buffers, not one
        # collective per tensor (a LoRA has hundreds)
        return ZeroRedundancyOptimizer(params, optimizer_class=cls, parameters_as_bucket_view=bucket_view, **kwargs)
    opt = cls(params, **kwargs)
    from .sharding import is_sharded_tensor, shard_optimizer_state

    if any(is_sharded_tensor(p) for p in params):  # train.sharding full: a checkpoint's whole state, cut to shards
        opt.register_load_state_dict_pre_hook(shard_optimizer_state)
    return opt


def parameter_owners(opt: torch.optim.Optimizer) -> dict | None:
    """parameter -> the rank that steps it, for a ZeroRedundancyOptimizer; None for a replicated optimizer."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if not isinstance(opt, ZeroRedundancyOptimizer):
        return None
    return dict(opt._param_to_rank)


def is_sharded(opt: torch.optim.Optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(opt, ZeroRedundancyOptimizer)


def _global_index(opt) -> dict[int, int]:
    """id(parameter) -> its index in the optimizer's state dict numbering (param groups in order)."""
    return {id(p): i for i, p in enumerate(p for group in opt.param_groups for p in group["params"])}


def local_shard_state(opt) -> dict[int, dict]:
    """A ZeroRedundancyOptimizer's state on this rank (the parameters it owns), keyed by the global index a
    consolidated state dict uses, so that the shards of all ranks together form one loadable state dict."""
    index = _global_index(opt)
    return {index[id(p)]: dict(state) for p, state in opt.optim.state.items()}


def global_param_groups(opt) -> list[dict]:
    """The param groups as a state dict lists them: hyperparameters, and the parameters' global indices."""
    index = _global_index(opt)
    return [{**{k: v for k, v in group.items() if k != "params"}, "params": [index[id(p)] for p in group["params"]]}
            for group in opt.param_groups]


def place_restored_state(opt) -> None:
    """Put a restored optimizer's `step` counters where fused AdamW needs them.

    Fused and capturable AdamW keep `step` as a float32 tensor on the parameter's device (torch's note "special
    device hosting for step") and fail on their first step otherwise. Two restores break that:
    ZeroRedundancyOptimizer.load_state_dict (torch 2.14) moves every 0-dim state tensor to the CPU, and
    Optimizer.load_state_dict places `step` by the checkpoint's own `fused` flag, False for a checkpoint written
    on the CPU. Both would fail every --resume on CUDA, where make_optimizer builds fused AdamW."""
    inner = getattr(opt, "optim", opt)  # a ZeroRedundancyOptimizer's local optimizer
    for group in inner.param_groups:
        if not (group.get("fused") or group.get("capturable")):
            continue
        for p in group["params"]:
            state = inner.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state tensors this rank holds (its shard under train.sharding optimizer or full)."""
    from .sharding import local

    inner = getattr(opt, "optim", opt)
    return sum(local(v).numel() * v.element_size() for state in inner.state.values() for v in state.values()
               if torch.is_tensor(v))
