"""Network partitions on the local multi-node Slurm: one compute node's link is taken down (its host end
of the veth pair, so the node's TCP connections stall instead of being reset) while its pool runs tasks,
then brought back.

Shorter than ``heartbeat_threshold``: the node's tasks finish and are delivered after it reconnects, with
no ``ManagerLost``. Longer: its tasks fail as ``ManagerLost``; when the node comes back its pool, still
alive (``reconnect_timeout``), is asked to register again, is told to drop those tasks, and delivers none
of them. Only the namespace cluster can cut one node's link; the compose cluster skips these tests.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clusters.info import ClusterInfo
from htex_ref import HighThroughputExecutor, ManagerLost
from tests.cluster.conftest import ClusterExecutors, record_timing, wait_for


def host_after(seconds: float) -> tuple[str, float]:
    """Sleeps, then says where it ran and when it ended (epoch seconds)."""
    import socket
    import time

    time.sleep(seconds)
    return socket.gethostname(), time.time()


@pytest.fixture
def local(cluster: ClusterInfo) -> ClusterInfo:
    if cluster.name != "local" or "prefix" not in cluster.extra or len(cluster.nodes) < 2:
        pytest.skip("cutting one node's link needs the local namespace cluster with two nodes")
    return cluster


@contextmanager
def link_down(info: ClusterInfo, node: str) -> Iterator[None]:
    veth = f"{info.extra['prefix']}-{node}h"  # clusters.local_slurm.Layout.veth
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)


def two_node_executor(executors: ClusterExecutors, threshold: float, **kw: object) -> HighThroughputExecutor:
    p = executors.provider(init_blocks=2, min_blocks=2, max_blocks=2)
    ex = executors(p, max_workers_per_node=2, heartbeat_period=1, heartbeat_threshold=threshold, **kw)
    assert wait_for(lambda: len({m["hostname"] for m in ex.connected_managers()}) == 2, 120), \
        "two blocks did not register on two nodes"
    return ex


def victim_of(ex: HighThroughputExecutor) -> str:
    hosts = sorted(m["hostname"] for m in ex.connected_managers())
    assert socket.gethostname() not in hosts
    return hosts[0]


def test_a_partition_shorter_than_the_threshold_loses_nothing(executors: ClusterExecutors, local: ClusterInfo) -> None:
    ex = two_node_executor(executors, threshold=40)
    victim = victim_of(ex)
    futures = [ex.submit(host_after, 4) for _ in range(8)]
    assert wait_for(lambda: any(m["hostname"] == victim and m["tasks"] > 0 for m in ex.connected_managers()), 30)
    with link_down(local, victim):
        time.sleep(20)  # the scenario itself: a 20 s cut
        healed = time.time()
    results = [f.result(120) for f in futures]  # no ManagerLost
    on_victim = [end for host, end in results if host == victim]
    assert on_victim, "no task ran on the node that was cut"
    # Its tasks ended during the cut; their results waited in the pool and were delivered after it healed.
    assert min(on_victim) < healed
    assert ex.submit(host_after, 0).result(60)[0] in local.nodes
    assert len(ex.connected_managers()) == 2 and not ex.bad_state_is_set


def test_a_partition_longer_than_the_threshold_fails_its_tasks_and_they_are_never_delivered(
        executors: ClusterExecutors, local: ClusterInfo) -> None:
    threshold = 6.0
    ex = two_node_executor(executors, threshold=threshold, reconnect_timeout=120)
    victim = victim_of(ex)
    futures = [ex.submit(host_after, 8) for _ in range(8)]
    calls = [0] * len(futures)
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: calls.__setitem__(i, calls[i] + 1))
    assert wait_for(lambda: any(m["hostname"] == victim and m["tasks"] > 0 for m in ex.connected_managers()), 30)
    t0 = time.monotonic()
    with link_down(local, victim):
        lost = []
        assert wait_for(lambda: any(f.done() and isinstance(f.exception(), ManagerLost) for f in futures), 30)
        record_timing("link down -> ManagerLost (heartbeat_threshold 6 s)", time.monotonic() - t0)
        lost = [f for f in futures if f.done() and isinstance(f.exception(), ManagerLost)]
        assert all(victim in str(f.exception()) and "no heartbeat" in str(f.exception()) for f in lost)
        time.sleep(max(0.0, 20 - (time.monotonic() - t0)))  # 20 s in all
    # Back, the pool is asked to register again and told to drop the tasks given up on.
    log = Path(ex.logdir, "interchange.log")
    assert wait_for(lambda: "tasks that ended elsewhere" in log.read_text(), 30), log.read_text()[-3000:]
    assert wait_for(lambda: len(ex.connected_managers()) == 2, 30)
    for f in futures:
        if f not in lost:
            host, _ = f.result(120)
            assert host != victim
    assert all(isinstance(f.exception(0), ManagerLost) for f in lost)
    assert calls == [1] * len(futures)
    assert ex.table.late_results == 0
    # Both nodes serve again.
    assert {ex.submit(host_after, 1).result(60)[0] for _ in range(8)} <= set(local.nodes)
    assert not ex.bad_state_is_set
