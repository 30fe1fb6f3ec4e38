"""Named fault-injection points for the hardening tests.

`DMDR_FAULT=<point>` kills the process with SIGKILL the `DMDR_FAULT_AT`-th time (default 1st) it reaches
that point, so tests can stop a run inside any phase of a step or between the files of a checkpoint
write. Unset (the normal case), a fault point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    target = os.environ.get("DMDR_FAULT")
    if not target or target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(os.environ.get("DMDR_FAULT_AT", "1")):
        os.kill(os.getpid(), signal.SIGKILL)
