"""Start N `dmdr distill` processes into one new run folder at the same moment; report each one's exit code.

The parent imports torch, diffusers and dmdr once, then forks N children that each block on one pipe; closing
its write end releases them all at once (the closest to "started at the same moment" a test can get), and
each runs the CLI as `python -m dmdr_cli distill RECIPE -o RUN` does, with its stdout and stderr in its own
log file. The children are ordinary processes: their locks and files are what users' runs would leave.

    python tests/hardening/concurrent_starts.py RECIPE RUN LOGDIR N [HELD]   -> one JSON line: [exit codes]

The last HELD children (default 0) pass the checks made before the models load, then wait (DMDR_FAULT_WAIT at
before-run-open) until the first run has finished (RUN/done.json): the slow start that made a second run
overwrite a finished first one, made certain.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from forked_cli import run_cli_and_exit  # noqa: E402


def start_all(recipe: str, run: str, logs: str, n: int, held: int = 0) -> list[int]:
    import torch

    import dmdr_cli.cli as cli
    import dmdr_cli.engines.train  # noqa: F401  (imported before the fork: the children start equal)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: F401  (lazy modules)
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    torch.set_num_threads(1)
    gate_read, gate_write = os.pipe()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(gate_write)
            if i >= n - held:
                os.environ["DMDR_FAULT_WAIT"] = f"before-run-open:{os.path.join(run, 'done.json')}"
            os.read(gate_read, 1)  # blocks until the parent closes its end: all start together
            run_cli_and_exit(cli, ["distill", recipe, "-o", run], os.path.join(logs, f"{i}.log"))
        pids.append(pid)
    os.close(gate_read)
    os.close(gate_write)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


if __name__ == "__main__":
    recipe_arg, run_arg, logs_arg, n_arg = sys.argv[1:5]
    held_arg = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    print(json.dumps(start_all(recipe_arg, run_arg, logs_arg, int(n_arg), held_arg)), flush=True)
