"""PBSProProvider against a fake PBS server (tests/stubs/fake_pbs.py): real jobs run, states come from qstat.

No PBS Pro server can run here, so qsub/qstat/qdel are small scripts that keep their own state and
answer in PBS's formats; the provider, the command runner and the executor are the real ones.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from htex_ref import ManagerLost
from htex_ref.errors import SubmitException
from htex_ref.launchers import SimpleLauncher, SingleNodeLauncher
from htex_ref.providers.base import JobState
from htex_ref.providers.pbspro import PBSProProvider
from tests.conftest import wait_until
from tests.stubs import fake_pbs

pytestmark = pytest.mark.e2e


@pytest.fixture
def pbs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake PBS server on PATH; its state directory. Whatever jobs are left are deleted at the end."""
    bin_dir, state = tmp_path / "pbs-bin", tmp_path / "pbs-state"
    fake_pbs.install(str(bin_dir))
    state.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PBS_DIR", str(state))
    monkeypatch.setenv("FAKE_PBS_QUEUE_DELAY", "0.3")
    yield state
    for f in state.glob("job-*.json"):
        job = json.loads(f.read_text())
        if job["state"] not in ("F",):
            subprocess.run(["qdel", job["seq"]], capture_output=True, timeout=30)


def fake_job(state: Path, job_id: str) -> dict[str, Any]:
    return json.loads((state / f"job-{job_id.split('.')[0]}.json").read_text())  # type: ignore[no-any-return]


def provider(tmp_path: Path, **kwargs: Any) -> PBSProProvider:
    kwargs.setdefault("launcher", SimpleLauncher())
    kwargs.setdefault("status_polling_interval", 0.2)
    kwargs.setdefault("cmd_timeout", 20)
    p = PBSProProvider(**kwargs)
    p.script_dir = str(tmp_path / "scripts")
    return p


def seen_states(p: PBSProProvider, job: str, until: JobState, timeout: float = 20) -> list[JobState]:
    states: list[JobState] = []

    def poll() -> bool:
        st = p.status([job])[0].state
        if not states or states[-1] is not st:
            states.append(st)
        return st is until

    assert wait_until(poll, timeout, interval=0.05), f"job {job} went through {states}, never {until.name}"
    return states


def test_a_job_goes_from_queued_to_running_to_completed(tmp_path: Path, pbs: Path) -> None:
    p = provider(tmp_path, select_options="mem=1gb", cpus_per_node=2, account="proj")
    job = p.submit('echo "out $PBS_JOBID $JOBNAME"; echo err >&2; sleep 1', 1, "htex_ref.pbspro.block-0")
    assert job.endswith(".fakepbs")  # the id as qsub printed it; qstat lists it under a longer server name
    states = seen_states(p, job, JobState.COMPLETED)
    assert states[0] is JobState.PENDING and JobState.RUNNING in states
    st = p.status([job])[0]
    assert st.exit_code == 0
    assert st.stdout == f"out {job} htex_ref.pbspro.block-0\n" and st.stderr == "err\n"
    rec = fake_job(pbs, job)
    assert (rec["select"], rec["account"], rec["name"]) == ("1:ncpus=2:mem=1gb", "proj", "htex_ref.pbspro.block-0")
    assert rec["stdout"] == st.stdout_path


def test_failed_and_timed_out_jobs(tmp_path: Path, pbs: Path) -> None:
    p = provider(tmp_path, walltime="00:00:01")
    failing = p.submit("echo broken >&2; exit 3", 1, "fails")
    too_long = p.submit("sleep 60", 1, "too-long")
    seen_states(p, failing, JobState.FAILED)
    seen_states(p, too_long, JobState.TIMEOUT)
    st_fail, st_long = p.status([failing, too_long])
    assert st_fail.exit_code == 3 and "exited with code 3" in (st_fail.message or "") and st_fail.stderr == "broken\n"
    assert st_long.exit_code == -29 and "walltime" in (st_long.stderr or "")


def test_cancel_reports_cancelled_and_ends_the_job(tmp_path: Path, pbs: Path) -> None:
    p = provider(tmp_path)
    job = p.submit("sleep 60", 1, "long")
    queued = p.submit("sleep 60", 1, "queued")
    seen_states(p, job, JobState.RUNNING)
    pgid = fake_job(pbs, job)["pgid"]
    assert p.cancel([job]) == [True]
    assert p.status([job])[0].state is JobState.CANCELLED
    assert wait_until(lambda: fake_job(pbs, job)["state"] == "F", 10)
    assert fake_job(pbs, job)["exit_status"] == 271  # PBS says killed by SIGTERM; we say CANCELLED
    assert not any(proc.info["pid"] == pgid for proc in psutil.process_iter(["pid"]))
    assert p.status([job])[0].state is JobState.CANCELLED
    # Cancelling again, or a job that already ended: True, nothing else happens.
    assert p.cancel([job]) == [True]
    seen_states(p, queued, JobState.RUNNING)
    assert p.cancel([queued, "4242.fakepbs"]) == [True, False]


def test_a_job_deleted_from_outside_is_noticed(tmp_path: Path, pbs: Path) -> None:
    p = provider(tmp_path)
    job = p.submit("sleep 60", 1, "victim")
    seen_states(p, job, JobState.RUNNING)
    subprocess.run(["qdel", job], check=True, timeout=30)
    seen_states(p, job, JobState.CANCELLED)
    st = p.status([job])[0]
    assert "deleted with qdel" in (st.message or "") and st.exit_code == 271


def test_failed_or_hanging_qstat_keeps_states(tmp_path: Path, pbs: Path) -> None:
    p = provider(tmp_path, cmd_timeout=0.5, query_failure_limit=3, absent_grace=0.1)
    job = p.submit("sleep 60", 1, "steady")
    seen_states(p, job, JobState.RUNNING)
    (pbs / "qstat.fail").touch()
    for _ in range(3):
        assert p.status([job])[0].state is JobState.RUNNING
    (pbs / "qstat.fail").unlink()
    (pbs / "qstat.hang").touch()
    t0 = time.monotonic()
    assert p.status([job])[0].state is JobState.RUNNING
    assert time.monotonic() - t0 < 5, "a hanging qstat held up status()"
    # Failing for longer than query_failure_limit: the state is UNKNOWN (not ended), with the reason.
    assert wait_until(lambda: p.status([job])[0].state is JobState.UNKNOWN, 15)
    message = p.status([job])[0].message or ""
    assert "last known: RUNNING" in message and "did not finish within 0.5 s" in message
    (pbs / "qstat.hang").unlink()
    assert p.status([job])[0].state is JobState.RUNNING


def test_qsub_failure_names_the_script(tmp_path: Path, pbs: Path) -> None:
    (pbs / "qsub.fail").write_text("qsub: Unknown queue\n")
    p = provider(tmp_path, queue="nosuchqueue")
    with pytest.raises(SubmitException) as info:
        p.submit("echo never", 1, "blk")
    script = tmp_path / "scripts" / "blk.submit"
    assert str(script) in str(info.value) and "Unknown queue" in str(info.value) and info.value.retcode == 2
    assert "#PBS -q nosuchqueue" in script.read_text()
    assert "Unknown queue" in (tmp_path / "scripts" / "blk.submit.log").read_text()


def test_without_job_history_a_finished_job_is_missing(tmp_path: Path, pbs: Path) -> None:
    (pbs / "no_history").touch()
    p = provider(tmp_path, absent_grace=0.5)
    job = p.submit("true", 1, "quick")
    seen_states(p, job, JobState.MISSING)
    st = p.status([job])[0]
    assert "no longer lists" in (st.message or "") and st.stdout_path is not None


# ---------------------------------------------------------------------------------- with an executor

# PBS starts jobs in the home directory (here: the fake server's directory); the tasks below are
# functions of this module, so the workers need the repository on their path, as users set it up.
WORKER_INIT = f"export PYTHONPATH={Path(__file__).resolve().parents[2]}"


def where(_: int) -> tuple[str, str]:
    import os
    import socket
    return os.environ.get("PBS_JOBID", ""), socket.gethostname()


def sleep_then(seconds: float) -> str:
    import time
    time.sleep(seconds)
    return "done"


def test_executor_runs_tasks_in_pbs_jobs_and_cancels_them(pbs: Path, make_executor: Any, tmp_path: Path) -> None:
    p = PBSProProvider(launcher=SingleNodeLauncher(), init_blocks=1, max_blocks=1, status_polling_interval=0.5,
                       walltime="00:05:00", cmd_timeout=20, worker_init=WORKER_INIT)
    ex = make_executor(provider=p, max_workers_per_node=2)
    results = [f.result(60) for f in [ex.submit(where, i) for i in range(10)]]
    (job_id,) = ex.blocks_to_job_id.values()
    assert {r for r in results} == {(job_id, socket.gethostname())}
    assert ex.status()[next(iter(ex.blocks_to_job_id))].state is JobState.RUNNING
    script = Path(p.jobs[job_id].script_path)
    assert script.parent == Path(ex.run_dir) / "submit_scripts" and script.name.endswith(".submit")
    ex.shutdown()
    assert p.status([job_id])[0].state is JobState.CANCELLED
    assert wait_until(lambda: fake_job(pbs, job_id)["state"] == "F", 15)


def test_a_block_deleted_from_outside_fails_its_tasks_and_a_new_block_takes_over(
        pbs: Path, make_executor: Any, tmp_path: Path) -> None:
    p = PBSProProvider(launcher=SimpleLauncher(), init_blocks=1, min_blocks=0, max_blocks=1,
                       status_polling_interval=0.3, walltime="00:05:00", cmd_timeout=20, worker_init=WORKER_INIT)
    ex = make_executor(provider=p, max_workers_per_node=1, strategy="simple", strategy_period=0.3)
    assert ex.submit(where, 0).result(60)[0] == next(iter(ex.blocks_to_job_id.values()))
    stuck = ex.submit(sleep_then, 120)
    (first_job,) = ex.blocks_to_job_id.values()
    assert wait_until(lambda: fake_job(pbs, first_job)["state"] == "R", 10)
    assert wait_until(lambda: any(m["tasks"] for m in ex.connected_managers()), 20)
    subprocess.run(["qdel", first_job], check=True, timeout=30)
    with pytest.raises(ManagerLost):
        stuck.result(30)
    # The executor scales out a new block for new work, and it runs.
    after = ex.submit(where, 1).result(60)
    assert after[0] != first_job and after[0] in ex.blocks_to_job_id.values()
    assert p.status([first_job])[0].state is JobState.CANCELLED


def test_parsl_docs_mpi_example_runs_with_htex_ref_imports(tmp_path: Path, pbs: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The MPIExecutor configuration of Parsl's MPI apps guide, imports changed, on the fake PBS server:
    a 4-node job (its node file names x1..x4), tasks of 2 nodes placed on disjoint nodes, 2 at a time."""
    import htex_ref
    from htex_ref import Config, MPIExecutor, bash_app
    from htex_ref.providers.pbspro import PBSProProvider as DocsPBSProProvider

    monkeypatch.setenv("FAKE_PBS_NODE_NAMES", "x1,x2,x3,x4")
    monkeypatch.chdir(tmp_path)  # the default run directory, runinfo/, goes here
    config = Config(executors=[MPIExecutor(
        max_workers_per_block=2,  # Assuming 2 nodes per task
        provider=DocsPBSProProvider(
            account="parsl",
            worker_init="module load miniconda; source activate /lus/eagle/projects/parsl/envs/",
            walltime="1:00:00",
            queue="debug",
            scheduler_options="#PBS -l filesystems=home:eagle:grand",
            launcher=SimpleLauncher(),
            select_options="ngpus=4",
            nodes_per_block=4,
            max_blocks=1,
            cpus_per_node=64,
        ),
    )])

    @bash_app
    def lammps_mpi_application(infile: str, parsl_resource_specification: dict[str, Any],
                               stdout: str = "") -> str:
        return f"echo $PARSL_MPI_PREFIX lmp_mpi -in {infile}"

    spec = {"num_nodes": 2, "ranks_per_node": 2}
    with htex_ref.load(config):
        futures = [lammps_mpi_application(f"in.{i}", parsl_resource_specification=spec,
                                          stdout=str(tmp_path / f"out.{i}")) for i in range(4)]
        assert [f.result(120) for f in futures] == [0, 0, 0, 0]
    lines = [(tmp_path / f"out.{i}").read_text().strip() for i in range(4)]
    for i, line in enumerate(lines):
        assert line.startswith("mpiexec -n 4 -ppn 2 -hosts x") and line.endswith(f"lmp_mpi -in in.{i}")
        hosts = line.split("-hosts ")[1].split()[0].split(",")
        assert len(hosts) == 2 and set(hosts) <= {"x1", "x2", "x3", "x4"}
