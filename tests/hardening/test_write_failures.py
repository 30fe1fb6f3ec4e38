"""A checkpoint or export write that fails (disk full, permission denied) leaves the previous checkpoint
intact and nothing half-written, and tells the user in one line (exit 2) what failed.

Failures are simulated where they surface: safetensors raises its own SafetensorError (with the OS error
inside its message) for a failed write, JSON and renames raise OSError.
"""

from __future__ import annotations

import errno

import pytest
import torch
from cli_output import error_line
from safetensors import SafetensorError
from train_helpers import invoke, recipe

from dmdr_cli.errors import DmdrError
from dmdr_cli.runtime import checkpoint as ckpt

DISK_FULL = 'Error while serializing: I/O error: No space left on device (os error 28) at path "{}"'


def raising(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def failing_when(real, condition, make_error):
    def save(tensors, path, *args, **kwargs):
        if condition(str(path)):
            raise make_error(path)
        return real(tensors, path, *args, **kwargs)

    return save


def test_distill_disk_full_keeps_previous_checkpoint(tiny_sd, tmp_path, monkeypatch):
    run = tmp_path / "run"
    path = recipe(tmp_path, "sd", tiny_sd, run, train={"steps": 2, "sample_every": 0})
    monkeypatch.setattr(ckpt, "save_file", failing_when(ckpt.save_file, lambda p: "step-000002" in p,
                                                        lambda p: SafetensorError(DISK_FULL.format(p))))
    res = invoke("coldstart", path)
    assert res.exit_code == 2, res.output
    assert error_line(res) == (f"error: could not write checkpoint {run / 'checkpoints' / 'step-000002'} (No space "
                               f"left on device); the previous checkpoint is intact: free space or fix permissions "
                               f"and --resume latest")
    assert ckpt.latest_in(run).name == "step-000001"
    assert ckpt.load_checkpoint(ckpt.latest_in(run))["state"]["step"] == 1
    assert not list((run / "checkpoints").glob(".partial-*"))


@pytest.mark.parametrize("where", ["weights", "optimizer json", "rename"])
def test_failed_checkpoint_write_leaves_previous_intact(where, tmp_path, monkeypatch):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()

    def save(step):
        return ckpt.save_checkpoint(tmp_path, step, recipe_yaml="x: 1\n", state={}, keep=3,
                                    tensors={"generator": net.state_dict()}, optimizers={"generator": opt})

    save(1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step-000001").iterdir()}
    denied = OSError(errno.EACCES, "Permission denied")
    if where == "weights":
        monkeypatch.setattr(ckpt, "save_file", failing_when(ckpt.save_file, lambda p: True,
                                                            lambda p: SafetensorError(DISK_FULL.format(p))))
    elif where == "optimizer json":
        monkeypatch.setattr(ckpt, "write_json", raising(denied))
    else:
        monkeypatch.setattr(ckpt.os, "rename", raising(denied))
    with pytest.raises(DmdrError, match=r"could not write checkpoint .*step-000002 \((No space left on device|"
                                        r"Permission denied)\); the previous checkpoint is intact"):
        save(2)
    monkeypatch.undo()
    assert ckpt.latest_in(tmp_path).name == "step-000001"
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step-000001").iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000001"]


@pytest.mark.parametrize("fmt", ["safetensors", "diffusers"])
def test_export_disk_full_leaves_nothing(fmt, exportable, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "exports" / "student"
    monkeypatch.setattr(safetensors.torch, "save_file", failing_when(
        safetensors.torch.save_file, lambda p: True, lambda p: SafetensorError(DISK_FULL.format(p))))
    res = invoke("export", exportable, "--format", fmt, "--out", out, "--dtype", "fp32")
    assert res.exit_code == 2, res.output
    assert error_line(res) == (f"error: could not write the export to {out} (No space left on device): free space "
                               f"or fix permissions, then export again")
    assert not (tmp_path / "exports").exists(), "the staging folder and the parents made for it are gone"
