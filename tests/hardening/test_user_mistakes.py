"""What users actually do, where docs/bad-input.md cannot say it in one row: a disk that fills (ENOSPC) or has
no room to begin with, a failed write in the middle of a run or a sample set, a resume with a changed recipe
on purpose (--allow-recipe-change), files that block or lie (a FIFO, a truncated PNG, a truncated safetensors
file), and the real exit code of a few commands run as processes.

The tests run as root, whom permission bits do not stop: unwritable places are paths under /proc, and full
disks are simulated where the OS reports them (shutil.disk_usage, a write raising ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from cli_output import error_line
from train_helpers import invoke, log_rows, ok, recipe

from dmdr_cli.errors import DmdrError
from dmdr_cli.runtime import files

REPO = Path(__file__).resolve().parents[2]
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")
Usage = namedtuple("Usage", "total used free")


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_a_disk_without_room_is_refused_before_the_models_load(tiny_sd, tmp_path, monkeypatch):
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - 4 * 2**20, 4 * 2**20))
    import dmdr_cli.families as families

    monkeypatch.setattr(families, "load_family", lambda *a, **k: pytest.fail("a model loaded"))
    res = invoke("distill", path)
    assert res.exit_code == 2, res.output
    assert error_line(res) == (f"error: output.dir (-o) {run}: only 4.0 MiB free on its disk (at least 16 MiB "
                               f"needed): free space or choose another output.dir (-o)")
    assert not run.exists()


def test_a_new_run_whose_first_write_fails_leaves_no_folder(tiny_sd, tmp_path, monkeypatch):
    """The 4 KiB disk of the issue: the run folder's recipe copy cannot be written."""
    from dmdr_cli.runtime import rundir

    run = tmp_path / "deep" / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run)

    def full(path, text, **kwargs):
        raise files.write_error(NO_SPACE, path, kwargs.get("what", "output"))

    monkeypatch.setattr(rundir, "write_text_atomic", full)
    res = invoke("distill", path)
    assert res.exit_code == 2, res.output
    assert error_line(res).startswith(f"error: could not write the run's recipe copy {run / 'recipe.yaml'} (no space "
                                      f"left on device)")
    assert not (tmp_path / "deep").exists(), "no lock, no recipe copy, no folder made for the run"


def test_a_run_whose_log_write_fails_says_so_and_leaves_nothing(tiny_sd, tmp_path, monkeypatch):
    from dmdr_cli.runtime.monitor import MetricsLog

    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, train={"steps": 2, "sample_every": 0})

    def full(self, step, values):
        raise NO_SPACE

    monkeypatch.setattr(MetricsLog, "write", full)
    res = invoke("distill", path)
    assert res.exit_code == 2, res.output
    assert error_line(res) == (f"error: could not write the run folder {run} (no space left on device): free space "
                               f"or fix permissions, then run the command again")
    assert not run.exists(), tree(run)


def test_a_sample_set_interrupted_by_a_full_disk_keeps_its_images_and_no_temporary_file(exportable, tmp_path,
                                                                                       monkeypatch):
    from PIL import Image

    out = tmp_path / "samples"
    real_save, saved = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        if len(saved) == 1:  # the second image: the disk is full
            Path(fp).write_bytes(b"\x89PNG half")  # what a real ENOSPC leaves: part of the temporary file
            raise NO_SPACE
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    args = ("sample", exportable, "--prompt", "a", "--prompt", "b", "--out", out, "--batch", "1")
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert error_line(res).startswith(f"error: could not write image {out}/000") and "(no space left on device)" in \
        error_line(res)
    assert not [p for p in tree(out) if ".tmp" in p], tree(out)
    assert len([p for p in tree(out) if p.endswith(".png")]) == 1, "the image written before the disk filled stays"
    monkeypatch.undo()
    ok(*args)  # the same command resumes: it draws the one missing image
    assert len([p for p in tree(out) if p.endswith(".png")]) == 2


def test_allow_recipe_change_resumes_and_records_the_change(tiny_sd, tmp_path):
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, coldstart={"steps": 1}, train={"steps": 2, "sample_every": 0})
    ok("distill", path)
    res = invoke("distill", path, "--resume", "latest", "train.steps=3", "train.seed=9")
    assert res.exit_code == 2 and "break exact resume (train.seed 3 -> 9)" in error_line(res)
    # the optimizer's hyperparameters are the recipe's: a change is refused like the other keys, and once allowed
    # the recipe wins over the checkpoint's param groups
    res = invoke("distill", path, "--resume", "latest", "train.steps=3", "train.weight_decay=0.1")
    assert res.exit_code == 2 and "break exact resume (train.weight_decay 0.01 -> 0.1)" in error_line(res)
    # a checkpoint that lost one optimizer's state (its tensors still on disk) is damaged, not a fresh fake score
    latest = run / "checkpoints" / "step-000002"
    saved = (latest / "optim_fake.json").read_bytes()
    (latest / "optim_fake.json").unlink()
    res = invoke("distill", path, "--resume", "latest", "train.steps=3")
    assert res.exit_code == 2 and error_line(res) == (f"error: checkpoint {latest} is damaged (optim_fake.json is "
                                                      f"missing): resume or export from another checkpoint of the run")
    (latest / "optim_fake.json").write_bytes(saved)
    ok("distill", path, "--resume", "latest", "train.steps=3", "train.seed=9", "train.weight_decay=0.1",
       "--allow-recipe-change")
    rows = log_rows(run)
    assert {"event": "recipe_change", "changes": ["train.seed 3 -> 9", "train.weight_decay 0.01 -> 0.1"]}.items() \
        <= next(r for r in rows if r.get("event") == "recipe_change").items()
    assert rows[-1]["step"] == 3
    for name in ("generator", "fake"):
        groups = json.loads((run / "checkpoints" / "step-000003" / f"optim_{name}.json").read_text())["param_groups"]
        assert [g["weight_decay"] for g in groups] == [0.1], name


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "prompts.fifo"
    os.mkfifo(fifo)
    with pytest.raises(DmdrError, match=r"is not a regular file \(a device, pipe or socket\)"):
        files.read_text(fifo, "prompt file")


def test_a_truncated_png_is_one_line(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("RGB", (64, 64), "red").save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DmdrError, match=rf"image {path} is not a readable image \("):
        files.open_image(path, "image")


def test_safetensors_headers_are_checked_against_the_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(64), "b": torch.ones(2, 3, dtype=torch.int64)}, str(path))
    assert files.safetensors_header(path) == {"a": {"dtype": "F32", "shape": [64]},
                                              "b": {"dtype": "I64", "shape": [2, 3]}}
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DmdrError, match="is damaged \\(truncated"):
        files.safetensors_header(path)


def test_yaml_merge_keys_still_merge():
    from dmdr_cli.recipe.load import DuplicateKeyError, parse_yaml

    assert parse_yaml("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\n")["m"] == {"x": 3, "y": 2}
    with pytest.raises(DuplicateKeyError) as caught:
        parse_yaml("a:\n  b:\n    c: 1\n    c: 2\n")
    assert (caught.value.first_line, caught.value.second_line) == (3, 4)


@pytest.mark.parametrize("argv, expected", [
    (["recipe", "validate", "DUP"], "error: recipe 'DUP' sets train twice (lines 1 and 3); YAML would silently keep "
                                    "the second: merge them into one"),
    (["distill", "/proc/self/mem"], "error: recipe '/proc/self/mem' cannot be read (input/output error): give the "
                                    "path of a readable YAML file"),
    (["export", "CKPT", "--format", "safetensors", "--out", "/proc/dmdr-export"],
     "error: --out /proc/dmdr-export: its folder is not writable: no such file or folder: choose another --out"),
], ids=["duplicate section", "unreadable recipe", "unwritable export"])
def test_real_processes_exit_2_with_one_line(argv, expected, exportable, tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  steps: 2\ntrain:\n  steps: 4\n")
    places = {"DUP": str(dup), "CKPT": str(exportable)}
    argv = [places.get(a, a) for a in argv]
    expected = expected.replace("DUP", str(dup))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "dmdr_cli", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert error_line(done) == expected
    assert "Traceback" not in done.stderr
    assert json.dumps(tree(tmp_path)) == json.dumps(["dup.yaml"]), "nothing left behind"
