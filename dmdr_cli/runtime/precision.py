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


def make_optimizer(params: list[torch.nn.Parameter], lr: float, train_cfg, device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(lr=lr, betas=tuple(train_cfg.betas), weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise DmdrError("train.optimizer is adamw8bit but bitsandbytes is not installed: pip install 'dmdr[bnb]' "
                            "(CUDA only), or set train.optimizer=adamw") from None
        if device.type != "cuda":
            raise DmdrError("train.optimizer adamw8bit needs a CUDA GPU: set train.optimizer=adamw to run on CPU")
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, fused=device.type == "cuda", **kwargs)
