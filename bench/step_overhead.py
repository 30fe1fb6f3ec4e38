"""Overhead of one DMDR generator update against the passes it must make, measured in one run.

Builds random-weight models of a real architecture (or a CPU-sized one) in the frozen dtype directly on
the device, with random text embeddings (no text encoders), and runs the project's own training step
(dmd/step.py + dmd/networks.py + the ReFL branch) exactly as the engine does. While it runs, every
denoiser call is counted by kind; each kind is then timed alone as a plain pass of the bare teacher
network (no LoRA, no autocast, frozen-dtype weights), and so are the VAE decode and the optimizer steps.

    ratio = time of one generator update / sum over passes (count x plain time)

Prints one JSON line per configuration: s/step, peak GiB, ratio and the per-pass table.
Usage:
  python bench/step_overhead.py --model cpu                       # CPU, >= 50 ms per forward
  python bench/step_overhead.py --model sdxl --batch 4 --refl 1 --gc 1 --finetune full
  python bench/step_overhead.py --model sd35l --batch 2 --refl 1 --gc 1 --finetune lora
  torchrun --nproc_per_node 2 bench/step_overhead.py --model sdxl --batch 4 --gc 1 --sharding optimizer
    (several processes: the engine's bucketed gradient reducer, ZeroRedundancyOptimizer when sharded; the
     peak is the largest over the ranks, comm_MiB what each rank sent per generator update)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmdr_cli.dmd.networks import build_networks  # noqa: E402
from dmdr_cli.dmd.randomness import StepRandomness  # noqa: E402
from dmdr_cli.dmd.step import StepContext, dmd_generator_loss, fake_score_step_loss, generator_sample  # noqa: E402
from dmdr_cli.families import FAMILIES  # noqa: E402
from dmdr_cli.families.base import Components, Cond  # noqa: E402
from dmdr_cli.families.schedules import DiscreteSchedule  # noqa: E402
from dmdr_cli.recipe import validate  # noqa: E402
from dmdr_cli.runtime.distributed import Dist, clip_grad_norm  # noqa: E402
from dmdr_cli.runtime.precision import autocast_dtype, make_optimizer  # noqa: E402
from dmdr_cli.runtime.sharding import parallel_for  # noqa: E402

# Published architecture hyperparameters (diffusers configs of SDXL-base, SD3-Medium, SD3.5-Large).
UNET_SDXL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True)
# a UNet of the same shape that takes >= 50 ms per forward on 2 CPU cores at 32x32 latents
UNET_CPU = dict(UNET_SDXL, sample_size=16, block_out_channels=(64, 128, 256), transformer_layers_per_block=(1, 1, 2),
                attention_head_dim=(2, 4, 8), cross_attention_dim=256, projection_class_embeddings_input_dim=256 + 6 * 256)
MMDIT_SD3M = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, pos_embed_max_size=192)
MMDIT_SD35L = dict(MMDIT_SD3M, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm")
MMDIT_CPU = dict(MMDIT_SD3M, sample_size=16, num_layers=2, attention_head_dim=32, num_attention_heads=4,
                 joint_attention_dim=256, caption_projection_dim=128, pooled_projection_dim=256, pos_embed_max_size=32)
VAE = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           block_out_channels=(128, 256, 512, 512), layers_per_block=2)
VAE_CPU = dict(VAE, block_out_channels=(16, 32, 32, 32), norm_num_groups=16)

MODELS = {  # name: (family, denoiser config, vae config, latent channels, resolution px, text tokens, text dim, pooled)
    "cpu": ("sdxl", UNET_CPU, VAE_CPU, 4, 128, 16, 256, 256),
    "cpu-mmdit": ("sd3", MMDIT_CPU, VAE_CPU, 16, 128, 16, 256, 256),
    "sdxl": ("sdxl", UNET_SDXL, VAE, 4, 1024, 77, 2048, 1280),
    "sd3m": ("sd3", MMDIT_SD3M, VAE, 16, 1024, 205, 4096, 2048),
    "sd35l": ("sd3", MMDIT_SD35L, VAE, 16, 1024, 205, 4096, 2048),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(name: str, device, dtype, resolution=None):
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel

    family_name, net_cfg, vae_cfg, channels, res, tokens, dim, pooled = MODELS[name]
    res = resolution or res
    with torch.device(device):
        net = (UNet2DConditionModel if family_name == "sdxl" else SD3Transformer2DModel)(**net_cfg).to(dtype)
        vae = AutoencoderKL(latent_channels=channels, **vae_cfg).to(dtype).requires_grad_(False)
    vae.config.scaling_factor = 0.13025 if channels == 4 else 1.5305
    cls = FAMILIES[family_name]
    comps = Components(denoiser=net.eval(), vae=vae, scheduler_config={"shift": 3.0, "num_train_timesteps": 1000})
    if family_name == "sdxl":
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        family = cls(comps, schedule=DiscreteSchedule(torch.cumprod(1 - betas, 0)), vae_config=vae_cfg, resolution=res)
        cond = lambda b: Cond(text=torch.randn(b, tokens, dim, device=device), pooled=torch.randn(b, pooled, device=device),
                              time_ids=family.time_ids(b).to(device))
    else:
        family = cls(comps, vae_config=vae_cfg)
        cond = lambda b: Cond(text=torch.randn(b, tokens, dim, device=device), pooled=torch.randn(b, pooled, device=device))
    return family, cond, res


def recipe(name, res, batch, finetune, gc, refl, device, sharding="none"):
    return validate({
        "model": {"family": MODELS[name][0], "pretrained": "random", "resolution": res},
        "student": {"steps": 4, "finetune": finetune, "sampler": "sde" if MODELS[name][0] == "sdxl" else "ode"},
        "train": {"batch_size": batch, "gradient_checkpointing": bool(gc), "lr_generator": 1e-7, "lr_guidance": 1e-7,
                  "sharding": sharding},
        "rl": {"algorithm": "refl" if refl else "none", "rewards": [{"name": "custom", "loss": "linear"}] if refl else []},
    })


def from_recipe(path: str, name: str, sharding: str, device, resolution: int | None):
    """A shipped recipe's step settings (student, guidance, dmd, train, rl) on the --model architecture: random
    weights, its rewards replaced by the placeholder (the reward models' cost is not what is measured)."""
    from dmdr_cli.recipe import load_recipe

    data = load_recipe(path).model_dump(mode="json")
    if data["model"]["family"] != MODELS[name][0]:
        raise SystemExit(f"--recipe {path} is a {data['model']['family']} recipe, --model {name} is {MODELS[name][0]}")
    data["model"].update(pretrained="random", single_file=None, variant=None,
                         resolution=resolution or data["model"]["resolution"])
    if device.type != "cuda":  # bitsandbytes' 8-bit AdamW is CUDA-only: the CPU check runs AdamW
        data["train"]["optimizer"] = "adamw"
    data["train"].update(lr_generator=1e-7, lr_guidance=1e-7, sharding=sharding, gradient_accumulation=1)
    if data["rl"]["algorithm"] != "none":
        data["rl"].update(algorithm="refl", rewards=[{"name": "custom", "loss": "linear"}])
    return validate(data)


# the published architecture each GPU model is (memory_trace.KNOWN), for the planner's figure
PLANNED_AS = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0", "sd3m": "stabilityai/stable-diffusion-3-medium-diffusers",
              "sd35l": "stabilityai/stable-diffusion-3.5-large"}


def planned_gib(cfg, name: str, tiny_decoder: bool, world: int) -> float | None:
    """The memory planner's figure for exactly this step (bench's text tokens, its decoder, its world size)."""
    if name not in PLANNED_AS:
        return None
    from dmdr_cli.engines.memory import estimate, traced

    model = {"pretrained": PLANNED_AS[name], "max_text_tokens": MODELS[name][5] - 77 if MODELS[name][0] == "sd3" else None}
    plan_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={k: v for k, v in model.items() if v}),
                                      "rl": cfg.rl.model_copy(update={"decoder": "madebyollin/taesd" if tiny_decoder
                                                                      else None})})
    return estimate(plan_cfg, traced(plan_cfg), world).total / 2**30


class PassCounter:
    """Counts the denoiser calls of a step by kind: (batch, with grad)."""

    def __init__(self, family):
        self.family, self.counts, self.enabled = family, Counter(), False
        original = family.forward

        def counted(net, x_t, t, cond):
            if self.enabled:
                self.counts[(x_t.shape[0], torch.is_grad_enabled())] += 1
            return original(net, x_t, t, cond)

        family.forward = counted


def time_it(fn, device, repeat=3):
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=list(MODELS), default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--refl", type=int, default=0)
    ap.add_argument("--gc", type=int, default=0)
    ap.add_argument("--finetune", choices=["full", "lora"], default="full")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--tiny-decoder", type=int, default=0, help="ReFL through a TAESD-sized AutoencoderTiny, as "
                                                                  "the SDXL recipes do (rl.decoder)")
    ap.add_argument("--sharding", choices=["none", "optimizer", "full"], default="none",
                    help="with several processes (torchrun): train.sharding")
    ap.add_argument("--recipe", default=None, help="take the step's settings (batch, LoRA, checkpointing, decoder, "
                                                   "optimizer...) from this recipe instead of the flags above")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as tdist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dist = Dist(rank=int(os.environ.get("RANK", "0")), world_size=world, device=device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    if a.recipe:  # the flags follow the recipe
        cfg = from_recipe(a.recipe, a.model, a.sharding, device, a.resolution)
        a.batch, a.finetune, a.resolution = cfg.train.batch_size, cfg.student.finetune, cfg.model.resolution
        a.gc, a.refl, a.tiny_decoder = int(cfg.train.gradient_checkpointing), int(cfg.rl.algorithm != "none"), \
            int(bool(cfg.rl.decoder))
    family, make_cond, res = build(a.model, device, dtype, a.resolution)
    if not a.recipe:
        cfg = recipe(a.model, res, a.batch, a.finetune, a.gc, a.refl, device, a.sharding)
    teacher = family.denoiser
    if a.gc:
        teacher.enable_gradient_checkpointing()
    nets = build_networks(teacher, cfg, type(family))
    if a.gc and nets.generator is not teacher:
        nets.generator.enable_gradient_checkpointing()
    decoder = None
    if a.refl and a.tiny_decoder:
        from diffusers import AutoencoderTiny

        with torch.device(device):
            decoder = AutoencoderTiny(latent_channels=MODELS[a.model][3]).to(dtype).requires_grad_(False)
    elif a.gc and a.refl:
        family.components.vae.enable_gradient_checkpointing()
    parallel = parallel_for(cfg.train.sharding, dist, autocast_dtype("auto", device))  # as the engine: full shards
    parallel.wrap(nets)  # the networks in place (FSDP2), none / optimizer leave them whole
    opt_g = make_optimizer(nets.generator_params, 1e-7, cfg.train, device, world)
    opt_f = make_optimizer(nets.fake_params, 1e-7, cfg.train, device, world)
    red_g, red_f = parallel.reducer(nets.generator_params, opt_g), parallel.reducer(nets.fake_params, opt_f)
    ctx = StepContext(family=family, nets=nets, cfg=cfg, device=device, amp_dtype=autocast_dtype("auto", device),
                      student_times=family.times_for(cfg.student), sampler=cfg.student.sampler,
                      uncond=make_cond(1))
    B, K = a.batch, cfg.dmd.fake_updates_per_generator_update
    cond = make_cond(B)
    counter = PassCounter(family)

    def generator_update(k):
        for inner in range(K):
            rng = StepRandomness(0, k, inner, list(range(B)), device)
            gen_turn = inner == K - 1
            with ctx.amp():  # as the engine: one autocast region per inner step
                x0 = generator_sample(ctx, cond, rng, with_grad=gen_turn)[0]
                if gen_turn:
                    loss, _ = dmd_generator_loss(ctx, x0, cond, rng, k)
                    if a.refl:  # placeholder reward (mean brightness) so the decode's forward+backward cost is real
                        loss = loss - 0.1 * family.decode(x0, vae=decoder).mean()
                    nets.as_generator()
                    red_g.arm()
                    loss.backward()
                red_f.arm()
                fake_score_step_loss(ctx, x0, cond, rng, k).backward()
            for turn, opt, red, params in ((gen_turn, opt_g, red_g, nets.generator_params),
                                           (True, opt_f, red_f, nets.fake_params)):
                if turn:  # as the engine's apply_update (the norm is computed, not used: nothing is skipped)
                    red.finish()
                    clip_grad_norm(params, 1.0, red)
                    opt.step()
                    red.stepped(params)  # ZeroRedundancyOptimizer broadcasts the updated shards
                    opt.zero_grad(set_to_none=True)

    # warm-up, then the measured updates (student steps are drawn per update: count what ran)
    generator_update(0)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    counter.enabled = True
    sent0 = red_g.bytes_reduced + red_f.bytes_reduced
    t0 = time.perf_counter()
    for k in range(1, a.steps + 1):
        generator_update(k)
    sync(device)
    step = (time.perf_counter() - t0) / a.steps
    comm_mib = (red_g.bytes_reduced + red_f.bytes_reduced - sent0) / a.steps / 2**20
    counter.enabled = False
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if world > 1 and peak is not None:  # the largest rank's peak
        peak_t = torch.tensor([peak], device=device)
        tdist.all_reduce(peak_t, op=tdist.ReduceOp.MAX)
        peak = float(peak_t)

    # plain passes of the bare teacher, same inputs' shapes
    nets.guidance_switch.use(None) if nets.guidance_switch else None
    x = family.noise(2 * B, res, res, device=device).to(dtype)
    t = torch.full((2 * B,), 0.5, device=device)
    c2 = Cond.cat([cond, cond])
    plain = {}
    for (batch, grad), _ in counter.counts.items():
        if grad:
            teacher.requires_grad_(True)

            def fwdbwd():
                family.forward(teacher, x[:batch], t[:batch], c2[:batch]).float().mean().backward()
                teacher.zero_grad(set_to_none=True)

            plain[(batch, grad)] = time_it(fwdbwd, device)
            teacher.requires_grad_(False)
        else:
            with torch.no_grad():
                plain[(batch, grad)] = time_it(lambda: family.forward(teacher, x[:batch], t[:batch], c2[:batch]), device)
    extra = {}
    for p in nets.generator_params + nets.fake_params:  # an optimizer step costs nothing without gradients
        p.grad = torch.zeros_like(p)  # (sharded parameters: a sharded zero gradient)
    extra["generator_opt_step"] = time_it(lambda: opt_g.step(), device)  # sharded: the local step + broadcast
    extra["fake_opt_step"] = time_it(lambda: opt_f.step(), device) * K
    if a.refl:
        lat = x[:B].float().requires_grad_(True)

        def decode_fb():
            family.decode(lat, vae=decoder).mean().backward()

        extra["vae_decode_fwd_bwd"] = time_it(decode_fb, device)
    passes = {f"{'fwd+bwd' if g else 'fwd'}@{b}": {"count_per_update": n / a.steps, "plain_s": round(plain[(b, g)], 4)}
              for (b, g), n in counter.counts.items()}
    expected = sum(n / a.steps * plain[k] for k, n in counter.counts.items()) + sum(extra.values())
    if dist.rank != 0:
        return
    planned = planned_gib(cfg, a.model, decoder is not None, world) if device.type == "cuda" else None
    print(json.dumps({"bench": "dmdr-step", "model": a.model, "family": MODELS[a.model][0], "batch": B,
                      "processes": world, "sharding": a.sharding if world > 1 else "none",
                      "comm_MiB_per_gen_update": round(comm_mib, 1),
                      "finetune": a.finetune, "refl": a.refl, "gc": a.gc, "resolution": res,
                      "decoder": "tiny" if decoder is not None else "vae",
                      "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "s_per_gen_update": round(step, 3), "sum_of_passes_s": round(expected, 3),
                      "ratio": round(step / expected, 3), "peak_GiB": round(peak, 1) if peak else None,
                      "planned_GiB": round(planned, 1) if planned is not None else None,
                      "recipe": a.recipe, "optimizer": cfg.train.optimizer,
                      "passes": passes, "other_s": {k: round(v, 4) for k, v in extra.items()}}), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
