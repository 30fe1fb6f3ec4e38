"""--device is checked against what torch reports for this machine (here: GPUs faked by patching torch.cuda's
answers, since the test machine has none; the no-CUDA case runs for real in docs/bad-input.md)."""

import pytest
import torch

from dmdr_cli.errors import DmdrError
from dmdr_cli.runtime.devices import check_device


def test_gpu_indices_are_checked_against_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == "cuda" and check_device(" cuda:1 ") == "cuda:1"
    with pytest.raises(DmdrError, match=r"--device cuda:2: this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        check_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "meta", "cuda:-1", ""])
def test_names_that_are_not_devices(spec):
    with pytest.raises(DmdrError, match="is not a device"):
        check_device(spec)


def test_cpu_and_default():
    assert check_device("cpu") == "cpu" and check_device(None) is None
