"""One DMD generator step on the tiny FLUX.1-dev, checked from the outside.

The step (`dmd.step.dmd_generator_loss`, family-agnostic) must give the generator LoRA the gradient
J^T (x0_fake - x0_real) / (N mean|x0_g - x0_real|), where the real score is the transformer told the drawn guidance
value w through its embedding (one pass, no CFG) at the DynaDG LoRA scale, the fake score is told its own value, the
renoise time is the draw mapped through the resolution's shift, and J is the Jacobian of the generator's x0 (packing
and unpacking included). Both scores are recomputed here by calling the transformer directly, and J d by a central
finite difference along a random direction d of the LoRA weights.
"""

import contextlib

import torch
from family_helpers import RESOLUTION, model_section

from dmdr_cli.dmd.networks import build_networks
from dmdr_cli.dmd.randomness import StepRandomness
from dmdr_cli.dmd.schedules import cfg_scale_draw, dynadg_real_scale, sample_renoise_times
from dmdr_cli.dmd.step import StepContext, dmd_generator_loss
from dmdr_cli.families import FAMILIES, load_family
from dmdr_cli.families.flux import image_ids, pack, unpack
from dmdr_cli.recipe import validate

K = 1  # generator step: DynaDG's real-score LoRA scale is not 0 yet, DynaRS's Beta not flat


def direct_x0(net, x_t, t, cond, value):
    """x0 = x_t - t v from the transformer called with guidance `value`, without the adapter's forward."""
    v = net(hidden_states=pack(x_t), timestep=t, guidance=torch.full_like(t, value),
            pooled_projections=cond["pooled"], encoder_hidden_states=cond["text"],
            txt_ids=torch.zeros(cond["text"].shape[1], 3), img_ids=image_ids(8, 8, "cpu", torch.float32)).sample
    return x_t - t.view(-1, 1, 1, 1) * unpack(v, 8, 8)


def test_dmd_gradient_of_one_step_on_flux(tiny_flux):
    cfg = validate({
        "model": model_section("flux", tiny_flux).model_dump(),
        "student": {"finetune": "lora", "lora_rank": 4, "lora_alpha": 4, "embedded_guidance": 2.0},
        "guidance": {"scale": 4.0, "jitter": 0.5, "lora_rank": 4, "lora_alpha": 4, "fake_embedded_guidance": 1.5},
        "coldstart": {"steps": 4, "dynadg": {"steps": 4}, "dynars": {"steps": 4}}, "train": {"steps": 4}})
    family = load_family(cfg.model, with_vae=False, guidance_values=(2.0, 1.5))
    torch.manual_seed(0)
    nets = build_networks(family.denoiser, cfg, FAMILIES["flux"])
    with torch.no_grad():  # non-zero adapters, so real (LoRA at s_r), fake and generator all differ
        for p in nets.generator_params + nets.fake_params:
            p.normal_(0, 0.05)
    cond = family.encode_prompts(["a red cat", "two blue cubes"])
    ctx = StepContext(family=family, nets=nets, cfg=cfg, device=torch.device("cpu"), amp_dtype=None,
                      student_times=family.times_for(cfg.student), sampler="ode", uncond=family.unconditional())
    ctx.amp = contextlib.nullcontext
    x_in = family.noise(2, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    t_in = torch.ones(2)

    def generator_x0():
        return family.predict_x0(nets.as_generator(), x_in, t_in, cond)

    x0_g = generator_x0()
    x0_g.retain_grad()
    loss, stats = dmd_generator_loss(ctx, x0_g, cond, StepRandomness(7, K, 0, [0, 1], "cpu"), K)
    loss.backward()
    autograd = [p.grad.clone() for p in nets.generator_params]

    # the same draws, replayed: renoise time (then the shift), renoise noise, guidance value
    rng = StepRandomness(7, K, 0, [0, 1], "cpu")
    u = torch.cat([sample_renoise_times(1, K, cfg.dmd, cfg.coldstart.dynars, g)
                   for g in rng.per_sample_generators("renoise_t")])
    s = family.flow_shift
    t = s * u / (1 + (s - 1) * u)
    noise = rng.randn_like(x0_g, "renoise")
    w = cfg_scale_draw(4.0, 0.5, rng.shared("cfg"))
    assert stats["cfg_scale"] == w and 3.5 <= w <= 4.5
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0_g.detach() + t.view(-1, 1, 1, 1) * noise
    with torch.no_grad():
        real = direct_x0(nets.as_real(dynadg_real_scale(K, cfg.coldstart.dynadg)), x_t, t, cond, w)
        fake = direct_x0(nets.as_fake(), x_t, t, cond, 1.5)
        p_real = x0_g.detach() - real
        grad_x0 = (fake - real) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True) / x0_g.numel()

        torch.manual_seed(3)
        direction = [torch.randn_like(p) for p in nets.generator_params]
        eps = 3e-3  # central differences: 3.1% off at 3e-2, 0.35% at 1e-2, 0.02% at 3e-3 (fp32 noise below)

        def shifted(sign):
            for p, d in zip(nets.generator_params, direction):
                p.add_(sign * eps * d)
            out = generator_x0()
            for p, d in zip(nets.generator_params, direction):
                p.sub_(sign * eps * d)
            return out

        jd = (shifted(1) - shifted(-1)) / (2 * eps)
    torch.testing.assert_close(x0_g.grad, grad_x0, rtol=1e-4, atol=1e-9)  # the DMD gradient on x0, closed form
    expected = (grad_x0 * jd).sum()
    measured = sum((g * d).sum() for g, d in zip(autograd, direction))
    assert expected.abs() > 1e-6
    torch.testing.assert_close(measured, expected, rtol=1e-3, atol=0)
