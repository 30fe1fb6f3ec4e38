"""What `dmdr sample` draws from: a distilled student (a run or checkpoint folder) or a teacher.

MODEL is read cheaply first (`open_model`: recipe, paths and defaults, no weights), so every mistake is
refused before anything loads; `load_sampler` then builds the callable that turns prompts into images.

    runs/sdxl-4step                                   a run folder (its latest checkpoint)
    runs/sdxl-4step/checkpoints/step-004000           a checkpoint folder
    teacher:sd3:stabilityai/stable-diffusion-3-medium-diffusers    a bare teacher (CFG 7, unconditional "")
    teacher:runs/sdxl-4step                           the teacher a run distils, with its recipe's
                                                      guidance.uncond, CFG (sample.cfg or guidance.scale)
                                                      and model settings (also teacher:RECIPE.yaml)

Students sample with `sampling.sample` at their own times and sampler mode, without CFG (NFE = steps);
teachers with their own diffusers scheduler via `sampling.teacher_sample` (NFE = 2 x steps with CFG).

Randomness: image i of prompt p starts from `keyed_generator(seed, p, i)` and an sde student's fresh
step noise comes from `keyed_generator(seed, p, i, "step")`, so an image depends on (seed, p, i) alone,
never on the batch it was drawn in or the process that drew it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..dmd.randomness import keyed_generator
from ..errors import DmdrError
from ..families import FAMILIES
from . import domains

TEACHER_PREFIX = "teacher:"
TEACHER_STEPS, TEACHER_CFG = 25, 7.0


@dataclass(frozen=True)
class ModelRef:
    """MODEL as read without loading weights."""

    spec: str  # as the user wrote it
    kind: str  # "student" or "teacher"
    model: object  # recipe.model section (family, pretrained, resolution, dtype, ...)
    uncond: str  # recipe guidance.uncond, "empty_prompt" for a bare teacher
    label: str  # a short name for reports
    identity: str  # what the images depend on (resolved checkpoint or teacher), for the resume check
    domain: str | None  # the evaluation domain whose benches judge it (evaluate/domains.py); None: the official
    steps: int  # default sampling steps
    cfg: float | None  # default teacher CFG; None for students
    embeds_guidance: bool = False  # the teacher takes its guidance value through an embedding (one pass, no CFG)
    batch_size: int = 4
    per_prompt: int = 1
    seed: int = 0
    source: object | None = None  # export.source.ExportSource of a student
    run_dir: Path | None = None

    @property
    def resolution(self) -> int:
        return int(self.model.resolution)


def open_model(spec: str, *, domain: str | None = None) -> ModelRef:
    """Resolve MODEL (see the module docstring); `domain` (a name, or "official") overrides the detected one."""
    spec = str(spec).strip()
    if spec.startswith(TEACHER_PREFIX):
        ref = _open_teacher(spec)
    else:
        ref = _open_student(spec)
    if domain is None:
        return ref
    return replace(ref, domain=domains.chosen(domain))


def _open_student(spec: str) -> ModelRef:
    from ..export.source import open_checkpoint

    path = Path(spec).expanduser()
    if not path.exists():
        raise DmdrError(f"MODEL {spec!r} does not exist: give a run folder, a checkpoint folder, or a teacher as "
                        f"teacher:<family>:<path or hub id> (e.g. "
                        f"teacher:sdxl:stabilityai/stable-diffusion-xl-base-1.0)")
    if (path / "model_index.json").is_file():
        raise DmdrError(_pipeline_folder_message(path))
    source = open_checkpoint(path)
    recipe = source.recipe
    run_name = source.run_dir.name if source.run_dir is not None else source.checkpoint.name
    return ModelRef(
        spec=spec, kind="student", model=recipe.model, uncond=recipe.guidance.uncond,
        label=f"{run_name} (step {source.step}{', EMA' if source.uses_ema else ''}, {recipe.student.steps}-step student)",
        identity=str(source.checkpoint.resolve()), domain=domains.of_recipe(recipe),
        steps=recipe.student.steps, cfg=None, batch_size=recipe.sample.batch_size,  # sample.steps is the teacher's
        per_prompt=recipe.sample.per_prompt, seed=recipe.sample.seed, source=source, run_dir=source.run_dir,
    )


def _pipeline_folder_message(path: Path) -> str:
    readme = path / "README.md"
    if readme.is_file() and "dmdr" in readme.read_text(encoding="utf-8", errors="replace"):
        return (f"MODEL {path} is a `dmdr export` diffusers folder, which `dmdr sample` does not read (it samples "
                f"through dmdr's own sampler, which needs the checkpoint): give the run or checkpoint it was exported "
                f"from, or load the folder with diffusers as its README.md shows")
    return (f"MODEL {path} is a diffusers pipeline folder: sample it as a teacher with teacher:<family>:{path} "
            f"(<family> one of {', '.join(FAMILIES)})")


def _open_teacher(spec: str) -> ModelRef:
    rest = spec[len(TEACHER_PREFIX):]
    family, sep, pretrained = rest.partition(":")
    if sep and family in FAMILIES:
        return _bare_teacher(spec, family, pretrained)
    if sep and not Path(rest).exists():
        raise DmdrError(f"MODEL {spec!r}: unknown family {family!r}; write teacher:<family>:<path or hub id> with "
                        f"<family> one of {', '.join(FAMILIES)}, or teacher:RUN_FOLDER for the teacher of a run")
    return _recipe_teacher(spec, rest)


def _bare_teacher(spec: str, family: str, pretrained: str) -> ModelRef:
    from ..families.loading import resolve_pipeline
    from ..recipe.schema import ModelSection

    if not pretrained:
        raise DmdrError(f"MODEL {spec!r} names no weights: write teacher:{family}:PATH_OR_HUB_ID")
    probe = ModelSection(family=family, pretrained=pretrained)
    source = resolve_pipeline(probe, family)  # cheap: model_index.json only; one-line errors for bad paths
    model = probe.model_copy(update={"resolution": _native_resolution(source, family)})
    embeds = _embeds_guidance(source, family)
    return ModelRef(spec=spec, kind="teacher", model=model, uncond="empty_prompt",
                    label=f"teacher {pretrained}", identity=f"teacher:{family}:{source.pretrained}",
                    domain=domains.of_pretrained(pretrained), steps=TEACHER_STEPS,
                    cfg=FAMILIES[family].default_teacher_guidance(embeds, TEACHER_CFG), embeds_guidance=embeds)


def _embeds_guidance(source, family: str) -> bool:
    """Whether the teacher's denoiser config says it embeds guidance (FLUX.1-dev); read only for families that may."""
    cls = FAMILIES[family]
    key = cls.guidance_embedding_key
    return key is not None and bool(source.load_config(cls.denoiser_subfolder).get(key))


def _native_resolution(source, family: str) -> int:
    """The pipelines' default size: the denoiser's sample_size times the VAE's scale factor."""
    denoiser = FAMILIES[family].denoiser_subfolder
    sample_size = source.load_config(denoiser).get("sample_size") or FAMILIES[family].default_sample_size
    factor = 1
    if source.has("vae"):
        factor = 2 ** (len(source.load_config("vae").get("block_out_channels", [0])) - 1)
    return int(sample_size) * factor


def _recipe_teacher(spec: str, where: str) -> ModelRef:
    """teacher:RUN / teacher:CHECKPOINT / teacher:RECIPE.yaml: the teacher with that recipe's settings."""
    from ..families.loading import resolve_pipeline

    path = Path(where).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        from ..recipe import load_recipe

        recipe, name = load_recipe(path, []), path.stem
    elif path.exists():
        from ..export.source import open_checkpoint

        source = open_checkpoint(path)
        recipe = source.recipe
        name = source.run_dir.name if source.run_dir is not None else source.checkpoint.name
    else:
        raise DmdrError(f"MODEL {spec!r}: {where!r} does not exist; write teacher:<family>:<path or hub id>, or "
                        f"teacher:RUN_FOLDER / teacher:RECIPE.yaml for the teacher a recipe distils")
    cfg = recipe.sample.cfg if recipe.sample.cfg is not None else recipe.guidance.scale
    family = recipe.model.family
    embeds = FAMILIES[family].guidance_embedding_key is not None and _embeds_guidance(
        resolve_pipeline(recipe.model, family), family)
    return ModelRef(spec=spec, kind="teacher", model=recipe.model, uncond=recipe.guidance.uncond,
                    label=f"teacher of {name}", identity=f"teacher:{family}:{recipe.model.pretrained}",
                    domain=domains.of_recipe(recipe), steps=recipe.sample.steps or TEACHER_STEPS, cfg=cfg,
                    batch_size=recipe.sample.batch_size, per_prompt=recipe.sample.per_prompt, seed=recipe.sample.seed,
                    embeds_guidance=embeds)


# ---------------------------------------------------------------------------------------------------
# Loaded samplers.

@dataclass
class Sampler:
    """Prompts + (prompt index, image index) keys -> images in [0, 1], (B, 3, H, W) float32 on the CPU."""

    ref: ModelRef
    family: object
    device: torch.device
    steps: int
    cfg: float | None  # teacher CFG scale (None or 1: off)
    times: list[float] = field(default_factory=list)  # student times
    mode: str = ""  # student sampler: sde or ode

    @property
    def nfe(self) -> int:
        return nfe_of(self.ref.kind, self.steps, self.cfg, self.ref.embeds_guidance)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def __call__(self, prompts: list[str], keys: list[tuple[int, int]], seed: int, height: int,
                 width: int) -> torch.Tensor:
        family = self.family
        noise = torch.cat([family.noise(1, height, width, generator=keyed_generator(seed, p, i)) for p, i in keys])
        noise = noise.to(self.device)
        unique = list(dict.fromkeys(prompts))  # repeated prompts (per-prompt images) are encoded once
        encoded = family.encode_prompts(unique).to(self.device)
        cond = encoded[torch.tensor([unique.index(p) for p in prompts])]
        with self._autocast():
            latents = self._rollout(noise, cond, [keyed_generator(seed, p, i, "step") for p, i in keys])
            net_dtype = next(family.denoiser.parameters()).dtype
            images = family.decode(latents.to(net_dtype))
        return images.float().clamp(0, 1).cpu()

    def _rollout(self, noise, cond, step_generators):
        from ..sampling import sample, teacher_sample

        net = self.family.denoiser
        if self.ref.kind == "teacher":
            from ..families.base import Guidance

            guidance = None  # a guidance-embedding teacher is told 1.0 too: no CFG pass is made at 1.0 either way
            if self.cfg is not None:
                guidance = Guidance(self.cfg, self.family.unconditional().to(self.device))
            return teacher_sample(self.family, net, noise, cond, self.steps, guidance)

        def fresh(like: torch.Tensor) -> torch.Tensor:  # each image's own stream of step noise
            return torch.stack([torch.randn(like.shape[1:], generator=g) for g in step_generators]).to(like)

        return sample(self.family, net, noise, cond, self.times, self.mode, fresh)


def load_sampler(ref: ModelRef, *, device: torch.device, steps: int | None = None, cfg: float | None = None,
                 size: int | None = None) -> Sampler:
    """Load MODEL's weights onto `device` (frozen: the recipe's dtype on GPU, fp32 on CPU). `size`: the square
    image size to sample, when it is not the model's (SDXL conditions on it through its time ids)."""
    from ..families import default_dtype

    dtype = default_dtype(ref.model.dtype, device)
    if ref.kind == "teacher":
        from ..families import load_family

        model = ref.model if size is None else ref.model.model_copy(update={"resolution": size})
        family = load_family(model, device=device, dtype=dtype, uncond_mode=ref.uncond)
        family.denoiser.eval().requires_grad_(False)
        return Sampler(ref, family, device, steps or ref.steps, cfg if cfg is not None else ref.cfg)

    from ..export.student import build_student

    student = build_student(ref.source, merge=True, dtype=dtype, with_text_encoders=True, with_vae=True)
    family = student.family
    if size is not None and hasattr(family, "resolution"):
        family.resolution = size  # the UNet families' size conditioning (SDXL time ids) reads it
    _move(family, device, dtype)
    trained = student.times
    n = steps or ref.steps
    if n == len(trained):
        times = trained
    else:  # e.g. a 4-step student sampled in 2 steps: the family's default spacing for n steps
        times = family.student_times(n, None, shift=ref.source.recipe.student.flow_shift)
    return Sampler(ref, family, device, n, None, times=times, mode=student.sampler)


def _move(family, device: torch.device, dtype: torch.dtype) -> None:
    """Put a CPU-built student on its device; a merged LoRA is cast to the sampling dtype only here."""
    parts = family.components
    parts.denoiser.to(device=device, dtype=dtype)
    if parts.vae is not None:
        parts.vae.to(device=device, dtype=torch.float32 if dtype == torch.float16 else dtype)
    for encoder in parts.text_encoders:
        if encoder is not None:
            encoder.to(device=device, dtype=dtype)


def nfe_of(kind: str, steps: int, cfg: float | None, embeds_guidance: bool = False) -> int:
    """Network evaluations per image: CFG runs the teacher twice per step (cond and uncond); an embedded guidance
    value costs no extra pass."""
    guided = kind == "teacher" and cfg is not None and cfg != 1.0 and not embeds_guidance
    return steps * (2 if guided else 1)


def sampling_settings(ref: ModelRef, *, steps: int | None, cfg: float | None, seed: int, height: int,
                      width: int) -> dict:
    """Everything the images depend on, known before any weight loads (the resume check compares it; a
    student's times follow from its checkpoint and steps). The batch size is not among it."""
    steps = steps or ref.steps
    out = {"model": ref.identity, "kind": ref.kind, "steps": steps, "seed": seed, "height": height,
           "width": width, "domain": ref.domain}
    if ref.kind == "teacher":
        cfg = cfg if cfg is not None else ref.cfg
        out.update(cfg=cfg, uncond=ref.uncond)
    out["nfe"] = nfe_of(ref.kind, steps, cfg, ref.embeds_guidance)
    return out
