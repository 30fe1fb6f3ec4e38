"""Generator / real / fake roles built from one teacher: weight sharing, LoRA scales, isolation of updates."""

from __future__ import annotations

import pytest
import torch

from dmdr_cli.dmd.networks import build_networks
from dmdr_cli.families import FAMILIES, load_family
from dmdr_cli.recipe import validate


def make(folder, family: str, finetune: str, layout: str = "shared_lora"):
    cfg = validate({"model": {"family": family, "pretrained": str(folder), "resolution": 16, "dtype": "fp32",
                              **({"max_text_tokens": 8} if family == "sd3" else {})},
                    "student": {"finetune": finetune, "lora_rank": 4, "lora_alpha": 8},
                    "guidance": {"lora_rank": 4, "lora_alpha": 4, "layout": layout}})
    fam = load_family(cfg.model, with_text_encoders=True, with_vae=False)
    teacher_ref = {k: v.detach().clone() for k, v in fam.denoiser.named_parameters()}
    torch.manual_seed(0)
    nets = build_networks(fam.denoiser, cfg, FAMILIES[family])
    return fam, nets, teacher_ref


def inputs(fam, batch=2):
    torch.manual_seed(1)
    x = torch.randn(batch, fam.latent_channels, 8, 8)
    t = torch.full((batch,), 0.6)
    return x, t, fam.encode_prompts(["a red circle", "a blue square"][:batch])


def randomize(params):
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_real_score_at_scale_zero_is_exactly_the_teacher(family, request):
    folder = request.getfixturevalue(f"tiny_{family}")
    fam, nets, _ = make(folder, family, "lora")
    x, t, cond = inputs(fam)
    with torch.no_grad():
        nets.guidance_switch.use(None)
        teacher_out = fam.forward(nets.guidance, x, t, cond)
        randomize(nets.fake_params)
        randomize(nets.generator_params)
        real0 = fam.forward(nets.as_real(0.0), x, t, cond)
        real_half = fam.forward(nets.as_real(0.5), x, t, cond)
        fake = fam.forward(nets.as_fake(), x, t, cond)
        gen = fam.forward(nets.as_generator(), x, t, cond)
    assert torch.equal(real0, teacher_out), "s_r = 0 must be bit-identical to the teacher"
    assert not torch.allclose(real_half, teacher_out) and not torch.allclose(fake, real_half)
    assert not torch.allclose(gen, fake)


def _base_weights(module):
    return {n: p for n, p in module.named_parameters() if "lora_" not in n}


def test_lora_generator_shares_one_copy_of_teacher_weights(tiny_sd3):
    fam, nets, teacher_ref = make(tiny_sd3, "sd3", "lora")
    assert nets.generator is nets.guidance and nets.fake_full is None
    base = _base_weights(nets.guidance)
    ptrs = {p.data_ptr() for p in base.values()}
    assert len(ptrs) == len(base)  # every base tensor stored once ...
    lora_ptrs = {p.data_ptr() for p in nets.generator_params + nets.fake_params}
    assert not ptrs & lora_ptrs  # ... and nothing else aliases them
    n_teacher = sum(v.numel() for v in teacher_ref.values())
    assert sum(p.numel() for p in base.values()) == n_teacher


def test_full_generator_is_a_second_copy(tiny_sd):
    fam, nets, _ = make(tiny_sd, "sd", "full")
    gen_ptrs = {p.data_ptr() for p in nets.generator.parameters()}
    teacher_ptrs = {p.data_ptr() for p in _base_weights(nets.guidance).values()}
    assert not gen_ptrs & teacher_ptrs


def test_dmd2_layout_has_a_full_fake_copy(tiny_sd):
    fam, nets, _ = make(tiny_sd, "sd", "full", layout="dmd2")
    assert nets.fake_full is not None and nets.guidance_switch is None
    assert {p.data_ptr() for p in nets.fake_params}.isdisjoint({p.data_ptr() for p in nets.generator.parameters()})


def test_a_trainable_copy_of_a_bf16_teacher_is_made_in_fp32_directly(tiny_sd):
    """Every tensor the copy creates is fp32 (none at the teacher's bf16 first: no transient second copy; under the
    memory planner's fake tensors that dropped bf16 copy freed the fp32 copy's storage, a segfault in the trace
    of SD1.5's DMD2 recipes), the values are the teacher's, and the teacher is left as it was."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dmdr_cli.dmd.networks import _trainable_copy

    fam = load_family(validate({"model": {"family": "sd", "pretrained": str(tiny_sd), "resolution": 16}}).model)
    teacher = fam.denoiser.to(torch.bfloat16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    class Created(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.dtypes |= {t.dtype for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)}
            return out

    with Created() as created:
        copy = _trainable_copy(teacher)
    assert created.dtypes == {torch.float32}
    assert all(p.dtype == torch.float32 and p.requires_grad for p in copy.parameters())
    for key, value in copy.state_dict().items():
        assert torch.equal(value, before[key].float()), key
    assert all(torch.equal(v, before[k]) and v.dtype == torch.bfloat16 for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_updates_touch_only_their_own_weights(tiny_sd3, finetune):
    fam, nets, _ = make(tiny_sd3, "sd3", finetune)
    x, t, cond = inputs(fam)
    gen_before = [p.detach().clone() for p in nets.generator_params]
    fake_before = [p.detach().clone() for p in nets.fake_params]
    base_before = {n: p.detach().clone() for n, p in _base_weights(nets.guidance).items()}

    # a generator update: loss on the generator's output only
    opt_g = torch.optim.SGD(nets.generator_params, lr=0.1)
    fam.predict_x0(nets.as_generator(), x, t, cond).pow(2).mean().backward()
    opt_g.step()
    opt_g.zero_grad()
    assert any(not torch.equal(a, p) for a, p in zip(gen_before, nets.generator_params))
    assert all(torch.equal(a, p) for a, p in zip(fake_before, nets.fake_params)), "guidance LoRA untouched"
    assert all(p.grad is None for p in nets.fake_params)

    # a fake-score update
    gen_mid = [p.detach().clone() for p in nets.generator_params]
    opt_f = torch.optim.SGD(nets.fake_params, lr=0.1)
    fam.forward(nets.as_fake(), x, t, cond).pow(2).mean().backward()
    opt_f.step()
    assert any(not torch.equal(a, p) for a, p in zip(fake_before, nets.fake_params))
    assert all(torch.equal(a, p) for a, p in zip(gen_mid, nets.generator_params)), "generator untouched"
    assert all(torch.equal(base_before[n], p) for n, p in _base_weights(nets.guidance).items()), "teacher untouched"


def test_lora_generator_runs_on_bf16_frozen_weights_without_autocast(tiny_sd3):
    """mixed_precision: no with bf16 frozen weights: peft casts the bf16 activations to the fp32 adapters
    (it skips the cast only under autocast), so the LoRA matmuls never mix dtypes and the adapter trains."""
    cfg = validate({"model": {"family": "sd3", "pretrained": str(tiny_sd3), "resolution": 16, "max_text_tokens": 8},
                    "student": {"finetune": "lora", "lora_rank": 4, "lora_alpha": 8},
                    "guidance": {"lora_rank": 4, "lora_alpha": 4}, "train": {"mixed_precision": "no"}})
    fam = load_family(cfg.model, dtype=torch.bfloat16, with_text_encoders=True, with_vae=False)
    nets = build_networks(fam.denoiser, cfg, FAMILIES["sd3"])
    randomize(nets.generator_params)
    x, t, cond = inputs(fam)
    out = fam.predict_x0(nets.as_generator(), x, t, cond.to(dtype=torch.bfloat16))
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all()
    assert all(p.dtype == torch.float32 for p in nets.generator_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets.generator_params)
