"""Reward names -> factories, and `build_reward(spec)` for the recipe's `rl.rewards` entries.

A factory is `factory(spec, key) -> Reward`: it reads `spec.path` and `spec.options`, loads weights on
the CPU and names `key` (e.g. "rl.rewards[0]") in its error messages. `build_reward` then moves the
reward to its device and dtype and freezes it. Other parts register their own rewards with
`register_reward` (e.g. the world model's "world-clip"). Heavy libraries are imported inside the
factories, so importing this module costs nothing.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import RecipeError
from .base import Reward, resolve_dtype

if TYPE_CHECKING:  # the recipe schema needs pydantic; rewards do not
    from ..recipe.schema import RewardSpec

RewardFactory = Callable[["RewardSpec", str], Reward]

REWARDS: dict[str, RewardFactory] = {}


def register_reward(name: str, factory: RewardFactory, *, replace: bool = False) -> None:
    if name in REWARDS and not replace:
        raise ValueError(f"a reward named {name!r} is already registered (pass replace=True to override it)")
    REWARDS[name] = factory


def build_reward(spec: RewardSpec, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, *,
                 key: str = "rl.rewards[i]", gradient_checkpointing: bool = False) -> Reward:
    """The frozen reward a recipe entry describes, on `device` (bf16 on GPU unless `dtype`, fp32 on CPU)."""
    from .. import builtin_plugins

    builtin_plugins.load("rewards")
    factory = REWARDS.get(spec.name)
    if factory is None:
        close = difflib.get_close_matches(spec.name, list(REWARDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{key}.name: unknown reward {spec.name!r}{hint}; known: {', '.join(sorted(REWARDS))}")
    reward = factory(spec, key)
    if spec.loss == "hinge" and spec.margin is None and reward.default_margin is None:
        raise RecipeError(f"{key}: reward {spec.name!r} has no default hinge margin (its units: "
                          f"{reward.units or 'unknown'}); set {key}.margin in those units, or {key}.loss: linear")
    reward.to(device=device, dtype=resolve_dtype(device, dtype)).freeze()
    if gradient_checkpointing:
        reward.set_gradient_checkpointing(True)
    return reward


def reward_options(spec: RewardSpec, key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """`spec.options` over `defaults`; a key the reward does not know is an error, not a silent no-op."""
    unknown = sorted(set(spec.options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise RecipeError(f"{key}.options: unknown option {unknown[0]!r} for reward {spec.name!r} (known: {known})")
    return {**defaults, **spec.options}


# --- built-in rewards ---------------------------------------------------------------------------------

def _hps(spec: RewardSpec, key: str) -> Reward:
    from .hps import HPS_ARCH, HPSReward

    opts = reward_options(spec, key, {"version": "v2.1", "arch": HPS_ARCH})
    return HPSReward.from_pretrained(spec.path, version=opts["version"], arch=opts["arch"], key=key)


def _pickscore(spec: RewardSpec, key: str) -> Reward:
    from .pickscore import PickScoreReward

    opts = reward_options(spec, key, {"processor": None})
    return PickScoreReward.from_pretrained(spec.path, processor=opts["processor"], key=key)


def _clip(spec: RewardSpec, key: str) -> Reward:
    from .clip import DEFAULT_ARCH, DEFAULT_PRETRAINED, ClipReward

    opts = reward_options(spec, key, {"arch": DEFAULT_ARCH, "pretrained": DEFAULT_PRETRAINED})
    return ClipReward.from_pretrained(spec.path, arch=opts["arch"], pretrained=opts["pretrained"], key=key)


def _aesthetic(spec: RewardSpec, key: str) -> Reward:
    from .aesthetic import CLIP_ARCH, CLIP_TAG, AestheticReward

    opts = reward_options(spec, key, {"clip_path": None, "clip_arch": CLIP_ARCH, "clip_pretrained": CLIP_TAG})
    return AestheticReward.from_pretrained(spec.path, clip_path=opts["clip_path"], clip_arch=opts["clip_arch"],
                                           clip_pretrained=opts["clip_pretrained"], key=key)


def _custom(spec: RewardSpec, key: str) -> Reward:
    from .custom import CustomReward

    opts = reward_options(spec, key, {"function": None, "units": "user-defined", "default_margin": None})
    if not opts["function"]:
        raise RecipeError(f"{key}.options.function is required for a custom reward: 'package.module:function'")
    margin = opts["default_margin"]
    if margin is not None and not isinstance(margin, (int, float)):
        raise RecipeError(f"{key}.options.default_margin must be a number, not {margin!r}")
    return CustomReward.from_target(opts["function"], units=str(opts["units"]),
                                    default_margin=None if margin is None else float(margin), key=key)


for _name, _factory in (("hps", _hps), ("pickscore", _pickscore), ("clip", _clip), ("aesthetic", _aesthetic),
                        ("custom", _custom)):
    register_reward(_name, _factory)
