"""Estimated peak memory per GPU of a training recipe, before anything loads (`--dry-run` prints it).

The figure is one training step of the recipe's own networks, traced on fake tensors by the code that runs
(engines/memory_trace.py: the loading code, the networks, the step functions, the optimizers; nothing is
allocated), for one process without sharding. The planner then adds what the trace leaves out and takes
away what sharding moves off each process, all counted exactly:

    text encoders     when data.cache_embeddings is false: their published parameter counts, model.dtype bytes
    prompt encoding   before training, the text encoders sit beside the teacher, VAE and reward models while the
                      prompts are encoded: what must fit is the larger of that phase and the step (FLUX's T5-XXL)
    reward models     their weights (published parameter counts), bf16; their activations are not counted
    8-bit AdamW       2 bytes of state per parameter instead of 8 (the trace runs AdamW: bitsandbytes needs CUDA)
    sharding          optimizer: optimizer state / N (ZeroRedundancyOptimizer); gradients / N once their buckets
                      are reduced (not while micro-batches accumulate); two 25 MiB buckets in flight with N > 1.
                      full (FSDP2): the denoiser networks' frozen parameters, the trainable masters, their
                      gradients (reduce-scattered at every backward) and optimizer state / N; plus the largest
                      unit gathered twice with its unsharded gradients (an estimate: FSDP does not run in the
                      trace); less autocast's traced bf16 copies of the trainable weights, which units gathered
                      in bf16 replace; the denoiser is not on the GPU while the prompts are encoded

The verdict: without --gpu-memory, whether the plan fits 24, 40 and 80 GB cards and, for one it does not, the
knobs that need no new trace (8-bit AdamW, cached embeddings, sharding over more processes); `--gpu-memory N`
checks that size and also traces the knobs that change the step (checkpointing, LoRA, a TAESD decoder, a
smaller batch), one process per trace.

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
                       "sd3": 123_060_480 + 694_659_840 + 4_762_310_656,
                       "flux": 123_060_480 + 4_762_310_656}  # CLIP-L (+ OpenCLIP-G, + T5-XXL)
TINY_DECODERS = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl", "sd3": "madebyollin/taesd3",
                 "flux": "madebyollin/taef1"}  # the TAESD-style rl.decoder of each family's latents
GPU_SIZES = (24, 40, 80)  # GiB: the cards a plan is checked against when --gpu-memory is not given
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
    encoding: float = 0.0  # bytes while the prompts are encoded, before any training state exists

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def peak(self) -> float:
        """What must fit: the training step, or the prompt-encoding phase before it when that is larger."""
        return max(self.total, self.encoding)


_traces: dict[str, object] = {}


def trace_key(cfg) -> str:
    """What the traced step depends on: the recipe less what the planner's arithmetic adds (sharding, the
    optimizer's state size, accumulation, cached embeddings) and what no step sees (output, step counts)."""
    data = cfg.model_dump(mode="json")
    for key in ("output", "data"):
        data.pop(key, None)
    for key in ("sharding", "optimizer", "gradient_accumulation", "steps"):
        data["train"].pop(key, None)
    return json.dumps(data, sort_keys=True)


def traced(cfg):
    """The trace of `cfg`'s step (memory_trace.trace_step, in a process of its own), once per configuration."""
    from .memory_trace import trace_isolated

    key = trace_key(cfg)
    if key not in _traces:
        _traces[key] = trace_isolated(cfg)
    return _traces[key]


def estimate(cfg, trace, processes: int, sharding: str | None = None) -> Plan:
    """Peak bytes per GPU for `cfg` on `processes` processes with `sharding` (default: the recipe's)."""
    t = cfg.train
    sharding = sharding or t.sharding
    n = max(1, processes)
    shard = n if (sharding in ("optimizer", "full") and n > 1) else 1
    full = sharding == "full" and n > 1
    # local sums persist while micro-batches accumulate, except under FSDP, which reduce-scatters every backward
    grad_shard = shard if t.gradient_accumulation == 1 or full else 1
    frozen = 4 if cfg.model.dtype == "fp32" else 2
    notes = []
    terms = {
        "frozen weights": trace.frozen_weights - (trace.sharded_frozen * (1 - 1 / n) if full else 0),
        "trainable weights (fp32)": trace.trainable_bytes / (n if full else 1),
        "gradients": trace.gradients / grad_shard,
        "optimizer state": trace.optimizer_state * (2 / 8 if t.optimizer == "adamw8bit" else 1) / shard,
        "activations (traced)": trace.activations - (trace.weight_casts if full else 0),
    }
    if full:
        terms["gathered blocks (FSDP)"] = trace.gathered_unit
        if trace.weight_casts:
            notes.append(f"sharding full: activations less autocast's bf16 copies of the trainable weights "
                         f"({trace.weight_casts / GiB:.1f} GiB), which blocks gathered in bf16 replace")
    if not cfg.data.cache_embeddings:
        terms["text encoders"] = TEXT_ENCODER_PARAMS[cfg.model.family] * frozen
        notes.append("data.cache_embeddings is false: the text encoders stay on the GPU")
    rewards = sum(REWARD_PARAMS.get(r.name, 0) for r in cfg.rl.rewards) * 2 if cfg.rl.algorithm != "none" else 0
    if rewards:
        terms["reward models (weights)"] = rewards
    if n > 1 and not full:
        terms["reduction buckets"] = 2 * BUCKET_BYTES
    # rewards load first, then the teacher, its VAE and the text encoders, which encode the prompts before the
    # networks and optimizers are built (sharding full: the denoiser waits on the CPU until it is sharded)
    on_gpu = trace.teacher_weights - (trace.denoiser_weights if full else 0)
    encoding = rewards + on_gpu + TEXT_ENCODER_PARAMS[cfg.model.family] * frozen
    if encoding > sum(terms.values()):
        beside = "the VAE" if full else "the teacher"
        notes.append(f"while the prompts are encoded the text encoders sit beside {beside}: {encoding / GiB:.1f} "
                     f"GiB, more than the training step (they are released before it)")
    return Plan(terms=terms, processes=n, sharding=sharding if shard > 1 else "none", notes=notes, encoding=encoding)


def as_full(cfg) -> tuple[str, object] | None:
    """(the change, the recipe) with train.sharding full, 8-bit AdamW turned into AdamW (bitsandbytes' kernels do
    not take FSDP's sharded tensors, and the shards divide the state by the process count anyway); None where the
    recipe check refuses full for another reason (the GAN term, DPO / GRPO, ODE regression, compile)."""
    label, new = "train.sharding=full", cfg
    if cfg.train.optimizer == "adamw8bit":
        label, new = label + " train.optimizer=adamw", _changed(cfg, "train", "optimizer", "adamw")
    new = new if new is None or new.train.sharding == "full" else _changed(new, "train", "sharding", "full")
    return (label, new) if new is not None else None


def _changed(cfg, section: str, key: str, value):
    """`cfg` with one key changed; None where the recipe check refuses the change (8-bit AdamW with sharding
    full): no knob to offer."""
    from ..recipe import validate
    from ..recipe.load import RecipeError

    data = cfg.model_dump(mode="json")
    data[section][key] = value
    try:
        return validate(data)
    except RecipeError:
        return None


def knobs(cfg, processes: int, budget_gib: float, retrace: bool = True) -> list[tuple[str, float]]:
    """Single changes to the recipe (or launch) that would bring the estimate under `budget_gib`, best first, else
    the knobs applied together. Each is estimated like the recipe itself; a change to the step (checkpointing,
    decoder, batch, LoRA) is traced anew, or (`retrace` False) left out."""
    t = cfg.train
    candidates: list[tuple[str, object, int]] = []
    if not t.gradient_checkpointing:
        candidates.append(("train.gradient_checkpointing=true", _changed(cfg, "train", "gradient_checkpointing", True),
                           processes))
    if t.sharding == "none" and processes > 1:
        candidates.append(("train.sharding=optimizer", _changed(cfg, "train", "sharding", "optimizer"), processes))
    full = as_full(cfg)
    if t.sharding != "full" and processes > 1 and full is not None:
        candidates.append((*full, processes))
    if t.optimizer == "adamw":
        candidates.append(("train.optimizer=adamw8bit", _changed(cfg, "train", "optimizer", "adamw8bit"), processes))
    if not cfg.data.cache_embeddings:
        candidates.append(("data.cache_embeddings=true", _changed(cfg, "data", "cache_embeddings", True), processes))
    if cfg.student.finetune == "full":
        candidates.append(("student.finetune=lora", _changed(cfg, "student", "finetune", "lora"), processes))
    if cfg.rl.algorithm == "refl" and not cfg.rl.decoder:
        tiny = TINY_DECODERS[cfg.model.family]
        candidates.append((f"rl.decoder={tiny}", _changed(cfg, "rl", "decoder", tiny), processes))
    same_step = trace_key(cfg)
    fits = []
    for label, new, procs in candidates:
        if new is None or not retrace and trace_key(new) != same_step:
            continue
        gib = estimate(new, traced(new), procs).peak / GiB
        if gib <= budget_gib:
            fits.append((label, gib))
    batch = t.batch_size // 2 if retrace else 0
    while batch >= 1:  # the largest halving of the batch that fits, the global batch kept by accumulation
        new = _changed(_changed(cfg, "train", "batch_size", batch), "train", "gradient_accumulation",
                       math.ceil(t.batch_size / batch) * t.gradient_accumulation)
        gib = estimate(new, traced(new), processes).peak / GiB
        if gib <= budget_gib:
            fits.append((f"train.batch_size={batch} (train.gradient_accumulation={new.train.gradient_accumulation} "
                         f"keeps the global batch)", gib))
            break
        batch //= 2
    if not fits:  # no single change of the recipe: the knobs together
        fits += _combined(cfg, processes, budget_gib, retrace)
    trace = traced(cfg)
    modes = [("train.sharding=optimizer", cfg if t.sharding == "optimizer" else
              _changed(cfg, "train", "sharding", "optimizer"))] + ([full] if full is not None else [])
    for label, sharded in modes:  # the fewest more processes
        for procs in (2, 4, 8, 16, 32, 64):
            gib = estimate(sharded, trace, procs).peak / GiB
            if procs > processes and gib <= budget_gib:
                fits.append((f"{procs} processes with {label}", gib))
                break
    return fits


# The knobs in the order `_combined` applies them: those that cost nothing in quality or speed first.
COMBINED = [("data", "cache_embeddings", True), ("train", "optimizer", "adamw8bit"),
            ("train", "gradient_checkpointing", True), ("rl", "decoder", None), ("student", "finetune", "lora")]


def _combined(cfg, processes: int, budget_gib: float, retrace: bool = True) -> list[tuple[str, float]]:
    """When no single knob is enough: the knobs applied one after another (COMBINED, then halving the batch)
    until the estimate fits, as one entry; nothing if all of them together do not fit. Without `retrace`, only
    those that leave the traced step as it is."""
    applied, current = [], cfg
    steps = [(s, k, v) for s, k, v in COMBINED if not (s == "rl" and (cfg.rl.algorithm != "refl" or cfg.rl.decoder))]
    batch = cfg.train.batch_size
    while batch > 1:
        batch //= 2
        steps.append(("train", "batch_size", batch))
    for section, key, value in steps:
        if section == "rl":
            value = TINY_DECODERS[cfg.model.family]
        if current.model_dump(mode="json")[section][key] == value:
            continue
        new = _changed(current, section, key, value)
        if key == "batch_size":
            accumulation = math.ceil(cfg.train.batch_size / value) * cfg.train.gradient_accumulation
            new = _changed(new, "train", "gradient_accumulation", accumulation)
        if new is None or not retrace and trace_key(new) != trace_key(current):
            continue
        current = new
        if key == "batch_size":
            applied = [a for a in applied if not a.startswith("train.batch_size")]
            applied.append(f"train.batch_size={value} x train.gradient_accumulation={accumulation}")
        else:
            applied.append(f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}")
        gib = estimate(current, traced(current), processes).peak / GiB
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
    when the trace could not run (the run itself may still work). The verdict: `gpu_memory` with every knob
    that fits it, or else each of GPU_SIZES with the knobs that need no new trace."""
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
        full = as_full(cfg)
        if full is not None:  # the column says when it changes the optimizer
            plans["full" + (", adamw" if full[1].train.optimizer != cfg.train.optimizer else "")] = estimate(
                full[1], trace, processes, "full")
    mine = estimate(cfg, trace, processes)
    lines = [accuracy_line()] + mine.notes
    warnings: list[str] = []
    total = mine.peak / GiB
    for size in [gpu_memory] if gpu_memory is not None else GPU_SIZES:
        if total <= size:
            lines.append(f"fits {size:g} GiB: yes ({total:.1f} GiB estimated, {size - total:.1f} to spare)")
            continue
        fixes = knobs(cfg, processes, size, retrace=gpu_memory is not None)
        advice = "; ".join(f"{label} -> {gib:.1f} GiB" for label, gib in fixes) or "no single knob is enough"
        more = "" if gpu_memory is not None else f" (--gpu-memory {size:g} also traces the knobs that change the step)"
        lines.append(f"fits {size:g} GiB: no ({total:.1f} GiB estimated). Would fit: {advice}{more}")
        if gpu_memory is not None:
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
