"""Smoke test of the Docker Compose Slurm cluster (clusters/compose.py), independent of the executor.

Batch jobs submitted from this host with ``sbatch`` must run in the containers (c1, c2, ...) and reach
back to this host at ``info.address``, where the interchange will listen; the image's worker pool must
start on every node. Runs only against a compose cluster (``HTEX_CLUSTER_INFO`` naming one).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusters.info import ClusterInfo
from tests.conftest import wait_until

pytestmark = pytest.mark.cluster

INFO = ClusterInfo.from_env()
if INFO is None or INFO.name != "compose":
    pytest.skip("needs a compose cluster: HTEX_CLUSTER_INFO naming `clusters.compose up` output",
                allow_module_level=True)


@pytest.fixture
def info() -> ClusterInfo:
    assert INFO is not None
    return INFO


@pytest.fixture
def job_dir(info: ClusterInfo, request: pytest.FixtureRequest) -> Path:
    """A directory for job scripts and output that exists on this host and in every container."""
    d = Path(info.shared_dir) / f"smoke-{os.getpid()}-{request.node.name}"
    d.mkdir(parents=True)
    return d


def slurm(info: ClusterInfo, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **info.env}, check=False)


def wait_left_queue(info: ClusterInfo, job_name: str) -> None:
    """Jobs of this test must be gone from the queue (COMPLETING included) before the next test looks at it."""

    def gone() -> bool:
        out = slurm(info, "squeue", "-h", "-n", job_name, "-o", "%A")
        return out.returncode == 0 and not out.stdout.strip()

    assert wait_until(gone, 30), slurm(info, "squeue").stdout


class Listener:
    """A TCP listener on the submit host that records the first line each connection sends."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(256)
                    if not chunk:
                        break
                    data += chunk
            self.lines.append(data.decode().strip())
            self.peers.append(peer[0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener(info: ClusterInfo) -> Iterator[Listener]:
    lst = Listener(info.address)
    yield lst
    lst.close()


def test_batch_jobs_run_on_every_node_and_reach_the_submit_host(info: ClusterInfo, job_dir: Path,
                                                                 listener: Listener) -> None:
    connect = (f"import socket; s = socket.create_connection(({info.address!r}, {listener.port}), 10); "
               "s.sendall((socket.gethostname() + '\\n').encode()); s.close()")
    jobs = {}
    name = f"smoke-reach-{os.getpid()}"
    for node in info.nodes:
        proc = slurm(info, "sbatch", "--parsable", f"--job-name={name}", f"--partition={info.partition}",
                     f"--nodelist={node}",
                     "--nodes=1", "--time=2", f"--chdir={job_dir}", f"--output={job_dir}/{node}-%j.out",
                     f"--wrap=python3 -c {shlex.quote(connect)}")
        assert proc.returncode == 0, f"sbatch for {node} failed: {proc.stderr}"
        jobs[node] = proc.stdout.strip().split(";")[0]

    def outputs() -> str:
        return "\n".join(f"{p.name}: {p.read_text()!r}" for p in sorted(job_dir.glob("*.out")))

    assert wait_until(lambda: len(listener.lines) >= len(info.nodes), 60), (
        f"connections from {listener.lines} (peers {listener.peers}), expected one from each of {info.nodes}; "
        f"jobs {jobs}; job output:\n{outputs()}"
    )
    assert sorted(listener.lines) == sorted(info.nodes), outputs()
    # The jobs ran in the containers, not on this host: their connections came over the cluster network.
    assert socket.gethostname() not in listener.lines
    assert all(peer != info.address for peer in listener.peers), listener.peers
    wait_left_queue(info, name)


def test_worker_pool_command_starts_on_every_node(info: ClusterInfo, job_dir: Path) -> None:
    assert info.worker_pool_cmd, "a compose cluster must name the worker pool command installed in its image"
    script = f"{info.worker_pool_cmd} --help >/dev/null && hostname"
    name = f"smoke-pool-{os.getpid()}"
    proc = slurm(info, "srun", f"--job-name={name}", f"--nodes={len(info.nodes)}", "--ntasks-per-node=1", "--time=2",
                 f"--partition={info.partition}", f"--chdir={job_dir}", "sh", "-c", script, timeout=60)
    assert proc.returncode == 0, f"srun exited {proc.returncode}: {proc.stderr}"
    assert sorted(proc.stdout.split()) == sorted(info.nodes), proc.stdout
    wait_left_queue(info, name)
