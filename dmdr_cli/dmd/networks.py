"""Generator, real score and fake score, built from one teacher with as few weight copies as possible.

Layouts (ALGORITHM.md, "DynaDG"):
- shared_lora + LoRA generator: ONE copy of the teacher's weights carries two peft adapters,
  "generator" and "guidance". Real score = guidance adapter at the DynaDG scale s_r(k) (adapters off
  when s_r = 0, i.e. exactly the teacher), fake score = guidance adapter at s_f.
- shared_lora + full generator: a trainable generator copy, plus the teacher carrying "guidance".
- dmd2: trainable generator copy, frozen teacher = real score, a separate trainable full fake copy.

Frozen weights run in the model dtype (bf16 on GPU); trainable weights are fp32 masters used under
autocast, so the optimizer never rounds its updates to bf16.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..errors import DmdrError

from ..runtime.precision import autocast_dtype

GENERATOR, GUIDANCE = "generator", "guidance"


class AdapterSwitch:
    """Chooses which peft LoRA adapter of a model is live, and at what scale.

    peft's public `set_adapter` / `enable_adapters` also flip requires_grad so that only the live
    adapter trains, and walk every parameter to do it; here a graph built with one adapter live is
    backpropagated after another was switched on (the generator loss needs the real and fake scores
    first), and the switch happens several times per step. So only the three things LoraLayer.forward
    reads are set: the active adapter, the disabled flag, and the adapter's scaling. Gradient flow is
    kept apart by construction instead: real/fake passes run under no_grad, the fake-score loss sees a
    detached x0, and each optimizer holds only its own adapter's parameters.
    """

    def __init__(self, model: torch.nn.Module):
        from peft.tuners.lora import LoraLayer

        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        for layer in self.layers[:1]:  # the attributes LoraLayer.forward reads (peft >= 0.13)
            assert hasattr(layer, "_active_adapter") and hasattr(layer, "_disable_adapters"), "unsupported peft"
        self.live: tuple[str | None, float] | None = None

    def use(self, adapter: str | None, scale: float = 1.0) -> None:
        """Make `adapter` live at `scale` (x peft's alpha / r); None or scale 0: the base weights alone."""
        state = (adapter, float(scale)) if adapter is not None and scale != 0 else (None, 0.0)
        if state == self.live:
            return
        name, scale = state
        for layer in self.layers:
            layer._disable_adapters = name is None
            if name is None:
                continue
            layer._active_adapter = [name]  # layers without this adapter then run the base weights alone
            if name in layer.lora_A:
                denominator = math.sqrt(layer.r[name]) if layer.use_rslora.get(name, False) else layer.r[name]
                layer.scaling[name] = scale * layer.lora_alpha[name] / denominator
        self.live = state

    def invalidate(self) -> None:
        """Forget the cached state (after diffusers' add_adapter switched adapters behind our back)."""
        self.live = None


def add_lora(model: torch.nn.Module, name: str, rank: int, alpha: float, targets: list[str]) -> list[torch.nn.Parameter]:
    """Attach a LoRA adapter (fp32 weights, B = 0 so it starts as a no-op) and return its parameters."""
    import warnings

    from peft import LoraConfig

    # diffusers' add_adapter makes the new adapter the only trainable one; adapters added earlier keep
    # training on their own losses, so their flags are restored.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with warnings.catch_warnings():  # a second adapter on one model is the point here, not an accident
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True),
                          adapter_name=name)
    for p, flag in flags:
        p.requires_grad_(flag)
    params = []
    for pname, p in model.named_parameters():
        if f".{name}." in pname and "lora_" in pname:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
    if not params:
        raise ValueError(f"LoRA targets {targets} matched no module of {type(model).__name__}")
    return params


@dataclass
class ScoreNetworks:
    """The three roles, each a module plus how to switch it on. Built by `build_networks`."""

    generator: torch.nn.Module
    guidance: torch.nn.Module  # teacher weights (+ guidance LoRA in the shared layout)
    fake_full: torch.nn.Module | None  # dmd2 layout only
    generator_params: list[torch.nn.Parameter]
    fake_params: list[torch.nn.Parameter]
    generator_switch: AdapterSwitch | None  # LoRA generator: its adapter lives on `guidance`
    guidance_switch: AdapterSwitch | None
    fake_scale: float

    def as_generator(self) -> torch.nn.Module:
        if self.generator_switch is not None:
            self.generator_switch.use(GENERATOR, 1.0)
        return self.generator

    def as_real(self, scale: float) -> torch.nn.Module:
        """The teacher, or the teacher + guidance LoRA at the DynaDG scale (0 = exactly the teacher)."""
        if self.guidance_switch is not None:
            self.guidance_switch.use(GUIDANCE, scale)
        return self.guidance

    def as_fake(self) -> torch.nn.Module:
        if self.fake_full is not None:
            return self.fake_full
        self.guidance_switch.use(GUIDANCE, self.fake_scale)
        return self.guidance

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a checkpoint stores: generator and fake-score weights (adapters only where LoRA)."""
        return {"generator": self.generator_state(), "fake": self.fake_state()}

    def trainable_layout(self) -> dict[str, dict[str, torch.Tensor]]:
        """The tensors `trainable_state` would copy, uncopied: what a checkpoint's names and shapes must match."""
        gen = (adapter_state(self.generator, GENERATOR) if self.generator_switch is not None
               else self.generator.state_dict())
        fake = self.fake_full.state_dict() if self.fake_full is not None else adapter_state(self.guidance, GUIDANCE)
        return {"generator": gen, "fake": fake}

    def generator_state(self) -> dict[str, torch.Tensor]:
        if self.generator_switch is not None:
            return adapter_state(self.generator, GENERATOR)
        return {k: v.detach().clone() for k, v in self.generator.state_dict().items()}

    def fake_state(self) -> dict[str, torch.Tensor]:
        if self.fake_full is not None:
            return {k: v.detach().clone() for k, v in self.fake_full.state_dict().items()}
        return adapter_state(self.guidance, GUIDANCE)

    def load_generator_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.generator_switch is not None:
            load_adapter_state(self.generator, GENERATOR, state)
        else:
            _load_strict(self.generator, state)

    def load_fake_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.fake_full is not None:
            _load_strict(self.fake_full, state)
        else:
            load_adapter_state(self.guidance, GUIDANCE, state)


def adapter_state(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's weights with the adapter name stripped (peft's file convention)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()}


def load_adapter_state(model: torch.nn.Module, adapter: str, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=adapter)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora_" in k]
    if unexpected:
        raise ValueError(f"LoRA weights do not match the {adapter} adapter: unexpected keys such as {unexpected[0]}")


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ValueError(f"weights do not match {type(model).__name__}: {len(missing)} missing and {len(unexpected)} "
                         f"unexpected keys (e.g. {example})")


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """The short names of the layers a LoRA can adapt (Linear and Conv layers), sorted."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)
    def short(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]

    return sorted({short(name) for name, m in model.named_modules() if name and isinstance(m, kinds)})


def check_lora_targets(model: torch.nn.Module, targets: list[str], key: str) -> None:
    """Every target must name at least one layer as peft matches them (the full name, or its last parts), so
    a typo is one line listing the valid names instead of peft's traceback."""
    names = [name for name, _ in model.named_modules() if name]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        valid = lora_module_names(model)
        shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
        raise DmdrError(f"{key}: {', '.join(map(repr, unmatched))} match{'es' if len(unmatched) == 1 else ''} no "
                        f"layer of the {type(model).__name__}; valid names: {shown}")


def build_networks(teacher: torch.nn.Module, cfg, family_cls, device: torch.device | None = None) -> ScoreNetworks:
    """Turn the loaded teacher denoiser into the generator / real / fake roles the recipe asks for. `device`: the
    device whose precision rules apply (default: the teacher's; the memory planner traces CUDA's on the CPU)."""
    teacher.requires_grad_(False)
    s, g = cfg.student, cfg.guidance
    gen_targets = s.lora_targets or list(family_cls.generator_lora_targets)
    gui_targets = g.lora_targets or list(family_cls.guidance_lora_targets)
    if s.finetune == "lora":
        check_lora_targets(teacher, gen_targets, "student.lora_targets")
    if g.layout != "dmd2":
        check_lora_targets(teacher, gui_targets, "guidance.lora_targets")

    # A full generator is copied before any adapter is attached, so it starts as the plain teacher.
    generator = None if s.finetune == "lora" else _trainable_copy(teacher)
    fake_full = _trainable_copy(teacher) if g.layout == "dmd2" else None
    if fake_full is not None:
        fake_params = list(fake_full.parameters())
    else:
        fake_params = add_lora(teacher, GUIDANCE, g.lora_rank, g.lora_alpha, gui_targets)

    if generator is None:  # LoRA generator: its adapter lives on the shared teacher weights
        generator = teacher
        generator_params = add_lora(teacher, GENERATOR, s.lora_rank, s.lora_alpha, gen_targets)
        generator_switch = guidance_switch = AdapterSwitch(teacher)
    else:
        generator_params = list(generator.parameters())
        generator_switch = None
        guidance_switch = AdapterSwitch(teacher) if fake_full is None else None

    device = device or next(teacher.parameters()).device
    if autocast_dtype(cfg.train.mixed_precision, device) is not None:
        # peft casts each LoRA input to the adapter's fp32 dtype: a full fp32 copy of every activation it
        # touches. Under autocast the LoRA matmuls run in the autocast dtype anyway, so skip the copy; without
        # autocast the cast is what lets bf16 frozen activations meet the fp32 adapters (mixed_precision: no).
        _set_lora_input_casting(teacher, False)
    return ScoreNetworks(generator=generator, guidance=teacher, fake_full=fake_full,
                         generator_params=generator_params, fake_params=fake_params,
                         generator_switch=generator_switch, guidance_switch=guidance_switch,
                         fake_scale=g.fake_lora_scale)


def _set_lora_input_casting(model: torch.nn.Module, enabled: bool) -> None:
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = enabled


def _trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An fp32 trainable copy of the (possibly bf16) frozen teacher. Each floating-point tensor is converted as it
    is copied (deepcopy's memo holds its fp32 version), never copied at the teacher's precision first: no transient
    second copy, and nothing converted in place, which FakeTensorMode refuses. Under FakeTensorMode the memory
    planner traces this copy (engines/memory_trace.py); there a dropped intermediate copy left the fp32 tensors
    with freed storage (a segfault in the DMD2 layout's second copy)."""
    memo: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for module in model.modules():
            for p in module._parameters.values():
                if p is not None and p.is_floating_point() and p.dtype != torch.float32 and id(p) not in memo:
                    memo[id(p)] = torch.nn.Parameter(p.float(), requires_grad=p.requires_grad)
            for b in module._buffers.values():
                if b is not None and b.is_floating_point() and b.dtype != torch.float32 and id(b) not in memo:
                    memo[id(b)] = b.float()
    clone = copy.deepcopy(model, memo)
    clone.requires_grad_(True).train()
    return clone
