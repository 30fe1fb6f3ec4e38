"""The plug-ins dmdr ships, and the one place that loads them.

A plug-in module registers what it adds when it is imported: prompt sets (`data.prompts.register_builtin`),
rewards (`rewards.registry.register_reward`), real-image sources (`data.images.register_image_source`), run
benches (`evaluate.plugins.register_run_bench`) and evaluation domains (`evaluate.domains.register_domain`).
Each registry calls `load(kind)` before its first lookup, so plug-ins load only when asked for (the CLI starts
fast) and no engine names one. A package of your own registers the same way from its own import; a second
miniature world adds its modules here.
"""

from __future__ import annotations

import importlib

from .errors import DmdrError

MODULES: dict[str, tuple[str, ...]] = {
    "prompts": ("dmdr_cli.world.builtin_prompts",),
    "rewards": ("dmdr_cli.world.reward",),
    "run_benches": ("dmdr_cli.world.report",),
    "domains": ("dmdr_cli.world.domain",),
    "images": ("dmdr_cli.world.real_images",),
}
_loaded: set[str] = set()


def load(kind: str) -> None:
    """Import the built-in plug-ins of one registry (once)."""
    if kind in _loaded:
        return
    for module in MODULES[kind]:
        importlib.import_module(module)
    _loaded.add(kind)


def lookup(spec: str, registry: dict, kind: str, what: str, otherwise: str):
    """The entry of `registry` that `spec` (builtin:NAME) names, once the built-in plug-ins of `kind` are loaded;
    an unknown name is one line listing the known ones, or `otherwise`."""
    name = spec.split(":", 1)[1]
    load(kind)
    if name not in registry:
        known = ", ".join("builtin:" + n for n in sorted(registry))
        raise DmdrError(f"unknown built-in {what} {spec!r}: choose one of {known} or {otherwise}")
    return registry[name]
