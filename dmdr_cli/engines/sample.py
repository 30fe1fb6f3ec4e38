"""`dmdr sample`: images of a student or a teacher, for prompts or a benchmark, top to bottom.

1. Read MODEL and the prompt set and check --out: whatever the user can get wrong fails here, before any
   weight loads.
2. Load the model on this process's device (`accelerate launch`: each process draws every N-th image).
3. Draw the images not yet on disk in batches, each written as soon as it exists (resumable).
4. Main process: assemble what is built from finished images (DPG grids), samples.jsonl, grid.png.

Image i of prompt p depends on (seed, p, i) only (evaluate/generators.py), so batch size, resuming and
the number of processes never change a single pixel.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from ..errors import DmdrError
from ..runtime.files import check_output_dir
from ..evaluate import domains, sample_sets
from ..evaluate.generators import ModelRef, load_sampler, open_model, sampling_settings
from ..evaluate.sample_sets import SampleSet
from ..evaluate.shards import image_progress, share
from ..runtime.devices import check_device
from ..runtime.distributed import Dist
from ..families.loading import size_multiple

BENCHES = ("geneval", "dpg")


@dataclass
class SampleOptions:
    """The sampling knobs shared by `dmdr sample` and `dmdr evaluate --model`; None: the model's default."""

    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    per_prompt: int | None = None
    batch: int | None = None
    height: int | None = None
    width: int | None = None
    grid: bool = False
    domain: str | None = None  # evaluate/domains.py: a name or "official"; None: detected from the model
    num_prompts: int | None = None  # the first N prompts of a set (quick runs)
    geneval_metadata: Path | None = None
    geneval_english_plurals: bool = False  # non-official wording of the generated GenEval prompts
    dpg_csv: Path | None = None
    device: str | None = None

    def __post_init__(self):
        self.device = check_device(self.device)  # sample and evaluate: refused before anything loads


@dataclass
class SampleResult:
    out: Path
    ref: ModelRef
    sample_set: SampleSet
    settings: dict
    written: int = 0
    skipped: int = 0
    rows: list[dict] = field(default_factory=list)


def read_prompt_options(texts: list[str] | None, file: str | None) -> tuple[list[str], str] | None:
    """--prompt (repeatable) or --prompts FILE (or builtin:NAME) -> (prompts, where from); None if neither."""
    texts = list(texts or [])
    if texts and file:
        raise DmdrError("give --prompt or --prompts, not both")
    if file:
        from ..data.prompts import read_prompts

        return list(read_prompts(file)), f"prompt file {file}"
    if texts:
        if any(not t.strip() for t in texts):
            raise DmdrError("--prompt is empty: give the text to sample, e.g. --prompt 'a photo of a cat'")
        return [t.strip() for t in texts], "--prompt"
    return None


def plan_sample_set(ref: ModelRef, *, bench: str | None, prompts: tuple[list[str], str] | None,
                    options: SampleOptions, height: int) -> SampleSet:
    """The prompt set and layout; cheap (no weights)."""
    if (bench is None) == (prompts is None):
        raise DmdrError("give exactly one of --prompt TEXT, --prompts FILE or --bench geneval|dpg")
    if bench is None:
        return sample_sets.prompt_set(*prompts, per_prompt=options.per_prompt or ref.per_prompt,
                                      num_prompts=options.num_prompts)
    if bench not in BENCHES:
        raise DmdrError(f"--bench {bench!r}: `dmdr sample` writes the image sets of {', '.join(BENCHES)}")
    domain = domains.get_domain(ref.domain)
    domains.refuse_official_options(ref.domain, {"--geneval-metadata": options.geneval_metadata,
                                                 "--geneval-english-plurals": options.geneval_english_plurals,
                                                 "--dpg-csv": options.dpg_csv})
    if bench == "geneval":
        return sample_sets.geneval_set(size=height, metadata=options.geneval_metadata,
                                       per_prompt=options.per_prompt or sample_sets.GENEVAL_PER_PROMPT,
                                       num_prompts=options.num_prompts,
                                       english_plurals=options.geneval_english_plurals, domain=domain)
    if options.per_prompt not in (None, sample_sets.DPG_TILES):
        raise DmdrError(f"--bench dpg writes a 2x2 grid of {sample_sets.DPG_TILES} images per prompt: drop "
                        f"--per-prompt {options.per_prompt}")
    return sample_sets.dpg_set(size=height, csv=options.dpg_csv, num_prompts=options.num_prompts, domain=domain)


def check_sample_options(ref: ModelRef, options: SampleOptions) -> tuple[int, int]:
    """What a model cannot sample, refused before anything loads; returns (height, width)."""
    height, width = options.height or ref.resolution, options.width or ref.resolution
    _check_options(ref, options, height, width)
    return height, width


def _check_options(ref: ModelRef, options: SampleOptions, height: int, width: int) -> None:
    if options.cfg is not None and ref.kind == "student":
        raise DmdrError("--cfg applies to teachers: a distilled student samples without classifier-free guidance "
                        "(NFE = steps); drop --cfg")
    domain = domains.get_domain(ref.domain)
    if domain is not None:
        domain.check_size(height, width)
        return
    multiple = size_multiple(ref.model)
    for name, value in (("--height", height), ("--width", width)):
        if value < multiple or value % multiple:
            raise DmdrError(f"{name} {value}: give a multiple of {multiple}, the model's latent factor (its native "
                            f"size is {ref.resolution})")


def run_sample(model: str, out: Path, *, prompts: tuple[list[str], str] | None = None, bench: str | None = None,
               options: SampleOptions | None = None, console: Console | None = None,
               dist: Dist | None = None, samplers: dict | None = None) -> SampleResult:
    """Draw the set's missing images into `out` (see the module docstring). `samplers`: a cache that keeps a
    loaded model for the next call (`dmdr evaluate` draws several sets from one model)."""
    options = options or SampleOptions()
    console = console or Console(highlight=False)
    out = Path(out)
    # 1. everything checkable without weights
    ref = open_model(model, domain=options.domain)
    height, width = check_sample_options(ref, options)
    sample_set = plan_sample_set(ref, bench=bench, prompts=prompts, options=options, height=height)
    seed = ref.seed if options.seed is None else options.seed
    settings = {**sampling_settings(ref, steps=options.steps, cfg=options.cfg, seed=seed, height=height,
                                    width=width),
                "set": sample_set.kind, "prompts": sample_set.source, "prompts_sha1": sample_set.fingerprint(),
                "per_prompt": sample_set.per_prompt}
    sample_sets.check_settings(out, settings)
    check_output_dir(out, "--out", fix="choose another --out folder")
    dist = dist or Dist.create()
    if options.device is not None:
        dist = Dist(dist.rank, dist.world_size, torch.device(options.device))
    jobs = sample_set.jobs()
    if dist.is_main:
        sample_sets.write_settings(out, settings)
        sample_set.prepare(out)
    dist.barrier()

    # 2-3. this process's share of the images that are not there yet
    mine = share(jobs, dist)
    pending = [job for job in mine if not (out / job.file).is_file()]
    result = SampleResult(out, ref, sample_set, settings, skipped=len(mine) - len(pending))
    if pending:
        size = height if height == width and height != ref.resolution else None
        sampler = _sampler(ref, options, size, console, dist, {} if samplers is None else samplers)
        _draw(sampler, pending, options.batch or ref.batch_size, seed, height, width, out, console, dist, result)
    elif dist.is_main:
        console.print(f"all {len(jobs)} images already in {out}: nothing to sample")

    # 4. assemble on the main process once every image exists
    dist.barrier()
    if dist.is_main:
        missing = [job.file for job in jobs if not (out / job.file).is_file()]
        if missing:
            raise DmdrError(f"{len(missing)} images are missing from {out} (e.g. {missing[0]}): a process failed; "
                            f"run the same command again to draw them")
        sample_set.finish(out)
        row = {"seed": seed, "steps": settings["steps"], "nfe": settings["nfe"], "model": ref.spec}
        sample_sets.write_samples_jsonl(out, sample_set, jobs, row)
        result.rows = sample_sets.read_samples_jsonl(out)
        if options.grid:
            grid = sample_sets.write_grid(out, result.rows, out / sample_sets.GRID_FILE)
            if grid is not None:
                console.print(f"grid: {grid}")
        if result.written:
            console.print(f"[green]sampled[/] {result.written} images ({result.skipped} already there) of "
                          f"{ref.label} to {out}")
    return result


def _sampler(ref: ModelRef, options: SampleOptions, size: int | None, console: Console, dist: Dist, cache: dict):
    key = (ref.identity, options.steps, options.cfg, size)
    if key not in cache:
        from ..runtime.precision import setup_backends

        setup_backends(dist.device)
        with console.status(f"loading {ref.label}") if dist.is_main else contextlib.nullcontext():
            cache[key] = load_sampler(ref, device=dist.device, steps=options.steps, cfg=options.cfg, size=size)
    return cache[key]


def _draw(sampler, pending, batch: int, seed: int, height: int, width: int, out: Path, console: Console, dist: Dist,
          result: SampleResult) -> None:
    progress, task = image_progress(len(pending), f"sampling ({sampler.steps} steps, NFE {sampler.nfe})", console,
                                    dist.is_main)
    with progress:
        for start in range(0, len(pending), batch):
            chunk = pending[start:start + batch]
            images = sampler([job.prompt for job in chunk], [(job.prompt_index, job.image_index) for job in chunk],
                             seed, height, width)
            for job, image in zip(chunk, images):
                sample_sets.save_atomic(sample_sets.to_pil(image), out / job.file)
            result.written += len(chunk)
            progress.advance(task, len(chunk))
