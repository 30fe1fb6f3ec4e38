"""The memory planner of `--dry-run`: a training step traced on fake tensors against the same step run on real
tensors, its model-state terms against the tensors a real `dmdr distill` holds, the placeholder conditioning
against real prompt encodings, the sharding arithmetic and the knob advice."""

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
# fake vs real peak, measured: +2.0% (sd full + ReFL: the fake run reads the student step drawn and other data-
# dependent scalars as placeholders), +0.02% (sd3 LoRA + DPO)
TRACE_ERROR = 0.03


def tiny_recipe(tmp_path, family, folder, **sections):
    path = recipe(tmp_path, family, folder, tmp_path / "run", train={"steps": 1, "sample_every": 0},
                  coldstart={"steps": 0}, **sections)
    return validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("family,sections", [
    ("sd", {"rl": {"algorithm": "refl", "rewards": [{"name": "custom", "loss": "linear"}]}}),
    ("sd3", {"rl": {"algorithm": "dpo", "rewards": [{"name": "custom", "loss": "linear"}],
                    "dpo": {"reference": "rl_start"}}}),
])
def test_the_fake_trace_is_what_the_same_step_allocates_on_real_tensors(family, sections, tiny_sd, tiny_sd3, tmp_path):
    """The planner's figure comes from a step run on fake tensors; the same code on real CPU tensors (random
    weights, real student-step draws) allocates the same: the fake run neither drops nor invents a tensor."""
    folder = {"sd": tiny_sd, "sd3": tiny_sd3}[family]
    cfg = tiny_recipe(tmp_path, family, folder, **sections)
    fake, real = trace_isolated(cfg, policy="cpu"), trace_step(cfg, policy="cpu", fake=False)
    assert real.peak > real.steady > 0
    assert abs(fake.peak - real.peak) <= TRACE_ERROR * real.peak, (fake.peak, real.peak)
    assert (fake.frozen_weights, fake.trainable, fake.optimizer_state) == (
        real.frozen_weights, real.trainable, real.optimizer_state)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_placeholder_conditioning_has_the_shapes_of_encoded_prompts(family, tiny_sd, tiny_sdxl, tiny_sd3):
    from dmdr_cli.families import load_family

    folder = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3}[family]
    cfg = validate({"model": {"family": family, "pretrained": str(folder), "resolution": 16,
                              **({"max_text_tokens": 8} if family == "sd3" else {})}})
    fam = load_family(cfg.model)
    encoded, placeholder = fam.encode_prompts(["a cat", "a dog"]), fam.placeholder_cond(2)
    assert {k: tuple(v.shape) for k, v in encoded.items()} == {k: tuple(v.shape) for k, v in placeholder.items()}


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


def test_model_state_terms_are_the_tensors_of_a_real_run(tiny_sd, tmp_path, monkeypatch):
    """Measured by summing tensor bytes at the generator's optimizer step (its peak of model state: weights,
    both networks' gradients, both optimizers' state) in a real 1-step `dmdr distill` on the CPU, against the
    terms of the CPU-rules trace (no rounding: the CPU allocator's bytes)."""
    from dmdr_cli.engines import train

    cfg = tiny_recipe(tmp_path, "sd", tiny_sd)
    plan = memory.estimate(cfg, trace_isolated(cfg, policy="cpu"), 1)
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
    path = tmp_path / "sd-run.yaml"
    ok("distill", path)
    assert measured
    expected = {"weights": plan.terms["frozen weights"] + plan.terms["trainable weights (fp32)"],
                "gradients": plan.terms["gradients"], "optimizer state": plan.terms["optimizer state"]}
    for key, value in expected.items():
        assert measured[key] == value, (key, measured[key], value)


def _trace(activations_gib: float, trainable: int = 10**9) -> Trace:
    """A traced step, made up: 4 GiB frozen weights, fp32 masters and gradients, AdamW state, activations."""
    steady = 4 * GiB + 4 * trainable + 8 * trainable
    return Trace(peak=steady + 4 * trainable + activations_gib * GiB, steady=steady, trainable=trainable,
                 trainable_bytes=4 * trainable, optimizer_state=8 * trainable, gradients=4 * trainable,
                 frozen_weights=4 * GiB, denoiser_params=2 * 10**9, source="test")


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


def test_dry_run_prints_the_traced_plan_and_its_accuracy(tiny_sd, tmp_path):
    path = recipe(tmp_path, "sd", tiny_sd, tmp_path / "run")
    res = ok("distill", path, "--dry-run", "--processes", "4", "--gpu-memory", "80")
    assert "memory per GPU at 4 process(es)" in res.output and "sharding optimizer" in res.output
    assert "activations (traced)" in res.output and "fits 80 GiB: yes" in res.output
    assert "bench/gpu_check.sh" in res.output  # where its accuracy comes from
    bad = invoke("distill", path, "--dry-run", "--gpu-memory", "0")
    assert bad.exit_code == 2
    assert not (tmp_path / "run").exists()
