"""README.md written next to every export: what the student is and the exact code that samples it."""

from __future__ import annotations

import json
import math

from .. import __version__
from .formats import COMFYUI_FILE, generator_kind, scheduler_spec
from .kohya import DIFFUSERS_READS_KOHYA
from .scheduler import StudentScheduler
from .student import Student

_SAMPLERS = {"sde": "sde: predict x0, renoise to the next time with fresh noise (DMD2 backward simulation; "
                    "LCM-style multistep sampling)",
             "ode": "ode: deterministic steps that keep the implied noise (DDIM eta 0 / Euler)"}
_DTYPE_NAMES = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}
HERE = "path/to/this/folder"


def _literal(value) -> str:
    """A Python literal, strings in double quotes like the rest of the card's code."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _kwargs(items: dict) -> str:
    return ", ".join(f"{k}={_literal(v)}" for k, v in items.items())


def _teacher_args(model, torch_dtype: str) -> str:
    """`from_pretrained` arguments of the base model, as the recipe names it."""
    extra = [f"{k}={_literal(v)}" for k, v in (("revision", model.revision), ("variant", model.variant)) if v]
    return ", ".join([_literal(model.pretrained), *extra, f"torch_dtype={torch_dtype}"])


def _full_weights(student: Student) -> bool:
    return student.merged or student.source.lora is None


def sampling_call(student: Student, spec: StudentScheduler) -> list[str]:
    """The pipeline call that reproduces `dmdr_cli.sampling.sample` (same times, no CFG, same step noise)."""
    res = student.source.recipe.model.resolution
    lines = []
    args = {"height": res, "width": res, **spec.call, **student.family.pipeline_arguments()}
    if spec.step_noise == "generator":
        lines.append('generator = torch.Generator("cuda").manual_seed(0)  # each step\'s fresh noise')
        call = f"image = pipe(prompt, {_kwargs(args)}, generator=generator).images[0]"
    else:
        if spec.step_noise == "global":
            lines.append("torch.manual_seed(0)  # the pipeline draws each step's fresh noise from torch's global RNG")
        call = f"image = pipe(prompt, {_kwargs(args)}).images[0]"
    return ['prompt = "a photo of a cat"', *lines, call]


def _pipeline_lines(student: Student, fmt: str, files: list[str], torch_dtype: str, copied: bool) -> list[str]:
    """Imports and the lines that build `pipe` for this export; [] where diffusers has no reader for it."""
    family, model = student.family, student.source.recipe.model
    spec = scheduler_spec(student)
    sub, scheduler_cls = family.denoiser_subfolder, spec.class_name
    variant = f", variant={_literal(model.variant)}" if model.variant else ""
    teacher = f"pipe = DiffusionPipeline.from_pretrained({_teacher_args(model, torch_dtype)})"
    use_student_scheduler = (f"pipe.scheduler = {scheduler_cls}.from_config(pipe.scheduler.config, "
                             f"{_kwargs(spec.config)})")
    if fmt == "diffusers" and copied:
        return ["from diffusers import DiffusionPipeline", "",
                f'pipe = DiffusionPipeline.from_pretrained("{HERE}", torch_dtype={torch_dtype}{variant}).to("cuda")']
    if fmt == "diffusers":
        denoiser_cls = type(student.denoiser).__name__
        return [f"from diffusers import DiffusionPipeline, {denoiser_cls}, {scheduler_cls}", "",
                f'{sub} = {denoiser_cls}.from_pretrained("{HERE}", subfolder="{sub}", '
                f'torch_dtype={torch_dtype}{variant})',
                f'scheduler = {scheduler_cls}.from_pretrained("{HERE}", subfolder="scheduler")',
                f'{teacher[:-1]}, {sub}={sub}, scheduler=scheduler).to("cuda")']
    if fmt == "safetensors" and _full_weights(student):
        return [f"from diffusers import DiffusionPipeline, {scheduler_cls}",
                "from safetensors.torch import load_file", "",
                teacher, f'pipe.{sub}.load_state_dict(load_file("{HERE}/{files[0]}"))', use_student_scheduler,
                'pipe.to("cuda")']
    if fmt in ("safetensors", "lora") or (fmt == "comfyui" and family.name in DIFFUSERS_READS_KOHYA):
        return [f"from diffusers import DiffusionPipeline, {scheduler_cls}", "", teacher,
                f'pipe.load_lora_weights("{HERE}", weight_name="{files[0]}")',
                "pipe.fuse_lora()  # optional: merge the LoRA into the weights for speed", use_student_scheduler,
                'pipe.to("cuda")']
    return []


def diffusers_code(student: Student, fmt: str, files: list[str], dtype: str, copied: bool) -> list[str]:
    """Python code loading the export with diffusers and sampling as dmdr does, or [] where diffusers cannot read it."""
    lines = _pipeline_lines(student, fmt, files, _DTYPE_NAMES[dtype], copied)
    if not lines:
        return []
    return ["import torch", *lines, "", *sampling_call(student, scheduler_spec(student))]


def comfyui_notes(student: Student, fmt: str, files: list[str]) -> list[str]:
    model = student.source.recipe.model
    notes = []
    if fmt == "comfyui":
        notes.append(f"Copy `{COMFYUI_FILE}` to `ComfyUI/models/loras/`, load the base model ({model.pretrained}) "
                     f"and apply the LoRA with a *LoraLoaderModelOnly* node at strength 1.0.")
    elif fmt == "safetensors" and _full_weights(student):
        notes.append(f"Copy `{files[0]}` to `ComfyUI/models/diffusion_models/` and load it with *Load Diffusion "
                     f"Model*; the text encoders and VAE come from the base model ({model.pretrained}).")
    else:
        notes.append("For ComfyUI export with `--format comfyui` (LoRA) or `--format safetensors` (merged weights).")
    sampler = "lcm" if student.sampler == "sde" else "euler"
    steps = len(student.times)
    guidance = "CFG 1.0 (the student runs without guidance)"
    if student.family.embeds_guidance:
        guidance = (f"CFG 1.0 and a *FluxGuidance* node at {student.family.pipeline_arguments()['guidance_scale']:g} "
                    f"(the value the student was trained with)")
    notes.append(f"Sampler settings: {steps} step{'s' if steps > 1 else ''}, {guidance}, sampler `{sampler}`; the "
                 f"student's sigmas, for a custom-sigmas node: {comfyui_sigmas(student) + [0.0]}.")
    return notes


def comfyui_sigmas(student: Student) -> list[float]:
    """k-diffusion sigmas of the student times: flow t itself; eps / v sqrt((1 - a) / a) at the timestep."""
    schedule = student.family.schedule
    if schedule.prediction == "flow":
        return [round(t, 6) for t in student.times]
    acp = schedule.alphas_cumprod
    return [round(math.sqrt((1 - float(acp[int(s)])) / float(acp[int(s)])), 6) for s in student.model_timesteps]


def _metrics_table(metrics: dict[str, dict[str, float]]) -> list[str]:
    rows = ["| file | metric | value |", "|---|---|---|"]
    for name, values in metrics.items():
        rows += [f"| {name} | {key} | {value:.4g} |" for key, value in values.items()]
    return rows


def model_card(student: Student, *, fmt: str, files: list[str], dtype: str, copied: bool,
               metrics: dict[str, dict[str, float]]) -> str:
    source, family = student.source, student.family
    model, lora = source.recipe.model, source.lora
    spec = scheduler_spec(student)
    if lora is None:
        generator = "full fine-tune of the denoiser"
    else:
        generator = f"LoRA rank {lora.rank}, alpha {lora.alpha:g} on {', '.join(lora.targets)}"
        generator += " (merged into the weights)" if student.merged else ""
    times_label = "sigmas" if spec.times_argument == "sigmas" else "denoiser timesteps"
    base = f"`{model.pretrained}`" + (f" with denoiser `{model.single_file}`" if model.single_file else "")
    lines = [
        f"# {family.pipeline_class} few-step student (dmdr)", "",
        f"A {len(student.times)}-step student of {base}, distilled with DMD + RL by dmdr {__version__}.", "",
        "| | |", "|---|---|",
        f"| base model | {base} ({family.name}, `{family.pipeline_class}`) |",
        f"| checkpoint | generator step {source.step} (`{source.checkpoint}`) |",
        f"| steps | {len(student.times)}, no classifier-free guidance |",
        *([f"| guidance embedding | told {family.pipeline_arguments()['guidance_scale']:g} (the pipeline's "
           f"`guidance_scale`), as in training |"] if family.embeds_guidance else []),
        f"| student times t (1 = noise) | {', '.join(f'{t:.6g}' for t in student.times)} |",
        f"| {times_label} | {spec.times!r} |",
        f"| sampler | {_SAMPLERS[student.sampler]} |",
        f"| generator | {generator} |",
        f"| export | `--format {fmt}`, {dtype}, {generator_kind(student)}: {', '.join(f'`{f}`' for f in files)} |",
        f"| resolution | {model.resolution} px |",
        "",
    ]
    if metrics:
        lines += ["## Evaluation", "", *_metrics_table(metrics), ""]
    code = diffusers_code(student, fmt, files, dtype, copied)
    lines += ["## diffusers", ""]
    if code:
        if fmt == "diffusers" and not copied:
            lines += ["This folder holds only the student's denoiser and scheduler; the other components come "
                      "from the base model:", ""]
        lines += ["```python", *code, "```", ""]
        if fmt == "comfyui" and family.name == "sdxl":
            lines += ["diffusers reads this kohya-layout file for SDXL UNets whose up-samplers follow attention "
                      "blocks, as in SDXL itself; `--format lora` writes diffusers' own layout.", ""]
    else:
        lines += [f"diffusers has no reader for this {family.name} kohya layout: export with `--format lora` "
                  f"for `load_lora_weights`.", ""]
    lines += [f"The scheduler is `{spec.class_name}` configured to sample as dmdr does (`dmdr sample`): pass the "
              f"{spec.times_argument} exactly as above.", ""]
    lines += ["## ComfyUI", "", *comfyui_notes(student, fmt, files), ""]
    lines += ["## Recipe", "", "```yaml", source.recipe_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
