"""Process helpers with no heavy imports (workers load this before anything else)."""

from __future__ import annotations

import os


def set_parent_death_signal(expected_parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so no orphan outlives its owner."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if expected_parent is not None and os.getppid() != expected_parent:
        # The parent died before prctl took effect.
        os._exit(1)
