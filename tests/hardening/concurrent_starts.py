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
            _child(cli, ["distill", recipe, "-o", run], os.path.join(logs, f"{i}.log"))
        pids.append(pid)
    os.close(gate_read)
    os.close(gate_write)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def _child(cli, argv: list[str], log_path: str) -> None:
    code = 1
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.argv = ["dmdr", *argv]
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    recipe_arg, run_arg, logs_arg, n_arg = sys.argv[1:5]
    held_arg = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    print(json.dumps(start_all(recipe_arg, run_arg, logs_arg, int(n_arg), held_arg)), flush=True)
