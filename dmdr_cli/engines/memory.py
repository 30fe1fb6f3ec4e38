"""Estimated peak memory per GPU of a training recipe, before anything loads (`--dry-run` prints it).

Model state is counted exactly, without loading or allocating a weight: from the safetensors headers of a
local pipeline folder (as the plan's parameter counts), from the known counts of the published SD1.5, SD2.1, SDXL,
SD3-Medium, SD3.5-Large and FLUX.1 (11.9B) architectures for their hub ids, or else by building the denoiser from its config.json on
torch's meta device. The activation scale (width x depth) is read from config.json. Per parameter:

    frozen teacher        model.dtype bytes (bf16: 2)
    trainable master      4 (fp32)                 every process
    gradient              4 (fp32)                 / N when sharded (after its bucket is reduced)
    AdamW state           8 (adamw) / 2 (adamw8bit) / N when sharded (ZeroRedundancyOptimizer)

`train.sharding: optimizer` does not shard the gradient while micro-batches accumulate (every rank keeps its
local sum until the last one), nor the weights; with more than one process two 25 MiB buckets are in flight.

Activations are not counted from the graph but scaled from measured peaks, per sample at 1024 px (latent
area, batch and architecture width x depth scale them):

    MMDiT (SD3.5-Large)  0.70 GiB with checkpointing, 18.7 without: H200 forward+backward of the bare
                         transformer (DESIGN.md: 33 / 105 GiB at batch 4, less bf16 weights and gradients)
    UNet (SDXL)          0.98 GiB with checkpointing: fitted to the H100 SDXL full fine-tune anchor below;
                         13.8 without: the peer reference's 100 GiB at batch 4 (DESIGN.md) less its state
    VAE decoder (ReFL)   11.9 GiB per image without checkpointing: H200 decode forward+backward (48 GiB at
                         batch 4); 10.6 with: fitted to the H100 SD3.5-Large ReFL anchor below; a TAESD-style
                         rl.decoder is taken as 15% of that (not measured)

Anchors (H100, max_memory_allocated, bench/step_overhead.py: random weights, no text encoders, no reward
model): SDXL full fine-tune, checkpointing, batch 4: 48.6 GiB; SD3.5-Large LoRA, checkpointing, ReFL,
batch 2: 40.0 GiB. Both are fit points, so the planner reproduces them to within 1% (ANCHOR_ERROR, tested);
away from them the activation term is an extrapolation: take +-25% on it. Not counted: the CUDA context and
allocator fragmentation (nvidia-smi shows 1-3 GiB more), reward models' activations, torch.compile caches.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

GiB = 2**30
BUCKET_BYTES = 25 * 2**20
ANCHOR_ERROR = 0.03  # stated error of the total against the two H100 anchors (measured residuals < 1%)
STATE_ERROR = 0.01  # stated error of the model-state terms (exact counts; tested on the tiny fixture)

# Published architecture hyperparameters (diffusers configs of SDXL-base, SD3-Medium, SD3.5-Large), used for
# hub ids that are not on local disk.
UNET_SDXL = dict(_class_name="UNet2DConditionModel", sample_size=128, in_channels=4, out_channels=4,
                 layers_per_block=2, block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True)
MMDIT_SD3M = dict(_class_name="SD3Transformer2DModel", sample_size=128, patch_size=2, in_channels=16,
                  out_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                  joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
                  pos_embed_max_size=192)
MMDIT_SD35L = dict(MMDIT_SD3M, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm")
FLUX_DEV = dict(_class_name="FluxTransformer2DModel", patch_size=1, in_channels=64, num_layers=19,
                num_single_layers=38, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
FLUX_SCHNELL = dict(FLUX_DEV, guidance_embeds=False)
UNET_SD15 = dict(_class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
UNET_SD21 = dict(UNET_SD15, sample_size=96, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                 use_linear_projection=True, upcast_attention=True)
KNOWN = {"stable-diffusion-xl": UNET_SDXL, "sdxl": UNET_SDXL, "stable-diffusion-3.5-large": MMDIT_SD35L,
         "stable-diffusion-3-medium": MMDIT_SD3M, "flux.1-dev": FLUX_DEV, "flux.1-schnell": FLUX_SCHNELL,
         "stable-diffusion-v1-5": UNET_SD15, "stable-diffusion-2-1": UNET_SD21}
DENOISER_CLASSES = {"sd": "UNet2DConditionModel", "sdxl": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
                    "flux": "FluxTransformer2DModel"}
# their counts (diffusers classes built from those configs on the meta device): parameters, buffers, and LoRA
# parameters per unit of rank on the family's default generator and guidance targets (linear in the rank)
KNOWN_COUNTS = {id(UNET_SDXL): (2_567_463_684, 0, 3_074_240, 3_074_240),
                id(MMDIT_SD3M): (2_028_328_000, 56_623_104, 586_752, 586_752),
                id(MMDIT_SD35L): (8_056_627_520, 89_653_248, 1_473_792, 1_473_792),
                id(UNET_SD15): (859_520_964, 0, 1_050_816, 1_050_816), id(UNET_SD21): (865_910_724, 0, 1_059_008, 1_059_008),
                id(FLUX_DEV): (11_901_408_320, 0, 3_385_344, 1_634_304),
                id(FLUX_SCHNELL): (11_891_178_560, 0, 3_385_344, 1_634_304)}
VAE_PARAMS = {"sd": 83_653_863, "sdxl": 83_653_863, "sd3": 83_819_683, "flux": 83_819_683}  # 4 / 16 latent channels
TEXT_ENCODER_PARAMS = {"sd": 123_060_480, "sdxl": 123_060_480 + 694_659_840,
                       "sd3": 123_060_480 + 694_659_840 + 4_762_310_656,
                       "flux": 123_060_480 + 4_762_310_656}  # CLIP-L (+ OpenCLIP-G, + T5-XXL)
TINY_DECODERS = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl", "sd3": "madebyollin/taesd3",
                 "flux": "madebyollin/taef1"}  # TAESD-style rl.decoder per family
GPU_SIZES = (24, 40, 80)  # GiB: the cards a plan is checked against when --gpu-memory is not given
REWARD_PARAMS = {"hps": 986_109_441, "pickscore": 986_109_441, "clip": 427_616_513, "aesthetic": 428_400_000}

# activations per sample at 1024 px, GiB (sources in the module docstring)
ACT = {("mmdit", True): 0.70, ("mmdit", False): 18.7, ("unet", True): 0.98, ("unet", False): 13.8}
DECODER = {True: 10.6, False: 11.9}
TINY_DECODER_FRACTION = 0.15
REFERENCE_WIDTH = {"mmdit": 2432 * 38, "unet": None}  # SD3.5-L hidden x layers; UNet: computed from UNET_SDXL


@dataclass
class Architecture:
    kind: str  # unet or mmdit
    params: int  # denoiser parameters
    vae: int  # VAE parameters (0: pixel space)
    buffers: int  # denoiser buffers (SD3's positional embedding)
    generator_lora: int
    guidance_lora: int
    width: float  # activation scale proxy: channels x depth
    source: str


@dataclass
class Plan:
    """Estimated bytes per GPU, by term."""
    terms: dict[str, float]
    processes: int
    sharding: str
    notes: list[str] = field(default_factory=list)
    encoding: float = 0.0  # bytes while prompts are encoded: frozen weights + text encoders, before training state

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def peak(self) -> float:
        """What must fit: training, or the encoding phase before it when that is larger (FLUX's T5-XXL)."""
        return max(self.total, self.encoding)


def _unet_width(config: dict) -> float:
    """Channels x layers per level, weighted by the level's area (1/4 per downsampling)."""
    channels = config.get("block_out_channels", [320, 640, 1280, 1280])
    layers = config.get("layers_per_block", 2)
    tl = config.get("transformer_layers_per_block", 1)
    tl = tl if isinstance(tl, list) else [tl] * len(channels)
    types = config.get("down_block_types", ["CrossAttnDownBlock2D"] * len(channels))
    total = 0.0
    for i, c in enumerate(channels):
        attn = tl[i] if "CrossAttn" in types[i] else 0
        total += c * (layers + attn) / 4 ** i
    return total


def _mmdit_width(config: dict) -> float:
    """Hidden width x blocks; a FLUX single block holds as many activations as a double one (the same text + image
    tokens through attention and an MLP), so single blocks count fully."""
    layers = config.get("num_layers", 24) + config.get("num_single_layers", 0)
    return config.get("num_attention_heads", 24) * config.get("attention_head_dim", 64) * layers


def architecture_from_config(config: dict, family: str, gen_targets, gui_targets, gen_rank: int, gui_rank: int,
                             source: str) -> Architecture:
    """Counts from a denoiser config, by building it on the meta device (no memory, no weights)."""
    import torch

    from .plan import lora_parameter_count

    import diffusers

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    cls = getattr(diffusers, DENOISER_CLASSES[family])
    with torch.device("meta"):
        model = cls.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    kind = _kind(family)
    return Architecture(kind=kind, params=params, buffers=buffers, vae=VAE_PARAMS[family],
                        generator_lora=lora_parameter_count(shapes, gen_targets, gen_rank),
                        guidance_lora=lora_parameter_count(shapes, gui_targets, gui_rank),
                        width=_mmdit_width(config) if kind == "mmdit" else _unet_width(config), source=source)


def _kind(family: str) -> str:
    return "unet" if DENOISER_CLASSES[family] == "UNet2DConditionModel" else "mmdit"


def denoiser_config(cfg) -> tuple[dict, str] | None:
    """The denoiser's config.json (local folder) or a published one for a known hub id; None if unknown."""
    from .plan import DENOISER_FOLDERS

    path = Path(cfg.model.pretrained) / DENOISER_FOLDERS[cfg.model.family] / "config.json"
    if path.is_file():
        return json.loads(path.read_text()), str(path)
    name = cfg.model.pretrained.lower()
    for key, config in sorted(KNOWN.items(), key=lambda kv: -len(kv[0])):
        if key in name and config["_class_name"] == DENOISER_CLASSES[cfg.model.family]:
            return config, f"the published {key} architecture"
    return None


def architecture(cfg) -> Architecture | None:
    """Counts without loading or allocating weights: safetensors headers of a local folder (exact, instant), the
    known counts of a published architecture, or else the config built on the meta device (imports diffusers)."""
    from .plan import _family_targets, _numel, denoiser_shapes, lora_parameter_count, safetensors_shapes

    found = denoiser_config(cfg)
    if found is None:
        return None
    config, where = found
    family = cfg.model.family
    kind = _kind(family)
    width = _mmdit_width(config) if kind == "mmdit" else _unet_width(config)
    gen_default, gui_default = _family_targets(family)
    gen_t, gui_t = cfg.student.lora_targets or gen_default, cfg.guidance.lora_targets or gui_default
    folder = Path(cfg.model.pretrained)
    vae = VAE_PARAMS[family]
    if folder.is_dir():  # a local pipeline: its own VAE (none in pixel space)
        files = sorted((folder / "vae").glob("diffusion_pytorch_model*.safetensors"))
        vae = sum(_numel(v) for f in files for v in safetensors_shapes(f).values()) if files else 0
        if not files and (folder / "vae" / "config.json").is_file():
            vae = _vae_params(json.loads((folder / "vae" / "config.json").read_text()))
    shapes = denoiser_shapes(cfg)
    if shapes is not None:
        return Architecture(kind=kind, params=sum(_numel(v) for v in shapes.values()), buffers=0, vae=vae,
                            generator_lora=lora_parameter_count(shapes, gen_t, cfg.student.lora_rank),
                            guidance_lora=lora_parameter_count(shapes, gui_t, cfg.guidance.lora_rank),
                            width=width, source=f"the safetensors headers of {folder}")
    if id(config) in KNOWN_COUNTS and gen_t == gen_default and gui_t == gui_default:
        params, buffers, gen_per_rank, gui_per_rank = KNOWN_COUNTS[id(config)]
        return Architecture(kind=kind, params=params, buffers=buffers, vae=vae,
                            generator_lora=gen_per_rank * cfg.student.lora_rank,
                            guidance_lora=gui_per_rank * cfg.guidance.lora_rank, width=width, source=where)
    arch = architecture_from_config(config, family, gen_t, gui_t, cfg.student.lora_rank, cfg.guidance.lora_rank,
                                    f"{where} (built on the meta device)")
    arch.vae = vae
    return arch


def _vae_params(config: dict) -> int:
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return sum(p.numel() for p in vae.parameters())


def _reference_width(kind: str) -> float:
    return REFERENCE_WIDTH["mmdit"] if kind == "mmdit" else _unet_width(UNET_SDXL)


def estimate(cfg, arch: Architecture, processes: int, sharding: str | None = None) -> Plan:
    """Peak bytes per GPU for `cfg` on `processes` processes with `sharding` (default: the recipe's)."""
    t, s = cfg.train, cfg.student
    sharding = sharding or t.sharding
    n = max(1, processes)
    shard = n if (sharding == "optimizer" and n > 1) else 1
    grad_shard = shard if t.gradient_accumulation == 1 else 1  # local sums persist while micro-batches accumulate
    frozen = 4 if cfg.model.dtype == "fp32" else 2
    opt_bytes = 2 if t.optimizer == "adamw8bit" else 8
    notes = []

    trainable = arch.params if s.finetune == "full" else arch.generator_lora
    trainable += arch.params if cfg.guidance.layout == "dmd2" else arch.guidance_lora
    terms = {
        "frozen weights (teacher, VAE)": (arch.params + arch.buffers + arch.vae) * frozen,
        "fp32 master weights": trainable * 4,
        "gradients": trainable * 4 / grad_shard,
        "optimizer state": trainable * opt_bytes / shard,
    }
    if not cfg.data.cache_embeddings:
        terms["frozen weights (teacher, VAE)"] += TEXT_ENCODER_PARAMS[cfg.model.family] * frozen
        notes.append("data.cache_embeddings is false: the text encoders stay on the GPU")
    rl = cfg.rl.algorithm
    if rl != "none":
        reward = sum(REWARD_PARAMS.get(r.name, 0) for r in cfg.rl.rewards)
        if reward:
            terms["reward models"] = reward * 2
        if rl in ("dpo", "grpo") and (rl == "grpo" or cfg.rl.dpo.reference == "rl_start"):
            gen = arch.params if s.finetune == "full" else arch.generator_lora
            terms["RL reference copy"] = gen * 4
    if n > 1:
        terms["reduction buckets"] = 2 * BUCKET_BYTES
    scale = (cfg.model.resolution / 1024) ** 2 * t.batch_size * arch.width / _reference_width(arch.kind)
    gc = t.gradient_checkpointing
    terms["activations (denoiser)"] = ACT[(arch.kind, gc)] * scale * GiB
    if rl == "refl":
        per_image = DECODER[gc] * (TINY_DECODER_FRACTION if cfg.rl.decoder else 1.0)
        terms["activations (ReFL decode)"] = per_image * (cfg.model.resolution / 1024) ** 2 * t.batch_size * GiB
    encoding = (arch.params + arch.buffers + arch.vae + TEXT_ENCODER_PARAMS[cfg.model.family]) * frozen
    if encoding > sum(terms.values()):
        notes.append(f"while prompts are encoded the text encoders sit next to the teacher: {encoding / GiB:.1f} GiB, "
                     f"more than training needs (they are released before it)")
    return Plan(terms=terms, processes=n, sharding=sharding if shard > 1 else "none", notes=notes, encoding=encoding)


def knobs(cfg, arch: Architecture, processes: int, budget_gib: float) -> list[tuple[str, float]]:
    """Single changes to the recipe (or launch) that would bring the estimate under `budget_gib`, best first."""
    from ..recipe import validate

    data = cfg.model_dump()
    candidates: list[tuple[str, dict, int]] = []

    def change(label, section, key, value, procs=processes):
        new = json.loads(json.dumps(data))
        new[section][key] = value
        candidates.append((label, new, procs))

    t = cfg.train
    if not t.gradient_checkpointing:
        change("train.gradient_checkpointing=true", "train", "gradient_checkpointing", True)
    if t.sharding == "none" and processes > 1:
        change("train.sharding=optimizer", "train", "sharding", "optimizer")
    if t.optimizer == "adamw":
        change("train.optimizer=adamw8bit", "train", "optimizer", "adamw8bit")
    if cfg.student.finetune == "full":
        change("student.finetune=lora", "student", "finetune", "lora")
    if cfg.rl.algorithm == "refl" and not cfg.rl.decoder:
        tiny = TINY_DECODERS[cfg.model.family]
        change(f"rl.decoder={tiny}", "rl", "decoder", tiny)
    for b in range(t.batch_size - 1, 0, -1):
        change(f"train.batch_size={b} (train.gradient_accumulation={math.ceil(t.batch_size / b) * t.gradient_accumulation} "
               f"keeps the global batch)", "train", "batch_size", b)
    fits = []
    for label, new, procs in candidates:
        plan = estimate(validate(new), arch, procs)
        if plan.peak / GiB <= budget_gib:
            fits.append((label, plan.peak / GiB))
            if label.startswith("train.batch_size"):
                break  # the largest batch that fits is enough
    if t.sharding == "none" or processes == 1:  # more processes, sharded
        for procs in (2, 4, 8, 16, 32, 64):
            if procs <= processes:
                continue
            new = json.loads(json.dumps(data))
            new["train"]["sharding"] = "optimizer"
            plan = estimate(validate(new), arch, procs)
            if plan.peak / GiB <= budget_gib:
                fits.append((f"{procs} processes with train.sharding=optimizer", plan.peak / GiB))
                break
    elif processes > 1:
        for procs in (processes * 2, processes * 4, processes * 8):
            plan = estimate(cfg, arch, procs)
            if plan.peak / GiB <= budget_gib:
                fits.append((f"{procs} processes (sharded)", plan.peak / GiB))
                break
    return fits


def memory_report(cfg, processes: int, gpu_memory: float | None):
    """(architecture line, {sharding: Plan}, verdict lines, warnings); None when the architecture is unknown."""
    try:
        arch = architecture(cfg)
    except Exception as err:  # a config diffusers cannot build: the plan says so, the run goes on
        return f"memory plan unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    if arch is None:
        return None
    head = f"{arch.kind}, {arch.params / 1e9:.3g}B denoiser parameters from {arch.source}"
    plans = {"none": estimate(cfg, arch, processes, "none")}
    if processes > 1:
        plans["optimizer"] = estimate(cfg, arch, processes, "optimizer")
    mine = estimate(cfg, arch, processes)
    lines = [f"estimate accuracy: +-{ANCHOR_ERROR:.0%} at the H100 anchors, +-25% on activations away from them; "
             f"CUDA context and fragmentation not included"] + mine.notes
    warnings: list[str] = []
    total = mine.peak / GiB
    for size in [gpu_memory] if gpu_memory is not None else GPU_SIZES:  # without --gpu-memory: the common cards
        if total <= size:
            lines.append(f"fits {size:g} GiB: yes ({total:.1f} GiB estimated, {size - total:.1f} to spare)")
            continue
        fixes = knobs(cfg, arch, processes, size)
        advice = "; ".join(f"{label} -> {gib:.1f} GiB" for label, gib in fixes) or "no single knob is enough"
        lines.append(f"fits {size:g} GiB: no ({total:.1f} GiB estimated). Would fit: {advice}")
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

