"""Memory limits of workers: the limit itself (``RLIMIT_DATA``), the resident size of a worker with its
children, and whether the kernel's OOM killer ended a process (the memory cgroup's ``oom_kill`` counter).

Used by the worker pool's runtime; the decisions (when a task is over its limit, what its result says)
are in ``htex_ref.core.manager``. What works where, measured: ``RLIMIT_DATA`` is enforced by Linux >= 4.7
for every private writable mapping, so a task's allocation past it raises ``MemoryError`` in Python (and
NumPy) without touching other workers. It needs no privilege; it held on this machine, inside jobs of the
local Slurm cluster and on the Docker Compose cluster's nodes (``tests/e2e/test_task_control.py``,
``tests/cluster/test_task_control.py``). It does not count memory a task maps from files or shares, nor
its children's (each child gets a limit of its own): the pool's RSS sampling covers those.

The pool does not create a cgroup per worker (``memory.max``). On this machine the unified (v2)
hierarchy has no memory controller; a root process could create v1 memory cgroups (the OOM test does),
but in a batch job the cgroups are the batch system's (Slurm's ``--mem``), and unprivileged pools cannot
write them. Kills by the kernel's OOM killer in whatever cgroup the pool runs in are told apart through
the counter read here.
"""

from __future__ import annotations

import os
import resource


def set_data_limit(pid: int, limit: int) -> None:
    """Limit the private writable memory of process ``pid`` (and of the children it starts) to ``limit`` bytes."""
    resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))


def data_limit() -> int | None:
    """This process's ``RLIMIT_DATA`` (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else soft


def peak_rss() -> int:
    """The most resident memory this process has held, in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_oom_kills(text: str) -> int | None:
    """The ``oom_kill`` counter from cgroup v2 ``memory.events`` or v1 ``memory.oom_control`` text."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
            return int(parts[1])
    return None


def memory_cgroup_file(proc_cgroup: str, root: str = "/sys/fs/cgroup") -> str | None:
    """The file that counts OOM kills for the cgroup described by ``/proc/self/cgroup`` text: v1's
    ``memory.oom_control`` when a memory controller line is present, else v2's ``memory.events``."""
    v2 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            return os.path.join(root, "memory", path.lstrip("/"), "memory.oom_control")
        if controllers == "" and parts[0] == "0":
            v2 = path
    if v2 is None:
        return None
    for base in (os.path.join(root, "unified"), root):
        candidate = os.path.join(base, v2.lstrip("/"), "memory.events")
        if os.path.exists(candidate):
            return candidate
    return None


class OomWatch:
    """Tells whether the OOM killer struck this process's cgroup since the last look."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/cgroup") as f:
                self.path = memory_cgroup_file(f.read())
        except OSError:
            self.path = None
        self.seen = self.count()

    def count(self) -> int | None:
        if self.path is None:
            return None
        try:
            with open(self.path) as f:
                return parse_oom_kills(f.read())
        except OSError:
            return None

    def struck(self) -> bool:
        """True when the counter rose since the last call (or since this watch started)."""
        now = self.count()
        rose = now is not None and self.seen is not None and now > self.seen
        if now is not None:
            self.seen = now
        return rose


def tree_rss(pid: int) -> int | None:
    """Resident bytes of process ``pid`` and all its descendants (None: it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = int(proc.memory_info().rss)
        for child in proc.children(recursive=True):
            try:
                total += int(child.memory_info().rss)
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None
