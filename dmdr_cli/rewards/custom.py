"""A reward written by the user: `options.function: "package.module:function"`.

This imports and runs the user's code, with the same trust as any Python file they run. The named
object is called as `function(images, prompts)`, with images a float tensor in [0, 1] of shape
(B, 3, H, W) on the reward's device (not preprocessed) and prompts a list of B strings, and must
return a float tensor of shape [B]. For ReFL it must be differentiable in `images`; DPO and GRPO only
rank samples. An `nn.Module` instance is frozen and moved with the reward like the built-ins.

Its units are unknown to dmdr, so a hinge loss needs a margin from the user (`margin`, or
`options.default_margin`), or `loss: linear`.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from ..errors import DmdrError
from .base import Reward

ScoreFunction = Callable[[torch.Tensor, list[str]], torch.Tensor]


class CustomReward(Reward):
    name = "custom"

    def __init__(self, function: ScoreFunction, *, target: str = "in-memory function", units: str = "user-defined",
                 default_margin: float | None = None):
        super().__init__()
        self.source = target
        self.units = units
        self.default_margin = default_margin
        self.score_fn = function  # an nn.Module is registered by this assignment: frozen and moved with the reward
        self.freeze()

    @classmethod
    def from_target(cls, target: str, *, units: str = "user-defined", default_margin: float | None = None,
                    key: str = "rl.rewards[i]") -> "CustomReward":
        return cls(import_target(target, f"{key}.options.function"), target=target, units=units,
                   default_margin=default_margin)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.score_fn(images, prompts)

    def describe(self) -> str:
        return f"custom reward {self.source}"


def import_target(target: str, setting: str, signature: str = "(images, prompts)") -> ScoreFunction:
    """'package.module:attribute.path' -> the callable, with one-line errors for each way it can fail.

    Shared by every option that names user code (custom rewards, a VQA function for DPG)."""
    module_name, sep, attribute = str(target).partition(":")
    if not sep or not module_name or not attribute:
        raise DmdrError(f"{setting} is {target!r}: write it as 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise DmdrError(f"{setting}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise DmdrError(f"{setting}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DmdrError(f"{setting}: {target} is a {type(obj).__name__}, not a function of {signature}")
    return obj
