"""A rendezvous for tasks, with no imports beyond the standard library, so that it also loads on the
cluster nodes: tasks that must run on different workers wait for each other instead of sleeping and
hoping that the scheduler spreads them."""

from __future__ import annotations

import os
import time
from pathlib import Path


def meet(rendezvous: str, count: int, timeout: float = 60.0) -> None:
    """Run inside ``count`` tasks: returns once all of them run at the same time, so that they are on
    ``count`` different workers (a worker still starting is waited for, never skipped). ``rendezvous``
    is a directory every one of them can reach."""
    Path(rendezvous).mkdir(parents=True, exist_ok=True)
    (Path(rendezvous) / f"{os.uname().nodename}-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(rendezvous)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(rendezvous))} of {count} tasks ran together in {rendezvous}")
        time.sleep(0.01)
