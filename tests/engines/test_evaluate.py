"""`dmdr evaluate` on real-model benchmarks with tiny random judges built in code (no downloads): the score
table, GenEval's detector path, DPG-Bench with a pluggable VQA, splitting over processes, --compare.

Tiny models come from the reward and GenEval tests' fixtures (imported, not copied); sample folders from
test_sample.py's.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from evaluate.test_eval_dpg import HEADER, ROWS
from evaluate.test_eval_geneval_detect import tiny_clip, tiny_mask2former  # noqa: F401  (fixtures)
from PIL import Image
from rewards.conftest import tiny_clip_tokenizer, tiny_hf_clip, tiny_open_clip, tiny_open_clip_arch  # noqa: F401
from test_sample import PROMPTS, cli, ok, prompt_file, student, teacher_samples  # noqa: F401  (fixtures)

from dmdr_cli.evaluate.dpg import evaluate_dpg, load_dpg_csv
from dmdr_cli.evaluate.stats import bootstrap_mean_ci
from dmdr_cli.runtime.distributed import Dist


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.fixture
def score_weights(tiny_open_clip, tiny_hf_clip, tiny_clip_tokenizer, tiny_open_clip_arch, tmp_path) -> dict:
    """Per metric, the options that point it at weight files made from the tiny models."""
    from safetensors.torch import save_file

    from dmdr_cli.rewards.aesthetic import AestheticHead

    folder = tmp_path / "weights"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in tiny_open_clip.state_dict().items()}
    torch.save({"state_dict": state}, folder / "HPS_v2.1_compressed.pt")
    clip_file, arch = folder / "open_clip_model.safetensors", tiny_open_clip_arch
    save_file(state, str(clip_file))
    torch.manual_seed(0)
    torch.save(AestheticHead(in_features=16).state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    tiny_hf_clip.save_pretrained(folder / "pick")
    tiny_clip_tokenizer.save_pretrained(folder / "pick")
    return {
        "hps": ["--hps-weights", folder / "HPS_v2.1_compressed.pt", "--score-option", f"hps.arch={arch}"],
        "clip": ["--clip-weights", clip_file, "--score-option", f"clip.arch={arch}",
                 "--score-option", "clip.pretrained=null"],
        "aesthetic": ["--aesthetic-weights", folder, "--score-option", f"aesthetic.clip_arch={arch}",
                      "--score-option", "aesthetic.clip_pretrained=null",
                      "--score-option", f"aesthetic.clip_path={clip_file}"],
        "pick": ["--pick-weights", folder / "pick", "--score-option", f"pick.processor={folder / 'pick'}"],
    }


def options_of(score_weights: dict, *metrics: str) -> list:
    return [arg for m in metrics for arg in score_weights[m]]


def test_score_table_of_an_image_folder(teacher_samples, score_weights, tiny_open_clip, tmp_path):
    out = tmp_path / "report"
    ok("evaluate", "--images", teacher_samples, "--bench", "scores", "--report", out,
       *options_of(score_weights, "clip", "aesthetic", "pick", "hps"))
    report = report_of(out)
    metrics = report["benches"]["scores"]["metrics"]
    assert list(metrics) == ["clip", "aesthetic", "pick", "hps"]
    assert report["subject"]["steps"] == 3 and report["subject"]["nfe"] == 6  # read from sample_settings.json

    # HPS and CLIP by hand: 100 x cosine of the tiny model's embeddings, prompts as given, averaged per prompt
    # first; HPS with HPSv2's resize-and-pad, CLIP with open_clip's resize-and-crop (the samples are not square)
    from dmdr_cli.rewards.hps import HPSReward
    from dmdr_cli.rewards.openclip import OpenClipCosineReward, open_clip_tokenizer

    tokenizer = open_clip_tokenizer("dmdr-test-tiny-clip")
    for name, reward in (("hps", HPSReward.from_modules(tiny_open_clip, tokenizer)),
                         ("clip", OpenClipCosineReward.from_modules(tiny_open_clip, tokenizer))):
        per_prompt = []
        for p, prompt in enumerate(PROMPTS):
            images = torch.stack([torch.from_numpy(np.asarray(Image.open(teacher_samples / f"{p:05d}_{i:02d}.png"))
                                                   .copy()).permute(2, 0, 1).float() / 255 for i in range(2)])
            with torch.no_grad():
                per_prompt.append(reward(images, [prompt, prompt]).mean().item())
        expected = bootstrap_mean_ci(per_prompt)
        assert metrics[name]["mean"] == pytest.approx(100 * expected.mean, abs=1e-4)
        # per prompt (index and text), for a later --compare to pair
        table = report["benches"]["scores"]["per_prompt"]
        column = table["metrics"].index(name)
        assert {k: v[column] for k, v in table["prompts"].items()} == pytest.approx(
            {f"{p:05d}|{prompt}": 100 * v for p, (prompt, v) in enumerate(zip(PROMPTS, per_prompt))}, abs=1e-4)
        assert metrics[name]["ci95"] == pytest.approx([100 * expected.low, 100 * expected.high], abs=1e-4)
    hps = metrics["hps"]
    assert (hps["n_prompts"], hps["n_images"], hps["units"]) == (2, 4, "100 x cosine")
    for m in metrics.values():
        assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    table = (out / "report.md").read_text()
    assert "| Model | Steps | NFE | CLIP | Aesthetic | Pick | HPS |" in table
    assert (out / "grid_scores.png").is_file()


def test_missing_score_weights_name_the_file_and_the_option(teacher_samples, tmp_path):
    from test_sample import one_line_error

    line = one_line_error(cli("evaluate", "--images", teacher_samples, "--metrics", "hps",
                              "--hps-weights", tmp_path / "nowhere.pt", "--report", tmp_path / "r"))
    assert "HPS_v2.1_compressed.pt" in line and "xswu/HPSv2" in line and "--hps-weights" in line
    line = one_line_error(cli("evaluate", "--images", teacher_samples, "--metrics", "aesthetic",
                              "--report", tmp_path / "r"))
    assert "sac+logos+ava1-l14-linearMSE.pth" in line and "improved-aesthetic-predictor" in line


def test_evaluate_a_model_samples_first_then_scores(tiny_sd, prompt_file, score_weights, tmp_path):
    out = tmp_path / "report"
    ok("evaluate", "--model", f"teacher:sd:{tiny_sd}", "--bench", "scores", "--metrics", "hps", "--prompts",
       prompt_file, "--steps", 2, "--report", out, *options_of(score_weights, "hps"))
    report = report_of(out)
    assert report["subject"]["kind"] == "teacher" and (report["subject"]["steps"], report["subject"]["nfe"]) == (2, 4)
    samples = Path(report["benches"]["scores"]["samples"])
    assert samples == (out / "samples" / "prompts").resolve()
    assert len(list(samples.glob("*.png"))) == len(PROMPTS)


def yes_if_reddish(image, question):
    """A stand-in VQA model for --vqa-model module:function: "yes" when the tile is redder than it is blue."""
    r, _, b = np.asarray(image.convert("RGB")).reshape(-1, 3).mean(axis=0)
    return "yes" if r - b + 20 * (len(question) % 3) > 0 else "no"


@pytest.fixture
def dpg_folder(tiny_sd, tmp_path):
    csv = tmp_path / "dpg_bench.csv"
    csv.write_text("\n".join([HEADER] + ROWS) + "\n")
    out = tmp_path / "dpg"
    ok("sample", f"teacher:sd:{tiny_sd}", "--bench", "dpg", "--dpg-csv", csv, "--steps", 2, "--batch", 8, "--out", out)
    return csv, out


@pytest.mark.parametrize("flags", [[], ["--dpg-all-rows"], ["--dpg-all-rows", "--dpg-lenient-yes"]])
def test_dpg_with_a_pluggable_vqa_matches_the_dpg_scorer(dpg_folder, flags, tmp_path):
    csv, images = dpg_folder
    out = tmp_path / "report"
    ok("evaluate", "--images", images, "--bench", "dpg", "--dpg-csv", csv, "--vqa-model",
       "test_evaluate:yes_if_reddish", "--report", out, *flags)
    dpg = report_of(out)["benches"]["dpg"]
    all_rows, lenient = "--dpg-all-rows" in flags, "--dpg-lenient-yes" in flags
    expected = evaluate_dpg(load_dpg_csv(csv, all_rows), {i: images / f"{i}.png" for i in "ab"}, yes_if_reddish,
                            lenient_yes=lenient)
    assert dpg["scores"]["overall"] == pytest.approx(expected.score)
    assert {k: v for k, v in dpg["scores"].items() if k != "overall"} == pytest.approx(expected.categories)
    assert dpg["dropped"] == expected.dropped and (dpg["all_rows"], dpg["lenient_yes"]) == (all_rows, lenient)
    assert "test_evaluate:yes_if_reddish" in dpg["vqa"] and "mPLUG" in dpg["note"]
    markdown = (out / "report.md").read_text()
    assert dpg["arithmetic"].startswith("official" if not flags else "NOT official") and dpg["arithmetic"] in markdown
    answers = [json.loads(line) for line in (out / "dpg_answers.jsonl").read_text().splitlines()]
    assert answers == expected.answers and dpg["answers"] == str(out / "dpg_answers.jsonl")
    assert dpg["units"] == pytest.approx({k: 100 * v for k, v in expected.per_item.items()})  # per item, 0-100


def fake_processes(monkeypatch, world_size: int):
    """Run 'processes' one after the other: the barrier is a no-op and rank 0 goes last, so it finds every other
    rank's file when it merges (as it would after a real barrier)."""
    monkeypatch.setattr(Dist, "barrier", lambda self: None)
    return [Dist(rank, world_size, torch.device("cpu")) for rank in reversed(range(world_size))]


def test_dpg_split_over_processes_equals_one_process(dpg_folder, monkeypatch, tmp_path):
    from dmdr_cli.evaluate.benches import dpg_folder_scores

    csv, images = dpg_folder
    single = dpg_folder_scores(images, csv, yes_if_reddish, Dist(0, 1, torch.device("cpu")), tmp_path,
                               all_rows=True, answers_file=tmp_path / "one.jsonl")
    merged = [dpg_folder_scores(images, csv, yes_if_reddish, d, tmp_path / "s", all_rows=True,
                                answers_file=tmp_path / "split.jsonl") for d in fake_processes(monkeypatch, 3)]
    assert merged[:2] == [None, None]
    assert merged[2]["scores"] == pytest.approx(single["scores"])
    assert merged[2]["subcategories"] == pytest.approx(single["subcategories"])
    assert merged[2]["units"] == pytest.approx(single["units"]) and len(single["units"]) == 2
    assert (tmp_path / "split.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


def test_geneval_detector_path_and_its_split(tiny_sd, tiny_mask2former, tiny_clip, monkeypatch, tmp_path):  # noqa: F811
    """Mask2Former + CLIP colours on a GenEval-layout folder: a random detector scores noise, but every image is
    scored once, per task, and two processes merge to one process's numbers."""
    from transformers import Mask2FormerImageProcessor

    from dmdr_cli.evaluate.benches import geneval_folder_scores
    from dmdr_cli.evaluate.geneval_detect import Mask2FormerDetector

    out = tmp_path / "geneval"
    ok("sample", f"teacher:sd:{tiny_sd}", "--bench", "geneval", "--num-prompts", 3, "--steps", 2, "--batch", 12,
       "--out", out)
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32)
    detect = Mask2FormerDetector(tiny_mask2former, processor, min_score=0.0, max_per_image=20, shortest_edge=64)
    single = geneval_folder_scores(out, detect, tiny_clip, Dist(0, 1, torch.device("cpu")), tmp_path,
                                   results_file=tmp_path / "one.jsonl")
    assert (single["images"], single["prompts"]) == (12, 3)
    assert set(single["scores"]) == {"single_object", "overall"}  # the first 3 generated prompts: single objects
    assert single["correct_images"] == pytest.approx(single["scores"]["overall"])  # one task: the same mean
    lines = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and set(lines[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata",
                                                  "details"}
    # per prompt: [task, fraction of its 4 images correct], keyed by prompt folder index and text
    expected_units = {f"{p:05d}|{lines[4 * p]['prompt']}": ["single_object", np.mean([r["correct"] for r in
                                                                                      lines[4 * p:4 * p + 4]])]
                      for p in range(3)}
    assert single["units"] == expected_units
    merged = [geneval_folder_scores(out, detect, tiny_clip, d, tmp_path / "s", results_file=tmp_path / "split.jsonl")
              for d in fake_processes(monkeypatch, 2)]
    assert merged[1]["scores"] == single["scores"] and merged[1]["images"] == 12
    assert merged[1]["units"] == expected_units
    assert (tmp_path / "split.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


def test_compare_teacher_and_student_folders(teacher_samples, student, prompt_file, tmp_path):
    student_out = tmp_path / "student"
    ok("sample", student.run, "--prompts", prompt_file, "--per-prompt", 2, "--out", student_out, "--grid")
    out = tmp_path / "compare"
    ok("evaluate", "--compare", teacher_samples, student_out, "--report", out)
    picture = np.asarray(Image.open(out / "compare_images.png").convert("RGB")).astype(int)
    half = (picture.shape[1] - 8) // 2  # two grids, 8 px apart, under a 14 px label row
    left, right = picture[14:, :half], picture[14:, half + 8:]
    # the same prompts and images on both sides: each half is that folder's own grid
    np.testing.assert_array_equal(left, np.asarray(Image.open(teacher_samples / "grid.png").convert("RGB")))
    np.testing.assert_array_equal(right, np.asarray(Image.open(student_out / "grid.png").convert("RGB")))
    assert np.abs(left - right).max() > 0
    assert (out / "report.md").read_text().startswith("# b1 vs student")


def test_scores_split_over_processes_equal_one_process(teacher_samples, tiny_open_clip, monkeypatch, tmp_path):
    from rich.console import Console

    from dmdr_cli.evaluate.sample_sets import read_samples_jsonl
    from dmdr_cli.evaluate.scores import METRICS, ScoreModel, dist_score_rows, summarize_scores
    from dmdr_cli.rewards.openclip import OpenClipCosineReward, open_clip_tokenizer

    reward = OpenClipCosineReward.from_modules(tiny_open_clip, open_clip_tokenizer("dmdr-test-tiny-clip"))
    models = [ScoreModel(METRICS["hps"], reward)]
    rows = read_samples_jsonl(teacher_samples)

    def run(dist, scratch):
        return dist_score_rows(teacher_samples, rows, models, batch=3, dist=dist, workers=0, scratch=scratch,
                               console=Console(quiet=True))

    single = run(Dist(0, 1, torch.device("cpu")), tmp_path)
    merged = [run(d, tmp_path / "s") for d in fake_processes(monkeypatch, 3)][-1]
    assert sorted(r["file"] for r in merged) == sorted(r["file"] for r in single) and len(merged) == 4
    one, split = summarize_scores(single, models)["hps"], summarize_scores(merged, models)["hps"]
    assert split["mean"] == pytest.approx(one["mean"]) and split["ci95"] == pytest.approx(one["ci95"])
