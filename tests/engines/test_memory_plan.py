"""The memory planner of `--dry-run`: its two H100 anchors, 1/N sharded terms, the fits / knob verdict, and
its model-state terms against the tensors a real run of the tiny fixture holds."""

from __future__ import annotations

import gc

import pytest
import torch

from train_helpers import invoke, ok, recipe

from dmdr_cli.engines import memory
from dmdr_cli.recipe import validate

GiB = 2**30


def bench_recipe(family: str, pretrained: str, finetune: str, batch: int, refl: bool):
    """The configuration bench/step_overhead.py measured (defaults otherwise: adamw, shared LoRA, bf16)."""
    return validate({"model": {"family": family, "pretrained": pretrained, "resolution": 1024},
                     "student": {"steps": 4, "finetune": finetune},
                     "train": {"batch_size": batch, "gradient_checkpointing": True},
                     "rl": {"algorithm": "refl" if refl else "none",
                            "rewards": [{"name": "custom", "loss": "linear"}] if refl else []}})


@pytest.mark.parametrize("family,pretrained,finetune,batch,refl,measured", [
    ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "full", 4, False, 48.6),
    ("sd3", "stabilityai/stable-diffusion-3.5-large", "lora", 2, True, 40.0),
])
def test_estimate_matches_the_h100_anchors(family, pretrained, finetune, batch, refl, measured):
    cfg = bench_recipe(family, pretrained, finetune, batch, refl)
    arch = memory.architecture(cfg)
    assert arch.params == pytest.approx({"sdxl": 2.567e9, "sd3": 8.06e9}[family], rel=0.003)  # published sizes
    total = memory.estimate(cfg, arch, 1).total / GiB
    assert abs(total - measured) / measured < memory.ANCHOR_ERROR
    # sharded over 8: the optimizer state is 1/8, gradients 1/8, weights unchanged
    one, eight = memory.estimate(cfg, arch, 8, "none"), memory.estimate(cfg, arch, 8, "optimizer")
    assert eight.terms["optimizer state"] == pytest.approx(one.terms["optimizer state"] / 8)
    assert eight.terms["gradients"] == pytest.approx(one.terms["gradients"] / 8)
    assert eight.terms["fp32 master weights"] == one.terms["fp32 master weights"]
    accumulating = cfg.model_copy(update={"train": cfg.train.model_copy(update={"gradient_accumulation": 2})})
    assert memory.estimate(accumulating, arch, 8, "optimizer").terms["gradients"] == one.terms["gradients"]


@pytest.mark.parametrize("config", ["UNET_SDXL", "MMDIT_SD3M", "MMDIT_SD35L", "UNET_SD15", "UNET_SD21", "FLUX_DEV",
                                    "FLUX_SCHNELL"])
def test_known_counts_are_the_architectures_built_on_the_meta_device(config):
    """The table that keeps --dry-run instant for hub ids is what diffusers builds from the published configs
    (FLUX.1: 11.9B, the published size; its generator and guidance LoRAs have different default targets)."""
    from dmdr_cli.engines.plan import _family_targets

    arch_config = getattr(memory, config)
    family = {"UNET_SDXL": "sdxl", "UNET_SD15": "sd", "UNET_SD21": "sd", "FLUX_DEV": "flux",
              "FLUX_SCHNELL": "flux"}.get(config, "sd3")
    gen, gui = _family_targets(family)
    built = memory.architecture_from_config(arch_config, family, gen, gui, 64, 32, "meta")
    params, buffers, gen_per_rank, gui_per_rank = memory.KNOWN_COUNTS[id(arch_config)]
    assert (built.params, built.buffers, built.generator_lora, built.guidance_lora) == (
        params, buffers, 64 * gen_per_rank, 32 * gui_per_rank)


def test_dry_run_prints_the_plan_and_the_knob_that_fits(tiny_sd, tmp_path):
    path = recipe(tmp_path, "sd", tiny_sd, tmp_path / "run")
    res = ok("distill", path, "--dry-run", "--processes", "4", "--gpu-memory", "80")
    assert "memory per GPU at 4 process(es)" in res.output and "sharding optimizer" in res.output
    assert "fits 80 GiB: yes" in res.output
    sdxl = tmp_path / "sdxl.yaml"
    sdxl.write_text("model: {family: sdxl, pretrained: stabilityai/stable-diffusion-xl-base-1.0}\n"
                    "train: {batch_size: 4, gradient_checkpointing: true}\n")
    res = ok("distill", sdxl, "--dry-run", "--processes", "8", "--gpu-memory", "40")
    assert "fits 40 GiB: no" in res.output and "train.sharding=optimizer ->" in res.output
    assert "does not fit 40 GiB" in res.output
    bad = invoke("distill", path, "--dry-run", "--gpu-memory", "0")
    assert bad.exit_code == 2
    assert not (tmp_path / "run").exists()


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
                if torch.is_tensor(v) and v.dim() > 0)
    return {"weights": weights, "gradients": grads, "optimizer state": state}


def test_flux_dev_recipe_plans_for_each_gpu_size():
    """Without --gpu-memory the plan says what fits 24, 40 and 80 GB; the bf16 FLUX.1-dev weights alone are
    22.2 GiB, so 24 GB never fits."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "flux-dev" / "4step-refl.yaml"
    res = ok("distill", path, "--dry-run")
    text = " ".join(res.output.split())
    assert "11.9B denoiser parameters from the published flux.1-dev architecture" in text
    assert "fits 24 GiB: no" in text and "fits 80 GiB: yes" in text and "fits 40 GiB:" in text
    cfg = validate(__import__("yaml").safe_load(path.read_text()))
    plan = memory.estimate(cfg, memory.architecture(cfg), 1)
    assert plan.terms["frozen weights (teacher, VAE)"] / GiB == pytest.approx((11_901_408_320 + 83_819_683) * 2 / GiB)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_model_state_estimate_matches_the_tiny_run_tensors(family, request, tmp_path, monkeypatch):
    """Measured by summing tensor bytes at the generator's optimizer step (its peak of model state: weights,
    both networks' gradients, both optimizers' state), in a real 1-step CPU run; CPU runs fp32, like the
    recipe's model.dtype here. Activations are not compared: their constants are per architecture at real
    size (H100 / H200 measurements)."""
    from dmdr_cli.engines import train

    path = recipe(tmp_path, family, request.getfixturevalue(f"tiny_{family}"), tmp_path / "run",
                  train={"steps": 1, "sample_every": 0}, coldstart={"steps": 0})
    cfg = validate(__import__("yaml").safe_load(path.read_text()))
    plan = memory.estimate(cfg, memory.architecture(cfg), 1)
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
    expected = {"weights": plan.terms["frozen weights (teacher, VAE)"] + plan.terms["fp32 master weights"],
                "gradients": plan.terms["gradients"], "optimizer state": plan.terms["optimizer state"]}
    for key, value in expected.items():
        assert abs(measured[key] - value) <= memory.STATE_ERROR * value, (key, measured[key], value)
