"""`dmdr sample` end to end on tiny pipelines, driven in-process through the CLI (CPU, fp32).

The student checkpoint is written by the export tests' helper (tests/export/trained_students.py); the DPG
CSV is the DPG tests' (tests/evaluate/test_eval_dpg.py).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from evaluate.test_eval_dpg import HEADER, ROWS
from export.trained_students import train
from PIL import Image
from typer.testing import CliRunner

from dmdr_cli.cli import app
from dmdr_cli.dmd.randomness import keyed_generator
from dmdr_cli.evaluate.geneval_prompts import validate_metadata
from dmdr_cli.sampling import sample

PROMPTS = ["a red cat", "two blue cubes on the left of a dog"]
runner = CliRunner()


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args) -> object:
    result = cli(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): pixels(p) for p in sorted(folder.rglob("*.png"))}


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="session")
def student(tiny_sd, tmp_path_factory):
    """A full-fine-tune sd student (2 steps, sde), saved as `dmdr distill` saves checkpoints."""
    return train(tmp_path_factory.mktemp("student") / "run", "sd", tiny_sd, finetune="full", steps=2)


@pytest.fixture(scope="session")
def teacher_samples(tiny_sd, prompt_file, tmp_path_factory) -> Path:
    """The tiny sd teacher, 2 prompts x 2 images, 3 steps, batch 1 (other tests compare against it)."""
    out = tmp_path_factory.mktemp("teacher") / "b1"
    ok("sample", f"teacher:sd:{tiny_sd}", "--prompts", prompt_file, "--per-prompt", 2, "--steps", 3, "--batch", 1,
       "--out", out, "--grid")
    return out


def test_teacher_rows_and_files(teacher_samples, tiny_sd):
    assert sorted(pngs(teacher_samples)) == ["00000_00.png", "00000_01.png", "00001_00.png", "00001_01.png", "grid.png"]
    listed = rows(teacher_samples)
    assert [r["file"] for r in listed] == ["00000_00.png", "00000_01.png", "00001_00.png", "00001_01.png"]
    assert [r["prompt"] for r in listed] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    # a teacher with CFG (default 7) evaluates its network twice per step
    assert {(r["seed"], r["steps"], r["nfe"], r["model"]) for r in listed} == {(0, 3, 6, f"teacher:sd:{tiny_sd}")}
    assert pixels(teacher_samples / "00000_00.png").shape == (16, 16, 3)  # the pipeline's native size


def test_same_seed_same_images_whatever_the_batch(teacher_samples, tiny_sd, prompt_file, tmp_path):
    ok("sample", f"teacher:sd:{tiny_sd}", "--prompts", prompt_file, "--per-prompt", 2, "--steps", 3, "--batch", 3,
       "--out", tmp_path / "b3")
    first, second = pngs(teacher_samples), pngs(tmp_path / "b3")
    first.pop("grid.png")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert len({a.tobytes() for a in first.values()}) == 4  # four different noises, not one image four times


def test_resume_draws_only_what_is_missing(teacher_samples, tiny_sd, prompt_file, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(teacher_samples, out)
    (out / "00001_00.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("0*.png")}
    result = ok("sample", f"teacher:sd:{tiny_sd}", "--prompts", prompt_file, "--per-prompt", 2, "--steps", 3,
                "--out", out)
    assert "sampled 1 images (3 already there)" in " ".join(result.output.split())
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0*.png") if p.name in before} == before
    np.testing.assert_array_equal(pixels(out / "00001_00.png"), pixels(teacher_samples / "00001_00.png"))
    again = ok("sample", f"teacher:sd:{tiny_sd}", "--prompts", prompt_file, "--per-prompt", 2, "--steps", 3,
               "--out", out)
    assert "nothing to sample" in " ".join(again.output.split())


def test_student_checkpoint_samples_with_its_own_sampler(student, prompt_file, tmp_path):
    """The run folder's student reproduces `sampling.sample` of the in-memory student, with noise keyed by
    (seed, prompt index, image index) and sde step noise by (..., "step"), at the student's own 2 steps."""
    out = tmp_path / "student"
    ok("sample", student.run, "--prompts", prompt_file, "--seed", 5, "--batch", 2, "--out", out)
    listed = rows(out)
    assert [(r["steps"], r["nfe"], r["seed"]) for r in listed] == [(2, 2, 5)] * 2
    family = student.family
    for p, prompt in enumerate(PROMPTS):
        noise = family.noise(1, 16, 16, generator=keyed_generator(5, p, 0))
        steps = keyed_generator(5, p, 0, "step")
        with torch.no_grad():
            x0 = sample(family, student.student, noise, family.encode_prompts([prompt]), student.times, "sde",
                        lambda like: torch.randn(like.shape[1:], generator=steps)[None].to(like))
            expected = (family.decode(x0)[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
        assert np.abs(pixels(out / f"{p:05d}_00.png") - expected).max() <= 1


def test_geneval_layout(tiny_sd, tmp_path):
    out = tmp_path / "geneval"
    ok("sample", f"teacher:sd:{tiny_sd}", "--bench", "geneval", "--num-prompts", 2, "--steps", 2, "--batch", 8,
       "--out", out)
    for index in (0, 1):
        folder = out / f"{index:05d}"
        record = json.loads((folder / "metadata.jsonl").read_text())
        validate_metadata(record, str(folder))  # GenEval's own format, COCO classes
        assert sorted(p.name for p in (folder / "samples").iterdir()) == [f"{k:04d}.png" for k in range(4)]
    settings = json.loads((out / "sample_settings.json").read_text())
    assert settings["set"] == "geneval" and "generated" in settings["prompts"] and settings["domain"] is None


def test_dpg_layout_is_a_2x2_grid_per_item(tiny_sd, tmp_path):
    csv = tmp_path / "dpg_bench.csv"
    csv.write_text("\n".join([HEADER] + ROWS) + "\n")
    out = tmp_path / "dpg"
    ok("sample", f"teacher:sd:{tiny_sd}", "--bench", "dpg", "--dpg-csv", csv, "--steps", 2, "--batch", 8, "--out", out)
    for item in ("a", "b"):
        grid = pixels(out / f"{item}.png")
        assert grid.shape == (32, 32, 3)
        tiles = [pixels(out / "tiles" / f"{item}_{k}.png") for k in range(4)]
        np.testing.assert_array_equal(grid[:16, 16:], tiles[1])  # top-right is the second sample
        np.testing.assert_array_equal(grid[16:, :16], tiles[2])
    assert {r["item_id"] for r in rows(out)} == {"a", "b"}


def test_world_model_samples_the_worlds_prompts(tiny_sd_pixel, tmp_path):
    out = tmp_path / "world"
    ok("sample", f"teacher:sd:{tiny_sd_pixel}", "--domain", "world", "--bench", "geneval", "--num-prompts", 3, "--steps", 2,
       "--cfg", 1, "--out", out)
    record = json.loads((out / "00000" / "metadata.jsonl").read_text())
    assert record["include"][0]["class"] in ("circle", "square", "triangle")
    assert {r["nfe"] for r in rows(out)} == {2}  # CFG 1 is no guidance: one evaluation per step


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.mark.parametrize("case, expected", [
    ("no prompts", "exactly one of --prompt"),
    ("empty prompt file", "has no prompts"),
    ("missing model", "does not exist"),
    ("unknown family", "unknown family 'sdx'"),
    ("other settings", "seed=0, not 1"),
    ("cfg for a student", "--cfg applies to teachers"),
    ("dpg without csv", "--dpg-csv"),
])
def test_bad_input_is_one_line_and_exit_2(case, expected, tiny_sd, teacher_samples, student, prompt_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    teacher = f"teacher:sd:{tiny_sd}"
    args = {
        "no prompts": [teacher, "--out", tmp_path / "x"],
        "empty prompt file": [teacher, "--prompts", empty, "--out", tmp_path / "x"],
        "missing model": [tmp_path / "no-such-run", "--prompt", "a cat", "--out", tmp_path / "x"],
        "unknown family": [f"teacher:sdx:{tiny_sd}", "--prompt", "a cat", "--out", tmp_path / "x"],
        "other settings": [teacher, "--prompts", prompt_file, "--per-prompt", 2, "--steps", 3, "--seed", 1,
                           "--out", teacher_samples],
        "cfg for a student": [student.run, "--prompt", "a cat", "--cfg", 3, "--out", tmp_path / "x"],
        "dpg without csv": [teacher, "--bench", "dpg", "--out", tmp_path / "x"],
    }[case]
    assert expected in one_line_error(cli("sample", *args))
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_teacher_of_a_run_is_the_bare_teacher_with_the_recipes_settings(student, tiny_sd, teacher_samples, tmp_path):
    """teacher:RUN samples the teacher the run distils, with the recipe's CFG (guidance.scale 7) and uncond:
    here the same pixels as teacher:sd:PATH with the same seed and steps."""
    out = tmp_path / "run-teacher"
    ok("sample", f"teacher:{student.run}", "--prompt", PROMPTS[0], "--steps", 3, "--out", out)
    settings = json.loads((out / "sample_settings.json").read_text())
    assert (settings["kind"], settings["cfg"], settings["nfe"]) == ("teacher", 7.0, 6)
    assert settings["uncond"] == "empty_prompt"
    np.testing.assert_array_equal(pixels(out / "00000_00.png"), pixels(teacher_samples / "00000_00.png"))


def test_flux_teachers_sample_at_their_pipelines_guidance(tiny_flux, tiny_flux_schnell):
    """A bare FLUX.1 teacher: dev is told FluxPipeline's 3.5 through its embedding (one pass per step), schnell runs
    without guidance; both at FluxPipeline's default size (128 latents: 256 px with the tiny VAE)."""
    from dmdr_cli.evaluate.generators import open_model, sampling_settings

    for folder, cfg in ((tiny_flux, 3.5), (tiny_flux_schnell, 1.0)):
        ref = open_model(f"teacher:flux:{folder}")
        settings = sampling_settings(ref, steps=4, cfg=None, seed=0, height=ref.resolution, width=ref.resolution)
        assert (settings["cfg"], settings["nfe"], ref.resolution) == (cfg, 4, 256)
    dev = open_model(f"teacher:flux:{tiny_flux}")
    assert sampling_settings(dev, steps=4, cfg=5.0, seed=0, height=16, width=16)["nfe"] == 4


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_student_samples_at_its_own_steps_whatever_sample_steps_says(family, request, tmp_path):
    """sample.steps is the teacher's (the world recipe sets 25): a 2-step student is drawn at its own 2 steps
    and trained times unless --steps says otherwise."""
    from dmdr_cli.evaluate.generators import load_sampler, open_model, sampling_settings

    trained = train(tmp_path / "run", family, request.getfixturevalue(f"tiny_{family}"), finetune="lora", steps=2,
                    sample={"steps": 25})
    ref = open_model(str(trained.run))
    settings = sampling_settings(ref, steps=None, cfg=None, seed=0, height=16, width=16)
    assert (settings["steps"], settings["nfe"]) == (2, 2)
    sampler = load_sampler(ref, device=torch.device("cpu"))
    assert sampler.steps == 2 and sampler.times == pytest.approx(trained.times)
    assert load_sampler(ref, device=torch.device("cpu"), steps=3).steps == 3
