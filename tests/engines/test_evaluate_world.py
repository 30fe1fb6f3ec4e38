"""The shapes world's benchmarks: clean renders are perfect on world-GenEval and world-DPG and at distance ~0
from real renders; degraded images are not. The Fréchet distance against closed forms; `world_metrics`, the
entry point a training engine calls, against the folder path."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_sample import cli, ok, one_line_error

from dmdr_cli.evaluate import sample_sets
from dmdr_cli.world import bench as world_bench
from dmdr_cli.evaluate.frechet import frechet_between, frechet_distance, trace_sqrt_product
from dmdr_cli.world.features import FEATURE_NAMES, world_features

SIZE = 24


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a drifting generator does to a clean render: a 3x3 blur and grey-level noise."""
    padded = np.pad(image.astype(float), ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[dy:dy + SIZE, dx:dx + SIZE] for dy in range(3) for dx in range(3)) / 9
    return np.clip(blurred + rng.normal(0, 12, image.shape), 0, 255).round().astype(np.uint8)


def write_folder(out: Path, sample_set, entries: list[dict], images: list[np.ndarray]) -> Path:
    """A folder as `dmdr sample` writes it (settings, layout files, images, samples.jsonl)."""
    sample_sets.write_settings(out, {"domain": "world", "set": sample_set.kind, "prompts": sample_set.source,
                                     "steps": 0, "nfe": 0})
    sample_set.prepare(out)
    jobs = sample_set.jobs()
    for job, image in zip(jobs, images, strict=True):
        sample_sets.save_atomic(Image.fromarray(image), out / job.file)
    sample_set.finish(out)
    sample_sets.write_samples_jsonl(out, sample_set, jobs, {"seed": 0, "steps": 0, "nfe": 0, "model": "renders"})
    return out


@pytest.fixture(scope="module")
def geneval_set():
    records, source = world_bench.world_geneval_metadata(SIZE, 24)
    sample_set = sample_sets.GenEvalSet(records, 4, source)
    entries = [records[job.prompt_index] for job in sample_set.jobs()]
    return sample_set, entries, world_bench.reference_renders(entries, SIZE, seed=0)


@pytest.fixture(scope="module")
def clean_geneval(geneval_set, tmp_path_factory) -> Path:
    sample_set, entries, renders = geneval_set
    return write_folder(tmp_path_factory.mktemp("world") / "clean", sample_set, entries, renders)


@pytest.fixture(scope="module")
def degraded_geneval(geneval_set, tmp_path_factory) -> Path:
    sample_set, entries, renders = geneval_set
    rng = np.random.default_rng(0)
    images = [degrade(r, rng) for r in renders]
    return write_folder(tmp_path_factory.mktemp("world") / "degraded", sample_set, entries, images)


@pytest.fixture(scope="module")
def clean_dpg(tmp_path_factory) -> Path:
    items, source = world_bench.world_dpg_items(SIZE, 6)
    sample_set = sample_sets.DpgSet([i["item_id"] for i in items], [i["prompt"] for i in items], source,
                                    prepare=lambda out: world_bench.write_items(out, items))
    entries = [items[job.prompt_index] for job in sample_set.jobs()]
    renders = world_bench.reference_renders(entries, SIZE, seed=3)
    return write_folder(tmp_path_factory.mktemp("world") / "dpg", sample_set, entries, renders)


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_clean_renders_are_perfect_and_at_distance_zero(clean_geneval, clean_dpg, tmp_path):
    ok("evaluate", "--images", clean_geneval, "--bench", "geneval,world-distance", "--report", tmp_path / "g")
    report = report_of(tmp_path / "g")
    assert report["subject"]["domain"] == "world"  # read from sample_settings.json
    geneval = report["benches"]["geneval"]
    assert geneval["scores"] == {task: 1.0 for task in geneval["scores"]} and len(geneval["scores"]) == 7
    assert "exact detector" in geneval["detector"] and geneval["images"] == 96
    distance = report["benches"]["world-distance"]
    assert distance["distance"] == pytest.approx(0.0, abs=1e-9) and distance["n"] == 96
    assert (tmp_path / "g" / "tasks.png").is_file() and "world-GenEval" in (tmp_path / "g" / "report.md").read_text()
    verdicts = [json.loads(line) for line in (tmp_path / "g" / "results.jsonl").read_text().splitlines()]
    assert len(verdicts) == 96 and all(v["correct"] and Path(v["file"]).is_file() for v in verdicts)

    ok("evaluate", "--images", clean_dpg, "--bench", "dpg", "--report", tmp_path / "d")
    dpg = report_of(tmp_path / "d")["benches"]["dpg"]
    assert dpg["scores"]["overall"] == 100.0 and set(dpg["scores"]) >= {"overall", "entity", "attribute", "relation"}
    assert all(v == 100.0 for v in dpg["scores"].values()) and dpg["prompts"] == 6
    assert dpg["units"] == {f"{item['item_id']}|{item['prompt']}": 100.0 for item in world_bench.read_items(clean_dpg)}


def test_degraded_images_score_worse_and_drift(clean_geneval, degraded_geneval):
    real_vs_real = world_bench.distance_folder(clean_geneval, seed=1)  # other renders of the same prompts
    degraded = world_bench.distance_folder(degraded_geneval, seed=0)
    assert 0 < real_vs_real["distance"] and degraded["distance"] > 5 * real_vs_real["distance"]
    moved = {d["feature"] for d in degraded["drift"]}
    assert moved & {"off_palette", "background_noise", "score", "background"}
    assert world_bench.geneval_folder(degraded_geneval)["scores"]["overall"] < 1.0


def test_world_metrics_in_memory_matches_the_folder(geneval_set, clean_geneval, clean_dpg):
    _, entries, renders = geneval_set
    tensor = torch.stack([torch.from_numpy(r).permute(2, 0, 1).float() / 255 for r in renders])
    metrics = world_bench.world_metrics(tensor, entries)
    assert metrics["geneval"] == world_bench.geneval_folder(clean_geneval)["scores"]
    assert metrics["distance"] == pytest.approx(0.0, abs=1e-9) and metrics["n_images"] == 96

    items = world_bench.read_items(clean_dpg)
    tiles = world_bench.reference_renders(items, SIZE, seed=5)  # one image per item
    mixed = world_bench.world_metrics(renders[:8] + tiles, entries[:8] + items,
                                      reward=lambda images, prompts: images.mean(dim=(1, 2, 3)))
    assert mixed["dpg"]["overall"] == 100.0 and set(mixed) >= {"geneval", "dpg", "distance", "reward"}
    assert mixed["distance"] > 0  # the dense tiles were rendered with another seed than the reference
    with pytest.raises(ValueError, match="one entry per image"):
        world_bench.world_metrics(renders[:3], entries[:2])


def test_features_read_the_scene():
    entry = {"tag": "counting", "include": [{"class": "square", "count": 3}], "exclude": [{"class": "square",
             "count": 4}], "prompt": "a photo of three squares"}
    render = world_bench.reference_renders([entry], SIZE)[0]
    features = dict(zip(FEATURE_NAMES, world_features(render)))
    assert features["count_square"] == 3 and features["count_circle"] == 0 and features["fragments"] == 0
    assert features["score"] == 10.0 and features["off_palette"] == 0 and features["background_noise"] == 0


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    # diagonal (commuting) covariances: |mu_a - mu_b|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # invariant to rotating both Gaussians, and exactly 0 for identical ones (even rank-deficient)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    rotated = frechet_distance(q @ mu_a, q @ np.diag(a) @ q.T, q @ mu_b, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)
    low_rank = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 5))
    singular = low_rank @ low_rank.T
    assert frechet_distance(mu_a, singular, mu_a, singular) == pytest.approx(0.0, abs=1e-9)
    # tr sqrt(S_a S_b) of non-commuting matrices: the eigenvalues of the (non-symmetric) product
    s_a, s_b = (m @ m.T for m in rng.normal(size=(2, 4, 4)))
    assert trace_sqrt_product(s_a, s_b) == pytest.approx(np.sqrt(np.linalg.eigvals(s_a @ s_b).real).sum(), rel=1e-8)
    # samples: two draws of one Gaussian come close; a shifted one is |shift|^2 away
    x = rng.normal(size=(20000, 3))
    assert frechet_between(x, x + [3.0, 0, 0]) == pytest.approx(9.0, rel=1e-6)
    assert frechet_between(x, rng.normal(size=(20000, 3))) < 0.01


def test_a_world_teacher_end_to_end(tiny_sd_pixel, tmp_path):
    """Sampling with the world's prompts at 16 px, then every world benchmark, through one command."""
    out = tmp_path / "report"
    ok("evaluate", "--model", f"teacher:sd:{tiny_sd_pixel}", "--domain", "world", "--bench", "geneval,dpg,world-distance",
       "--num-prompts", 2, "--steps", 2, "--batch", 8, "--report", out)
    report = report_of(out)
    assert set(report["benches"]) == {"geneval", "dpg", "world-distance"}
    assert report["benches"]["world-distance"]["n"] == 8  # the world-GenEval images: 2 prompts x 4
    assert (out / "samples" / "dpg" / world_bench.ITEMS_FILE).is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["dpg", "geneval"]
    header = (out / "report.md").read_text().splitlines()[4]
    assert header == "| Model | Steps | NFE | world-GenEval | world-DPG | world distance |"


def test_compare_two_world_reports(clean_geneval, degraded_geneval, tmp_path):
    for name, folder in (("clean", clean_geneval), ("degraded", degraded_geneval)):
        ok("evaluate", "--images", folder, "--bench", "geneval,world-distance", "--report", tmp_path / name)
    units = report_of(tmp_path / "clean")["benches"]["geneval"]["units"]
    assert len(units) == 24 and next(iter(units)) == "00000|" + json.loads(
        (clean_geneval / "00000" / "metadata.jsonl").read_text())["prompt"]
    features = np.load(tmp_path / "degraded" / world_bench.FEATURES_FILE)
    assert features["generated"].shape == features["real"].shape == (96, len(FEATURE_NAMES))
    result = ok("evaluate", "--compare", tmp_path / "clean", tmp_path / "degraded", "--report", tmp_path / "cmp")
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert table["a"]["world-GenEval"] == 1.0 and table["b"]["world-GenEval"] < 1.0
    assert table["b"]["world distance"] > table["a"]["world distance"]
    assert (tmp_path / "cmp" / "compare_tasks.png").is_file() and (tmp_path / "cmp" / "compare_geneval.png").is_file()

    # paired B - A intervals: every prompt and image pairs, so the estimates are the tables' differences
    rows = {row["metric"]: row for row in table["paired"]["rows"]}
    geneval, distance = rows["world-GenEval"], rows["world distance"]
    assert geneval["estimate"] == pytest.approx(table["b"]["world-GenEval"] - 1.0, abs=1e-12)
    assert (geneval["paired"], geneval["resamples"], distance["paired"]) == (24, 1000, 96)
    assert distance["estimate"] == pytest.approx(table["b"]["world distance"] - table["a"]["world distance"], rel=1e-4)
    assert geneval["low"] <= geneval["estimate"] <= geneval["high"] < 0 < distance["low"] <= distance["estimate"]
    assert set(rows) == {"world-GenEval", "world distance", *(f"world-GenEval {task}" for task in geneval_tasks(units))}
    markdown = (tmp_path / "cmp" / "report.md").read_text()
    assert "## B - A, paired" in markdown
    assert f"| world distance | 96 images | {distance['estimate']:+.3f} [" in markdown
    assert "world-GenEval position" in result.output and table["paired"]["notes"] == []


def geneval_tasks(units: dict) -> set[str]:
    return {tag for tag, _ in units.values()}


def test_world_distance_of_a_real_model_is_refused(tiny_sd, tmp_path):
    line = one_line_error(cli("evaluate", "--model", f"teacher:sd:{tiny_sd}", "--bench", "world-distance",
                              "--report", tmp_path / "r"))
    assert "world model" in line and not (tmp_path / "r").exists()
