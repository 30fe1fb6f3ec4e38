"""The end-of-run world report: the teacher's per-prompt scores cached once, paired intervals, the table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch

from dmdr_cli.world import bench as world_bench
from dmdr_cli.world import report
from dmdr_cli.world.prompts import render_for
from dmdr_cli.world.dense import render_dense


def _entries():
    entries = world_bench.evaluation_entries(24)
    return entries[:1200:50] + entries[-8:]  # 24 GenEval images (one per prompt here) + 2 dense items


def _renders(entries):
    rng = np.random.default_rng(0)
    images = [(render_dense if "questions" in e else render_for)(e, rng, 24)[0] for e in entries]
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images])


def test_evaluation_and_validation_sets_are_frozen_and_apart():
    evaluation, validation = world_bench.evaluation_entries(24), world_bench.validation_entries(24)
    assert len(evaluation) == 600 * 2 + 48 * 4 and len(validation) == 120 + 12 * 4
    geneval_units = {e["unit"] for e in evaluation if "tag" in e}
    assert len(geneval_units) == 600
    assert all(sum(e.get("tag") == t for e in evaluation) == 200 for t in report.TASKS)
    dense_eval = {e["prompt"] for e in evaluation if "questions" in e}
    dense_val = {e["prompt"] for e in validation if "questions" in e}
    assert len(dense_eval) == 48 and not dense_eval & dense_val  # held out from validation (and training)
    from dmdr_cli.world.builtin_prompts import world_validation_prompts

    assert {e["prompt"] for e in validation} <= set(world_validation_prompts())


def test_teacher_scores_are_cached_per_prompt_and_read_back(tmp_path, monkeypatch):
    entries = _entries()
    images = _renders(entries)
    calls = []

    def fake_teacher_images(*args, **kwargs):
        calls.append(1)
        return images

    monkeypatch.setattr(report, "teacher_images", fake_teacher_images)
    family = SimpleNamespace(components=SimpleNamespace(scheduler_config={"name": "ddim"}))
    args = (family, None, None, None, entries, 25, 2.0, None, tmp_path, 24, "cpu")
    first, extra = report.teacher_metrics(*args)
    again, cached = report.teacher_metrics(*args)
    assert len(calls) == 1  # the second call read the cache
    assert again == json.loads(json.dumps(first)) and set(first["units"]) == {"geneval", "dpg"}
    assert len(first["units"]["geneval"]) == len({e["unit"] for e in entries if "tag" in e})
    assert np.allclose(cached["features"], extra["features"]) and torch.equal(cached["grid"], extra["grid"])
    other = report.teacher_metrics(family, None, None, None, entries, 20, 2.0, None, tmp_path, 24, "cpu")
    assert len(calls) == 2 and other[0] == first  # other settings, another key


def test_paired_intervals_of_a_model_against_itself_are_zero_and_a_worse_one_is_below():
    entries = _entries()
    images = _renders(entries)
    def brightness(pixels, prompts):  # a reward: per-image scores, averaged per prompt into units
        return pixels.mean(dim=(1, 2, 3))

    metrics, details = world_bench.world_evaluation(images, entries, reward=brightness)
    same = report.paired_intervals(metrics, metrics, details["features"], details["features"],
                                   details["real_features"])
    assert set(same) == {"geneval", *report.TASKS, "dpg", "reward", "distance"}
    assert all(ci["low"] == ci["high"] == ci["estimate"] == 0 for ci in same.values())
    blank = torch.full_like(images, 40 / 255)  # the background only: nothing drawn
    worse, worse_details = world_bench.world_evaluation(blank, entries, reward=brightness)
    diff = report.paired_intervals(worse, metrics, worse_details["features"], details["features"],
                                   details["real_features"])
    assert diff["geneval"]["high"] < 0 and diff["dpg"]["high"] < 0 and diff["distance"]["low"] > 0
    assert diff["reward"]["high"] < 0  # the mean over prompts of per-prompt means, not over images
    text = report.render_intervals(metrics, worse, diff, entries)
    assert all(len(line) <= 100 for line in text.splitlines()) and "world-GenEval" in text and "[" in text


def test_report_verdicts_name_their_images_and_the_images_read_the_same(tmp_path):
    """results.jsonl can be audited image by image: each verdict's file is the image it judged."""
    from PIL import Image

    entries = _entries()
    images = _renders(entries)
    _, details = world_bench.world_evaluation(images, entries)
    records = details["records"]
    world_bench.write_geneval_images(tmp_path, images, entries, records)
    assert [r["file"] for r in records] == [f"images/{i:04d}.png" for i, e in enumerate(entries) if "tag" in e]
    reread = [np.asarray(Image.open(tmp_path / r["file"])) for r in records]
    again = world_bench.geneval_results(reread, [e for e in entries if "tag" in e])
    assert [r["correct"] for r in again] == [r["correct"] for r in records]
