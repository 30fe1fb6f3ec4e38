"""The memory planner of `--dry-run`: a training step traced on fake tensors against the same step run on real
tensors, its model-state terms against the tensors a real `dmdr distill` holds, the placeholder conditioning
against real prompt encodings, the sharding arithmetic, the prompt-encoding phase, the knob advice and the
per-GPU-size verdicts (the shipped FLUX.1-dev recipe at real size)."""

from __future__ import annotations

import gc

import pytest
import torch
import yaml

from train_helpers import invoke, ok, recipe

from dmdr_cli.engines import memory
from dmdr_cli.engines.memory_trace import Trace, trace_isolated, trace_step
from dmdr_cli.recipe import validate

GiB = 2**30
# fake vs real peak, measured: +0.20% (sd full fine-tune), +0.02% (sd3 LoRA + DPO), +0.00% (flux LoRA + ReFL
# through TAESD); +2.0% on sd full + ReFL: the fake run reads the student step drawn and other data-dependent
# scalars as placeholders
TRACE_ERROR = 0.03


def tiny_recipe(tmp_path, family, folder, **sections):
    path = recipe(tmp_path, family, folder, tmp_path / "run", train={"steps": 1, "sample_every": 0},
                  coldstart={"steps": 0}, **sections)
    return validate(yaml.safe_load(path.read_text()))


@pytest.fixture(scope="module")
def sd_plain(tiny_sd, tmp_path_factory):
    """The plain tiny sd recipe (full fine-tune, DMD only), its path and its fake trace under CPU rules: traced
    once for the two tests that read it (a trace is a Python process of its own, seconds)."""
    folder = tmp_path_factory.mktemp("sd-plain")
    cfg = tiny_recipe(folder, "sd", tiny_sd)
    return folder / "sd-run.yaml", cfg, trace_isolated(cfg, policy="cpu")


@pytest.mark.parametrize("family,sections", [
    ("sd", None),
    ("sd3", {"rl": {"algorithm": "dpo", "rewards": [{"name": "custom", "loss": "linear"}],
                    "dpo": {"reference": "rl_start"}}}),
    ("flux", {"rl": {"algorithm": "refl", "decoder": "madebyollin/taef1",
                     "rewards": [{"name": "custom", "loss": "linear"}]}}),
])
def test_the_fake_trace_is_what_the_same_step_allocates_on_real_tensors(family, sections, request, tmp_path):
    """The planner's figure comes from a step run on fake tensors; the same code on real CPU tensors (random
    weights, real student-step draws) allocates the same: the fake run neither drops nor invents a tensor. sd:
    full fine-tune; sd3: LoRA, DPO with its reference copy; flux: LoRA, ReFL through a TAESD decoder."""
    if sections is None:
        _, cfg, fake = request.getfixturevalue("sd_plain")
    else:
        cfg = tiny_recipe(tmp_path, family, request.getfixturevalue(f"tiny_{family}"), **sections)
        fake = trace_isolated(cfg, policy="cpu")
    real = trace_step(cfg, policy="cpu", fake=False)
    assert real.peak > real.steady > 0
    assert abs(fake.peak - real.peak) <= TRACE_ERROR * real.peak, (fake.peak, real.peak)
    assert (fake.frozen_weights, fake.trainable, fake.optimizer_state) == (
        real.frozen_weights, real.trainable, real.optimizer_state)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "flux_schnell"])
def test_placeholder_conditioning_has_the_shapes_of_encoded_prompts(family, request):
    from dmdr_cli.families import load_family

    folder = request.getfixturevalue(f"tiny_{family}")
    cfg = validate({"model": {"family": family.split("_")[0], "pretrained": str(folder), "resolution": 16,
                              **({"max_text_tokens": 8} if family != "sd" and family != "sdxl" else {})}})
    fam = load_family(cfg.model)
    encoded, placeholder = fam.encode_prompts(["a cat", "a dog"]), fam.placeholder_cond(2)
    assert {k: (tuple(v.shape), v.dtype) for k, v in encoded.items()} == \
        {k: (tuple(v.shape), v.dtype) for k, v in placeholder.items()}


def _state_bytes(generator_params) -> dict[str, int]:
    """Bytes of this run's model state alive now, from the tensors themselves: every parameter and buffer of its
    denoisers and VAE (unique storages), their gradients, and the state of its optimizers."""
    from dmdr_cli.dmd.networks import ScoreNetworks
    from dmdr_cli.families.base import Family

    (nets,) = [o for o in gc.get_objects() if isinstance(o, ScoreNetworks) and o.generator_params is generator_params]
    (family,) = [o for o in gc.get_objects() if isinstance(o, Family) and o.denoiser is nets.guidance]
    modules = [nets.generator, nets.guidance] + ([nets.fake_full] if nets.fake_full is not None else [])
    if family.components.vae is not None:
        modules.append(family.components.vae)
    trainable = {id(p) for p in nets.generator_params + nets.fake_params}
    optimizers = [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)
                  and all(id(p) in trainable for group in o.param_groups for p in group["params"])]
    seen, weights, grads = set(), 0, 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            weights += t.numel() * t.element_size()
            if t.grad is not None:
                grads += t.grad.numel() * t.grad.element_size()
    state = sum(v.numel() * v.element_size() for o in optimizers for s in o.state.values() for v in s.values()
                if torch.is_tensor(v))
    return {"weights": weights, "gradients": grads, "optimizer state": state}


def test_model_state_terms_are_the_tensors_of_a_real_run(sd_plain, monkeypatch):
    """Measured by summing tensor bytes at the generator's optimizer step (its peak of model state: weights,
    both networks' gradients, both optimizers' state) in a real 1-step `dmdr distill` on the CPU, against the
    terms of the CPU-rules trace (no rounding: the CPU allocator's bytes)."""
    from dmdr_cli.engines import train

    path, cfg, trace = sd_plain
    plan = memory.estimate(cfg, trace, 1)
    measured = {}
    real_update = train.apply_update

    def spy(params, opt, *args, **kwargs):
        zero = opt.zero_grad

        def measure_then_zero(set_to_none=True):
            if not measured and "generator" in args[3]:
                measured.update(_state_bytes(params))
            zero(set_to_none=set_to_none)
        opt.zero_grad = measure_then_zero
        try:
            return real_update(params, opt, *args, **kwargs)
        finally:
            del opt.zero_grad

    monkeypatch.setattr(train, "apply_update", spy)
    ok("distill", path)
    assert measured
    expected = {"weights": plan.terms["frozen weights"] + plan.terms["trainable weights (fp32)"],
                "gradients": plan.terms["gradients"], "optimizer state": plan.terms["optimizer state"]}
    for key, value in expected.items():
        assert measured[key] == value, (key, measured[key], value)


def _trace(activations_gib: float, trainable: int = 10**9, teacher_gib: float = 4.0) -> Trace:
    """A traced step, made up: `teacher_gib` of frozen teacher and VAE, fp32 masters and gradients, AdamW state,
    activations."""
    steady = teacher_gib * GiB + 4 * trainable + 8 * trainable
    return Trace(peak=steady + 4 * trainable + activations_gib * GiB, steady=steady, trainable=trainable,
                 trainable_bytes=4 * trainable, optimizer_state=8 * trainable, gradients=4 * trainable,
                 frozen_weights=teacher_gib * GiB, teacher_weights=teacher_gib * GiB, denoiser_params=2 * 10**9,
                 source="test")


def test_sharding_divides_optimizer_state_and_gradients_except_while_accumulating():
    cfg = validate({"model": {"family": "sdxl", "pretrained": "x"}, "student": {"finetune": "full"}})
    trace = _trace(5.0)
    one, eight = memory.estimate(cfg, trace, 8, "none"), memory.estimate(cfg, trace, 8, "optimizer")
    assert eight.terms["optimizer state"] == one.terms["optimizer state"] / 8 == trace.optimizer_state / 8
    assert eight.terms["gradients"] == one.terms["gradients"] / 8
    assert eight.terms["trainable weights (fp32)"] == one.terms["trainable weights (fp32)"]
    assert one.terms["activations (traced)"] == 5 * GiB
    accumulating = cfg.model_copy(update={"train": cfg.train.model_copy(update={"gradient_accumulation": 2})})
    assert memory.estimate(accumulating, trace, 8, "optimizer").terms["gradients"] == one.terms["gradients"]
    eight_bit = cfg.model_copy(update={"train": cfg.train.model_copy(update={"optimizer": "adamw8bit"})})
    assert memory.estimate(eight_bit, trace, 1).terms["optimizer state"] == trace.optimizer_state / 4


def test_the_prompt_encoding_phase_counts_when_it_is_larger_than_the_step():
    """Before training the text encoders sit beside the teacher and the reward models (FLUX: T5-XXL next to a
    22 GiB transformer): that phase is what must fit when the step itself needs less."""
    cfg = validate({"model": {"family": "flux", "pretrained": "x"}, "data": {"cache_embeddings": True},
                    "rl": {"algorithm": "refl", "rewards": [{"name": "hps"}]}})
    plan = memory.estimate(cfg, _trace(0.5, trainable=10**7, teacher_gib=22.2), 1)
    assert plan.encoding == 22.2 * GiB + memory.TEXT_ENCODER_PARAMS["flux"] * 2 + memory.REWARD_PARAMS["hps"] * 2
    assert plan.peak == plan.encoding > plan.total and "text encoders sit beside the teacher" in plan.notes[-1]
    kept = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_embeddings": False})})
    plan = memory.estimate(kept, _trace(0.5, trainable=10**7, teacher_gib=22.2), 1)  # they stay: in the step
    assert plan.peak == plan.total > plan.encoding


def test_knobs_name_single_changes_and_else_the_combination_that_fits(monkeypatch):
    """Knob selection over made-up traces: activations 8 GiB per sample, halved by checkpointing."""
    def fake_trace(cfg):
        trainable = 10**9 if cfg.student.finetune == "full" else 10**7
        return _trace(8 * cfg.train.batch_size / (2 if cfg.train.gradient_checkpointing else 1), trainable)

    monkeypatch.setattr(memory, "traced", fake_trace)
    cfg = validate({"model": {"family": "sdxl", "pretrained": "x"}, "student": {"finetune": "full"},
                    "train": {"batch_size": 4}})
    total = memory.estimate(cfg, fake_trace(cfg), 1).total / GiB  # 4 GiB + 16 GB of state + 32 GiB activations
    assert 50 < total < 52
    single = dict(memory.knobs(cfg, 1, total - 10))
    assert "train.gradient_checkpointing=true" in single and "student.finetune=lora" in single
    assert any(label.startswith("train.batch_size=2") for label in single)
    combined = memory.knobs(cfg, 1, 24)
    assert len(combined) >= 1 and combined[0][0].startswith("all of ") and combined[0][1] <= 24
    assert "train.gradient_checkpointing=true" in combined[0][0]
    # without a new trace (the verdicts for 24 / 40 / 80 GB): only knobs that leave the traced step as it is
    calls = []
    monkeypatch.setattr(memory, "traced", lambda c: calls.append(memory.trace_key(c)) or fake_trace(c))
    cheap = dict(memory.knobs(cfg, 1, total - 5, retrace=False))  # 8-bit AdamW: 6 GB less
    assert set(calls) == {memory.trace_key(cfg)}
    assert "train.optimizer=adamw8bit" in cheap and "train.gradient_checkpointing=true" not in cheap


def test_flux_dev_recipe_plans_for_each_gpu_size(tmp_path):
    """The shipped FLUX.1-dev ReFL recipe at real size (its published configs, 1024 px, traced on fake tensors):
    without --gpu-memory the plan says what fits 24, 40 and 80 GB cards; 24 never does (the bf16 transformer is
    22.2 GiB). The figure is the one the recipe's header quotes. Then the same plan (its trace reused) at 4
    processes against one size, and a size that is no size."""
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "flux-dev" / "4step-refl.yaml"
    out = f"output.dir={tmp_path / 'run'}"
    res = ok("distill", path, out, "--dry-run")
    text = " ".join(res.output.split())
    assert "11.9B denoiser parameters, 269M trainable, from the published configs of black-forest-labs/FLUX.1-dev" \
        in text
    verdicts = re.findall(r"fits (\d+) GiB: (yes|no) \((\d+\.\d) GiB estimated", text)
    assert [(size, fits) for size, fits, _ in verdicts] == [("24", "no"), ("40", "yes"), ("80", "yes")], text[-1500:]
    figure = verdicts[0][2]
    assert f"planner's figure (`--dry-run`): {figure} GiB" in " ".join(
        line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    res = ok("distill", path, out, "--dry-run", "--processes", "4", "--gpu-memory", "80")
    text = " ".join(res.output.split())
    assert "memory per GPU at 4 process(es) by train.sharding" in text and "┃ optimizer ┃" in text
    assert "┃ full, adamw ┃" in text and "gathered blocks" in text  # full's column: 8-bit AdamW cannot be sharded
    assert "activations (traced)" in text and "fits 80 GiB: yes" in text and "fits 24" not in text
    assert "bench/gpu_check.sh" in res.output  # where its accuracy comes from
    assert invoke("distill", path, out, "--dry-run", "--gpu-memory", "0").exit_code == 2
    assert not (tmp_path / "run").exists()
