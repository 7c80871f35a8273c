"""CPU affinity and accelerator binding, planned as pure functions.

``parse_cpu_affinity`` checks a ``cpu_affinity`` string (the executor calls it at construction, so a
typo fails at once); ``plan_cpu_affinity`` turns it into one set of hardware-thread ids per worker for
the threads a node has (the manager calls it before starting any worker, so an impossible plan stops
the pool with a clear error instead of a worker crash loop); ``plan_accelerators`` gives each worker
its devices. The runtime only applies the result (``os.sched_setaffinity`` and environment variables).

Strategies, for workers 0..n-1 and the node's threads sorted ascending:

- ``none``: no pinning.
- ``block``: consecutive slices of ``len(threads) // n`` threads; worker 0 gets the lowest. Threads
  left over when the division is not exact stay idle.
- ``block-reverse``: the same slices in reverse worker order (worker 0 gets the highest slice).
- ``alternating``: round-robin, worker i gets threads i, i+n, i+2n, ... (every thread is used; sizes
  differ by at most one).
- ``list:<w0>:<w1>:...``: worker i gets exactly the threads of part i, each part a comma-separated list
  of thread ids or inclusive ranges ``a-b``. Threads not listed stay idle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

STRATEGIES = ("none", "block", "block-reverse", "alternating")
#: Above any Linux machine's CPU ids; a bound keeps a typo such as ``0-10230000000`` from expanding forever.
MAX_THREAD_ID = 65535
_TOKEN = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")  # ASCII digits only: "٣" is not thread 3
_DEVICE_INDEX = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class AffinitySpec:
    """A parsed ``cpu_affinity``: a strategy name, or ``list`` with each worker's threads."""

    strategy: str
    lists: tuple[tuple[int, ...], ...] = ()


def parse_cpu_affinity(text: str) -> AffinitySpec:
    """Parse a ``cpu_affinity`` value; ValueError says which worker, which token and why."""
    if not isinstance(text, str):
        raise ValueError(f"cpu_affinity must be a string, got {type(text).__name__}")
    lowered = text.strip().lower()
    if lowered in STRATEGIES:
        return AffinitySpec(lowered)
    if not lowered.startswith("list:"):
        raise ValueError(f"cpu_affinity must be one of {list(STRATEGIES)} or 'list:<threads>:<threads>:...', "
                         f"got {text!r}")
    parts = text.strip()[len("list:"):].split(":")
    lists: list[tuple[int, ...]] = []
    owner: dict[int, int] = {}
    for rank, part in enumerate(parts):
        if not part.strip():
            raise ValueError(f"cpu_affinity {text!r}: worker {rank} has an empty thread list")
        threads: list[int] = []
        for token in part.split(","):
            m = _TOKEN.match(token.strip())
            if m is None:
                raise ValueError(f"cpu_affinity {text!r}: worker {rank}: {token!r} is not a thread id or a range "
                                 "a-b of thread ids")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ValueError(f"cpu_affinity {text!r}: worker {rank}: range {token!r} is reversed")
            if hi > MAX_THREAD_ID:
                raise ValueError(f"cpu_affinity {text!r}: worker {rank}: {token!r} names thread {hi}, above the "
                                 f"largest possible thread id {MAX_THREAD_ID}")
            for t in range(lo, hi + 1):
                if t in owner:
                    who = "twice" if owner[t] == rank else f"for workers {owner[t]} and {rank}"
                    raise ValueError(f"cpu_affinity {text!r}: thread {t} is listed {who}")
                owner[t] = rank
                threads.append(t)
        lists.append(tuple(threads))
    return AffinitySpec("list", tuple(lists))


def format_cpu_affinity(lists: Sequence[Sequence[int]]) -> str:
    """The ``list:`` form of per-worker thread lists, with runs written as ranges."""
    parts = []
    for threads in lists:
        tokens = []
        run: list[int] = []
        for t in threads:
            if run and t == run[-1] + 1:
                run.append(t)
                continue
            if run:
                tokens.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = [t]
        if run:
            tokens.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        parts.append(",".join(tokens))
    return "list:" + ":".join(parts)


def plan_cpu_affinity(spec: AffinitySpec | str, available: Sequence[int], workers: int) -> list[tuple[int, ...]] | None:
    """Each worker's threads, or None for no pinning. ValueError when the node cannot satisfy it."""
    if isinstance(spec, str):
        spec = parse_cpu_affinity(spec)
    if spec.strategy == "none":
        return None
    if workers < 1:
        raise ValueError(f"cannot plan cpu_affinity for {workers} workers")
    threads = sorted(set(available))
    if spec.strategy == "list":
        if len(spec.lists) != workers:
            raise ValueError(f"cpu_affinity lists threads for {len(spec.lists)} workers but this pool runs {workers}; "
                             f"set max_workers_per_node={len(spec.lists)} or list {workers} workers")
        have = set(threads)
        for rank, listed in enumerate(spec.lists):
            missing = [t for t in listed if t not in have]
            if missing:
                raise ValueError(f"cpu_affinity: worker {rank} is given thread(s) {missing} which this node does not "
                                 f"offer (available: {format_cpu_affinity([threads])[len('list:'):]})")
        return [tuple(sorted(listed)) for listed in spec.lists]
    if workers > len(threads):
        raise ValueError(f"cpu_affinity={spec.strategy!r}: {workers} workers but only {len(threads)} hardware "
                         f"threads available ({format_cpu_affinity([threads])[len('list:'):]})")
    if spec.strategy == "alternating":
        return [tuple(threads[i::workers]) for i in range(workers)]
    per = len(threads) // workers
    slices = [tuple(threads[i * per:(i + 1) * per]) for i in range(workers)]
    return slices if spec.strategy == "block" else slices[::-1]


def affinity_environment(threads: Sequence[int]) -> dict[str, str]:
    """Variables that make OpenMP runtimes in a worker's children follow its pinning."""
    listed = ",".join(str(t) for t in threads)
    return {
        "OMP_NUM_THREADS": str(len(threads)),
        "GOMP_CPU_AFFINITY": listed,
        "KMP_AFFINITY": f"explicit,proclist=[{listed}]",
    }


def plan_accelerators(entries: Sequence[str], workers: int, physical: int | None) -> list[str]:
    """The device string of each worker: worker i gets ``entries[i]``.

    When the node has fewer physical GPUs than there are single-device entries (sharing GPUs through
    MPS), workers are placed on GPUs in contiguous, balanced blocks: with 32 entries on 4 GPUs, workers
    0-7 get GPU 0, 8-15 GPU 1, and so on. Entries naming several devices ("0,1") or non-numeric names
    (MIG UUIDs) are used as given.
    """
    if workers > len(entries):
        raise ValueError(f"{workers} workers but only {len(entries)} accelerator entries")
    chosen = list(entries[:workers])
    n = len(entries)
    if physical and 0 < physical < n and all(_DEVICE_INDEX.match(e) for e in entries):
        return [str(i * physical // n) for i in range(workers)]
    return chosen


def accelerator_environment(devices: str) -> dict[str, str]:
    """Variables that restrict CUDA, ROCm and Level Zero programs to ``devices``."""
    return {
        "CUDA_VISIBLE_DEVICES": devices,
        "ROCR_VISIBLE_DEVICES": devices,
        "ZE_AFFINITY_MASK": devices,
        "ZE_ENABLE_PCI_ID_DEVICE_ORDER": "1",
    }


def count_gpus(nvidia_smi_output: str) -> int:
    """Physical GPUs in ``nvidia-smi -L`` output (lines starting with 'GPU ')."""
    return sum(1 for line in nvidia_smi_output.splitlines() if line.startswith("GPU "))
