"""`dmdr evaluate`: a model or a folder of images on the score table (CLIP, Aesthetic, PickScore, HPS),
GenEval and DPG-Bench, or a model of an evaluation domain (evaluate/domains.py) on its domain's own GenEval,
DPG and benches; and the side-by-side comparison of two reports (`--compare`).

Top to bottom:
1. Read the subject (MODEL or the image folder) and the benchmarks' inputs; refuse bad input.
2. Load the judges (score models, detector, VQA): a missing weights file fails here, before any sampling.
3. With --model, draw the images through `dmdr sample`'s own code into <report>/samples/<set>/ (resumable).
4. Score each benchmark's folder (split over `accelerate launch` processes), then the main process writes
   report.json, report.md, the per-task chart and the grids (and, for a run, <run>/eval/<report>.json,
   which `dmdr export` puts in the model card).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import __version__
from ..errors import DmdrError
from ..data.images import IMAGE_SUFFIXES
from ..runtime import files
from ..evaluate import report as reports
from ..evaluate import domains, sample_sets
from ..evaluate.paired_report import paired_differences
from ..runtime.distributed import Dist
from .sample import SampleOptions, run_sample

BENCHES = ("scores", "geneval", "dpg")  # and the domains' own (evaluate/domains.py)


@dataclass
class EvaluateOptions:
    benches: list[str] = field(default_factory=lambda: ["scores"])
    metrics: str = "clip,aesthetic,pick,hps"
    prompts: tuple[list[str], str] | None = None  # the scores bench's prompts (with --model)
    weights: dict[str, str | None] = field(default_factory=dict)  # metric -> weights path
    score_options: dict[str, dict] = field(default_factory=dict)
    geneval_metadata: Path | None = None
    detector: str | None = None  # Mask2Former folder (default: the hub cache's)
    color_clip: str | None = None  # CLIP ViT-L/14 weights for GenEval colours
    dpg_csv: Path | None = None
    vqa_model: str | None = None
    dpg_all_rows: bool = False  # not official: also ask the CSV's first row
    dpg_lenient_yes: bool = False  # not official: "Yes." counts as "yes"
    domain: str | None = None  # a domain's name or "official"; None: detected from the subject
    batch: int = 16  # images per scoring batch
    workers: int | None = None  # PNG decoding processes (default: 8 on GPU, 0 on CPU)
    sample: SampleOptions = field(default_factory=SampleOptions)


def parse_benches(text: str | None) -> list[str]:
    names = [n.strip() for n in (text or "scores").split(",") if n.strip()]
    known = BENCHES + domains.domain_bench_names()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise DmdrError(f"--bench {text!r}: choose from {', '.join(known)} (comma-separated for several)")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------------
# Subjects.

@dataclass
class Subject:
    label: str
    domain: str | None  # evaluate/domains.py; None: the official benches
    ref: object | None = None  # generators.ModelRef with --model
    images: Path | None = None
    info: dict = field(default_factory=dict)  # steps, nfe, cfg, kind when known


def _model_subject(model: str, options: EvaluateOptions) -> Subject:
    from ..evaluate.generators import open_model

    from .sample import check_sample_options

    ref = open_model(model, domain=options.domain)
    check_sample_options(ref, options.sample)  # sizes, --cfg: before any judge loads
    return Subject(label=ref.label, domain=ref.domain, ref=ref)


def _images_subject(images: Path, options: EvaluateOptions) -> Subject:
    if not images.is_dir():
        raise DmdrError(f"--images {images} is not a folder of samples")
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.rglob("*")):  # before any judge loads
        raise DmdrError(f"--images {images} holds no images ({', '.join(IMAGE_SUFFIXES)}): point it at a folder "
                        f"written by `dmdr sample`")
    settings = sample_sets.read_settings(images)
    check_image_folder(images)
    if options.domain is not None:
        domain = domains.chosen(options.domain)
    else:
        domain = settings["domain"] if "domain" in settings else domains.of_folder(images)
    info = {k: settings[k] for k in ("kind", "steps", "nfe", "cfg") if k in settings}
    return Subject(label=images.name, domain=domain, images=images, info=info)


def check_image_folder(folder: Path) -> None:
    """Before any judge loads: samples.jsonl (when there) parses and lists files that exist, and every image in the
    folder decodes far enough to be verified (a corrupt, empty or truncated PNG is one line, not a traceback)."""
    fix = "re-run `dmdr sample` into the folder to redraw it, or delete it"
    if (folder / sample_sets.SAMPLES_FILE).exists():
        for row in sample_sets.read_samples_jsonl(folder):
            path = folder / row["file"]
            if not path.is_file():
                raise DmdrError(f"{folder / sample_sets.SAMPLES_FILE} lists {row['file']}, which is not in {folder}: "
                                f"{fix}")
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        files.check_image(path, "image", fix)


def default_report_dir(model: str | None, images: Path | None) -> Path:
    """reports/<folder or model name>; a teacher's is prefixed, so it never lands in its student's report."""
    if images is not None:
        name = Path(images).name
    else:
        name = model.split(":")[-1].rstrip("/").split("/")[-1]
        name = f"teacher-{name}" if model.startswith("teacher:") else name
    return Path("reports") / (re.sub(r"[^\w.-]+", "-", name).strip("-") or "model")


# ---------------------------------------------------------------------------------------------------
# Judges.

@dataclass
class Judges:
    scores: list = field(default_factory=list)  # scores.ScoreModel
    detect: object | None = None
    colors: object | None = None
    answer: object | None = None
    vqa: str = ""


def _check_inputs(subject: Subject, benches: list[str], options: EvaluateOptions) -> None:
    own = domains.get_domain(subject.domain)
    for bench in (b for b in benches if b not in BENCHES and b not in (own.benches if own else ())):
        owner = next(d.name for d in domains.all_domains() if bench in d.benches)
        raise DmdrError(f"--bench {bench} belongs to the {owner} domain: the subject is not a {owner} model (pass "
                        f"--domain {owner} if it is)")
    if own is not None:
        domains.refuse_official_options(subject.domain, {
            "--geneval-metadata": options.geneval_metadata, "--dpg-csv": options.dpg_csv,
            "--vqa-model": options.vqa_model, "--dpg-all-rows": options.dpg_all_rows,
            "--dpg-lenient-yes": options.dpg_lenient_yes})
    elif "dpg" in benches:
        if options.dpg_csv is None:
            raise DmdrError("--bench dpg needs --dpg-csv PATH: DPG-Bench's dpg_bench.csv (ELLA's repository, "
                            "dpg_bench/dpg_bench.csv; not shipped with dmdr)")
        if options.vqa_model is None:
            raise DmdrError("--bench dpg needs --vqa-model: a local image-text-to-text transformers folder, or "
                            "module:function naming answer(image, question) -> str (the official mPLUG-large does not "
                            "load in transformers)")
    if "scores" in benches and subject.ref is not None and options.prompts is None and own is None:
        raise DmdrError("--bench scores with --model needs prompts: --prompts FILE (one per line) or --prompt TEXT")
    if subject.images is not None and options.prompts is not None:
        raise DmdrError("--prompt / --prompts choose what --model samples: an image folder's prompts are in its "
                        "samples.jsonl; drop them")


def _load_judges(subject: Subject, benches: list[str], options: EvaluateOptions, device, console) -> Judges:
    judges = Judges()
    with console.status("loading the judges"):
        if "scores" in benches:
            from ..evaluate.scores import load_score_models, parse_metrics

            judges.scores = load_score_models(parse_metrics(options.metrics), options.weights, options.score_options,
                                              device)
        if subject.domain is not None:
            return judges  # a domain's benches bring their own judges
        if "geneval" in benches:
            from ..evaluate.geneval_detect import (
                DEFAULT_DETECTOR, load_clip_color_classifier, load_mask2former_detector,
            )

            judges.detect = load_mask2former_detector(options.detector or DEFAULT_DETECTOR, device=str(device))
            judges.colors = load_clip_color_classifier(options.color_clip, device=str(device))
        if "dpg" in benches:
            from ..evaluate.benches import load_vqa

            judges.answer, judges.vqa = load_vqa(options.vqa_model, device=str(device))
    return judges


# ---------------------------------------------------------------------------------------------------
# Sampling (--model) and scoring.

def _sample_folders(subject: Subject, benches: list[str], options: EvaluateOptions, report_dir: Path,
                    console: Console, dist: Dist) -> dict[str, Path]:
    """The folder each benchmark reads: --images for all, or sets drawn from the model under <report>/samples/."""
    if subject.images is not None:
        return {bench: subject.images for bench in benches}
    domain = domains.get_domain(subject.domain)
    folders: dict[str, Path] = {}
    samplers: dict = {}  # the model loads once for all the sets it draws
    for bench in benches:
        kind = "prompts" if bench == "scores" else domain.sample_kind(bench) if domain else bench
        out = report_dir / "samples" / kind
        if kind not in {p.name for p in folders.values()}:
            prompts = None
            if kind == "prompts":
                prompts = options.prompts
                if prompts is None:  # a domain model's score table: its domain's prompts
                    from ..data.prompts import read_prompts

                    prompts = (list(read_prompts(domain.score_prompts)), domain.score_prompts)
            result = run_sample(subject.ref.spec, out, prompts=prompts, bench=None if kind == "prompts" else kind,
                                options=options.sample, console=console, dist=dist, samplers=samplers)
            subject.info = {k: result.settings[k] for k in ("kind", "steps", "nfe", "cfg") if k in result.settings}
        folders[bench] = out
    return folders


GENEVAL_RESULTS, DPG_ANSWERS = "geneval_results.jsonl", "dpg_answers.jsonl"


def _score(bench: str, folder: Path, subject: Subject, judges: Judges, options: EvaluateOptions, dist: Dist,
           report_dir: Path, console: Console) -> dict | None:
    """One benchmark's section of the report (on the main process; None elsewhere). GenEval's per-image results
    (official results.jsonl form) and DPG's per-question answers go next to the report."""
    scratch = report_dir / ".shards"
    settings = sample_sets.read_settings(folder)
    base = {"samples": str(folder.resolve()), "sampling": settings}
    if bench == "scores":
        from ..evaluate.scores import default_workers, dist_score_rows, per_prompt_scores, summarize_scores

        rows = sample_sets.read_samples_jsonl(folder)
        workers = default_workers(dist.device) if options.workers is None else options.workers
        results = dist_score_rows(folder, rows, judges.scores, batch=options.batch, dist=dist, workers=workers,
                                  scratch=scratch, console=console)
        if results is None:
            return None
        return {**base, "prompts": settings.get("prompts", f"samples.jsonl of {folder}"),
                "metrics": summarize_scores(results, judges.scores),
                "per_prompt": per_prompt_scores(results, judges.scores)}
    domain = domains.get_domain(subject.domain)
    if domain is not None:  # a domain's judges are exact and cheap: the main process scores the folder alone
        return {**base, **domain.score(bench, folder, settings, report_dir)} if dist.is_main else None
    from ..evaluate import benches

    if bench == "geneval":
        result = benches.geneval_folder_scores(folder, judges.detect, judges.colors, dist, scratch,
                                               results_file=report_dir / GENEVAL_RESULTS)
        judge = f"{options.detector or 'facebook/mask2former-swin-small-coco-instance'} + CLIP ViT-L/14 colours"
        return None if result is None else {
            **base, "prompt_set": settings.get("prompts", f"metadata.jsonl files of {folder}"), "detector": judge,
            "note": benches.DETECTOR_NOTE, **result}
    result = benches.dpg_folder_scores(folder, options.dpg_csv, judges.answer, dist, scratch,
                                       all_rows=options.dpg_all_rows, lenient_yes=options.dpg_lenient_yes,
                                       answers_file=report_dir / DPG_ANSWERS)
    return None if result is None else {
        **base, "prompt_set": f"DPG-Bench CSV {options.dpg_csv}", "vqa": judges.vqa, "note": benches.VQA_NOTE, **result}


def run_evaluate(*, model: str | None = None, images: Path | None = None, report_dir: Path | None = None,
                 options: EvaluateOptions | None = None, console: Console | None = None,
                 dist: Dist | None = None) -> dict | None:
    """Evaluate and write the report; returns the report dict on the main process (None elsewhere)."""
    options = options or EvaluateOptions()
    console = console or Console(highlight=False)
    if (model is None) == (images is None):
        raise DmdrError("give exactly one of --model MODEL or --images DIR (or --compare DIR_A DIR_B)")
    benches = list(options.benches)
    subject = _model_subject(model, options) if model is not None else _images_subject(Path(images), options)
    _check_inputs(subject, benches, options)
    report_dir = Path(report_dir) if report_dir is not None else default_report_dir(model, images)
    files.check_output_dir(report_dir, "--report", fix="choose another --report folder")
    dist = dist or Dist.create()
    device = dist.device if options.sample.device is None else options.sample.device
    import torch

    dist = Dist(dist.rank, dist.world_size, torch.device(device))
    judges = _load_judges(subject, benches, options, dist.device, console)
    folders = _sample_folders(subject, benches, options, report_dir, console, dist)
    sections = {bench: _score(bench, folders[bench], subject, judges, options, dist, report_dir, console)
                for bench in benches}
    if not dist.is_main:
        return None
    report = {"dmdr_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "subject": _subject_record(subject), "benches": sections}
    reports.write_report(report_dir, report)
    _record_in_run(subject, report_dir, report)
    _print_headline(report, report_dir, console)
    return report


def _subject_record(subject: Subject) -> dict:
    ref = subject.ref
    return {"label": subject.label, "model": ref.spec if ref else None,
            "images": str(subject.images.resolve()) if subject.images else None, "domain": subject.domain,
            "kind": subject.info.get("kind", ref.kind if ref else None), "steps": subject.info.get("steps"),
            "nfe": subject.info.get("nfe"), "cfg": subject.info.get("cfg")}


def _record_in_run(subject: Subject, report_dir: Path, report: dict) -> None:
    """A student's headline numbers also go to <run>/eval/<report name>.json, for its export's model card."""
    ref = subject.ref
    if ref is None or ref.kind != "student" or ref.run_dir is None:
        return
    folder = ref.run_dir / "eval"
    with files.cleanup_on_failure(what="the run's eval folder", target=folder):
        folder.mkdir(exist_ok=True)
    numbers = {k: v for k, v in reports.headline(report).items() if v is not None}
    files.write_text_atomic(folder / f"{report_dir.name}.json", json.dumps(numbers, indent=1) + "\n",
                            what="the run's eval record", fsync=False)


def _print_headline(report: dict, report_dir: Path, console: Console) -> None:
    row = reports.headline(report)
    table = Table(title=f"{report['subject']['label']}")
    for column in row:
        table.add_column(column, justify="right")
    table.add_row(*(reports.format_value(v) for v in row.values()))
    console.print(table)
    console.print(f"[green]report[/] {report_dir / reports.REPORT_MD}")


def run_compare(dir_a: Path, dir_b: Path, out: Path | None = None, *, options: EvaluateOptions | None = None,
                evaluate_images: bool = False, console: Console | None = None) -> Path:
    """Teacher vs student: a table of both reports' numbers, paired B - A intervals over the prompts (items,
    images) both reports hold (paired_report.py), and grids of the same prompts and seeds side by side. Image
    folders without a report are evaluated first when `evaluate_images` (--bench given)."""
    console = console or Console(highlight=False)
    out = Path(out) if out is not None else Path("reports") / f"{Path(dir_a).name}-vs-{Path(dir_b).name}"
    sides = []
    for name, folder in (("a", Path(dir_a)), ("b", Path(dir_b))):
        side = reports.open_side(folder)
        if side["report"] is None and evaluate_images:
            run_evaluate(images=folder, report_dir=out / name, options=options, console=console)
            side = {**reports.open_side(out / name), "label": folder.name}
        sides.append(side)
    paired = paired_differences(*sides)
    reports.write_comparison(out, *sides, paired=paired)
    _print_paired(paired, console)
    console.print(f"[green]comparison[/] {out / reports.REPORT_MD}")
    return out


def _print_paired(paired: dict, console: Console) -> None:
    """The B - A intervals (paired_report.py), and one line for each bench that has none and why."""
    from ..evaluate.paired_report import format_row, title

    if paired["rows"]:
        table = Table(title=title(paired), title_justify="left")
        for column, justify in (("metric", "left"), ("paired units", "right"), ("B - A [95% interval]", "right")):
            table.add_column(column, justify=justify)
        for row in paired["rows"]:
            table.add_row(row["metric"], f"{row['paired']} {row['units']}", format_row(row))
        console.print(table)
    for note in paired["notes"]:
        console.print(f"[yellow]note[/] {note}")
