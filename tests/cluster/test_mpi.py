"""MPI mode on a real Slurm cluster: one block of three nodes, MPI tasks of one, two and three nodes.

A C program built with MPICH's ``mpicc`` during the run (into the shared directory, on a compute node)
and a Python rank reporter (standard library only: its rank from PMI) run under each task's
``PARSL_MPI_PREFIX``, launched by ``srun --mpi=pmi2`` and by Hydra's ``mpiexec -launcher slurm``. The
tests check what a user of MPI mode relies on:

- the ranks run on exactly the nodes the task was given (``PARSL_MPI_NODELIST``), ``ranks_per_node`` on
  each, and the MPI world has ``num_ranks`` ranks (so the launcher's PMI really wired them together: an
  ``MPI_Allreduce`` over all of them gives the sum of the ranks);
- two one-node tasks run at the same time on different nodes (their ranks meet in a rendezvous), and a
  three-node task that reached the pool meanwhile starts only after both ended;
- a task asking for more nodes than a block has fails at once, at submit, with
  ``InvalidResourceSpecification``, and the executor carries on;
- a ``bash_app``'s command line can start ranks with ``$PARSL_MPI_PREFIX``.

Debian bookworm's MPICH often hangs inside MPI_Finalize when its ranks talk over TCP (the compose
nodes do; see ``FINALIZE_GRACE``): the C hello prints its line after a barrier, and a launch whose ranks
have all printed but that has not ended ``FINALIZE_GRACE`` seconds later is stopped and accepted.

Every executor is built from the ClusterInfo alone, so this runs on the local namespace cluster and on
the compose cluster alike. Without ``mpicc`` (and ``mpi.h``) on the nodes the tests skip, except in CI
(``CI=true``), where they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import htex_ref
from clusters.info import ClusterInfo
from htex_ref import Config, InvalidResourceSpecification, MPIExecutor, bash_app
from htex_ref.launchers import SimpleLauncher
from htex_ref.providers.slurm import SlurmProvider
from tests.cluster.conftest import ClusterExecutors, record_timing, slurm, wait_for

#: Nodes in the MPI block.
BLOCK_NODES = 3
#: How each launcher is asked to start MPI ranks (the task's launcher_options).
LAUNCHERS = {
    # Slurm's PMI-2 plugin: the ranks find each other through slurmstepd.
    "srun": "--mpi=pmi2",
    # Hydra starting its proxies through srun (inside the block's job): no ssh needed.
    "mpiexec": "-launcher slurm",
}
#: How long one MPI task may take (a loaded 2-core machine starts Python processes slowly).
TASK_TIMEOUT = 240
#: Seconds the C hello's ranks get to leave MPI_Finalize once every one of them has printed its line.
#: Debian bookworm's MPICH 4.0.2 (ch4:ucx) over UCX 1.13's TCP transport often deadlocks in MPI_Finalize:
#: one rank waits forever in ucp_disconnect_nb for its TCP endpoints while the others wait for it in
#: the PMI barrier that follows (UCX stops progressing the TCP interface too early; openucx/ucx#8738).
#: The compose nodes reach each other over TCP, so there it happens in most runs; on the local cluster
#: UCX uses shared memory between the nodes (one kernel, one IPC namespace) and it does not. Everything
#: the tests check is printed before MPI_Finalize, so a launch stuck there is stopped and accepted.
FINALIZE_GRACE = 10
#: Exit codes of the build script when the toolchain is missing (not when the build fails).
NO_MPICC, NO_MPI_H = 97, 98

HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rank, size, sum = 0;
    char host[256] = "";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host - 1);
    /* Every rank takes part: the sum of the ranks proves they are one world. */
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    /* Printed after a barrier: once every rank has printed, every rank is about to call MPI_Finalize. */
    MPI_Barrier(MPI_COMM_WORLD);
    printf("hello rank=%d size=%d host=%s sum=%d\n", rank, size, host, sum);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
"""

RANKS_PY = r'''
"""One rank of a job started by an MPI launcher: prints one JSON line saying where it ran and which rank
it is, as PMI tells it (PMI_RANK, PMI_SIZE), or Slurm when no PMI is set up (SLURM_PROCID, SLURM_NTASKS).

    ranks.py [MEETING COUNT RELEASE]

With arguments, it first waits until COUNT processes have entered the directory MEETING (all of them run
at once), then until the file RELEASE exists.
"""
import json
import os
import socket
import sys
import threading
import time

start = time.time()
host = socket.gethostname()
env = os.environ
out = {"host": host, "pmi": "PMI_RANK" in env and "PMI_SIZE" in env,
       "rank": int(env.get("PMI_RANK", env.get("SLURM_PROCID", "-1"))),
       "size": int(env.get("PMI_SIZE", env.get("SLURM_NTASKS", "-1"))),
       "slurm_procid": env.get("SLURM_PROCID"), "start": start}
if len(sys.argv) == 4:
    meeting, count, release = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(meeting, exist_ok=True)
    open(os.path.join(meeting, f"{host}-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 180
    while len(os.listdir(meeting)) < count or not os.path.exists(release):
        if time.monotonic() > deadline:
            sys.exit(f"ranks.py on {host}: {len(os.listdir(meeting))} of {count} met in {meeting}, "
                     f"release {release} exists: {os.path.exists(release)}")
        time.sleep(0.02)
out["end"] = time.time()
print(json.dumps(out), flush=True)
'''

BUILD_SH = rf"""
command -v mpicc >/dev/null 2>&1 || {{ echo "mpicc not found on $(hostname)" >&2; exit {NO_MPICC}; }}
echo '#include <mpi.h>' | mpicc -E - >/dev/null 2>&1 ||
    {{ echo "mpi.h not found on $(hostname)" >&2; exit {NO_MPI_H}; }}
mpicc -O1 -o hello hello.c
"""

#: The variables a running MPI task gets.
TASK_VARIABLES = ("PARSL_MPI_PREFIX", "PARSL_MPI_NODELIST", "PARSL_NUM_NODES", "PARSL_RANKS_PER_NODE",
                  "PARSL_NUM_RANKS")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class MpiPrograms:
    dir: Path
    hello: Path
    ranks: Path


@pytest.fixture(scope="module")
def programs(cluster: ClusterInfo) -> MpiPrograms:
    """hello.c built with mpicc on a compute node, and the rank reporter, in the shared directory."""
    if len(cluster.nodes) < BLOCK_NODES:
        pytest.fail(f"the MPI tests need a cluster of {BLOCK_NODES} nodes, this one has {cluster.nodes}")
    d = Path(cluster.shared_dir) / f"mpi-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "hello.c").write_text(HELLO_C)
    (d / "ranks.py").write_text(RANKS_PY)
    t0 = time.monotonic()
    # On a node, with the nodes' toolchain: the compose nodes are containers with their own packages.
    build = slurm("srun", "--nodes=1", "--ntasks=1", "--time=5", f"--chdir={d}", "--job-name=htex-mpi-build",
                  "bash", "-c", BUILD_SH, check=False, timeout=180)
    record_timing("mpicc hello.c on a node (srun)", time.monotonic() - t0)
    why = (build.stdout + build.stderr).strip()
    if build.returncode in (NO_MPICC, NO_MPI_H):
        reason = (f"MPICH's compiler is missing on the cluster nodes ({why}): install mpich and libmpich-dev "
                  "(scripts/install-slurm.sh does on this host; containers/Dockerfile in the compose image)")
        if in_ci():
            pytest.fail(f"{reason}; in CI the MPI tests must run")
        pytest.skip(reason)
    assert build.returncode == 0, f"building hello.c with mpicc failed (exit {build.returncode}): {why}"
    assert (d / "hello").exists()
    return MpiPrograms(d, d / "hello", d / "ranks.py")


# ------------------------------------------------------------------------------------ on the worker


def run_under_prefix(program: list[str], python: bool = False, hello_ranks: int = 0) -> dict[str, Any]:
    """Runs on a worker as an MPI task: ``program`` under the task's ``PARSL_MPI_PREFIX`` (``python``:
    run by this worker's interpreter, which every node has at the same path). Returns its output, the
    task's MPI variables and when it started and ended, on the worker's clock.

    ``hello_ranks``: the program is the C hello of that many ranks. Once all of them have printed (each
    after a barrier, so each is in MPI_Finalize), it gets ``FINALIZE_GRACE`` seconds to end; a launch
    still running then is stopped with SIGTERM and marked ``finalize_hung`` (see ``FINALIZE_GRACE``)."""
    start = time.time()
    env = {name: os.environ.get(name) for name in TASK_VARIABLES}
    prefix = shlex.split(os.environ.get("PARSL_MPI_PREFIX", ""))
    command = [*prefix, *([sys.executable] if python else []), *program]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda f=f, to=to: to.extend(f), daemon=True)
               for f, to in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + TASK_TIMEOUT - 30
    all_printed = None
    finalize_hung = timed_out = False
    while proc.poll() is None:
        now = time.monotonic()
        if hello_ranks and all_printed is None and sum(ln.startswith("hello ") for ln in out) >= hello_ranks:
            all_printed = now
        finalize_hung = all_printed is not None and now - all_printed > FINALIZE_GRACE
        timed_out = now > deadline
        if finalize_hung or timed_out:
            # SIGTERM: srun and mpiexec pass it on to the ranks and end the job step, freeing its nodes.
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            break
        time.sleep(0.05)
    for r in readers:
        r.join(10)
    return {"start": start, "end": time.time(), "env": env, "command": command, "rc": proc.returncode,
            "stdout": "".join(out), "stderr": "".join(err), "pool_host": socket.gethostname(),
            "finalize_hung": finalize_hung, "timed_out": timed_out}


def plain_task() -> dict[str, Any]:
    """Runs on a worker as an ordinary task: where, and whether it got any MPI variable."""
    return {"host": socket.gethostname(), "mpi": {n: os.environ[n] for n in TASK_VARIABLES if n in os.environ}}


# -------------------------------------------------------------------------------------- the checks


def mpi_spec(launcher: str, num_nodes: int, **more: Any) -> dict[str, Any]:
    return {"num_nodes": num_nodes, "launcher_options": LAUNCHERS[launcher], **more}


def mpi_executor(executors: ClusterExecutors, launcher: str, **kwargs: Any) -> MPIExecutor:
    # SimpleLauncher: the block's one worker pool runs in the batch script, on the job's first node.
    provider: SlurmProvider = executors.provider(nodes_per_block=BLOCK_NODES, launcher=SimpleLauncher())
    kwargs.setdefault("max_workers_per_block", 3)
    ex = executors(provider, executor_class=MPIExecutor, mpi_launcher=launcher, **kwargs)
    assert isinstance(ex, MPIExecutor)
    return ex


def job_nodes(job_id: str) -> tuple[list[str], str]:
    """The nodes of a running job, in Slurm's order, and its batch host (where the job script runs)."""
    shown = slurm("scontrol", "show", "job", "-o", job_id).stdout
    fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
    nodes = slurm("scontrol", "show", "hostnames", fields["NodeList"]).stdout.split()
    return nodes, fields["BatchHost"]


def check_task(result: dict[str, Any], launcher: str, num_nodes: int, ranks_per_node: int,
               block: list[str]) -> list[str]:
    """The launch ended well (or, for the C hello, only hung in MPI_Finalize: ``FINALIZE_GRACE``) and the
    task's variables match its request; returns its node list."""
    assert not result["timed_out"] and (result["rc"] == 0 or result["finalize_hung"]), (
        f"`{shlex.join(result['command'])}` exited {result['rc']} (timed out: {result['timed_out']}):\n"
        f"stdout: {result['stdout']}\nstderr: {result['stderr']}")
    env = result["env"]
    nodelist = (env["PARSL_MPI_NODELIST"] or "").split(",")
    assert len(nodelist) == num_nodes == len(set(nodelist)), env
    assert set(nodelist) <= set(block), f"task given {nodelist}, but the block's nodes are {block}"
    assert env["PARSL_NUM_NODES"] == str(num_nodes), env
    assert env["PARSL_RANKS_PER_NODE"] == str(ranks_per_node), env
    assert env["PARSL_NUM_RANKS"] == str(num_nodes * ranks_per_node), env
    prefix = env["PARSL_MPI_PREFIX"] or ""
    assert prefix.split()[0] == launcher and prefix.endswith(LAUNCHERS[launcher]), prefix
    return nodelist


def check_placement(ranks: list[dict[str, Any]], nodelist: list[str], ranks_per_node: int, what: str) -> None:
    """Ranks 0..n-1, each once, in a world of n ranks, ``ranks_per_node`` on each node of ``nodelist``."""
    n = len(nodelist) * ranks_per_node
    assert sorted(r["rank"] for r in ranks) == list(range(n)), f"{what}: ranks {ranks}"
    assert {r["size"] for r in ranks} == {n}, f"{what}: the MPI world is not {n} ranks: {ranks}"
    by_host = Counter(r["host"] for r in ranks)
    assert by_host == dict.fromkeys(nodelist, ranks_per_node), \
        f"{what}: ranks ran on {dict(by_host)}, the task was given {nodelist} with {ranks_per_node} each"


HELLO_LINE = re.compile(r"^hello rank=(\d+) size=(\d+) host=(\S+) sum=(\d+)$")


def hello_ranks(stdout: str) -> list[dict[str, Any]]:
    ranks = []
    for line in stdout.splitlines():
        m = HELLO_LINE.match(line.strip())
        if m:
            ranks.append({"rank": int(m[1]), "size": int(m[2]), "host": m[3], "sum": int(m[4])})
    return ranks


def check_hello(stdout: str, nodelist: list[str], ranks_per_node: int, what: str) -> None:
    ranks = hello_ranks(stdout)
    check_placement(ranks, nodelist, ranks_per_node, what)
    n = len(ranks)
    assert {r["sum"] for r in ranks} == {n * (n - 1) // 2}, f"{what}: MPI_Allreduce gave {ranks}"


def reported_ranks(stdout: str) -> list[dict[str, Any]]:
    """The rank reporter's JSON objects, wherever they are: a launcher that merges the ranks' output
    streams may put two of them on one line."""
    decoder = json.JSONDecoder()
    found, at = [], stdout.find("{")
    while at >= 0:
        try:
            obj, end = decoder.raw_decode(stdout, at)
        except json.JSONDecodeError as e:
            raise AssertionError(f"cannot read the rank reporter's output at {at}: {e}\n{stdout}") from None
        found.append(obj)
        at = stdout.find("{", end)
    return found


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_mpi_hello_on_one_two_and_three_nodes(executors: ClusterExecutors, cluster: ClusterInfo,
                                              programs: MpiPrograms, launcher: str) -> None:
    ex = mpi_executor(executors, launcher)
    hello = [str(programs.hello)]
    # (num_nodes, ranks_per_node, the specification's way of saying so)
    asks = [(1, 1, mpi_spec(launcher, 1)),
            (2, 1, mpi_spec(launcher, 2, ranks_per_node=1)),
            (3, 2, mpi_spec(launcher, 3, num_ranks=6))]
    t0 = time.monotonic()
    futures = [ex.submit(run_under_prefix, hello, False, nodes * rpn, resource_specification=spec)
               for nodes, rpn, spec in asks]
    results = [f.result(TASK_TIMEOUT) for f in futures]
    record_timing(f"MPI hello on 1, 2 and 3 nodes, from submit ({launcher})", time.monotonic() - t0)
    for r in results:
        record_timing("C hello stopped in MPI_Finalize after all ranks printed (1: yes, 0: no)",
                      float(r["finalize_hung"]))
    block, batch_host = job_nodes(ex.blocks_to_job_id["0"])
    assert len(block) == BLOCK_NODES, block
    nodelists = []
    for (nodes, rpn, _), result in zip(asks, results, strict=True):
        nodelists.append(check_task(result, launcher, nodes, rpn, block))
        check_hello(result["stdout"], nodelists[-1], rpn, f"{nodes}-node hello via {launcher}")
        # The block's one worker pool runs in the job script, on the job's first node.
        assert result["pool_host"] == batch_host == block[0], (result["pool_host"], batch_host, block)
    # The pool found every node of its job (SLURM_NODELIST through scontrol): the 3-node task had them all.
    assert sorted(nodelists[2]) == sorted(block)

    # More nodes than a block has: refused at once, in the caller, before anything is sent.
    t0 = time.monotonic()
    with pytest.raises(InvalidResourceSpecification, match="num_nodes"):
        ex.submit(run_under_prefix, hello, resource_specification=mpi_spec(launcher, BLOCK_NODES + 1))
    assert time.monotonic() - t0 < 10
    # The executor carries on; an ordinary task runs on the pool's node, without MPI variables.
    plain = ex.submit(plain_task).result(60)
    assert plain == {"host": batch_host, "mpi": {}}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_one_node_tasks_share_the_block_and_a_three_node_task_waits(
        executors: ClusterExecutors, programs: MpiPrograms, launcher: str) -> None:
    ex = mpi_executor(executors, launcher)
    run_dir = Path(ex.run_dir)
    meeting, release = run_dir / "meeting", run_dir / "release"
    reporter = [str(programs.ranks), str(meeting), "2", str(release)]
    # Lower priority value first: the one-node tasks are placed before the three-node task even if all
    # three reach the pool together, so the three-node task is the one that has to wait.
    small = [ex.submit(run_under_prefix, reporter, True,
                       resource_specification=mpi_spec(launcher, 1, priority=0)) for _ in range(2)]
    big = ex.submit(run_under_prefix, [str(programs.ranks)], True,
                    resource_specification=mpi_spec(launcher, 3, priority=1))

    def all_at_the_pool_and_met() -> bool:
        managers = ex.connected_managers()
        met = len(os.listdir(meeting)) if meeting.is_dir() else 0
        return len(managers) == 1 and managers[0]["tasks"] == 3 and met == 2

    # The one-node tasks hold their nodes (their ranks wait for the release file) until the pool holds
    # all three tasks: the three-node task has arrived and cannot start yet.
    t0 = time.monotonic()
    # No task can end before the release: one that did (a failure, or a three-node task started too
    # early) ends the wait at once.
    wait_for(lambda: all_at_the_pool_and_met() or any(f.done() for f in (*small, big)), TASK_TIMEOUT)
    assert not any(f.done() for f in (*small, big)) and all_at_the_pool_and_met(), (
        f"the two one-node tasks never ran at the same time with the third task at the pool: "
        f"managers {ex.connected_managers()}, met {sorted(os.listdir(meeting)) if meeting.is_dir() else []}, "
        f"done {[f.done() for f in (*small, big)]} {[f.exception() for f in (*small, big) if f.done()]}, "
        f"results {[f.result() for f in (*small, big) if f.done() and not f.exception()]}; "
        f"block output in {ex.provider.script_dir}")
    record_timing(f"two 1-node MPI tasks running together, from submit ({launcher})", time.monotonic() - t0)
    release.touch()
    a, b = (f.result(TASK_TIMEOUT) for f in small)
    c = big.result(TASK_TIMEOUT)
    block, _ = job_nodes(ex.blocks_to_job_id["0"])

    ranks_ab = []
    for result in (a, b):
        nodelist = check_task(result, launcher, 1, 1, block)
        ranks = reported_ranks(result["stdout"])
        check_placement(ranks, nodelist, 1, f"1-node task via {launcher}")
        assert all(r["pmi"] for r in ranks), f"{launcher} set no PMI_RANK/PMI_SIZE: {ranks}"
        ranks_ab += ranks
    # Different nodes, and running at once (each rank waited for the other in the rendezvous).
    assert len({a["env"]["PARSL_MPI_NODELIST"], b["env"]["PARSL_MPI_NODELIST"]}) == 2, (a["env"], b["env"])
    assert max(r["start"] for r in ranks_ab) < min(r["end"] for r in ranks_ab), ranks_ab

    nodelist = check_task(c, launcher, 3, 1, block)
    assert sorted(nodelist) == sorted(block)
    ranks_c = reported_ranks(c["stdout"])
    check_placement(ranks_c, nodelist, 1, f"3-node task via {launcher}")
    assert all(r["pmi"] for r in ranks_c), f"{launcher} set no PMI_RANK/PMI_SIZE: {ranks_c}"
    # Worker-side times (one clock: every worker runs on the pool's node): the three-node task started
    # after both one-node tasks had ended, and its ranks after theirs.
    assert c["start"] >= max(a["end"], b["end"]), (c["start"], a["end"], b["end"])
    assert min(r["start"] for r in ranks_c) >= max(r["end"] for r in ranks_ab)


def test_bash_app_runs_under_the_prefix(executors: ClusterExecutors, programs: MpiPrograms) -> None:
    """A bash_app's command line: ``$PARSL_MPI_PREFIX`` starts the rank reporter on the task's nodes."""
    run_dir = Path(executors.run_dir())
    # Started by htex_ref.load, as a user's configuration is.
    ex = mpi_executor(executors, "srun", start=False, run_dir=str(run_dir))
    out = run_dir / "bash-app.out"

    @bash_app
    def mpi_ranks(ranks_py: str, stdout: str = str(out)) -> str:
        # This body runs on the worker: sys.executable is the nodes' interpreter.
        return (f'echo "nodelist=$PARSL_MPI_NODELIST"; '
                f'$PARSL_MPI_PREFIX {shlex.quote(sys.executable)} {shlex.quote(ranks_py)}')

    with htex_ref.load(Config(executors=[ex], run_dir=str(run_dir / "runinfo"))):
        fut = mpi_ranks(str(programs.ranks), parsl_resource_specification=mpi_spec("srun", 2, ranks_per_node=2))
        assert fut.result(TASK_TIMEOUT) == 0
        block, _ = job_nodes(ex.blocks_to_job_id["0"])
    text = out.read_text()
    m = re.search(r"^nodelist=(\S+)$", text, re.MULTILINE)
    assert m, text
    nodelist = m[1].split(",")
    assert len(nodelist) == 2 and set(nodelist) <= set(block), (nodelist, block)
    ranks = reported_ranks(text)
    check_placement(ranks, nodelist, 2, "bash_app via srun")
    assert all(r["pmi"] for r in ranks), f"srun set no PMI_RANK/PMI_SIZE: {ranks}"
