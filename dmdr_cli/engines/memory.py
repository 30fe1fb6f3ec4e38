"""Estimated peak memory per GPU of a training recipe, before anything loads (`--dry-run` prints it).

The figure is one training step of the recipe's own networks, traced on fake tensors by the code that runs
(engines/memory_trace.py: the loading code, the networks, the step functions, the optimizers; nothing is
allocated), for one process without sharding. The planner then adds what the trace leaves out and takes
away what sharding moves off each process, all counted exactly:

    text encoders     when data.cache_embeddings is false: their published parameter counts, model.dtype bytes
    reward models     their weights (published parameter counts), bf16; their activations are not counted
    8-bit AdamW       2 bytes of state per parameter instead of 8 (the trace runs AdamW: bitsandbytes needs CUDA)
    sharding          optimizer state / N (ZeroRedundancyOptimizer); gradients / N once their buckets are
                      reduced (not while micro-batches accumulate); two 25 MiB buckets in flight with N > 1

How close the figure is to a GPU's `max_memory_allocated`: MEASURED below, every comparison there is; the
first GPU run of bench/gpu_check.sh prints planner vs measured for each configuration it runs. Never counted:
the CUDA context and allocator fragmentation (nvidia-smi shows 1-3 GiB more), torch.compile caches.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

GiB = 2**30
BUCKET_BYTES = 25 * 2**20
TEXT_ENCODER_PARAMS = {"sd": 123_060_480, "sdxl": 123_060_480 + 694_659_840,
                       "sd3": 123_060_480 + 694_659_840 + 4_762_310_656}  # CLIP-L (+ OpenCLIP-G, + T5-XXL)
REWARD_PARAMS = {"hps": 986_109_441, "pickscore": 986_109_441, "clip": 427_616_513, "aesthetic": 428_400_000}

# Every comparison of the planner with a GPU's max_memory_allocated there is: (configuration, measured GiB,
# planned GiB). Measured on an H100 by bench/step_overhead.py (random weights, no text encoders, a placeholder
# reward) before this planner existed, as quoted in README.md up to commit 1bf4127; planned by tracing the same
# configurations (bench/step_overhead.py's recipe, published configs) on a CPU.
MEASURED = [
    ("SDXL full fine-tune, checkpointing, batch 4", 48.6, 52.8),
    ("SD3.5-Large LoRA, checkpointing, ReFL, batch 2", 40.0, 40.1),
]


@dataclass
class Plan:
    """Estimated bytes per GPU, by term."""
    terms: dict[str, float]
    processes: int
    sharding: str
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.terms.values())


_traces: dict[str, object] = {}


def traced(cfg):
    """The trace of `cfg`'s step (memory_trace.trace_step, in a process of its own), once per configuration."""
    from .memory_trace import trace_isolated

    data = cfg.model_dump(mode="json")
    for key in ("output", "data"):
        data.pop(key, None)
    for key in ("sharding", "optimizer", "gradient_accumulation", "steps"):
        data["train"].pop(key, None)  # the planner's arithmetic, not the trace's
    key = json.dumps(data, sort_keys=True)
    if key not in _traces:
        _traces[key] = trace_isolated(cfg)
    return _traces[key]


def estimate(cfg, trace, processes: int, sharding: str | None = None) -> Plan:
    """Peak bytes per GPU for `cfg` on `processes` processes with `sharding` (default: the recipe's)."""
    t = cfg.train
    sharding = sharding or t.sharding
    n = max(1, processes)
    shard = n if (sharding == "optimizer" and n > 1) else 1
    grad_shard = shard if t.gradient_accumulation == 1 else 1  # local sums persist while micro-batches accumulate
    frozen = 4 if cfg.model.dtype == "fp32" else 2
    notes = []
    terms = {
        "frozen weights": trace.frozen_weights,
        "trainable weights (fp32)": trace.trainable_bytes,
        "gradients": trace.gradients / grad_shard,
        "optimizer state": trace.optimizer_state * (2 / 8 if t.optimizer == "adamw8bit" else 1) / shard,
        "activations (traced)": trace.activations,
    }
    if not cfg.data.cache_embeddings:
        terms["text encoders"] = TEXT_ENCODER_PARAMS[cfg.model.family] * frozen
        notes.append("data.cache_embeddings is false: the text encoders stay on the GPU")
    if cfg.rl.algorithm != "none":
        reward = sum(REWARD_PARAMS.get(r.name, 0) for r in cfg.rl.rewards)
        if reward:
            terms["reward models (weights)"] = reward * 2
    if n > 1:
        terms["reduction buckets"] = 2 * BUCKET_BYTES
    return Plan(terms=terms, processes=n, sharding=sharding if shard > 1 else "none", notes=notes)


def _changed(cfg, section: str, key: str, value):
    from ..recipe import validate

    data = cfg.model_dump(mode="json")
    data[section][key] = value
    return validate(data)


def knobs(cfg, processes: int, budget_gib: float) -> list[tuple[str, float]]:
    """Single changes to the recipe (or launch) that would bring the estimate under `budget_gib`, best first.
    Each is estimated like the recipe itself; a change to the step (checkpointing, decoder, batch, LoRA) is
    traced anew."""
    t = cfg.train
    candidates: list[tuple[str, object, int]] = []
    if not t.gradient_checkpointing:
        candidates.append(("train.gradient_checkpointing=true", _changed(cfg, "train", "gradient_checkpointing", True),
                           processes))
    if t.sharding == "none" and processes > 1:
        candidates.append(("train.sharding=optimizer", _changed(cfg, "train", "sharding", "optimizer"), processes))
    if t.optimizer == "adamw":
        candidates.append(("train.optimizer=adamw8bit", _changed(cfg, "train", "optimizer", "adamw8bit"), processes))
    if not cfg.data.cache_embeddings:
        candidates.append(("data.cache_embeddings=true", _changed(cfg, "data", "cache_embeddings", True), processes))
    if cfg.student.finetune == "full":
        candidates.append(("student.finetune=lora", _changed(cfg, "student", "finetune", "lora"), processes))
    if cfg.rl.algorithm == "refl" and not cfg.rl.decoder:
        tiny = "madebyollin/taesd3" if cfg.model.family == "sd3" else "madebyollin/taesdxl"
        candidates.append((f"rl.decoder={tiny}", _changed(cfg, "rl", "decoder", tiny), processes))
    fits = []
    for label, new, procs in candidates:
        gib = estimate(new, traced(new), procs).total / GiB
        if gib <= budget_gib:
            fits.append((label, gib))
    batch = t.batch_size // 2
    while batch >= 1:  # the largest halving of the batch that fits, the global batch kept by accumulation
        new = _changed(_changed(cfg, "train", "batch_size", batch), "train", "gradient_accumulation",
                       math.ceil(t.batch_size / batch) * t.gradient_accumulation)
        gib = estimate(new, traced(new), processes).total / GiB
        if gib <= budget_gib:
            fits.append((f"train.batch_size={batch} (train.gradient_accumulation={new.train.gradient_accumulation} "
                         f"keeps the global batch)", gib))
            break
        batch //= 2
    if not fits:  # no single change of the recipe: the knobs together
        fits += _combined(cfg, processes, budget_gib)
    sharded = cfg if t.sharding == "optimizer" else _changed(cfg, "train", "sharding", "optimizer")
    trace = traced(cfg)
    for procs in (2, 4, 8, 16, 32, 64):  # more processes, sharded
        if procs > processes:
            gib = estimate(sharded, trace, procs).total / GiB
            if gib <= budget_gib:
                fits.append((f"{procs} processes with train.sharding=optimizer", gib))
                break
    return fits


# The knobs in the order `_combined` applies them: those that cost nothing in quality or speed first.
COMBINED = [("data", "cache_embeddings", True), ("train", "optimizer", "adamw8bit"),
            ("train", "gradient_checkpointing", True), ("rl", "decoder", None), ("student", "finetune", "lora")]


def _combined(cfg, processes: int, budget_gib: float) -> list[tuple[str, float]]:
    """When no single knob is enough: the knobs applied one after another (COMBINED, then halving the batch)
    until the estimate fits, as one entry; nothing if all of them together do not fit."""
    applied, current = [], cfg
    steps = [(s, k, v) for s, k, v in COMBINED if not (s == "rl" and (cfg.rl.algorithm != "refl" or cfg.rl.decoder))]
    batch = cfg.train.batch_size
    while batch > 1:
        batch //= 2
        steps.append(("train", "batch_size", batch))
    for section, key, value in steps:
        if section == "rl":
            value = "madebyollin/taesd3" if cfg.model.family == "sd3" else "madebyollin/taesdxl"
        if current.model_dump(mode="json")[section][key] == value:
            continue
        current = _changed(current, section, key, value)
        if key == "batch_size":
            accumulation = math.ceil(cfg.train.batch_size / value) * cfg.train.gradient_accumulation
            current = _changed(current, "train", "gradient_accumulation", accumulation)
            applied = [a for a in applied if not a.startswith("train.batch_size")]
            applied.append(f"train.batch_size={value} x train.gradient_accumulation={accumulation}")
        else:
            applied.append(f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}")
        gib = estimate(current, traced(current), processes).total / GiB
        if gib <= budget_gib:
            return [("all of " + ", ".join(applied), gib)]
    return []


def accuracy_line() -> str:
    """What the planner's accuracy rests on: every GPU comparison there is, named."""
    checked = "; ".join(f"{name}: {measured:.1f} measured, {planned:.1f} planned ({planned / measured - 1:+.0%})"
                        for name, measured, planned in MEASURED if planned is not None)
    return (f"estimate: one training step traced on fake tensors, plus exact counts. Against a GPU (H100, "
            f"bench/step_overhead.py): {checked or 'not yet compared'}; other configurations are unmeasured: "
            f"bench/gpu_check.sh prints planner vs measured. CUDA context and fragmentation not included")


def memory_report(cfg, processes: int, gpu_memory: float | None):
    """(head line, {sharding: Plan}, verdict lines, warnings); None when the architecture is unknown; a string
    when the trace could not run (the run itself may still work)."""
    try:
        trace = traced(cfg)
    except Exception as err:  # an architecture the trace cannot build or step: the plan says so, the run goes on
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"memory plan unavailable: the traced step failed ({first})"
    if trace is None:
        return None
    head = (f"{trace.denoiser_params / 1e9:.3g}B denoiser parameters, {trace.trainable / 1e6:.4g}M trainable, "
            f"from {trace.source}")
    plans = {"none": estimate(cfg, trace, processes, "none")}
    if processes > 1:
        plans["optimizer"] = estimate(cfg, trace, processes, "optimizer")
    mine = estimate(cfg, trace, processes)
    lines = [accuracy_line()] + mine.notes
    warnings: list[str] = []
    if gpu_memory is not None:
        total = mine.total / GiB
        if total <= gpu_memory:
            lines.append(f"fits {gpu_memory:g} GiB: yes ({total:.1f} GiB estimated, {gpu_memory - total:.1f} to spare)")
        else:
            fixes = knobs(cfg, processes, gpu_memory)
            advice = "; ".join(f"{label} -> {gib:.1f} GiB" for label, gib in fixes) or "no single knob is enough"
            lines.append(f"fits {gpu_memory:g} GiB: no ({total:.1f} GiB estimated). Would fit: {advice}")
            warnings.append(f"estimated {total:.1f} GiB per GPU does not fit {gpu_memory:g} GiB"
                            + (f": try {fixes[0][0]}" if fixes else ""))
    return head, plans, lines, warnings


def launched_processes() -> int:
    """The world size torchrun / accelerate launched this process into (1 when run directly)."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1
