"""Checkpoints to export, built directly: a tiny teacher + perturbed (full) or LoRA generator weights, saved the
way `dmdr distill` saves them (runtime.checkpoint.save_checkpoint: recipe.yaml, state.json, safetensors).

Also the in-memory student each checkpoint holds (a LoRA left unmerged) and our own sampler's output for it:
the references every export is compared against, with the tolerance check and the model card's pipeline call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dmdr_cli.dmd.networks import GENERATOR, adapter_state, add_lora
from dmdr_cli.families import Family, guidance_values_of, load_family
from dmdr_cli.families.flux import pack, unpack
from dmdr_cli.recipe import to_yaml, validate
from dmdr_cli.runtime.checkpoint import save_checkpoint
from dmdr_cli.sampling import sample

RESOLUTION = 16  # px: 8x8 latents
T5_TOKENS = 8
STEP = 120
PROMPTS = ["a red cat", "two blue cubes on the left of a dog"]
NOISE_SEED, STEP_NOISE_SEED = 3, 11

# name -> (family, teacher fixture, recipe fields); the LoRAs have alpha 12 != rank 4
STUDENTS = {
    "sd-full-sde": ("sd", "sd", dict(finetune="full")),
    "sd-lora-ode": ("sd", "sd", dict(finetune="lora", steps=2, sampler="ode")),
    "sdxl-lora-sde": ("sdxl", "sdxl", dict(finetune="lora")),
    "sdxl-full-1step": ("sdxl", "sdxl", dict(finetune="full", steps=1, timesteps=[0.399])),
    "sdxl-ordered-lora": ("sdxl", "sdxl-ordered", dict(finetune="lora")),
    "sdxl-ordered-full": ("sdxl", "sdxl-ordered", dict(finetune="full")),
    "sd3-lora-ode": ("sd3", "sd3", dict(finetune="lora")),
    "sd3-lora-sde": ("sd3", "sd3", dict(finetune="lora", sampler="sde")),
    "sd3-full-ode": ("sd3", "sd3", dict(finetune="full", steps=2)),
    "sd3m-full": ("sd3", "sd3-medium", dict(finetune="full")),
    "sd35l-lora": ("sd3", "sd35-large", dict(finetune="lora", sampler="sde")),
    "world-full-sde": ("sd", "world", dict(finetune="full")),
    "world-lora-ode": ("sd", "world", dict(finetune="lora", steps=2, sampler="ode")),
    "sd-lora-sde": ("sd", "sd", dict(finetune="lora")),
    # the student told 2.5 through the guidance embedding: exports must pass it as guidance_scale
    "flux-lora-ode": ("flux", "flux", dict(finetune="lora", embedded_guidance=2.5)),
    "flux-lora-sde": ("flux", "flux", dict(finetune="lora", sampler="sde", steps=2)),
    "flux-full-ode": ("flux", "flux", dict(finetune="full", steps=2)),
}


@dataclass
class Trained:
    run: Path
    recipe: object
    family: Family  # the teacher with text encoders; its denoiser IS the in-memory student
    student: torch.nn.Module

    @property
    def times(self) -> list[float]:
        return self.family.times_for(self.recipe.student)

    @property
    def sampler(self) -> str:
        mode = self.recipe.student.sampler
        return self.family.default_sampler if mode == "auto" else mode

    def initial_noise(self) -> torch.Tensor:
        return self.family.noise(len(PROMPTS), RESOLUTION, RESOLUTION,
                                 generator=torch.Generator().manual_seed(NOISE_SEED))

    @torch.no_grad()
    def reference_sample(self, net: torch.nn.Module | None = None) -> torch.Tensor:
        """`dmdr_cli.sampling.sample` of `net` (default: the in-memory student), step noise from a seeded generator
        drawn in the layout the pipeline draws it in (FluxPipeline: packed tokens), so both see the same values."""
        steps = torch.Generator().manual_seed(STEP_NOISE_SEED)

        def step_noise(like):
            if self.family.name != "flux":
                return torch.randn(like.shape, generator=steps).to(like)
            return unpack(torch.randn(pack(like).shape, generator=steps), *like.shape[2:]).to(like)

        return sample(self.family, net if net is not None else self.student, self.initial_noise(),
                      self.family.encode_prompts(PROMPTS), self.times, self.sampler, step_noise)


def recipe_for(family: str, teacher: Path, *, finetune: str, steps: int = 4, timesteps=None, sampler: str = "auto",
               rank: int = 4, alpha: float = 12.0, targets=None, sample: dict | None = None,
               embedded_guidance: float | None = None):
    model = {"family": family, "pretrained": str(teacher), "resolution": RESOLUTION, "dtype": "fp32"}
    if family in ("sd3", "flux"):
        model["max_text_tokens"] = T5_TOKENS
    student = {"steps": steps, "timesteps": timesteps, "sampler": sampler, "finetune": finetune,
               "lora_rank": rank, "lora_alpha": alpha, "lora_targets": targets, "embedded_guidance": embedded_guidance}
    return validate({"model": model, "student": student, "train": {"steps": 1000}, "sample": sample or {}})


def train(run: Path, family_name: str, teacher: Path, *, seed: int = 0, **recipe_fields) -> Trained:
    """Stand-in for training: perturb every weight (full), or give the LoRA random non-zero A and B (lora)."""
    recipe = recipe_for(family_name, teacher, **recipe_fields)
    family = load_family(recipe.model, uncond_mode=recipe.guidance.uncond, guidance_values=guidance_values_of(recipe))
    net = family.denoiser.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    s = recipe.student
    if s.finetune == "full":
        for p in net.parameters():
            p.add_(0.05 * (p.abs().mean() + 1e-3) * torch.randn(p.shape, generator=gen))
        tensors = {k: v.clone() for k, v in net.state_dict().items()}
    else:
        add_lora(net, GENERATOR, s.lora_rank, s.lora_alpha, s.lora_targets or list(family.generator_lora_targets))
        for name, p in net.named_parameters():
            if "lora_" in name:  # B = 0 would make the adapter a no-op and every export trivially "right"
                p.data = 0.3 * torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5
        net.requires_grad_(False)
        tensors = adapter_state(net, GENERATOR)
    state = {"dmdr_version": "0.1.0", "stage": "distill", "family": family_name, "generator_format": s.finetune,
             "fake_format": "lora", "student_steps": s.steps, "processes": 1,
             "generator_lora": {"rank": s.lora_rank, "alpha": s.lora_alpha, "targets": list(s.lora_targets or [])}}
    save_checkpoint(run, STEP, recipe_yaml=to_yaml(recipe), state=state,
                    tensors={"generator": tensors, "fake": {}}, optimizers={}, keep=2)
    return Trained(run=run, recipe=recipe, family=family, student=net)


def sdxl_ordered_teacher(tiny_sdxl: Path, root: Path) -> Path:
    """The tiny SDXL pipeline shaped like SDXL where the fixture is not: its block order (the first level without
    attention, attention before every up-sampler; the fixture puts an up-sampler behind a plain up block, which
    real SDXL never has) and text encoders of different widths (CLIP-L 768 / OpenCLIP-G 1280 in SDXL; 8 / 12
    here), by which diffusers' single-file reader tells the two apart."""
    import shutil

    from diffusers import UNet2DConditionModel
    from fixtures.tiny_models import clip_text_encoder

    folder = root / "sdxl-ordered"
    shutil.copytree(tiny_sdxl, folder)
    shutil.rmtree(folder / "text_encoder_2")
    clip_text_encoder(12, projection=8).save_pretrained(folder / "text_encoder_2")
    config = dict(UNet2DConditionModel.load_config(folder / "unet"))
    config.update(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=8 + 12)
    torch.manual_seed(6)
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    return folder


def sd3_release_teacher(tiny_sd3: Path, root: Path, name: str, **transformer_config) -> Path:
    """The tiny SD3 pipeline with CLIP-L's text projection the identity, as SD3 / SD3.5 ship it (their single
    files hold none and readers use the identity), and `transformer_config` changes (SD3.5-Large: qk_norm)."""
    import shutil

    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    folder = root / name
    shutil.copytree(tiny_sd3, folder)
    clip_l = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder")
    torch.nn.init.eye_(clip_l.text_projection.weight.data)
    clip_l.save_pretrained(folder / "text_encoder")
    if transformer_config:
        config = {**SD3Transformer2DModel.load_config(folder / "transformer"), **transformer_config}
        torch.manual_seed(7)
        SD3Transformer2DModel.from_config(config).save_pretrained(folder / "transformer")
    return folder


def assert_reproduces(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """max |actual - expected| <= 1e-5 x max(1, max |expected|).

    The untrained tiny eps UNets put x0 at t = 0.999 near 50 (1 / sqrt(a_999) = 14.6 amplifies their random eps),
    where float32 rounding alone reaches ~1e-5 absolute; measured: 1.4e-5 at scale 54 (eps), 7e-7 at 3.8 (flow).
    """
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= 1e-5 * scale, f"max abs error {err:.3g} at sample scale {scale:.3g}"


def call_as_the_card_says(pipe, spec, student, card: str) -> torch.Tensor:
    """The model card's call (times, no CFG, step-noise seeding), plus latents= and output_type for the test.

    FluxPipeline takes and returns latents packed into 2x2-patch tokens."""
    kwargs = dict(height=RESOLUTION, width=RESOLUTION, **spec.call, **student.family.pipeline_arguments())
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    assert f"image = pipe(prompt, {shown}" in card
    if spec.step_noise == "generator":
        assert "generator=generator" in card
        kwargs["generator"] = torch.Generator().manual_seed(STEP_NOISE_SEED)
    elif spec.step_noise == "global":
        assert "torch.manual_seed(0)" in card
        torch.manual_seed(STEP_NOISE_SEED)
    noise = student.initial_noise()
    packed = student.family.name == "flux"
    with torch.no_grad():
        out = pipe(PROMPTS, latents=pack(noise) if packed else noise, output_type="latent", **kwargs).images
    return unpack(out, *noise.shape[2:]) if packed else out
