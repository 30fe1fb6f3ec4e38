"""The one interface between a model family and everything downstream.

A `Family` owns what differs between SD, SDXL and SD3: how weights load, how prompts become
conditioning, how the denoiser is called, which noise process it was trained with, how latents become
images and where LoRA goes. Everything after it (DMD, DynaDG, DynaRS, ReFL, DPO, GRPO, samplers,
export) sees only x0-space tensors, time t in [0, 1], `Cond` batches and `predict_x0`.

Adding a family = one subclass in its own module, registered in `families/__init__.py`, a tiny fixture
in tests/ and a recipe.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from ..errors import ModelLoadError
from .schedules import NoiseSchedule


CLIP_TOKENS = 77  # the CLIP tokenizers' model_max_length: every CLIP text encoder's sequence length


class Cond(dict):
    """Conditioning for a batch: a dict of tensors whose first dim is the batch (family-defined keys).

    Downstream code only slices, concatenates, repeats and moves it, never looks inside.
    """

    @property
    def batch_size(self) -> int:
        return next(iter(self.values())).shape[0]

    def to(self, *args, **kwargs) -> "Cond":
        return Cond({k: v.to(*args, **kwargs) for k, v in self.items()})

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return Cond({k: v[key] for k, v in self.items()})  # index / slice / mask over the batch

    def repeat_interleave(self, n: int) -> "Cond":
        return Cond({k: v.repeat_interleave(n, dim=0) for k, v in self.items()})

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        return Cond({k: torch.cat([c[k] for c in conds]) for k in conds[0]})

    def expand_to(self, batch: int) -> "Cond":
        """A batch-1 conditioning (the empty prompt) repeated to `batch` rows."""
        if self.batch_size == batch:
            return self
        return Cond({k: v.expand(batch, *v.shape[1:]) for k, v in self.items()})


@dataclass
class Guidance:
    """Guidance at `scale`: classifier-free guidance, pred = uncond + scale (cond - uncond) in x0-space; a family whose
    denoiser embeds a guidance value (FLUX.1-dev) gives it `scale` instead, in one pass."""

    scale: float
    uncond: Cond  # batch 1 or the full batch


@dataclass
class Components:
    """What `Family.load` returns; modules not needed for a task may be None (text encoders after caching)."""

    denoiser: torch.nn.Module
    vae: torch.nn.Module | None
    text_encoders: list[torch.nn.Module] = field(default_factory=list)
    tokenizers: list = field(default_factory=list)
    scheduler_config: dict = field(default_factory=dict)
    source: str = ""  # where the weights came from, for reports and model cards


Denoiser = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def token_map(tokens: torch.Tensor) -> torch.Tensor:
    """Image tokens [B, h*w, D] (row-major patches of a square latent) as a [B, D, h, w] map."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} image tokens do not form a square grid")
    return tokens.unflatten(1, (side, side)).permute(0, 3, 1, 2)


def explicit_times(override: list[float] | None, n_steps: int) -> list[float] | None:
    """A recipe's `student.timesteps` as floats, checked against the step count (None: family default)."""
    if override is None:
        return None
    if len(override) != n_steps:
        raise ValueError(f"{len(override)} student times given for a {n_steps}-step student")
    return [float(t) for t in override]


def tokenize(tokenizer, prompts: list[str], max_length: int):
    """input_ids (and attention_mask) padded and truncated to `max_length`, as the diffusers pipelines do."""
    return tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt")


class Family(ABC):
    """Base class: subclasses set `name`, `schedule` and implement the network-specific methods."""

    name: ClassVar[str]
    denoiser_subfolder: ClassVar[str]  # "unet" or "transformer": what a student replaces in a pipeline
    pipeline_class: ClassVar[str]  # diffusers pipeline class name, for export and teacher sampling
    default_sampler: ClassVar[str]  # what `student.sampler: auto` means: "sde" (eps/v UNets) or "ode" (flow)
    schedule: NoiseSchedule
    latent_channels: int
    vae_scale_factor: int
    pixel_space: bool = False  # the denoiser works on images directly (no VAE; exports ship export/pixel_pipeline.py)
    embeds_guidance: bool = False  # the denoiser takes the guidance value as an input (FLUX.1-dev), not CFG
    guidance_embedding_key: ClassVar[str | None] = None  # the denoiser config flag that says it does
    default_sample_size: ClassVar[int] = 64  # latent side the pipeline samples at when the config names none

    @classmethod
    def default_teacher_guidance(cls, embeds_guidance: bool, cfg: float) -> float:
        """The guidance a bare teacher samples at: `cfg` (dmdr's default CFG) unless the family says otherwise."""
        return cfg

    def __init__(self, components: Components, *, uncond_mode: str = "empty_prompt"):
        self.components = components
        self.uncond_mode = uncond_mode
        self._empty_prompt: Cond | None = None  # the encoded "", kept when the text encoders are released

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, model_cfg, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             with_text_encoders: bool = True, with_vae: bool = True) -> "Family":
        """Load from a diffusers folder / hub id or a single-file checkpoint (`model_cfg`: recipe.model)."""
        ...

    @classmethod
    def token_limits(cls, model_cfg) -> list[tuple[str, int | None]]:
        """(tokenizer subfolder, tokens its text encoder sees; None: the tokenizer's own model_max_length) for each
        text encoder: longer prompts are truncated there, which `--dry-run` counts."""
        return [(tokenizer, None) for tokenizer, _ in getattr(cls, "text_components", ())]

    # ---- conditioning ---------------------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Cond:
        ...

    def unconditional(self) -> Cond:
        """Batch-1 unconditional input for CFG: the encoded "" (empty_prompt) or all-zero embeddings (zeros)."""
        if self._empty_prompt is None:
            self._empty_prompt = self.encode_prompts([""])
        cond = self._empty_prompt
        if self.uncond_mode == "zeros":
            cond = self.zero_cond(cond)
        return cond

    def release_text_encoders(self) -> None:
        """Free the text encoders once prompt embeddings are cached; `unconditional()` keeps working."""
        if self.components.text_encoders:
            self.unconditional()
        self.components.text_encoders = []
        self.components.tokenizers = []
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _text_encoders(self) -> tuple[list, list]:
        """(tokenizers, encoders), or a clear error when they were never loaded or already released."""
        if not self.components.text_encoders:
            raise RuntimeError(f"{self.name}: the text encoders are not loaded (with_text_encoders=False or "
                               f"release_text_encoders() was called); encode prompts before releasing them")
        return self.components.tokenizers, self.components.text_encoders

    def use_guidance_values(self, student: float | None, fake: float | None) -> None:
        """Recipe student.embedded_guidance / guidance.fake_embedded_guidance: the values a denoiser that embeds
        guidance is given as the student and as the fake score. A family without such an input refuses them."""
        if student is not None or fake is not None:
            raise ModelLoadError(f"{self.components.source} has no guidance embedding ({self.name}): its student and "
                                 f"fake score run without guidance; remove student.embedded_guidance and "
                                 f"guidance.fake_embedded_guidance from the recipe")

    def fake_score_cond(self, cond: Cond) -> Cond:
        """The fake score's conditioning: the student's own, except in the guidance value a denoiser embeds."""
        return cond

    def zero_cond(self, cond: Cond) -> Cond:
        """DMD2's SDXL unconditional: zero text and pooled embeddings (time ids, if any, are kept)."""
        return Cond({k: torch.zeros_like(v) if k in self.zeroable_keys else v for k, v in cond.items()})

    zeroable_keys: ClassVar[tuple[str, ...]] = ("text", "pooled")

    @property
    def clip_tokens(self) -> int:
        """The CLIP text encoders' sequence length: their tokenizer's model_max_length (77 for every released
        model; `text_tokens` when set, as the memory planner sets it from a folder without loading tokenizers)."""
        tokenizer = next((t for t in self.components.tokenizers if t is not None), None)
        return getattr(self, "text_tokens", None) or (tokenizer.model_max_length if tokenizer else CLIP_TOKENS)

    @abstractmethod
    def placeholder_cond(self, batch: int, device="cpu", dtype: torch.dtype = torch.float32) -> Cond:
        """Conditioning of the shapes `encode_prompts` gives, without text encoders (zeros): the memory planner
        traces a training step with it."""
        ...

    # ---- denoiser -------------------------------------------------------------------------------
    @abstractmethod
    def forward(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Raw network output in the family's own parameterisation."""
        ...

    def predict_x0(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Cond,
                   guidance: Guidance | None = None) -> torch.Tensor:
        """x0 estimate of `net` at (x_t, t), with CFG in x0-space when `guidance` is given.

        CFG is linear, so mixing x0 estimates equals mixing the raw predictions (same t, same x_t).
        The conditional and unconditional halves go through the network as one batch.
        """
        if guidance is None or guidance.scale == 1.0:
            out = self.forward(net, x_t, t, cond)
            return self.schedule.to_x0(out.float(), x_t.float(), t)
        b = x_t.shape[0]
        both = Cond.cat([cond, guidance.uncond.expand_to(b).to(x_t.device)])
        out = self.forward(net, torch.cat([x_t, x_t]), torch.cat([t, t]), both).float()
        cond_out, uncond_out = out[:b], out[b:]
        mixed = uncond_out + guidance.scale * (cond_out - uncond_out)
        return self.schedule.to_x0(mixed, x_t.float(), t)

    # ---- bottleneck features (the GAN term's discriminator reads them) ---------------------------
    @abstractmethod
    def bottleneck(self, net: torch.nn.Module) -> torch.nn.Module:
        """The submodule of the denoiser `net` whose output is its bottleneck (DMD2's classifier input)."""
        ...

    def bottleneck_map(self, output) -> torch.Tensor:
        """That submodule's output as a [B, C, h, w] feature map (a UNet block's output already is one)."""
        return output

    # ---- students -------------------------------------------------------------------------------
    @abstractmethod
    def student_times(self, n_steps: int, override: list[float] | None = None, *,
                      shift: float | None = None) -> list[float]:
        """Times t in [0, 1] of an n-step student, first = the one fed pure noise.

        `shift` (recipe student.flow_shift) matters to flow families only; None = the scheduler's.
        """
        ...

    def times_for(self, student) -> list[float]:
        """Student times from a recipe's `student` section (steps, timesteps, flow_shift)."""
        return self.student_times(student.steps, student.timesteps, shift=getattr(student, "flow_shift", None))

    def renoise_times(self, t: torch.Tensor) -> torch.Tensor:
        """The renoise sampler's draws on [t_min, t_max] as this family's times: as drawn (DMD2, DMDR); a family
        trained with a resolution-dependent shift (FLUX) maps them through it."""
        return t

    def set_teacher_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        """Set the teacher's diffusers scheduler to `steps` as the family's pipeline does."""
        scheduler.set_timesteps(steps, device=latents.device)

    def pipeline_arguments(self) -> dict:
        """Arguments of the diffusers pipeline call that condition as this adapter does, without CFG."""
        return {"guidance_scale": 1.0}

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) of one sample the denoiser sees at a square `resolution` in pixels."""
        side = resolution // self.vae_scale_factor
        return (self.latent_channels, side, side)

    def noise(self, batch: int, height: int, width: int, generator: torch.Generator | None = None,
              device="cpu") -> torch.Tensor:
        shape = (batch, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return torch.randn(shape, generator=generator, device="cpu").to(device)

    # ---- images ---------------------------------------------------------------------------------
    @abstractmethod
    def decode(self, latents: torch.Tensor, vae: torch.nn.Module | None = None) -> torch.Tensor:
        """Latents -> images in [0, 1], (B, 3, H, W), differentiable (ReFL backpropagates through it)."""
        ...

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> latents (mean of the posterior); the inverse of `decode`."""
        ...

    def _vae(self, vae: torch.nn.Module | None = None) -> torch.nn.Module:
        """`vae` if given (e.g. a TAESD decoder for ReFL), else the loaded one."""
        vae = vae if vae is not None else self.components.vae
        if vae is None:
            raise RuntimeError(f"{self.name}: the VAE is not loaded (with_vae=False): load it or pass vae=")
        return vae

    # ---- LoRA -----------------------------------------------------------------------------------
    generator_lora_targets: ClassVar[list[str]]
    guidance_lora_targets: ClassVar[list[str]]

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.components.denoiser
