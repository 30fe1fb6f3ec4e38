"""Evaluation reports: report.json (every number, and which prompts / detector / VQA / weights made it),
report.md (a paper-style table, then each benchmark in detail), a per-task bar chart and image grids;
and the side-by-side comparison of two reports or image folders (`dmdr evaluate --compare`).

A report dict looks like

    {"subject": {"label", "model", "images", "kind", "steps", "nfe", "cfg", "domain"},
     "benches": {"scores": {"samples", "prompts", "metrics": {name: {"mean", "ci95", "column", ...}},
                            "per_prompt": {"metrics": [name], "prompts": {unit: [mean per metric]}}},
                 "geneval": {"samples", "prompt_set", "detector", "scores": {task: accuracy, "overall"},
                             "correct_images", "correct_prompts", "results", "units": {unit: [task, fraction]}},
                 "dpg": {"samples", "prompt_set", "vqa", "arithmetic", "scores": {"overall", category: 0-100},
                         "answers", "units": {item_id: 0-100}},
                 "world-distance": {"samples", "title", "distance", "drift", "features_file", ...}}}

A domain's model (evaluate/domains.py) titles GenEval and DPG after its domain ("world-GenEval"); a domain's
distance bench (a section with "distance" and "title") is one column and one section of its own.

A unit is one prompt, named by its index in the prompt set and its text (`paired.unit_key`), or one DPG item
(DPG-Bench: its id; the shapes world: its id and prompt text, world ids being positions); "features_file"
(e.g. world_distance_features.npz, next to report.json) holds a distance bench's per-image features. They are what
`--compare` pairs for its B - A intervals (paired_report.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime import files
from ..errors import DmdrError
from .domains import distance_sections, title_prefix
from .sample_sets import SAMPLES_FILE, grid_of, read_samples_jsonl, sample_groups, save_atomic, write_grid

REPORT_JSON, REPORT_MD, TASKS_PNG = "report.json", "report.md", "tasks.png"
COMPARE_JSON, COMPARE_PNG = "compare.json", "compare_tasks.png"
SCORE_COLUMNS = ("CLIP", "Aesthetic", "Pick", "HPS")


# ---------------------------------------------------------------------------------------------------
# One report.

def headline(report: dict) -> dict[str, float | int | None]:
    """The paper table's row: Steps, NFE, CLIP, Aesthetic, Pick, HPS, GenEval, DPG (a domain's model: its
    domain's GenEval and DPG, and its distance benches); a column appears only when measured."""
    subject, benches = report.get("subject", {}), report.get("benches", {})
    prefix = title_prefix(subject)
    row: dict = {"Steps": subject.get("steps"), "NFE": subject.get("nfe")}
    metrics = benches.get("scores", {}).get("metrics", {})
    ordered = sorted(metrics.values(), key=lambda m: (SCORE_COLUMNS + (m["column"],)).index(m["column"]))
    for m in ordered:
        row[m["column"]] = m["mean"]
    if "geneval" in benches:
        row[f"{prefix}GenEval"] = benches["geneval"]["scores"]["overall"]
        if "correct_prompts" in benches["geneval"]:  # GenEval's second headline figure
            row["GenEval correct prompts"] = benches["geneval"]["correct_prompts"]
    if "dpg" in benches:
        row[f"{prefix}DPG"] = benches["dpg"]["scores"]["overall"]
    for section in distance_sections(benches).values():
        row[section["title"].lower()] = section["distance"]
    return row


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [[v if isinstance(v, str) else format_value(v) for v in row] for row in rows]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


def write_report(folder: Path, report: dict) -> list[Path]:
    """report.json, report.md, tasks.png and one grid_<bench>.png per sample folder; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [_write_json(folder / REPORT_JSON, report)]
    chart = task_chart([report], [report["subject"]["label"]], folder / TASKS_PNG)
    grids = {}
    for bench, data in report["benches"].items():
        samples = data.get("samples")
        if samples and (Path(samples) / SAMPLES_FILE).is_file() and samples not in grids.values():
            path = write_grid(Path(samples), read_samples_jsonl(Path(samples)), folder / f"grid_{bench}.png")
            if path is not None:
                grids[bench] = samples
                written.append(path)
    files.write_text_atomic(folder / REPORT_MD, _markdown(report, chart is not None, list(grids)),
                            what="the report", fsync=False)
    written.append(folder / REPORT_MD)
    if chart is not None:
        written.append(chart)
    return written


def _markdown(report: dict, chart: bool, grids: list[str]) -> str:
    subject, benches = report["subject"], report["benches"]
    row = headline(report)
    lines = [f"# dmdr evaluation: {subject['label']}", ""]
    if subject.get("model"):
        lines += [f"Model `{subject['model']}` ({subject.get('kind')}"
                  + (f", CFG {subject['cfg']:g}" if subject.get("cfg") else "") + ")."]
    if subject.get("images"):
        lines += [f"Images from `{subject['images']}`."]
    lines += ["", *_table(["Model", *row], [[subject["label"], *row.values()]]), ""]
    if "scores" in benches:
        s = benches["scores"]
        lines += ["## Scores", "", f"Prompts: {s['prompts']}. Means over prompts with 95% bootstrap intervals; "
                                   f"prompts as given (no training prefixes).", ""]
        lines += _table(["score", "mean", "95% CI", "units", "weights"],
                        [[m["column"], m["mean"], f"{m['ci95'][0]:.2f} - {m['ci95'][1]:.2f}", m["units"], m["weights"]]
                         for m in s["metrics"].values()])
        lines += [""]
    for name, title in (("geneval", "GenEval"), ("dpg", "DPG-Bench")):
        if name in benches:
            b = benches[name]
            lines += [f"## {title_prefix(subject).capitalize()}{title}", "", f"Prompts: {b['prompt_set']}."]
            judge = b.get("detector") or b.get("vqa")
            if judge:
                lines += [f"Judge: {judge}."]
            if b.get("note"):
                lines += [b["note"]]
            lines += _bench_details(b)
            lines += [""]
            lines += _table(["task" if name == "geneval" else "category", "score"],
                            [[k, v] for k, v in b["scores"].items()])
            lines += [""]
    for d in distance_sections(benches).values():
        lines += [f"## {d['title']}", "",
                  f"Fréchet distance {d['distance']:.4g} over {d['n']} images: {d['features']}; "
                  f"reference: {d['reference']}.", ""]
        if d.get("drift"):
            lines += _table(["feature (moved most)", "generated", "real"],
                            [[x["feature"], x["generated"], x["real"]] for x in d["drift"]]) + [""]
    if chart:
        lines += [f"![per-task scores]({TASKS_PNG})", ""]
    for bench in grids:
        lines += [f"![{bench} samples](grid_{bench}.png)", ""]
    return "\n".join(lines) + "\n"


def _bench_details(b: dict) -> list[str]:
    """GenEval's summary lines and DPG's arithmetic, and where the per-image / per-question files are."""
    lines = []
    if "correct_prompts" in b:
        lines += [f"Correct images: {100 * b['correct_images']:.2f}% of {b['images']}; correct prompts (at least one "
                  f"correct image, as GenEval's summary_scores.py counts them): {100 * b['correct_prompts']:.2f}% of "
                  f"{b['prompts']}."]
    if b.get("arithmetic"):
        lines += [f"Arithmetic: {b['arithmetic']}; {b['prompts']} prompts scored"
                  + (f", {len(b['dropped'])} dropped as the official script drops them" if b.get("dropped") else "")
                  + "."]
    for key, what in (("results", "Per-image results (the official results.jsonl form)"),
                      ("answers", "Per-question answers")):
        if b.get(key):
            lines += [f"{what}: `{Path(b[key]).name}`."]
    return lines


def _write_json(path: Path, data: dict) -> Path:
    files.write_text_atomic(path, json.dumps(data, indent=1) + "\n", what="the report", fsync=False)
    return path


def task_chart(reports: list[dict], labels: list[str], path: Path) -> Path | None:
    """Grouped bars: GenEval per task (0-1) and DPG per category (0-100, right panel), one colour per report."""
    panels = [(name, title) for name, title in (("geneval", "GenEval per task"), ("dpg", "DPG-Bench per category"))
              if any(name in r["benches"] for r in reports)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for ax, (name, title) in zip(axes[0], panels):
        keys = list(dict.fromkeys(k for r in reports for k in r["benches"].get(name, {}).get("scores", {})))
        width = 0.8 / len(reports)
        for j, (report, label) in enumerate(zip(reports, labels)):
            scores = report["benches"].get(name, {}).get("scores", {})
            xs = [i + (j - (len(reports) - 1) / 2) * width for i in range(len(keys))]
            ax.bar(xs, [scores.get(k, 0.0) for k in keys], width=width, label=label)
        ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1.0 if name == "geneval" else 100.0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------
# Comparing two reports or image folders.

def open_side(folder: Path) -> dict:
    """A report folder (report.json) or an image folder (samples.jsonl) -> {"label", "report", "samples"}."""
    folder = Path(folder)
    if (folder / REPORT_JSON).is_file():
        fix = "evaluate it again to rewrite the report"
        report = files.read_json(folder / REPORT_JSON, "--compare: report", kind=dict, fix=fix)
        try:
            samples = {b: Path(d["samples"]) for b, d in report["benches"].items() if d.get("samples")}
            return {"label": str(report["subject"]["label"]), "report": report, "samples": samples, "folder": folder}
        except (KeyError, TypeError, AttributeError):
            raise DmdrError(f"--compare: {folder / REPORT_JSON} is not a dmdr report (no benches and subject): "
                            f"{fix}") from None
    if (folder / SAMPLES_FILE).is_file():
        return {"label": folder.name, "report": None, "samples": {"images": folder}, "folder": folder}
    raise DmdrError(f"--compare {folder}: neither a report folder (report.json) nor an image folder written by "
                    f"`dmdr sample` (samples.jsonl)")


def write_comparison(out: Path, a: dict, b: dict, paired: dict | None = None) -> list[Path]:
    """compare.json, report.md (table A vs B and B - A, then the paired B - A intervals), grouped task bars
    and side-by-side grids. `paired`: paired_report.paired_differences(a, b), computed here when not given."""
    from . import paired_report

    out.mkdir(parents=True, exist_ok=True)
    paired = paired_report.paired_differences(a, b) if paired is None else paired
    labels = [a["label"], b["label"]] if a["label"] != b["label"] else [f"A: {a['label']}", f"B: {b['label']}"]
    rows = [headline(side["report"]) if side["report"] else {} for side in (a, b)]
    columns = list(dict.fromkeys([*rows[0], *rows[1]]))
    table = [[c, rows[0].get(c), rows[1].get(c), _difference(rows[0].get(c), rows[1].get(c))] for c in columns]
    written = [_write_json(out / COMPARE_JSON, {"labels": labels, "a": rows[0], "b": rows[1], "paired": paired})]
    lines = [f"# {labels[0]} vs {labels[1]}", ""]
    if table:
        lines += _table(["", labels[0], labels[1], "B - A"], table) + [""]
    lines += paired_report.markdown(paired)
    reports = [side["report"] for side in (a, b)]
    if all(reports):
        chart = task_chart(reports, labels, out / COMPARE_PNG)
        if chart is not None:
            written.append(chart)
            lines += [f"![per-task scores]({COMPARE_PNG})", ""]
    for name, folder_a, folder_b in _paired_samples(a["samples"], b["samples"]):
        path = side_by_side(folder_a, folder_b, labels, out / f"compare_{name}.png")
        if path is not None:
            written.append(path)
            lines += [f"## {name} samples (same prompts, same seeds)", "", f"![{name}]({path.name})", ""]
    (out / REPORT_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written + [out / REPORT_MD]


def _difference(x, y):
    return y - x if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None


def _paired_samples(a: dict[str, Path], b: dict[str, Path]) -> list[tuple[str, Path, Path]]:
    """Sample folders to show side by side: each bench both sides sampled (a folder pair once), else the one
    folder each side has."""
    pairs: dict[tuple[Path, Path], str] = {}
    for name in a:
        if name in b:
            pairs.setdefault((a[name], b[name]), name)
    if pairs:
        return [(name, fa, fb) for (fa, fb), name in pairs.items()]
    folders_a, folders_b = list(dict.fromkeys(a.values())), list(dict.fromkeys(b.values()))
    if len(folders_a) == 1 and len(folders_b) == 1:
        return [("images", folders_a[0], folders_b[0])]
    return []


def side_by_side(folder_a: Path, folder_b: Path, labels: list[str], path: Path, max_prompts: int = 6,
                 max_images: int = 4) -> Path | None:
    """Rows of prompts present in both folders: A's images left, B's right, matched by prompt text (its n-th
    occurrence: world prompt sets repeat prompts) and image index, so with equal seeds and prompt files both
    sides started from the same noise. None when nothing matches."""
    groups_b = {key: group for key, group in _keyed_groups(folder_b, max_images)}
    pairs = [(group, groups_b[key]) for key, group in _keyed_groups(folder_a, max_images) if key in groups_b]
    pairs = [(a, b) for a, b in ((_common(a, b), _common(b, a)) for a, b in pairs) if a][:max_prompts]
    if not pairs:
        return None
    halves = [grid_of(Path(folder_a), [a for a, _ in pairs]), grid_of(Path(folder_b), [b for _, b in pairs])]
    if None in halves or halves[0].size != halves[1].size:
        return None
    save_atomic(_labelled_pair(halves, labels), path)
    return path


def _keyed_groups(folder: Path, max_images: int) -> list[tuple[tuple[str, int], list[dict]]]:
    seen: dict[str, int] = {}
    keyed = []
    for group in sample_groups(read_samples_jsonl(folder), 10**9, max_images):
        prompt = group[0]["prompt"]
        seen[prompt] = seen.get(prompt, -1) + 1
        keyed.append(((prompt, seen[prompt]), group))
    return keyed


def _common(group: list[dict], other: list[dict]) -> list[dict]:
    """The rows of `group` whose image index `other` also has."""
    indices = {row.get("image_index", 0) for row in other}
    return [row for row in group if row.get("image_index", 0) in indices]


def _labelled_pair(halves, labels):
    from PIL import Image, ImageDraw

    width, height = halves[0].size
    header, gap = 14, 8
    canvas = Image.new("RGB", (2 * width + gap, height + header), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (half, label) in enumerate(zip(halves, labels)):
        x = k * (width + gap)
        canvas.paste(half, (x, header))
        draw.text((x + 2, 1), label[: max(4, width // 6)], fill="black")
    return canvas
