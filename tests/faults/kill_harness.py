"""Run `dmdr` as real, killable processes without paying torch's import for each one.

A fork server (`python kill_harness.py serve`) imports torch, diffusers and dmdr once, then forks one child per
command; the child runs the CLI exactly as `python -m dmdr_cli ARGS` does, with its own environment
(DMDR_FAULT ...) and its output in a log file. A SIGKILL, SIGTERM or SIGINT hits only the child, which is
a process like any other: its lock, files and exit status are what a user's run would leave. One command
runs at a time. Used by tests/faults and scripts/soak.py.

Also here: the checks every interrupted run must pass (`check_checkpoints`) and the comparison of a run's
checkpoints with an uninterrupted reference run's, bit for bit.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from forked_cli import run_cli_and_exit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TENSOR_FILES = ("generator.safetensors", "fake.safetensors", "optim_generator.safetensors", "optim_fake.safetensors")


def child_env(extra_path: list[Path] = ()) -> dict[str, str]:
    """The environment of a `dmdr` process under test: offline, one thread, `extra_path` importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, extra_path), os.environ.get("PYTHONPATH", "")])}


def wait_for_step(run: Path, step: int, poll, log: Path, timeout: float = 300) -> None:
    """Block until the run's log.jsonl has a line for `step`; `poll()` returns an exit code once the
    process has ended, which fails the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = poll()
        if rc is not None:
            raise AssertionError(f"the run ended (exit {rc}) before step {step}: {log.read_text()[-3000:]}")
        rows = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").is_file() else []
        if any(json.loads(r).get("step", 0) >= step for r in rows if r.endswith("}")):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} in {run / 'log.jsonl'} after {timeout} s")


class ForkServer:
    def __init__(self, extra_path: list[Path] = ()):
        self.proc = subprocess.Popen([sys.executable, __file__, "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=child_env(extra_path), cwd=REPO)
        self.ready = False  # the server imports while the caller goes on; the first command waits for it
        self.pid: int | None = None

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        """Fork a child running `dmdr ARGV` (stdout and stderr appended to `log`); returns its pid."""
        assert self.pid is None, "one command at a time"
        if not self.ready:
            if self._reply(timeout=300) is None:
                raise TimeoutError("the fork server did not finish its imports in 300 s")
            self.ready = True
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "env": env or {}, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        self.pid = self._reply(timeout=30)["pid"]
        return self.pid

    def wait(self, timeout: float) -> int | None:
        """The child's exit code (-9 for SIGKILL, as subprocess reports it), or None if still running."""
        reply = self._reply(timeout)
        if reply is None:
            return None
        self.pid = None
        return reply["rc"]

    def run(self, argv: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 300) -> int:
        self.start(argv, log, env)
        rc = self.wait(timeout)
        if rc is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait(30)
            raise TimeoutError(f"dmdr {' '.join(map(str, argv))} ran past {timeout} s; log: {log}")
        return rc

    def _reply(self, timeout: float):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.kill()  # nothing to flush: each command's results are already on disk
        self.proc.wait(30)


def serve() -> None:
    """The server loop: import once, then per request fork, reply the pid, reap, reply the exit code."""
    import torch
    import diffusers  # noqa: F401
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: F401  (lazy modules)
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    import dmdr_cli.cli
    import dmdr_cli.engines.train  # noqa: F401

    torch.set_num_threads(1)
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_cli_and_exit(dmdr_cli.cli, request["argv"], request["log"], append=True, env=request["env"])
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()


# ---- what an interrupted run must leave -----------------------------------------------------------------

def complete_checkpoints(run: Path) -> dict[int, Path]:
    root = run / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "state.json").is_file()] if root.is_dir() else []
    return {int(p.name.removeprefix("step-")): p for p in found}


def check_checkpoints(run: Path, reference: Path) -> list[str]:
    """Problems with the run's checkpoints (empty: none): every step folder is complete and equals the
    reference run's checkpoint of the same step bit for bit, and `latest` names one of them."""
    from dmdr_cli.runtime.checkpoint import latest_in

    problems = []
    done = complete_checkpoints(run)
    for step, folder in sorted(done.items()):
        missing = [f for f in TENSOR_FILES + ("recipe.yaml", "optim_generator.json", "optim_fake.json")
                   if not (folder / f).is_file()]
        if missing:
            problems.append(f"{folder.name} lacks {missing}")
            continue
        problems += [f"{folder.name}/{d}" for d in differences(folder, reference / "checkpoints" / folder.name)]
    pointer = run / "checkpoints" / "latest"
    if pointer.is_file() and not (run / "checkpoints" / pointer.read_text().strip() / "state.json").is_file():
        problems.append(f"latest names {pointer.read_text().strip()!r}, not a complete checkpoint")
    if done and latest_in(run) is None:
        problems.append("no checkpoint found by --resume latest")
    return problems


def differences(a: Path, b: Path) -> list[str]:
    """The tensor files of checkpoint `a` that differ from `b`'s in any key, shape, dtype or bit."""
    from safetensors.torch import load_file

    out = []
    for name in TENSOR_FILES + tuple(p.name for p in b.glob("rl_*.safetensors")):
        if not (a / name).is_file() or not (b / name).is_file():
            out.append(f"{name} is in only one of them")
            continue
        x, y = load_file(str(a / name)), load_file(str(b / name))
        bad = sorted(k for k in x.keys() | y.keys() if k not in x or k not in y or not _same_bits(x[k], y[k]))
        if bad:
            out.append(f"{name}: {len(bad)} tensors differ (e.g. {bad[0]})")
    return out


def _same_bits(x, y) -> bool:
    """Bit equality (NaN equals NaN, -0.0 differs from 0.0), not numerical closeness."""
    import torch

    def raw(t):
        return t.contiguous().reshape(-1).view(torch.uint8)

    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(raw(x), raw(y))


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
