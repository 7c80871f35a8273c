"""Real workers report their CPU affinity and device variables; they must match the pure plan."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from htex_ref import BadStateException, LocalProvider
from htex_ref.core.affinity import plan_cpu_affinity
from tests.rendezvous import meet

pytestmark = pytest.mark.e2e

THREADS = sorted(os.sched_getaffinity(0))
NEEDS_TWO = pytest.mark.skipif(len(THREADS) < 2, reason="needs two hardware threads")
ENV_KEYS = ("OMP_NUM_THREADS", "GOMP_CPU_AFFINITY", "KMP_AFFINITY", "CUDA_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK", "ZE_ENABLE_PCI_ID_DEVICE_ORDER")


def report(rendezvous: str | None = None, count: int = 1) -> dict[str, Any]:
    if rendezvous:
        meet(rendezvous, count)  # every worker takes one task
    return {"rank": int(os.environ["PARSL_WORKER_RANK"]), "cpus": sorted(os.sched_getaffinity(0)),
            **{k: os.environ.get(k) for k in ENV_KEYS}}


def by_rank(ex: Any, workers: int) -> dict[int, dict[str, Any]]:
    rendezvous = tempfile.mkdtemp(prefix="meet-", dir=ex.run_dir)
    futures = [ex.submit(report, rendezvous, workers) for _ in range(workers)]
    found = {r["rank"]: r for r in (f.result(60) for f in futures)}
    assert sorted(found) == list(range(workers))
    return found


@NEEDS_TWO
@pytest.mark.parametrize("strategy", ["block", "block-reverse", "alternating", "list:1:0", "LIST:0:1"])
def test_two_workers_follow_the_plan(make_executor: Any, strategy: str) -> None:
    ex = make_executor(max_workers_per_node=2, cpu_affinity=strategy, prefetch_capacity=0)
    plan = plan_cpu_affinity(strategy, THREADS[:2] if strategy.lower().startswith("list") else THREADS, 2)
    assert plan is not None
    for rank, r in by_rank(ex, 2).items():
        assert r["cpus"] == list(plan[rank])
        assert r["OMP_NUM_THREADS"] == str(len(plan[rank]))
        assert r["GOMP_CPU_AFFINITY"] == ",".join(map(str, plan[rank]))
        assert r["KMP_AFFINITY"] == f"explicit,proclist=[{','.join(map(str, plan[rank]))}]"


def test_none_leaves_workers_unpinned(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    r = ex.submit(report).result(30)
    assert r["cpus"] == THREADS and r["OMP_NUM_THREADS"] is None and r["GOMP_CPU_AFFINITY"] is None


@NEEDS_TWO
def test_list_alone_sets_the_worker_count(make_executor: Any) -> None:
    ex = make_executor(cpu_affinity="list:0-1")  # one part: one worker, on both threads
    r = ex.submit(report).result(30)
    assert r["cpus"] == [0, 1] and r["OMP_NUM_THREADS"] == "2"
    assert ex.connected_managers()[0]["worker_count"] == 1


@NEEDS_TWO
def test_restricted_pool_affinity_models_a_smaller_node(make_executor: Any) -> None:
    # The pool itself may use only thread 1: block pinning plans within what the pool has.
    ex = make_executor(max_workers_per_node=1, cpu_affinity="block",
                       provider=LocalProvider(worker_init="taskset -cp 1 $$ >/dev/null"))
    assert ex.submit(report).result(30)["cpus"] == [1]


@pytest.mark.parametrize(
    ("kwargs", "worker_init", "message"),
    [
        ({"max_workers_per_node": 3, "cpu_affinity": "block"}, "export PARSL_CORES=3",
         "cannot pin 3 workers .* only 2 hardware threads"),
        ({"cpu_affinity": "list:0:517"}, "", r"worker 1 is given thread\(s\) \[517\]"),
    ],
)
def test_impossible_pinning_fails_the_executor_once(make_executor: Any, kwargs: dict[str, Any], worker_init: str,
                                                    message: str) -> None:
    if len(THREADS) != 2 and "only 2" in message:
        pytest.skip("message names this machine's 2 threads")
    ex = make_executor(provider=LocalProvider(worker_init=worker_init), **kwargs)
    with pytest.raises(BadStateException, match=message):
        ex.submit(report).result(60)
    # The pool stopped before starting any worker: no restart loop, nothing to clean up.
    assert ex.block_statuses()["0"].state.name == "MISSING"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu_affinity": "list:0:1:1"}, "thread 1 is listed for workers 1 and 2"),
        ({"cpu_affinity": "list:0:1", "max_workers_per_node": 3}, "lists threads for 2 workers but max_workers"),
        ({"cpu_affinity": "list:0-x"}, "worker 0: '0-x' is not a thread id"),
    ],
)
def test_bad_affinity_is_refused_at_construction(make_executor: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_executor(start=False, **kwargs)


def fake_nvidia_smi(tmp_path: Path, gpus: int) -> str:
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    tool = bindir / "nvidia-smi"
    lines = "\\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})" for i in range(gpus))
    tool.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] && printf "{lines}\\n"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return f"export PATH={bindir}:$PATH"


@pytest.mark.parametrize(
    ("accelerators", "gpus", "expected"),
    [
        (2, None, ["0", "1"]),
        (["0,1", "2,3"], None, ["0,1", "2,3"]),
        (["MIG-abc", "MIG-def"], 1, ["MIG-abc", "MIG-def"]),
        (4, 2, ["0", "0", "1", "1"]),  # MPS: 4 entries on 2 physical GPUs, contiguous blocks
    ],
)
def test_accelerator_binding(make_executor: Any, tmp_path: Path, accelerators: Any, gpus: int | None,
                             expected: list[str]) -> None:
    n = len(expected)
    init = f"export PARSL_CORES={n}"
    if gpus is not None:
        init += "\n" + fake_nvidia_smi(tmp_path, gpus)
    ex = make_executor(available_accelerators=accelerators, prefetch_capacity=0,
                       provider=LocalProvider(worker_init=init))
    found = by_rank(ex, n)
    for rank, devices in enumerate(expected):
        r = found[rank]
        assert (r["CUDA_VISIBLE_DEVICES"], r["ROCR_VISIBLE_DEVICES"], r["ZE_AFFINITY_MASK"]) == (devices,) * 3
        assert r["ZE_ENABLE_PCI_ID_DEVICE_ORDER"] == "1"
    assert ex.workers_per_node == n
