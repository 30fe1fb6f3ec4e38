"""Run benches: what a benchmark adds to a training run, plugged in by name so that the training engine
holds no line specific to one model or world.

A run bench is built per run by its factory, `factory(cfg, stage) -> RunBench | None` (None: the recipe is
not its kind, e.g. the shapes world's bench declines a real SDXL teacher). A built bench

- names every prompt it will ask for (`prompts`), so the engine encodes them once with the run's own;
- adds flat scalars to each validation (`validation_metrics`), for curves against generator step;
- ends the run with its report (`final_report`), on the main process, after the last checkpoint.

`encode(texts)` hands a bench the conditioning of its prompts; `ctx` is the engine's StepContext (family,
networks, recipe, student times). Benches register with `register_run_bench`; the built-in ones live in
modules that register themselves on import, loaded on first use (dmdr_cli/builtin_plugins.py; the shapes
world's: world/report.py). A second world adds its module there, or calls `register_run_bench` from its own
package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from rich.console import Console


class RunBench(Protocol):
    name: str

    def prompts(self) -> list[str]: ...

    def validation_metrics(self, ctx, encode: Callable) -> dict: ...

    def final_report(self, ctx, encode: Callable, run_dir: Path, console: Console) -> dict | None: ...


RunBenchFactory = Callable[[object, str], "RunBench | None"]
_FACTORIES: dict[str, RunBenchFactory] = {}


def register_run_bench(name: str, factory: RunBenchFactory, *, replace: bool = False) -> None:
    if name in _FACTORIES and not replace and _FACTORIES[name] is not factory:
        raise ValueError(f"run bench {name!r} is already registered")
    _FACTORIES[name] = factory


def unregister_run_bench(name: str) -> None:
    _FACTORIES.pop(name, None)


def run_benches(cfg, stage: str) -> list[RunBench]:
    """The benches that apply to this run, in registration order."""
    from .. import builtin_plugins

    builtin_plugins.load("run_benches")
    return [bench for bench in (factory(cfg, stage) for factory in list(_FACTORIES.values())) if bench is not None]


def bench_prompts(benches: Sequence[RunBench]) -> list[str]:
    return [p for bench in benches for p in bench.prompts()]


def validation_metrics(benches: Sequence[RunBench], ctx, encode: Callable) -> dict:
    metrics: dict = {}
    for bench in benches:
        metrics.update(bench.validation_metrics(ctx, encode))
    return metrics


def final_reports(benches: Sequence[RunBench], ctx, encode: Callable, run_dir: Path, console: Console) -> dict:
    """Every bench's end-of-run report: {bench name: what its report returned}."""
    reports = {}
    for bench in benches:
        result = bench.final_report(ctx, encode, run_dir, console)
        if result is not None:
            reports[bench.name] = result
    return reports
