"""A small stand-in for a PBS Pro server and its ``qsub``, ``qstat`` and ``qdel``, for tests on one machine.

State lives in the directory ``$FAKE_PBS_DIR`` (one JSON file per job, a sequence counter, a lock).
``qsub SCRIPT`` reads the ``#PBS`` directives before the first command as PBS does (``-N``, ``-o``,
``-e``, ``-l walltime=``, ``-l select=N:ncpus=C``, ``-q``, ``-A``), prints ``SEQ.fakepbs`` and starts a
detached runner: the job is Q for ``$FAKE_PBS_QUEUE_DELAY`` seconds (default 0.3), then R while
``bash SCRIPT`` runs in a process group of its own with ``PBS_JOBID`` and ``PBS_NODEFILE`` set and
its output in the -o/-e files, then E briefly, then F with ``Exit_status`` (256 + signal when killed,
-29 when it ran past its walltime). ``qstat -f -F json [-x] IDS`` answers like PBS, listing jobs under
``SEQ.fakepbs.localdomain`` (a longer server name than qsub printed, as real servers do); without
``-x`` finished jobs are left out with PBS's message on stderr. ``qdel IDS`` sends SIGTERM to a running
job's group (SIGKILL after 2 s) and finishes a queued job without an exit status.

Test controls (files in ``$FAKE_PBS_DIR``): ``qsub.fail`` makes qsub print its text on stderr and exit 2;
``qstat.fail`` makes qstat fail as when the server cannot be reached; ``qstat.hang`` makes qstat sleep;
``no_history`` makes finished jobs vanish (history disabled). ``$FAKE_PBS_NODE_NAMES`` (comma-separated)
names the chunks' hosts in ``PBS_NODEFILE``, as a real server lists each chunk's own node; by default
every chunk is this host.

Usage: ``fake_pbs.py TOOL ARGS...``; ``install(directory)`` writes ``qsub``/``qstat``/``qdel`` wrappers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SERVER = "fakepbs"
LONG_SERVER = "fakepbs.localdomain"


def state_dir() -> Path:
    return Path(os.environ["FAKE_PBS_DIR"])


@contextlib.contextmanager
def locked() -> Iterator[None]:
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def job_file(seq: str) -> Path:
    return state_dir() / f"job-{seq}.json"


def load(seq: str) -> dict[str, Any] | None:
    try:
        return json.loads(job_file(seq).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def save(job: dict[str, Any]) -> None:
    path = job_file(job["seq"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(path)


def update(seq: str, **changes: Any) -> dict[str, Any] | None:
    with locked():
        job = load(seq)
        if job is None:
            return None
        job.update(changes)
        save(job)
        return job


def seq_of(job_id: str) -> str:
    return job_id.split(".", 1)[0]


def walltime_seconds(text: str) -> int:
    h, m, s = (int(x) for x in text.split(":"))
    return h * 3600 + m * 60 + s


def read_directives(script: str) -> dict[str, str]:
    """The #PBS options before the first command, as qsub reads them."""
    opts: dict[str, str] = {}
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if not stripped.startswith("#PBS"):
            continue
        words = stripped.split(None, 2)
        if len(words) < 2:
            continue
        flag, value = words[1], words[2] if len(words) > 2 else ""
        if flag == "-l":
            for item in value.split(","):
                key, _, val = item.partition("=")
                opts[f"l:{key}"] = val
        else:
            opts[flag] = value
    return opts


def qsub(args: list[str]) -> int:
    fail = state_dir() / "qsub.fail"
    if fail.exists():
        sys.stderr.write(fail.read_text())
        return 2
    cli: dict[str, str] = {}
    while len(args) > 1 and args[0].startswith("-"):
        cli[args[0]] = args[1]
        args = args[2:]
    if len(args) != 1:
        print("usage: qsub [-q queue] [-A account] script", file=sys.stderr)
        return 2
    script = Path(args[0]).absolute()
    opts = {**read_directives(script.read_text()), **cli}
    select = opts.get("l:select", "1:ncpus=1")
    chunks = int(select.split(":")[0])
    ncpus = next((int(p.split("=")[1]) for p in select.split(":")[1:] if p.startswith("ncpus=")), 1)
    with locked():
        counter = state_dir() / "seq"
        seq = str(int(counter.read_text()) + 1 if counter.exists() else 100)
        counter.write_text(seq)
        job = {
            "seq": seq, "name": opts.get("-N", script.name), "script": str(script), "state": "Q",
            "stdout": opts.get("-o", f"{script}.o{seq}"), "stderr": opts.get("-e", f"{script}.e{seq}"),
            "walltime": opts.get("l:walltime", "01:00:00"), "select": select, "chunks": chunks, "ncpus": ncpus,
            "queue": opts.get("-q", "workq"), "account": opts.get("-A"), "exit_status": None, "pgid": None,
            "deleted": False, "comment": "Not Running: waiting for resources", "workdir": os.getcwd(),
        }
        save(job)
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "_run", seq], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    print(f"{seq}.{SERVER}")
    return 0


def run_job(seq: str) -> int:
    """The server's side of one job: queue, run with the walltime limit, record how it ended."""
    deadline = time.monotonic() + float(os.environ.get("FAKE_PBS_QUEUE_DELAY", "0.3"))
    while time.monotonic() < deadline:
        job = load(seq)
        if job is None or job["deleted"]:
            return 0
        time.sleep(0.05)
    nodefile = state_dir() / f"nodefile-{seq}"
    host = socket.gethostname()
    with locked():
        job = load(seq)
        if job is None or job["deleted"]:
            return 0
        names = [n for n in os.environ.get("FAKE_PBS_NODE_NAMES", "").split(",") if n]
        chunk_hosts = [names[i % len(names)] if names else host for i in range(job["chunks"])]
        nodefile.write_text("".join(f"{h}\n" * job["ncpus"] for h in chunk_hosts))
        env = {**os.environ, "PBS_JOBID": f"{seq}.{SERVER}", "PBS_NODEFILE": str(nodefile),
               "PBS_O_WORKDIR": job["workdir"], "PBS_JOBNAME": job["name"]}
        with open(job["stdout"], "w") as out, open(job["stderr"], "w") as err:
            proc = subprocess.Popen(["/bin/bash", job["script"]], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=env, cwd=str(state_dir()), start_new_session=True, close_fds=True)
        job.update(state="R", pgid=proc.pid, comment=f"Job run at {time.ctime()} on ({host}:ncpus={job['ncpus']})")
        save(job)
    limit = walltime_seconds(job["walltime"])
    comment = "and finished"
    try:
        rc = proc.wait(timeout=limit)
        code = 256 - rc if rc < 0 else rc  # killed by signal -rc: PBS reports 256 + signal
    except subprocess.TimeoutExpired:
        with open(job["stderr"], "a") as err:
            err.write(f"=>> PBS: job killed: walltime {limit + 1} exceeded limit {limit}\n")
        stop_group(proc.pid)
        proc.wait()
        code = -29
    # As at the end of any PBS job, what the job left running is killed.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    update(seq, state="E")
    time.sleep(0.1)
    if (state_dir() / "no_history").exists():
        with locked():
            job_file(seq).unlink(missing_ok=True)
        return 0
    update(seq, state="F", exit_status=code, comment=f"{job['comment']} {comment}")
    return 0


def stop_group(pgid: int, grace: float = 2.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def qstat_attrs(job: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "Job_Name": job["name"], "Job_Owner": f"{os.environ.get('USER', 'user')}@{socket.gethostname()}",
        "job_state": job["state"], "queue": job["queue"], "server": LONG_SERVER,
        "Error_Path": f"{socket.gethostname()}:{job['stderr']}",
        "Output_Path": f"{socket.gethostname()}:{job['stdout']}",
        "Resource_List": {"ncpus": job["ncpus"] * job["chunks"], "nodect": job["chunks"], "place": "free",
                          "select": job["select"], "walltime": job["walltime"]},
        "comment": job["comment"], "Submit_arguments": job["script"],
        "Variable_List": {"PBS_O_WORKDIR": job["workdir"], "PBS_O_QUEUE": job["queue"]},
    }
    if job.get("account"):
        attrs["Account_Name"] = job["account"]
    if job["exit_status"] is not None:
        attrs["Exit_status"] = job["exit_status"]
    return attrs


def qstat(args: list[str]) -> int:
    if (state_dir() / "qstat.hang").exists():
        time.sleep(600)
    if (state_dir() / "qstat.fail").exists():
        print(f"Connection refused\nqstat: cannot connect to server {SERVER} (errno=15010)", file=sys.stderr)
        return 1
    history = "-x" in args
    ids = [a for a in args if not a.startswith("-") and a != "json"]
    jobs: dict[str, Any] = {}
    rc = 0
    with locked():
        for job_id in ids:
            job = load(seq_of(job_id))
            if job is None:
                print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
                rc = 153
            elif job["state"] == "F" and not history:
                print(f"qstat: {job_id} Job has finished, use -x or -H to obtain historical job information",
                      file=sys.stderr)
                rc = 35
            else:
                jobs[f"{job['seq']}.{LONG_SERVER}"] = qstat_attrs(job)
    doc: dict[str, Any] = {"timestamp": int(time.time()), "pbs_version": "2022.1.0-fake", "pbs_server": LONG_SERVER}
    if jobs:
        doc["Jobs"] = jobs
    print(json.dumps(doc, indent=4))
    return rc


def qdel(args: list[str]) -> int:
    rc = 0
    for job_id in args:
        seq = seq_of(job_id)
        with locked():
            job = load(seq)
            if job is None:
                print(f"qdel: Unknown Job Id {job_id}", file=sys.stderr)
                rc = 153
                continue
            if job["state"] in ("F", "E"):
                print(f"qdel: Job has finished {job_id}", file=sys.stderr)
                rc = 35
                continue
            job["deleted"] = True
            if job["state"] == "Q":
                job.update(state="F", comment="Job deleted before it ran")
            save(job)
            pgid = job["pgid"]
        if pgid is not None:
            stop_group(pgid)
    return rc


TOOLS = {"qsub": qsub, "qstat": qstat, "qdel": qdel}


def install(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in TOOLS:
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" {name} "$@"\n')
        os.chmod(path, 0o755)


if __name__ == "__main__":
    if sys.argv[1] == "_run":
        sys.exit(run_job(sys.argv[2]))
    sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
