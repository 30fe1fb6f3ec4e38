"""Paired intervals between two `dmdr evaluate` reports (`dmdr evaluate --compare A B`): B - A per bench.

Each report stores its per-unit scores (report.py's docstring says where): GenEval per prompt (its task and
the fraction of its images judged correct), DPG per item id (0-100), each score column per prompt, and for a
domain's distance bench (world-distance) the per-image features in an npz next to report.json. The units
present in both reports are paired (a prompt pairs by its folder index and text, `paired.unit_key`; so do
not prompts of different prompt sets), and the difference B - A gets a 95% percentile bootstrap over them
(evaluate/paired.py, 1,000 seeded resamples): GenEval's overall stratified by task (the mean of task means,
each task keeping its prompt count), each task, DPG's overall, each score column; a distance over paired
images, the same resampled images for both models and A's real renders.

A bench whose units fewer than half pair gets no interval (one line says so), and so does a bench one of the
reports stores no units for (a report written before they were stored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .domains import distance_sections, title_prefix
from .paired import CONFIDENCE, RESAMPLES, Interval, bootstrap_interval, paired_mean_difference

SEED = 0
UNITS = {"geneval": "prompts", "dpg": "items", "scores": "prompts"}  # a distance bench pairs "images"


def paired_differences(a: dict, b: dict, *, seed: int = SEED, resamples: int = RESAMPLES) -> dict:
    """{"rows": [{"metric", "bench", "units", "paired", "a_units", "b_units", "digits", estimate, low, high,
    n, resamples, confidence}], "notes": [one line each], "resamples", "seed", "confidence"} for two sides
    of `report.open_side` (their "report" may be None: an image folder not evaluated)."""
    out = {"difference": "B - A", "resamples": resamples, "seed": seed, "confidence": CONFIDENCE,
           "rows": [], "notes": []}
    reports = [a.get("report"), b.get("report")]
    if not all(reports):
        out["notes"].append("no paired intervals: "
                            + " and ".join(f"{s['label']} is an image folder without a report" for s, r in
                                           zip((a, b), reports) if not r) + " (pass --bench to evaluate it first)")
        return out
    prefix = title_prefix(reports[0].get("subject", {}))
    distances = distance_sections(reports[0]["benches"])
    options = {"seed": seed, "resamples": resamples}
    missing: dict[str, list[str]] = {}  # bench -> labels of the sides without its units
    for bench in (name for name in (*UNITS, *distances) if all(name in r["benches"] for r in reports)):
        sections = [r["benches"][bench] for r in reports]
        if bench == "scores":
            names = [n for n in sections[0].get("metrics", {}) if n in sections[1].get("metrics", {})]
            if not names:
                continue
            tables = _units_of(sections, "per_prompt", (a, b), missing,
                               ", ".join(sections[0]["metrics"][n].get("column", n) for n in names))
            for name in names if tables is not None else []:
                columns = [t["metrics"].index(name) for t in tables]
                units = [{k: v[c] for k, v in t["prompts"].items()} for t, c in zip(tables, columns)]
                _pair_values(out, sections[0]["metrics"][name].get("column", name), bench, units, 2, options)
        elif bench in distances:
            name = distances[bench]["title"].lower()
            features = _features_of(sections, (a, b), missing, out["notes"], name)
            if features is not None:
                _pair_distance(out, features, options, name, bench)
        else:
            title = f"{prefix}{'GenEval' if bench == 'geneval' else 'DPG'}"
            units = _units_of(sections, "units", (a, b), missing, title)
            if units is None:
                continue
            if bench == "dpg":
                _pair_values(out, title, bench, units, 2, options)
            else:
                _pair_geneval(out, title, units, options)
    if missing:
        sides = sorted({label for labels in missing.values() for label in labels})
        out["notes"].append(f"no paired intervals for {', '.join(missing)}: {' and '.join(sides)} stores no "
                            f"per-unit scores there (a report from before they were stored); re-run "
                            f"`dmdr evaluate` on it to get them")
    return out


def _units_of(sections: list[dict], key: str, sides, missing: dict, title: str) -> list[dict] | None:
    lacking = [side["label"] for side, section in zip(sides, sections) if not section.get(key)]
    if lacking:
        missing[title] = lacking
        return None
    return [section[key] for section in sections]


def _common(out: dict, title: str, bench: str, keys: list, minimum: int = 1) -> list | None:
    """The keys of A's units that B also has, in A's order; None (and one line) when fewer than half of the
    larger side's units pair."""
    a, b = keys
    common = [k for k in a if k in b]
    larger = max(len(a), len(b))
    what = UNITS.get(bench, "images")
    if len(common) < max(minimum, (larger + 1) // 2):
        out["notes"].append(f"{title}: only {len(common)} of {len(a)} (A) / {len(b)} (B) {what} pair (same "
                            f"prompt set, same prompt index and text): no interval; compare reports of the same "
                            f"prompts")
        return None
    if len(common) < larger:
        out["notes"].append(f"{title}: {len(common)} of {len(a)} (A) / {len(b)} (B) {what} pair; the interval "
                            f"uses those")
    return common


def _row(out: dict, metric: str, bench: str, interval: Interval, sizes: tuple[int, int], digits: int) -> None:
    out["rows"].append({"metric": metric, "bench": bench, "units": UNITS.get(bench, "images"), "paired": interval.n,
                        "a_units": sizes[0], "b_units": sizes[1], "digits": digits, **interval.as_dict()})


def _pair_values(out: dict, title: str, bench: str, units: list[dict], digits: int, options: dict) -> None:
    common = _common(out, title, bench, [list(u) for u in units])
    if common is None:
        return
    a = [float(units[0][k]) for k in common]
    b = [float(units[1][k]) for k in common]
    _row(out, title, bench, paired_mean_difference(b, a, **options), (len(units[0]), len(units[1])), digits)


def _pair_geneval(out: dict, title: str, units: list[dict], options: dict) -> None:
    """Overall (mean of task means, resampled within each task) and each task; values [tag, fraction]."""
    common = _common(out, title, "geneval", [list(u) for u in units])
    if common is None:
        return
    sizes = (len(units[0]), len(units[1]))
    tags = [units[0][k][0] for k in common]
    a = np.array([float(units[0][k][1]) for k in common])
    b = np.array([float(units[1][k][1]) for k in common])
    _row(out, title, "geneval", paired_mean_difference(b, a, strata=tags, **options), sizes, 3)
    for task in dict.fromkeys(tags):
        mine = np.array([tag == task for tag in tags])
        _row(out, f"{title} {task}", "geneval", paired_mean_difference(b[mine], a[mine], **options), sizes, 3)


def _features_of(sections: list[dict], sides, missing: dict, notes: list[str], title: str) -> list[dict] | None:
    """Each side's distance features {"keys", "generated", "real"}, or None (noted)."""
    loaded = []
    for side, section in zip(sides, sections):
        name = section.get("features_file")
        if not name:
            missing.setdefault(title, []).append(side["label"])
            continue
        path = Path(side.get("folder", ".")) / name
        if not path.is_file():
            notes.append(f"{title}: {path} is missing (it holds {side['label']}'s per-image features): "
                         f"no interval")
            return None
        with np.load(path, allow_pickle=False) as data:
            loaded.append({k: data[k] for k in ("keys", "generated", "real")})
    return loaded if len(loaded) == 2 else None


def _pair_distance(out: dict, features: list[dict], options: dict, title: str, bench: str) -> None:
    """FD(B, real) - FD(A, real) over paired images: both models' features and A's real renders of those
    images resampled together."""
    from .frechet import frechet_between

    keys = [[str(k) for k in f["keys"]] for f in features]
    common = _common(out, title, bench, keys, minimum=2)
    if common is None:
        return
    where = [{k: i for i, k in enumerate(side)} for side in keys]
    ga = features[0]["generated"][[where[0][k] for k in common]].astype(np.float64)
    real = features[0]["real"][[where[0][k] for k in common]].astype(np.float64)
    gb = features[1]["generated"][[where[1][k] for k in common]].astype(np.float64)
    interval = bootstrap_interval(
        len(common), lambda idx: frechet_between(gb[idx], real[idx]) - frechet_between(ga[idx], real[idx]),
        **options)
    _row(out, title, bench, interval, (len(keys[0]), len(keys[1])), 3)


def format_row(row: dict) -> str:
    """"+0.031 [-0.020, +0.080]" in the row's digits."""
    d = row["digits"]
    return f"{row['estimate']:+.{d}f} [{row['low']:+.{d}f}, {row['high']:+.{d}f}]"


def title(paired: dict, prefix: str = "B - A, paired: ") -> str:
    return (f"{prefix}{100 * paired['confidence']:g}% percentile bootstrap over the units both reports hold "
            f"({paired['resamples']} resamples, seed {paired['seed']}); an interval holding 0 is no measured "
            f"difference")


FD_NOTE = ("{title}: FD(B, real) - FD(A, real), bootstrapped over the paired images (both models' features and "
           "A's real renders of the same images resampled together), from each report's features file.")


def markdown(paired: dict) -> list[str]:
    lines = ["## B - A, paired", "", title(paired, prefix="") + "."]
    if paired["rows"]:
        lines += ["", "| metric | paired units | B - A [95% interval] |", "|---|---|---|"]
        lines += [f"| {r['metric']} | {r['paired']} {r['units']} | {format_row(r)} |" for r in paired["rows"]]
    lines += [""]
    for metric in dict.fromkeys(r["metric"] for r in paired["rows"] if r["bench"] not in UNITS):
        lines += [FD_NOTE.format(title=metric.capitalize()), ""]
    lines += [f"- {note}" for note in paired["notes"]]
    return lines + ([""] if paired["notes"] else [])
