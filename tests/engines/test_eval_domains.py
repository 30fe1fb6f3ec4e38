"""Evaluation domains plug into `dmdr sample` and `dmdr evaluate` without engine changes: a toy domain
registered from outside brings its own prompts, judge and distance bench, and is detected from its models
and folders; the shapes world registers through the same interface, and neither engine names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_sample import cli, ok, one_line_error

from dmdr_cli.engines.evaluate import EvaluateOptions, _images_subject
from dmdr_cli.evaluate import domains, sample_sets
from dmdr_cli.errors import DmdrError
from dmdr_cli.evaluate.frechet import frechet_between

ROOT = Path(__file__).resolve().parents[2]
MARKER = "dots.txt"  # a dots folder's own file


class DotsDomain:
    """A miniature world of bright and dark squares: GenEval-format prompts, judged by mean brightness."""

    name = "dots"
    benches = ("dots-distance",)
    score_prompts = "builtin:demo"

    def __init__(self, pretrained: str):
        self.pretrained = pretrained

    def claims_recipe(self, recipe) -> bool:
        return self.claims_pretrained(recipe.model.pretrained)

    def claims_pretrained(self, pretrained: str) -> bool:
        return str(pretrained) == self.pretrained

    def claims_folder(self, folder: Path) -> bool:
        return (folder / MARKER).is_file()

    def check_size(self, height: int, width: int) -> None:
        if height != 16 or width != 16:
            raise DmdrError("dots are 16 px")

    def geneval_set(self, size: int, per_prompt: int, num_prompts: int | None):
        records = [{"tag": tag, "prompt": f"a {tag} square", "include": [{"class": "square", "count": 1}]}
                   for tag in ("bright", "dark")][:num_prompts]
        return sample_sets.GenEvalSet(records, per_prompt, "dots prompts")

    def dpg_set(self, size: int, num_prompts: int | None):
        items = ["one dot", "two dots"][:num_prompts]
        return sample_sets.DpgSet([f"dot-{i}" for i in range(len(items))], items, "dots items",
                                  prepare=lambda out: (out / MARKER).write_text("dpg\n"))

    def sample_kind(self, bench: str) -> str:
        return "geneval" if bench == "dots-distance" else bench

    def score(self, bench: str, folder: Path, settings: dict, report_dir: Path) -> dict:
        rows = sample_sets.read_samples_jsonl(folder)
        brightness = {r["file"]: _brightness(folder / r["file"]) for r in rows}
        if bench == "dots-distance":
            features = np.array([[b] for b in brightness.values()])
            return {"title": "Dots distance", "distance": frechet_between(features, np.full_like(features, 0.5)),
                    "n": len(features), "features": "mean brightness", "reference": "grey"}
        correct = {tag: np.mean([(brightness[r["file"]] > 0.5) == (tag == "bright") for r in rows if r["tag"] == tag])
                   for tag in dict.fromkeys(r["tag"] for r in rows)}
        return {"prompt_set": settings["prompts"], "scores": {**correct, "overall": float(np.mean(list(correct.values())))}}


def _brightness(path: Path) -> float:
    with Image.open(path) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float64).mean() / 255)


@pytest.fixture
def dots(tiny_sd_pixel):
    domain = DotsDomain(str(tiny_sd_pixel))
    domains.register_domain(domain)
    try:
        yield domain
    finally:
        domains.unregister_domain("dots")


def test_a_registered_domain_samples_and_scores_through_the_engines(dots, tiny_sd_pixel, tmp_path):
    out = tmp_path / "report"
    ok("evaluate", "--model", f"teacher:sd:{tiny_sd_pixel}", "--bench", "geneval,dots-distance", "--num-prompts", 2,
       "--steps", 2, "--cfg", 1, "--report", out)  # detected from the model: no --domain
    report = json.loads((out / "report.json").read_text())
    assert report["subject"]["domain"] == "dots"
    folder = out / "samples" / "geneval"
    assert [json.loads((folder / f"{k:05d}" / "metadata.jsonl").read_text())["prompt"] for k in range(2)] == \
        ["a bright square", "a dark square"]
    geneval, distance = report["benches"]["geneval"], report["benches"]["dots-distance"]
    assert geneval["scores"]["overall"] == pytest.approx(0.5)  # one image of each pair is right whatever it draws
    assert distance["n"] == 8 and distance["samples"] == str(folder.resolve())  # reads the GenEval images
    header = (out / "report.md").read_text().splitlines()[4]
    assert header == "| Model | Steps | NFE | dots-GenEval | dots distance |"
    assert "## Dots distance" in (out / "report.md").read_text()


def test_a_domains_folder_is_detected_and_the_official_inputs_refused(dots, tiny_sd_pixel, tmp_path):
    out = tmp_path / "dpg"
    ok("sample", f"teacher:sd:{tiny_sd_pixel}", "--bench", "dpg", "--steps", 1, "--cfg", 1, "--out", out)
    assert (out / MARKER).is_file() and json.loads((out / "sample_settings.json").read_text())["domain"] == "dots"
    (out / "sample_settings.json").write_text(json.dumps({}))  # detection now rests on claims_folder alone
    assert _images_subject(out, EvaluateOptions()).domain == "dots"

    line = one_line_error(cli("sample", f"teacher:sd:{tiny_sd_pixel}", "--bench", "geneval", "--geneval-metadata",
                              tmp_path / "m.jsonl", "--out", tmp_path / "s"))
    assert "--geneval-metadata belongs to the official benchmarks" in line and "--domain official" in line
    line = one_line_error(cli("evaluate", "--model", f"teacher:sd:{tiny_sd_pixel}", "--bench", "dpg", "--dpg-csv",
                              tmp_path / "d.csv", "--report", tmp_path / "r"))
    assert "--dpg-csv belongs to the official benchmarks" in line and not (tmp_path / "r").exists()
    line = one_line_error(cli("evaluate", "--model", f"teacher:sd:{tiny_sd_pixel}", "--domain", "official", "--bench",
                              "dots-distance", "--report", tmp_path / "r"))
    assert "belongs to the dots domain" in line
    line = one_line_error(cli("sample", f"teacher:sd:{tiny_sd_pixel}", "--domain", "dot", "--bench", "geneval",
                              "--out", tmp_path / "s"))
    assert "--domain 'dot'" in line and "dots" in line and "world" in line


def test_the_world_registers_through_the_same_interface():
    from dmdr_cli.recipe import load_recipe
    from dmdr_cli.world.domain import WorldDomain

    assert [type(d) for d in domains.all_domains()] == [WorldDomain]
    assert domains.of_recipe(load_recipe(ROOT / "recipes" / "world" / "dmdr.yaml")) == "world"
    assert domains.of_recipe(load_recipe(ROOT / "recipes" / "sd3-medium" / "4step-refl.yaml")) is None
    for engine in ("evaluate.py", "sample.py", "train.py"):
        text = (ROOT / "dmdr_cli" / "engines" / engine).read_text().replace("world_size", "")
        assert "world" not in text, engine
