"""`dmdr evaluate --compare`'s paired B - A intervals, on reports with known per-unit scores: the exact paired
mean difference, an interval that holds it and is reproducible, units that do not pair left out, too few
paired units refused in one line, and an older report (no per-unit scores) compared without intervals."""

import copy
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from dmdr_cli.engines.evaluate import run_compare
from dmdr_cli.evaluate.paired_report import paired_differences
from dmdr_cli.evaluate.report import REPORT_JSON, open_side
from dmdr_cli.evaluate.scores import METRICS, ScoreModel, per_prompt_scores, summarize_scores


def report(label: str, geneval: dict, dpg: dict, clip: dict) -> dict:
    return {"subject": {"label": label, "steps": 4, "nfe": 4},
            "benches": {
                "geneval": {"prompt_set": "p", "scores": {"overall": 0.5}, "units": geneval},
                "dpg": {"prompt_set": "d", "scores": {"overall": 50.0}, "units": dpg},
                "scores": {"prompts": "p", "metrics": {name: {"mean": 30.0, "ci95": [29.0, 31.0], "units": "",
                                                              "column": name.upper()} for name in ("hps", "clip")},
                           "per_prompt": {"metrics": ["hps", "clip"],
                                          "prompts": {k: [20.0, v] for k, v in clip.items()}}}}}


TEACHER = report(
    "teacher",
    {"00000|a cube": ["single_object", 1.0], "00001|a disc": ["single_object", 0.5],
     "00002|two cubes": ["counting", 0.25], "00003|a cube and a disc": ["two_object", 0.0],
     "00004|a star": ["single_object", 0.75]},
    {"i1": 50.0, "i2": 100.0, "i3": 0.0},
    {"00000|a cube": 30.0, "00001|a disc": 28.0})
STUDENT = report(
    "student",
    {"00000|a cube": ["single_object", 0.5], "00001|a disc": ["single_object", 1.0],
     "00002|two cubes": ["counting", 0.75], "00003|a cube and a disc": ["two_object", 0.5],
     "00004|a green star": ["single_object", 0.0]},  # same index, another prompt: does not pair with "a star"
    {"i1": 75.0, "i2": 100.0, "i3": 25.0, "i4": 0.0},
    {"00000|a cube": 31.5, "00001|a disc": 27.0, "00002|two cubes": 99.0})  # 00002: B only


def write(tmp_path, name: str, data: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / REPORT_JSON).write_text(json.dumps(data))
    return folder


def compare(tmp_path, a: dict, b: dict, out: str = "cmp") -> tuple[dict, str, str]:
    console = Console(record=True, width=140)
    folder = run_compare(write(tmp_path, f"{out}-a", a), write(tmp_path, f"{out}-b", b), tmp_path / out,
                         console=console)
    data = json.loads((folder / "compare.json").read_text())
    return data, (folder / "report.md").read_text(), console.export_text()


def test_known_per_unit_scores_give_the_exact_paired_difference(tmp_path):
    data, markdown, printed = compare(tmp_path, TEACHER, STUDENT)
    rows = {row["metric"]: row for row in data["paired"]["rows"]}
    # B - A per paired prompt: single_object -0.5, +0.5; counting +0.5; two_object +0.5. The overall is the
    # mean of the task means; the unpaired 00004 prompts (a star / a green star) are left out (with them the
    # single_object mean would be -0.25 and the overall 1/4).
    assert rows["GenEval"]["estimate"] == pytest.approx((0.0 + 0.5 + 0.5) / 3)
    assert rows["GenEval single_object"]["estimate"] == pytest.approx(0.0)
    assert rows["GenEval counting"]["estimate"] == rows["GenEval two_object"]["estimate"] == pytest.approx(0.5)
    assert (rows["GenEval"]["paired"], rows["GenEval"]["a_units"], rows["GenEval"]["b_units"]) == (4, 5, 5)
    assert rows["DPG"]["estimate"] == pytest.approx(50 / 3) and rows["DPG"]["paired"] == 3  # i4: B only
    assert rows["CLIP"]["estimate"] == pytest.approx((1.5 - 1.0) / 2) and rows["HPS"]["estimate"] == 0.0
    assert (rows["CLIP"]["paired"], rows["CLIP"]["a_units"], rows["CLIP"]["b_units"]) == (2, 2, 3)
    for row in rows.values():
        assert row["low"] <= row["estimate"] <= row["high"]
        assert (row["resamples"], row["confidence"]) == (1000, 0.95)
    assert rows["GenEval"]["low"] < rows["GenEval"]["high"]  # the prompts disagree: a real spread
    assert rows["GenEval counting"]["low"] == rows["GenEval counting"]["high"] == pytest.approx(0.5)  # one prompt
    assert "GenEval: 4 of 5 (A) / 5 (B) prompts pair; the interval uses those" in data["paired"]["notes"]

    again, _, _ = compare(tmp_path, TEACHER, STUDENT, out="again")  # same seed, same intervals
    assert again["paired"] == data["paired"]
    other = paired_differences(open_side(tmp_path / "cmp-a"), open_side(tmp_path / "cmp-b"), seed=1)
    assert [r["estimate"] for r in other["rows"]] == [r["estimate"] for r in data["paired"]["rows"]]

    line = f"| GenEval | 4 prompts | {rows['GenEval']['estimate']:+.3f} [{rows['GenEval']['low']:+.3f}, "
    assert "## B - A, paired" in markdown and line in markdown and "| DPG | 3 items | +16.67 [" in markdown
    assert "GenEval two_object" in printed and "+16.67 [" in printed and "1000 resamples, seed 0" in printed


def test_too_few_paired_units_get_no_interval_and_one_line(tmp_path):
    student = copy.deepcopy(STUDENT)
    units = student["benches"]["geneval"]["units"]
    student["benches"]["geneval"]["units"] = {f"{k}, photo": v for k, v in list(units.items())[1:]}
    student["benches"]["geneval"]["units"]["00000|a cube"] = ["single_object", 0.0]
    data, markdown, printed = compare(tmp_path, TEACHER, student)
    assert not any(row["bench"] == "geneval" for row in data["paired"]["rows"])
    assert "DPG" in {row["metric"] for row in data["paired"]["rows"]}  # the other benches still pair
    note = "GenEval: only 1 of 5 (A) / 5 (B) prompts pair (same prompt set, same prompt index and text): no interval"
    assert sum(n.startswith(note) for n in data["paired"]["notes"]) == 1 and note in markdown
    assert sum(note in line for line in printed.splitlines()) == 1


def test_an_older_report_without_units_compares_without_intervals(tmp_path):
    old = copy.deepcopy(TEACHER)
    for name in ("geneval", "dpg"):
        del old["benches"][name]["units"]
    del old["benches"]["scores"]["per_prompt"]
    data, markdown, printed = compare(tmp_path, old, STUDENT)
    assert data["paired"]["rows"] == [] and len(data["paired"]["notes"]) == 1
    note = data["paired"]["notes"][0]
    assert note.startswith("no paired intervals for GenEval, DPG, HPS, CLIP: teacher stores no per-unit scores")
    assert sum("no paired intervals" in line for line in printed.splitlines()) == 1 and note in markdown
    assert data["b"]["DPG"] == data["a"]["DPG"] == 50.0  # the point comparison is still there
    assert "B - A [95% interval]" not in printed


def test_score_table_keeps_per_prompt_means_in_a_sane_size():
    """600 prompts x 4 images x 4 score columns: per-prompt means in printed units, the section < 150 KB."""
    rng = np.random.default_rng(0)
    models = [ScoreModel(METRICS[name], torch.nn.Identity()) for name in ("clip", "aesthetic", "pick", "hps")]
    prompts = [f"a photo of {k} red cubes left of a large blue sphere on a wooden table" for k in range(600)]
    results = [{"file": f"{p:05d}_{i:02d}.png", "prompt": prompts[p], "prompt_index": p,
                **{m.metric.name: float(rng.random()) for m in models}} for p in range(600) for i in range(4)]
    table = per_prompt_scores(results, models)
    assert table["metrics"] == ["clip", "aesthetic", "pick", "hps"] and len(table["prompts"]) == 600
    first = [np.mean([r[m.metric.name] for r in results[:4]]) * m.metric.scale for m in models]
    assert table["prompts"][f"00000|{prompts[0]}"] == pytest.approx(first, rel=1e-6)
    clip = [v[0] for v in table["prompts"].values()]
    assert np.mean(clip) == pytest.approx(summarize_scores(results, models)["clip"]["mean"], rel=1e-6)
    assert len(json.dumps({"metrics": summarize_scores(results, models), "per_prompt": table}, indent=1)) < 150_000


def test_world_distance_pairs_images_by_key_against_as_real_renders(tmp_path):
    """FD(B, real) - FD(A, real) over the images both feature files hold, A's real renders for both."""
    from dmdr_cli.evaluate.frechet import frechet_between
    from dmdr_cli.world.bench import FEATURES_FILE

    rng = np.random.default_rng(0)
    keys = [f"{p:05d}|a cube#{k}" for p in range(20) for k in range(2)]
    a_gen, real, b_gen = rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), rng.normal(1.0, 1.0, size=(40, 3))
    sides = []
    for name, gen, names in (("a", a_gen, keys), ("b", b_gen, keys[:30] + [f"{k}, other" for k in keys[30:]])):
        section = {"title": "World distance", "distance": 1.0, "features_file": FEATURES_FILE}
        folder = write(tmp_path, name, {"subject": {"label": name, "domain": "world"},
                                        "benches": {"world-distance": section}})
        np.savez(folder / FEATURES_FILE, generated=gen.astype(np.float32), real=real.astype(np.float32),
                 keys=np.array(names))
        sides.append(open_side(folder))
    paired = paired_differences(*sides)
    (row,) = paired["rows"]
    a32, r32, b32 = (x[:30].astype(np.float32).astype(np.float64) for x in (a_gen, real, b_gen))
    assert row["estimate"] == pytest.approx(frechet_between(b32, r32) - frechet_between(a32, r32), rel=1e-9)
    assert (row["metric"], row["paired"], row["units"]) == ("world distance", 30, "images")
    assert 0 < row["low"] <= row["estimate"] <= row["high"]
    assert paired["notes"] == ["world distance: 30 of 40 (A) / 40 (B) images pair; the interval uses those"]

    (sides[1]["folder"] / FEATURES_FILE).unlink()
    lines = paired_differences(*sides)["notes"]
    assert paired_differences(*sides)["rows"] == [] and len(lines) == 1 and "is missing" in lines[0]
