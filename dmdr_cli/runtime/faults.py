"""Fault injection for the hardening tests (tests/faults, scripts/soak.py); inert unless its variables are set.

DMDR_FAULT=<point> kills the process with SIGKILL the DMDR_FAULT_AT-th time (default 1st) it reaches
`fault_point(point)`, so a test can stop a run inside any phase of a step or between the files of a
checkpoint write. The points, in the order a step reaches them:
  after-generator-forward, after-backward, after-optimizer-step            (engines/train.py, every inner step)
  checkpoint-file-<tensors>  (generator, fake, rl_reference)               (runtime/checkpoint.py, each file)
  checkpoint-optim-<optimizer>  (generator, fake)
  checkpoint-shard-<optimizer>  (each rank's own shard under train.sharding: optimizer, before it is written)
  checkpoint-before-rename, checkpoint-after-rename, checkpoint-after-latest (the latter before pruning)

  before-run-open                                                          (engines/train.py, checks done,
                                                                           models loaded, folder not yet locked)
  before-end-outputs, before-done-marker     (engines/train.py: after the last step's checkpoint, before the sample
                                              grid and run-bench reports; before done.json)

DMDR_FAULT_WAIT=<point>:<path> makes `fault_point(point)` wait (up to 300 s) until <path> exists instead: a
run held between two of its phases while another finishes (tests/hardening/test_concurrent_starts.py).

DMDR_FAULT_SIGNAL=TERM (or INT) sends that signal instead of SIGKILL; DMDR_FAULT_ERROR=ENOSPC (any errno name)
raises that OSError instead, as a failed write would; DMDR_FAULT_RANK=<r> limits the fault to the process whose
RANK (torchrun / accelerate) is r, so a test can preempt one rank of a multi-process run or fail its write.

DMDR_INJECT_NAN=<term>[:<from_step>] makes `inject_nan(term, loss, k)` return NaN (with NaN gradients) for
the loss term dmd, fake or rl at every generator step counter k >= from_step (default 0): `dmd:2` lets
steps 1 and 2 train normally and poisons the DMD loss from step 3 on.

Unset (the normal case), each call costs one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import torch

_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    wait = os.environ.get("DMDR_FAULT_WAIT")
    if wait and wait.partition(":")[0] == name:
        _wait_for(Path(wait.partition(":")[2]))
    target = os.environ.get("DMDR_FAULT")
    if not target or target != name:
        return
    rank = os.environ.get("DMDR_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(os.environ.get("DMDR_FAULT_AT", "1")):
        error = os.environ.get("DMDR_FAULT_ERROR")
        if error:
            code = getattr(errno, error)
            raise OSError(code, os.strerror(code))
        sig = os.environ.get("DMDR_FAULT_SIGNAL")
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}") if sig else signal.SIGKILL)


def _wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def inject_nan(term: str, loss: torch.Tensor, step: int) -> torch.Tensor:
    spec = os.environ.get("DMDR_INJECT_NAN")
    if not spec:
        return loss
    name, _, start = spec.partition(":")
    if name != term or step < int(start or 0):
        return loss
    return loss * float("nan")  # a product, not a replacement: the gradients turn NaN too, as in a real blow-up
