"""README.md written next to every export: what the student is and the exact code that samples it."""

from __future__ import annotations

import json
import math

from .. import __version__
from .formats import COMFYUI_FILE, PIXEL_PIPELINE_FILE, generator_kind, scheduler_spec, writes_single_file
from .kohya import DIFFUSERS_READS_KOHYA
from .scheduler import StudentScheduler
from .single_file import components_in_file, layout_for
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


def _pixel_code(student: Student) -> str:
    """Extra from_pretrained arguments of a pixel-space base model: the pipeline code shipped in this folder."""
    if not student.family.pixel_space:
        return ""
    return f', custom_pipeline="{HERE}/{PIXEL_PIPELINE_FILE}", trust_remote_code=True'


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


def _pipeline_lines(student: Student, fmt: str, files: list[str], torch_dtype: str, copied: bool,
                    denoiser_only: bool) -> list[str]:
    """Imports and the lines that build `pipe` for this export; [] where diffusers has no reader for it."""
    family, model = student.family, student.source.recipe.model
    spec = scheduler_spec(student)
    sub, scheduler_cls = family.denoiser_subfolder, spec.class_name
    variant = f", variant={_literal(model.variant)}" if model.variant else ""
    base_args = _teacher_args(model, torch_dtype) + _pixel_code(student)
    teacher = f"pipe = DiffusionPipeline.from_pretrained({base_args})"
    use_student_scheduler = (f"pipe.scheduler = {scheduler_cls}.from_config(pipe.scheduler.config, "
                             f"{_kwargs(spec.config)})")
    denoiser_cls = type(student.denoiser).__name__
    if writes_single_file(fmt, _full_weights(student)):
        path, config = f'"{HERE}/{files[0]}"', _literal(model.pretrained)
        if denoiser_only:
            return [f"from diffusers import DiffusionPipeline, {denoiser_cls}, {scheduler_cls}", "",
                    f'{sub} = {denoiser_cls}.from_single_file({path}, config={config}, subfolder="{sub}", '
                    f'torch_dtype={torch_dtype})',
                    f"pipe = DiffusionPipeline.from_pretrained({base_args}, {sub}={sub})", use_student_scheduler,
                    'pipe.to("cuda")']
        training = [name for name in layout_for(family.name).left_training if name in components_in_file(model)]
        return [f"from diffusers import {family.pipeline_class}, {scheduler_cls}", "",
                f"pipe = {family.pipeline_class}.from_single_file({path}, config={config}, "
                f"torch_dtype={torch_dtype})",
                *[f"pipe.{name}.eval()  # diffusers' single-file reader leaves it in training mode (dropout on)"
                  for name in training],
                use_student_scheduler, 'pipe.to("cuda")']
    if fmt == "diffusers" and copied:
        remote = ", trust_remote_code=True" if family.pixel_space else ""
        return ["from diffusers import DiffusionPipeline", "",
                f'pipe = DiffusionPipeline.from_pretrained("{HERE}"{remote}, torch_dtype={torch_dtype}{variant})'
                f'.to("cuda")']
    if fmt == "diffusers":
        return [f"from diffusers import DiffusionPipeline, {denoiser_cls}, {scheduler_cls}", "",
                f'{sub} = {denoiser_cls}.from_pretrained("{HERE}", subfolder="{sub}", '
                f'torch_dtype={torch_dtype}{variant})',
                f'scheduler = {scheduler_cls}.from_pretrained("{HERE}", subfolder="scheduler")',
                f'pipe = DiffusionPipeline.from_pretrained({base_args}, {sub}={sub}, scheduler=scheduler).to("cuda")']
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


def diffusers_code(student: Student, fmt: str, files: list[str], dtype: str, copied: bool,
                   denoiser_only: bool = False) -> list[str]:
    """Python code loading the export with diffusers and sampling as dmdr does, or [] where diffusers cannot read it."""
    lines = _pipeline_lines(student, fmt, files, _DTYPE_NAMES[dtype], copied, denoiser_only)
    if not lines:
        return []
    return ["import torch", *lines, "", *sampling_call(student, scheduler_spec(student))]


def comfyui_notes(student: Student, fmt: str, files: list[str], denoiser_only: bool = False) -> list[str]:
    model = student.source.recipe.model
    if student.family.pixel_space:
        return ["ComfyUI and AUTOMATIC1111 run latent-diffusion models; this pixel-space model (no VAE) loads with "
                "the diffusers code above."]
    notes = []
    if writes_single_file(fmt, _full_weights(student)) and denoiser_only:
        notes.append(f"Copy `{files[0]}` to `ComfyUI/models/diffusion_models/` and load it with *Load Diffusion "
                     f"Model*; the text encoders and VAE come from the base model ({model.pretrained}).")
    elif writes_single_file(fmt, _full_weights(student)):
        notes.append(f"Copy `{files[0]}` to `ComfyUI/models/checkpoints/` and load it with *Load Checkpoint* "
                     f"(AUTOMATIC1111 / Forge: `models/Stable-diffusion/`); it holds the whole pipeline "
                     f"({layout_for(student.family.name).description}).")
    elif fmt == "comfyui":
        notes.append(f"Copy `{COMFYUI_FILE}` to `ComfyUI/models/loras/`, load the base model ({model.pretrained}) "
                     f"and apply the LoRA with a *LoraLoaderModelOnly* node at strength 1.0.")
    elif fmt == "safetensors" and _full_weights(student):
        notes.append(f"Copy `{files[0]}` to `ComfyUI/models/diffusion_models/` and load it with *Load Diffusion "
                     f"Model*; the text encoders and VAE come from the base model ({model.pretrained}).")
    else:
        notes.append("For ComfyUI export with `--format comfyui` (a LoRA; full or merged weights: a checkpoint) or "
                     "`--format single-file` (a checkpoint for *Load Checkpoint*).")
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
               metrics: dict[str, dict[str, float]], denoiser_only: bool = False) -> str:
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
        f"| checkpoint | generator step {source.step} (`{source.checkpoint}`)"
        f"{', the generator EMA (decay ' + str(source.recipe.ema.decay) + ')' if source.uses_ema else ''} |",
        f"| steps | {len(student.times)}, no classifier-free guidance |",
        *([f"| guidance embedding | told {family.pipeline_arguments()['guidance_scale']:g} (the pipeline's "
           f"`guidance_scale`), as in training |"] if family.embeds_guidance else []),
        f"| student times t (1 = noise) | {', '.join(f'{t:.6g}' for t in student.times)} |",
        f"| {times_label} | {spec.times!r} |",
        f"| sampler | {_SAMPLERS[student.sampler]} |",
        f"| generator | {generator} |",
        f"| export | `--format {fmt}`{' --denoiser-only' if denoiser_only else ''}, {dtype}, "
        f"{generator_kind(student)}: {', '.join(f'`{f}`' for f in files)} |",
        f"| resolution | {model.resolution} px |",
        "",
    ]
    if metrics:
        lines += ["## Evaluation", "", *_metrics_table(metrics), ""]
    code = diffusers_code(student, fmt, files, dtype, copied, denoiser_only)
    single = writes_single_file(fmt, _full_weights(student))
    lines += ["## diffusers", ""]
    if code:
        if fmt == "diffusers" and not copied:
            lines += ["This folder holds only the student's denoiser and scheduler; the other components come "
                      "from the base model:", ""]
        if family.pixel_space:
            lines += [f"diffusers has no pipeline class for a pixel-space model (no VAE): `{PIXEL_PIPELINE_FILE}` in "
                      f"this folder is one (StableDiffusionPipeline without the VAE), loaded with "
                      f"`trust_remote_code=True`.", ""]
        lines += ["```python", *code, "```", ""]
        if single:
            lines += ["`config=` names the base model whose component configs and tokenizers (no weights) diffusers "
                      "reads to rebuild the pipeline around the file's weights.", ""]
        elif fmt == "comfyui" and family.name == "sdxl":
            lines += ["diffusers reads this kohya-layout file for SDXL UNets whose up-samplers follow attention "
                      "blocks, as in SDXL itself; `--format lora` writes diffusers' own layout.", ""]
    else:
        lines += [f"diffusers has no reader for this {family.name} kohya layout: export with `--format lora` "
                  f"for `load_lora_weights`.", ""]
    lines += [f"The scheduler is `{spec.class_name}` configured to sample as dmdr does (`dmdr sample`): pass the "
              f"{spec.times_argument} exactly as above.", ""]
    lines += ["## ComfyUI", "", *comfyui_notes(student, fmt, files, denoiser_only), ""]
    lines += ["## Recipe", "", "```yaml", source.recipe_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
