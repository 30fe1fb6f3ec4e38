"""What `train.sharding` changes in the training engine, chosen once per run: `parallel_for` returns a `DataParallel`
(none / optimizer, or any sharding on one process) or a `FullySharded` (full, several processes).

`train.sharding: full` is FSDP2 (`torch.distributed.fsdp.fully_shard`, ZeRO-3) over the denoiser networks: the
frozen teacher, its adapters and the trainable copies are sharded dim-0 over the processes, each process holding
1/N of every parameter, of its gradient and of its AdamW state. Why it works with the three roles on one teacher:

- Units. Each module whose class the diffusers model lists in `_no_split_modules` (its transformer or resnet
  blocks, the same list accelerate never splits across devices) is one unit, all-gathered before its forward and
  freed after it; the whole network is the root unit for what is left (embeddings, final layers). FSDP2 shards per
  parameter, so a block's frozen base weights and the fp32 LoRA adapters inside it share a unit.
- Adapters. `AdapterSwitch` sets attributes of peft's LoRA layers (live adapter, scale, disabled); FSDP swaps the
  layers' parameter tensors in and out and never touches those attributes, so a pass runs whatever adapter the
  switch made live, gathered. The invariant the engine already keeps (the adapter live at a backward is the one of
  its forward, for gradient checkpointing's recompute) is all a gathered backward needs too.
- Gradients. After each unit's backward FSDP reduce-scatters the gradients of exactly the parameters that got one
  in that backward, and adds them to their sharded gradients. A role's backward reaches only its own parameters
  (the other role's adapter is not live in its forward, frozen weights take none), so the generator's backward
  reduce-scatters generator gradients only and the fake score's its own; both accumulate, sharded, until their
  optimizer steps. Every backward reduce-scatters, micro-batches included: unsharded gradients never outlive one
  unit's backward, which is the memory point of ZeRO-3 (with accumulation, one reduce-scatter per micro-batch).
- Every unit reshards after its forward, the root too (FSDP keeps the root gathered by default: a no-grad pass,
  such as the real or fake score's, followed by an optimizer step would leave it running on stale weights).
- Mixed precision. Under autocast the units are gathered in its dtype (bf16): fp32 masters travel and sit
  gathered at half the size, gradients are reduce-scattered in fp32 into fp32 sharded gradients. Matmuls see what
  autocast would have cast anyway; normalisation weights enter their fp32 ops rounded to bf16. Forward inputs are
  not cast (a timestep in bf16 would lose its integer part above 256).
- Checkpoints are the files of an unsharded run: each sharded tensor is gathered whole (one tensor at a time,
  `DTensor.full_tensor`, the primitive torch.distributed.checkpoint's full-state-dict helpers use) and the main
  process writes it, so `dmdr export` and `--resume` at any process count and sharding read them unchanged;
  loading slices each whole tensor to this process's shard (no communication: every process reads the files).
- Collectives. A sharded forward all-gathers, so every process runs every forward: sample grids and validation
  run on all processes (the main one writes); what cannot (the GAN term's early exit out of a forward, DPO/GRPO's
  reference made mid-run, ODE pairs made on uneven shares, run benches sampling on the main process only,
  torch.compile, 8-bit AdamW's kernels on DTensors) is refused by the recipe check.
"""

from __future__ import annotations

import torch

from .distributed import Dist, GradReducer
from .precision import parameter_owners


def is_sharded_tensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of `t`: the shard of an FSDP-sharded tensor (the storage FSDP gathers from, so an in-place
    write is seen by the next forward), else `t` itself."""
    return t.to_local() if is_sharded_tensor(t) else t


def shard_like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`whole` cut to `param`'s placement on this process (every process holds `whole`: no communication)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def weight_bytes(*modules: torch.nn.Module | None) -> int:
    """Bytes of the parameters of `modules` this process holds (its shards under train.sharding full)."""
    params = {id(p): p for m in modules if m is not None for p in m.parameters()}.values()
    return sum(local(p).numel() * p.element_size() for p in params)


def units(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of `net` FSDP gathers one at a time: those whose class `net` lists in `_no_split_modules`,
    innermost first (fully_shard goes bottom-up)."""
    names = set(getattr(net, "_no_split_modules", None) or ())
    return [m for m in reversed(list(net.modules())) if m is not net and type(m).__name__ in names]


def gathered_unit(net: torch.nn.Module, gathered_dtype: torch.dtype | None) -> int:
    """Peak bytes FSDP holds unsharded for `net` (the memory planner's estimate, not traced): the largest unit's
    weights twice (the unit running and the next one, prefetched) and the largest unit's gradients unsharded, in
    `gathered_dtype` (the parameters' own where None) and in fp32 for the reduce-scatter."""
    seen: set[int] = set()
    weights, grads = [0], [0]
    for module in units(net) + [net]:
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        size = {id(p): gathered_dtype.itemsize if gathered_dtype is not None else p.element_size() for p in params}
        weights.append(sum(p.numel() * size[id(p)] for p in params))
        grads.append(sum(p.numel() * (size[id(p)] + 4) for p in params if p.requires_grad))
    return 2 * max(weights) + max(grads)


class DataParallel:
    """`train.sharding` none or optimizer (or any on one process): every process holds the whole networks, a
    GradReducer per optimizer averages its gradients, the main process alone samples and writes checkpoints."""

    every_rank_forwards = False

    def __init__(self, dist: Dist):
        self.dist = dist
        self.build_device = None  # the networks are built where they run

    def wrap(self, nets) -> None:
        pass

    def reducer(self, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer):
        return GradReducer(params, self.dist, owner=parameter_owners(opt))

    def whole_state(self, collect, optimizers: dict):
        """Nothing to gather: the main process reads `collect()` and the optimizers itself when it writes."""
        return None


class FullySharded:
    """`train.sharding: full` on several processes (this module's docstring says how)."""

    every_rank_forwards = True  # a sharded forward all-gathers: sampling and validation run everywhere

    def __init__(self, dist: Dist, amp_dtype: torch.dtype | None):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        self.dist = dist
        self.build_device = torch.device("cpu")  # fully_shard moves each unit to the device as it shards it
        self.mesh = init_device_mesh(dist.device.type, (dist.world_size,))
        self.policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32 if amp_dtype else None,
                                           cast_forward_inputs=False)

    def wrap(self, nets) -> None:
        """Shard every network of `nets` in place; its parameter lists then name the sharded parameters."""
        from torch.distributed.fsdp import fully_shard

        networks = list({id(m): m for m in (nets.guidance, nets.generator, nets.fake_full) if m is not None}.values())
        where = {id(p): (net, name) for net in networks for name, p in net.named_parameters()}
        for net in networks:
            for module in units(net) + [net]:
                fully_shard(module, mesh=self.mesh, mp_policy=self.policy, reshard_after_forward=True)
            for module in net.modules():  # loading whole tensors (a checkpoint, --init, the EMA) into the shards
                if any(is_sharded_tensor(p) for p in module._parameters.values()):
                    module.register_load_state_dict_pre_hook(_shard_whole_tensors)

        def now(p):
            net, name = where[id(p)]
            return net.get_parameter(name)

        nets.generator_params = [now(p) for p in nets.generator_params]
        nets.fake_params = [now(p) for p in nets.fake_params]

    def reducer(self, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer):
        return ShardedGradients(params)

    def whole_state(self, collect, optimizers: dict):
        """(tensors, optimizers) of a checkpoint, every sharded tensor gathered whole: a collective, so every
        process calls it, in the same order; the main process keeps them (on the CPU), the others get empty ones."""
        keep = self.dist.is_main
        tensors = _gathered(collect(), keep)
        return tensors, {name: WholeOptimizerState(_gathered(opt.state_dict(), keep))
                         for name, opt in optimizers.items()}


def check_benches(sharding: str, dist: Dist, benches: list) -> None:
    """Run benches sample on the main process only (their reports write as they go): not with sharded weights."""
    if sharding == "full" and dist.world_size > 1 and benches:
        from ..errors import DmdrError

        names = ", ".join(bench.name for bench in benches)
        raise DmdrError(f"train.sharding full cannot run this run's {names} bench: its report samples on the main "
                        f"process alone, and a sharded forward needs every process; use train.sharding optimizer")


def parallel_for(sharding: str, dist: Dist, amp_dtype: torch.dtype | None):
    if sharding == "full" and dist.world_size > 1:
        return FullySharded(dist, amp_dtype)
    return DataParallel(dist)


class ShardedGradients:
    """The GradReducer interface under `train.sharding: full`: FSDP reduce-scattered each gradient during the
    backward, so there is nothing to arm or finish; gradients are sharded (norms sum over processes)."""

    sharded = True
    hook_launches = 0

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.bytes_reduced = 0  # FSDP's collectives are not counted here: the log has no comm_mib under full

    def arm(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def stepped(self, params) -> None:
        pass

    def grad_bytes(self) -> int:
        return sum(local(p.grad).numel() * p.grad.element_size() for p in self.params if p.grad is not None)

    def remove(self) -> None:
        pass


class WholeOptimizerState:
    """A gathered optimizer state dict, in the place of its optimizer where a checkpoint is written (which only
    reads `state_dict()`)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _gathered(tree, keep: bool):
    """`tree` (nested dicts and lists of tensors and scalars) with each sharded tensor gathered whole; tensors on the
    CPU where `keep`, else an empty dict (each whole tensor is freed as soon as it is gathered)."""
    if isinstance(tree, dict):
        out = {k: _gathered(v, keep) for k, v in tree.items()}
        return out if keep else {}
    if isinstance(tree, list):
        return [_gathered(v, keep) for v in tree]
    if torch.is_tensor(tree):
        whole = tree.full_tensor() if is_sharded_tensor(tree) else tree
        return whole.detach().cpu() if keep else None
    return tree


def _shard_whole_tensors(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook on a module with sharded parameters: whole tensors become this process's shards."""
    for name, p in module._parameters.items():
        key = prefix + name
        if is_sharded_tensor(p) and key in state_dict and not is_sharded_tensor(state_dict[key]):
            state_dict[key] = shard_like(state_dict[key], p)


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """Optimizer load_state_dict pre-hook: whole state tensors (a checkpoint's) of sharded parameters become shards.
    The saved parameter indices map to the optimizer's parameters in order, as Optimizer.load_state_dict maps them."""
    saved = [i for group in state_dict["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = dict(state_dict["state"])
    for index, p in zip(saved, params):
        if is_sharded_tensor(p) and index in state:
            state[index] = {k: shard_like(v, p) if torch.is_tensor(v) and not is_sharded_tensor(v) and v.shape == p.shape
                            else v for k, v in state[index].items()}
    return {**state_dict, "state": state}
