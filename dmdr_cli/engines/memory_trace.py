"""Peak memory of one training step, traced on fake tensors: what the memory planner's figures come from.

The recipe's networks are built by the real loading code from their configs (`families.loading.
architecture_only`; published configs for the known hub ids, written as a pipeline folder without weights),
with the engine's precision rules for a CUDA device, and one generator update runs through the engine's
own step functions (generator sample, DMD loss, the RL branch, the fake-score loss, gradient clipping and the
optimizer steps), all under torch's FakeTensorMode: shapes and dtypes only, nothing is allocated. Every
storage the step creates is recorded with its size, rounded up to 512 bytes as CUDA's caching allocator
rounds what `max_memory_allocated` counts, and freed when the tensor dies; the peak of the live total, after a
first optimizer step has created the optimizer state, is the step's peak.

Differences from a GPU run, by construction: the tensors live on the (fake) CPU, so the attention kernel is
the CPU's flash attention (the same saved tensors as CUDA's flash and memory-efficient kernels: output and
log-sum-exp) and autocast is the CPU's, with CUDA's float32 list emulated for the normalisations and softmax
(the ops whose outputs it changes most); data-dependent Python scalars (the student step drawn,
finite checks) read as 0 / True; rewards are a parameter-free placeholder (their weights are counted by the
planner, their activations are not); the text encoders are not built (cached embeddings). What the planner
adds to the trace, and how it compares with a GPU's measured peak: engines/memory.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only

# CUDA's caching allocator makes every block a multiple of 512 bytes (c10/cuda/CUDACachingAllocator.cpp), and
# max_memory_allocated counts the blocks; on the CPU the tensors' own bytes are counted
ROUND = {"cuda": 512, "cpu": 1}

# Published configs (the diffusers folders of SD1.5, SD2.1, SDXL-base, SD3-Medium, SD3.5-Large, FLUX.1-dev and
# -schnell) for hub ids not on local disk: the architecture and what the loader reads, nothing else.
UNET_SDXL = dict(_class_name="UNet2DConditionModel", sample_size=128, in_channels=4, out_channels=4,
                 layers_per_block=2, block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True)
UNET_SD15 = dict(_class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
UNET_SD21 = dict(UNET_SD15, sample_size=96, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                 use_linear_projection=True, upcast_attention=True)
MMDIT_SD3M = dict(_class_name="SD3Transformer2DModel", sample_size=128, patch_size=2, in_channels=16,
                  out_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                  joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
                  pos_embed_max_size=192)
MMDIT_SD35L = dict(MMDIT_SD3M, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm")
FLUX_DEV = dict(_class_name="FluxTransformer2DModel", patch_size=1, in_channels=64, num_layers=19,
                num_single_layers=38, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
FLUX_SCHNELL = dict(FLUX_DEV, guidance_embeds=False)
VAE_SDXL = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512], sample_size=1024, scaling_factor=0.13025, force_upcast=True)
VAE_SD15 = dict(VAE_SDXL, sample_size=512, scaling_factor=0.18215)
VAE_SD21 = dict(VAE_SD15, sample_size=768)
VAE_SD3 = dict(VAE_SDXL, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False, force_upcast=True)
VAE_FLUX = dict(VAE_SD3, scaling_factor=0.3611, shift_factor=0.1159)
SCHEDULER_SDXL = dict(_class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085,
                      beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                      timestep_spacing="leading")
SCHEDULER_SD15 = dict(_class_name="PNDMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
SCHEDULER_SD21 = dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                      prediction_type="v_prediction")
SCHEDULER_SD3 = dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0)
SCHEDULER_FLUX_DEV = dict(SCHEDULER_SD3, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                          base_shift=0.5, max_shift=1.15)
SCHEDULER_FLUX_SCHNELL = dict(SCHEDULER_FLUX_DEV, shift=1.0, use_dynamic_shifting=False)
# hub-id name fragment -> (family, pipeline class, denoiser config, VAE config, scheduler config); the first match
# counts, so a fragment comes before any shorter one it contains
KNOWN = {"stable-diffusion-3.5-large": ("sd3", "StableDiffusion3Pipeline", MMDIT_SD35L, VAE_SD3, SCHEDULER_SD3),
         "stable-diffusion-3-medium": ("sd3", "StableDiffusion3Pipeline", MMDIT_SD3M, VAE_SD3, SCHEDULER_SD3),
         "stable-diffusion-xl": ("sdxl", "StableDiffusionXLPipeline", UNET_SDXL, VAE_SDXL, SCHEDULER_SDXL),
         "sdxl": ("sdxl", "StableDiffusionXLPipeline", UNET_SDXL, VAE_SDXL, SCHEDULER_SDXL),
         "stable-diffusion-v1-5": ("sd", "StableDiffusionPipeline", UNET_SD15, VAE_SD15, SCHEDULER_SD15),
         "stable-diffusion-2-1": ("sd", "StableDiffusionPipeline", UNET_SD21, VAE_SD21, SCHEDULER_SD21),
         "flux.1-dev": ("flux", "FluxPipeline", FLUX_DEV, VAE_FLUX, SCHEDULER_FLUX_DEV),
         "flux.1-schnell": ("flux", "FluxPipeline", FLUX_SCHNELL, VAE_FLUX, SCHEDULER_FLUX_SCHNELL)}


class AllocationTracker(TorchDispatchMode):
    """Live and peak bytes of every tensor storage created under it (fake or real), each rounded up to a
    multiple of `round_to` bytes."""

    def __init__(self, round_to: int = 1):
        super().__init__()
        self.round_to = round_to
        self.live = self.peak = 0
        self._sized: dict[int, int] = {}  # id(storage) -> bytes, while it lives
        # copies of watched tensors in another dtype (autocast's casts of the trainable weights): live, at the peak
        self._watched: set[int] = set()
        self._casts: set[int] = set()
        self.casts_live = self.casts_at_peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and _is_fake(args[0]):
            return _placeholder_scalar(args[0])  # a fake tensor has no value: control flow takes the plain path
        out = func(*args, **(kwargs or {}))
        cast = (func is torch.ops.aten._to_copy.default and id(args[0].untyped_storage()) in self._watched
                and out.dtype != args[0].dtype)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage(), cast)
        return out

    def watch_casts(self, tensors) -> None:
        """Count the copies of `tensors` in another dtype made from now on (`casts_at_peak`)."""
        self._watched = {id(t.untyped_storage()) for t in tensors}

    def _track(self, storage, cast: bool = False) -> None:
        key = id(storage)
        if key in self._sized:
            return
        size = self.rounded(storage.nbytes())
        self._sized[key] = size
        self.live += size
        if cast:
            self._casts.add(key)
            self.casts_live += size
        if self.live > self.peak:
            self.peak, self.casts_at_peak = self.live, self.casts_live
        weakref.finalize(storage, self._free, key)

    def rounded(self, nbytes: int) -> int:
        return -(-nbytes // self.round_to) * self.round_to

    def _free(self, key: int) -> None:
        size = self._sized.pop(key, 0)
        self.live -= size
        if key in self._casts:
            self._casts.discard(key)
            self.casts_live -= size

    def reset_peak(self) -> None:
        self.peak, self.casts_at_peak = self.live, self.casts_live


@contextlib.contextmanager
def _swappable():
    """Converting a module's fake parameters (peft converts each new adapter to its base layer's device and dtype)
    swaps them, which torch refuses for a tensor with weak references; FakeTensorMode's memos of conversions
    (weak-valued and weak-keyed dicts) hold the only ones. Within: a tensor about to be swapped is dropped from
    those memos first (they only save converting it again)."""
    swap = torch.utils.swap_tensors
    memos: list[dict] = []  # the weak-valued and weak-keyed dicts' internal storage, each found once

    def holds(d, ref) -> object:
        """The key under which dict `d` holds `ref` (as a weak-valued or weak-keyed dict's storage does)."""
        key = getattr(ref, "key", None)
        if key is not None and d.get(key) is ref:
            return key
        return ref if ref in d else None

    def forget(tensor) -> None:
        refs = weakref.getweakrefs(tensor)
        while refs:  # each reference dies once the memo drops it and this loop holds it no more
            ref = refs.pop()
            owner = next((d for d in memos if holds(d, ref) is not None), None)
            if owner is None:  # a memo not seen yet: the dict that holds this reference
                owner = next((d for d in gc.get_referrers(ref) if isinstance(d, dict) and holds(d, ref) is not None),
                             None)
                if owner is not None:
                    memos.append(owner)
            if owner is not None:
                del owner[holds(owner, ref)]
            del ref

    def swap_after_forgetting(t1, t2):
        forget(t1)
        forget(t2)
        return swap(t1, t2)

    torch.utils.swap_tensors = swap_after_forgetting
    try:
        yield
    finally:
        torch.utils.swap_tensors = swap


@contextlib.contextmanager
def _cuda_float32_ops():
    """CUDA's autocast runs normalisations and softmax in float32 (torch's "CUDA ops that can autocast to
    float32"); the CPU's keeps them in bf16. Within, under autocast, their inputs are cast to float32 first, as
    CUDA's autocast does, so their outputs and what the backward saves of them have CUDA's sizes (the functions
    themselves are wrapped: a checkpointed block's recomputation must call the same ones)."""
    import torch.nn.functional as F

    names = ("group_norm", "layer_norm", "softmax", "log_softmax")
    originals = {name: getattr(F, name) for name in names}

    def float32(original):
        def call(*args, **kwargs):
            if torch.is_autocast_enabled("cpu"):
                args, kwargs = tree_map_only(torch.Tensor, lambda x: x.float() if x.is_floating_point() else x,
                                             (args, kwargs))
            return original(*args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(F, name, float32(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(F, name, original)


@contextlib.contextmanager
def _quiet():
    """No warnings from building and stepping fake models (diffusers' dtype notes, FakeTensor's data_ptr)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _placeholder_scalar(t: torch.Tensor):
    if t.dtype == torch.bool:
        return True
    return 0 if not t.dtype.is_floating_point else 0.5


@dataclass
class Trace:
    """Bytes of one traced generator update on one process, unsharded."""
    peak: float  # the step's peak of live tensors
    steady: float  # live after the first optimizer step: weights, trainable masters, optimizer state
    trainable: int  # trainable parameters (generator + fake score)
    trainable_bytes: float  # their fp32 masters
    optimizer_state: float  # AdamW state (exp_avg, exp_avg_sq, step)
    gradients: float  # every trainable parameter's gradient
    frozen_weights: float  # teacher, VAE, reward decoder, RL reference copy: every other module tensor
    teacher_weights: float  # the teacher denoiser and VAE as loaded (beside the text encoders while prompts encode)
    denoiser_params: int  # the teacher denoiser's parameters
    source: str  # where its architecture came from
    # what train.sharding full changes (runtime/sharding.py): the denoiser as loaded (kept on the CPU until sharded),
    # the frozen parameters FSDP shards (the denoiser networks'; buffers, the VAE and a reward decoder stay whole),
    # the largest unit gathered twice (running, and the next prefetched) with its gradients unsharded (the gathered
    # dtype, and fp32 for the reduce-scatter), and autocast's low-precision copies of the trainable weights alive at
    # the peak, which a unit gathered in the autocast dtype replaces
    denoiser_weights: float = 0.0
    sharded_frozen: float = 0.0
    gathered_unit: float = 0.0
    weight_casts: float = 0.0

    @property
    def activations(self) -> float:
        """Everything else alive at the peak: activations, temporaries, the conditioning."""
        return self.peak - self.frozen_weights - self.trainable_bytes - self.optimizer_state - self.gradients


def pipeline_for_trace(cfg, folder: Path):
    """recipe.model pointing at a pipeline folder the loader can build from configs: the recipe's own local folder,
    or one written into `folder` from the published configs of a known hub id; None if neither."""
    model = cfg.model.model_copy(update={"single_file": None})  # its architecture is the pipeline's
    if Path(cfg.model.pretrained).is_dir():
        return model
    name = cfg.model.pretrained.lower()
    for key, (family, pipeline, denoiser, vae, scheduler) in KNOWN.items():
        if key in name and family == cfg.model.family:
            from ..families import family_class

            sub = family_class(family).denoiser_subfolder
            index = {"_class_name": pipeline, sub: ["diffusers", denoiser["_class_name"]],
                     "vae": ["diffusers", vae["_class_name"]], "scheduler": ["diffusers", scheduler["_class_name"]]}
            for path, data in ((folder / "model_index.json", index), (folder / sub / "config.json", denoiser),
                               (folder / "vae" / "config.json", vae),
                               (folder / "scheduler" / "scheduler_config.json", scheduler)):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data))
            return model.model_copy(update={"pretrained": str(folder), "revision": None, "variant": None})
    return None


def _tokenizer_length(folder: Path) -> int | None:
    """The first tokenizer's model_max_length from its config in a pipeline folder (None: not there)."""
    try:
        return int(json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _PlaceholderScore:
    """Stands in for a reward model in the trace: differentiable, parameter-free (its weights are counted apart)."""
    name, default_margin, prompt_prefix = "placeholder", None, None

    def __call__(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


def _tiny_decoder(cfg, family):
    """rl.decoder as an AutoencoderTiny built from its config: a local folder's, else TAESD's with the family's
    latent channels (the TAESD decoders differ in nothing else)."""
    from diffusers import AutoencoderTiny

    from ..families.loading import _from_config

    folder = Path(cfg.rl.decoder)
    config = (dict(AutoencoderTiny.load_config(folder)) if (folder / "config.json").is_file()
              else {"latent_channels": family.latent_channels})
    return _from_config(AutoencoderTiny, config, None).requires_grad_(False).eval()


def _module_bytes(modules, tracker: AllocationTracker) -> int:
    """Bytes of the parameters and buffers of `modules` (None skipped), each storage once, rounded as tracked."""
    storages = {id(x.untyped_storage()): x.untyped_storage() for m in modules if m is not None
                for x in list(m.parameters()) + list(m.buffers())}
    return sum(tracker.rounded(storage.nbytes()) for storage in storages.values())


def trace_step(cfg, policy: str = "cuda", fake: bool = True) -> Trace | None:
    """Trace one generator update of `cfg` on fake tensors with `policy`'s precision rules (frozen dtype, autocast,
    fused AdamW); None when the architecture is unknown (a hub id without published configs here). `fake` False
    runs the same step on real CPU tensors (random weights): what tests compare the trace with."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..dmd.networks import build_networks
    from ..dmd.randomness import StepRandomness
    from ..dmd.step import StepContext, dmd_generator_loss, fake_score_step_loss, generator_sample
    from ..families import load_family
    from ..families.loading import architecture_only
    from ..rl.branch import BRANCHES
    from ..runtime.distributed import clip_grad_norm
    from ..runtime.precision import autocast_dtype, frozen_dtype, make_optimizer
    from ..runtime.sharding import gathered_unit

    device, rules = torch.device("cpu"), torch.device(policy)
    # bitsandbytes' 8-bit state needs CUDA: trace AdamW, the planner rescales its state
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"optimizer": "adamw"})})
    t, B = cfg.train, cfg.train.batch_size
    tracker = AllocationTracker(ROUND[policy])
    with tempfile.TemporaryDirectory() as tmp:
        model = pipeline_for_trace(cfg, Path(tmp))
        if model is None:
            return None
        source = (f"the configs in {cfg.model.pretrained}" if model.pretrained == cfg.model.pretrained
                  else f"the published configs of {cfg.model.pretrained}")
        faking = (FakeTensorMode(allow_non_fake_inputs=True), _swappable()) if fake else ()
        emulated = _cuda_float32_ops() if policy == "cuda" else contextlib.nullcontext()
        with contextlib.ExitStack() as stack:
            for context in (*faking, architecture_only(), _quiet(), emulated, tracker):
                stack.enter_context(context)
            family = load_family(model, device=device, dtype=frozen_dtype(cfg.model.dtype, rules),
                                 with_text_encoders=False, uncond_mode=cfg.guidance.uncond)
            frozen = frozen_dtype(cfg.model.dtype, rules)
            family.text_tokens = _tokenizer_length(Path(model.pretrained))
            cond, uncond = family.placeholder_cond(B, dtype=frozen), family.placeholder_cond(1, dtype=frozen)
            teacher = family.denoiser
            denoiser_params = sum(p.numel() for p in teacher.parameters())
            teacher_weights = _module_bytes([teacher, family.components.vae], tracker)
            denoiser_weights = _module_bytes([teacher], tracker)
            if t.gradient_checkpointing:
                teacher.enable_gradient_checkpointing()
            nets = build_networks(teacher, cfg, type(family), device=rules)
            if t.gradient_checkpointing and nets.generator is not teacher:
                nets.generator.enable_gradient_checkpointing()
            rl = None
            if cfg.rl.algorithm != "none":  # the RL branch's own loss, on placeholder rewards
                plain = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"decoder": None})})
                rl = BRANCHES[cfg.rl.algorithm](plain, [(_PlaceholderScore(), spec) for spec in cfg.rl.rewards], device)
                rl.cfg = cfg
                if cfg.rl.decoder:
                    rl.decoder = _tiny_decoder(cfg, family)
                rl.attach(family, nets)
                reference = getattr(rl, "reference", None)
                if reference is not None:  # a frozen copy of the generator from the RL start on: state, not step
                    reference.snapshot()
            opts = [(params, make_optimizer(params, 1e-6, t, rules)) for params in (nets.generator_params,
                                                                                      nets.fake_params)]
            for params, opt in opts:  # the optimizer state exists from the first step on
                for p in params:
                    p.grad = torch.zeros_like(p)
                opt.step()
                opt.zero_grad(set_to_none=True)
            steady = tracker.live
            tracker.reset_peak()
            trainable = {id(p): p for params, _ in opts for p in params}.values()
            tracker.watch_casts(trainable)
            ctx = StepContext(family=family, nets=nets, cfg=cfg, device=device, amp_dtype=autocast_dtype(
                t.mixed_precision, rules), student_times=family.times_for(cfg.student),
                sampler=cfg.student.sampler if cfg.student.sampler != "auto" else family.default_sampler,
                uncond=uncond)
            k = cfg.rl_start if rl is not None else 0  # a step with the RL branch on
            rng = StepRandomness(t.seed, k, 0, list(range(B)), device)
            with ctx.amp():  # as the engine's micro-step: the generator's update, then the fake score's
                x0, _ = generator_sample(ctx, cond, rng, with_grad=True)
                loss, _ = dmd_generator_loss(ctx, x0, cond, rng, k)
                if rl is not None:
                    loss = loss + cfg.rl.weight * rl.loss(ctx, x0, cond, ["a prompt"] * B, rng, k)[0]
                nets.as_generator()
                loss.backward()
                fake_score_step_loss(ctx, x0, cond, rng, k).backward()
            for params, opt in opts:
                clip_grad_norm(params, t.grad_clip, None)
                opt.step()
                opt.zero_grad(set_to_none=True)
            modules = [family.components.denoiser, family.components.vae, nets.generator, nets.fake_full,
                       getattr(rl, "decoder", None), getattr(getattr(rl, "reference", None), "copy", None)]
            weights = {id(x.untyped_storage()): x for m in modules if m is not None
                       for x in list(m.parameters()) + list(m.buffers())}
            for p in trainable:
                weights.pop(id(p.untyped_storage()), None)
            state = [v for _, opt in opts for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
            sized = lambda tensors: sum(tracker.rounded(x.untyped_storage().nbytes()) for x in tensors)  # noqa: E731
            trainable_bytes, state_bytes = sized(trainable), sized(state)
            gradients = sum(tracker.rounded(p.numel() * p.element_size()) for p in trainable)
            networks = {id(m): m for m in (nets.guidance, nets.generator, nets.fake_full) if m is not None}.values()
            trainable_ids = {id(p) for p in trainable}
            frozen = {id(p.untyped_storage()): p for net in networks for p in net.parameters() if id(p) not in trainable_ids}
            return Trace(peak=tracker.peak, steady=steady, trainable=sum(p.numel() for p in trainable),
                         trainable_bytes=trainable_bytes, optimizer_state=state_bytes, gradients=gradients,
                         frozen_weights=sized(weights.values()), teacher_weights=teacher_weights,
                         denoiser_params=denoiser_params, source=source, denoiser_weights=denoiser_weights,
                         sharded_frozen=sized(frozen.values()),
                         gathered_unit=max(gathered_unit(net, ctx.amp_dtype) for net in networks),
                         weight_casts=tracker.casts_at_peak)


def trace_isolated(cfg, policy: str = "cuda") -> Trace | None:
    """`trace_step` in a fresh Python process. Fake-tensor tracing leaves state behind in torch (the converters'
    memos, the swapped fake parameters) that has crashed a later trace in the same process; a process per trace
    keeps the caller (a dry run, a test session) clean."""
    proc = subprocess.run([sys.executable, "-m", "dmdr_cli.engines.memory_trace", policy],
                          input=json.dumps(cfg.model_dump(mode="json")), capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        errors = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(errors[-1] if errors else f"the tracing process ended with code {proc.returncode}")
    data = json.loads(lines[-1])
    return None if data is None else Trace(**data)


if __name__ == "__main__":  # trace_isolated's child: the recipe (JSON) on stdin, the Trace (JSON) on stdout
    from ..recipe import validate

    found = trace_step(validate(json.loads(sys.stdin.read())), sys.argv[1])
    print(json.dumps(None if found is None else dataclasses.asdict(found)))
