"""Parsl HighThroughputExecutor used directly (no DataFlowKernel) as a
benchmark peer for htex_ref.

Run with the Parsl venv's interpreter (.bench/parsl-venv/bin/python).  Only the
standard library is imported at module level; Parsl is imported inside
make_executor().

API
---
ex = make_executor(workers=2, encrypted=False, run_dir="/tmp/x")
fut = ex.submit(fn, {}, *args)      # concurrent.futures.Future
shutdown(ex)                        # cancels the block, stops the interchange

Smoke check:  python benchmarks/parsl_peer.py --smoke
"""

import argparse
import atexit
import functools
import json
import os
import shlex
import signal
import sys
import sysconfig
import tempfile
import time
import uuid

_HERE = os.path.dirname(os.path.abspath(__file__))


def noop(x):
    """No-op task: returns its argument."""
    return x


# --------------------------------------------------------------------------
# /proc helpers (no psutil needed)
# --------------------------------------------------------------------------

def _stat(pid):
    """(state, pgrp) of pid from /proc, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[2])


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def _pgrp_members(pgrps):
    """Live (non-zombie) pids whose process group is in pgrps."""
    out = []
    if not pgrps:
        return out
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st and st[1] in pgrps and st[0] != "Z":
            out.append(int(name))
    return out


def _alive(pid):
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _block_pgrps(executor):
    """Process groups of the blocks launched by LocalProvider.

    LocalProvider runs the block through `bash -c` with preexec_fn=os.setpgrp,
    so the whole worker pool (bash wrapper, process_worker_pool.py, the spawn
    workers, the multiprocessing Manager server) shares one process group."""
    pgrps = set(getattr(executor, "_peer_pgrps", set()))
    for job in executor.provider.resources.values():
        st = _stat(job["remote_pid"])
        if st:
            pgrps.add(st[1])
    executor._peer_pgrps = pgrps
    return pgrps


def owned_processes(executor):
    """{pid: cmdline} of live processes this executor started: the interchange
    and every member of the block process group(s)."""
    pids = set(_pgrp_members(_block_pgrps(executor)))
    interchange = executor.interchange_proc
    if interchange is not None and _alive(interchange.pid):
        pids.add(interchange.pid)
    return {p: _cmdline(p) for p in sorted(pids)}


# --------------------------------------------------------------------------
# executor lifecycle
# --------------------------------------------------------------------------

def make_executor(workers: int = 2, encrypted: bool = False, run_dir: str | None = None, *,
                  label: str | None = None, worker_debug: bool = False,
                  pythonpath=(), block_start_timeout: float = 30.0):
    """Build and start a standalone Parsl HighThroughputExecutor.

    run_dir: where Parsl writes logs (<run_dir>/<label>/interchange.log,
    <run_dir>/<label>/block-0/<manager>/{manager,worker_N}.log) and the
    LocalProvider submit scripts (<run_dir>/submit_scripts/*.sh/.out/.err/.ec).
    A fresh temp dir is used when None.

    pythonpath: extra directories put on the workers' PYTHONPATH so that task
    functions defined in importable modules (dill pickles those by reference)
    can be imported by the workers.  This file's directory is always added.
    """
    from parsl.executors import HighThroughputExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
    from parsl.jobs.states import JobState
    from parsl.providers import LocalProvider

    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="parsl-peer-")
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    label = label or "htex_peer"

    # The entry-point scripts live in the venv's bin dir, which is NOT on PATH
    # when the venv python is run without activation: use absolute paths.
    scripts = sysconfig.get_path("scripts")
    pool_script = os.path.join(scripts, "process_worker_pool.py")
    interchange_script = os.path.join(scripts, "interchange.py")
    launch_cmd = DEFAULT_LAUNCH_CMD.replace(
        "process_worker_pool.py",
        f"{shlex.quote(sys.executable)} {shlex.quote(pool_script)}", 1)

    pp = [_HERE] + [os.path.abspath(p) for p in pythonpath]
    if os.environ.get("PYTHONPATH"):
        pp.append(os.environ["PYTHONPATH"])
    # PARSL_CORES: the pool caps workers at floor(cpu_count / cores_per_worker);
    # on a 2-core box max_workers_per_node=4 would silently give 2 workers.
    worker_init = (f"export PYTHONPATH={shlex.quote(os.pathsep.join(pp))}\n"
                   f"export PARSL_CORES={max(int(workers), os.cpu_count() or 1)}")

    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1,
                             worker_init=worker_init)
    # The DFK normally sets script_dir; None would make submit fail silently.
    provider.script_dir = os.path.join(run_dir, "submit_scripts")
    os.makedirs(provider.script_dir, exist_ok=True)

    ex = HighThroughputExecutor(
        label=label,
        provider=provider,
        # address=None would call get_all_addresses(), which queries
        # https://api.ipify.org and probes routes: pin everything to loopback.
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        max_workers_per_node=int(workers),
        encrypted=encrypted,
        worker_debug=worker_debug,
        launch_cmd=launch_cmd,
        interchange_launch_cmd=[sys.executable, interchange_script],
    )
    # HTEx.__init__ resets run_dir to '.'; the DFK would set these.
    ex.run_dir = run_dir
    ex.run_id = str(uuid.uuid4())

    ex._peer_shut = False
    # Safety net for normal interpreter exit / unhandled exceptions.  It does
    # not help if the process is killed by a signal: then the worker pool (in
    # its own process group) lingers until heartbeat_threshold (120 s).
    ex._peer_atexit = functools.partial(shutdown, ex)
    atexit.register(ex._peer_atexit)
    try:
        ex.start()  # certs (if encrypted), result thread, interchange, launch cmd
        # Without a DFK no JobStatusPoller/strategy runs, so nothing launches
        # init_blocks: do it here.  Errors are swallowed into _status.
        ex.scale_out_facade(provider.init_blocks)
        bad = {b: s for b, s in ex._status.items() if s.state == JobState.FAILED}
        if bad or not ex.blocks_to_job_id:
            raise RuntimeError(f"Parsl block launch failed: {bad!r}")
        _block_pgrps(ex)
        # The bash wrapper writes its exit code to <script>.ec; a non '-' code
        # this early means the pool died on startup (see .err).
        deadline = time.monotonic() + block_start_timeout
        while time.monotonic() < deadline:
            st = provider.status(list(ex.blocks_to_job_id.values()))
            if any(s.terminal for s in st):
                raise RuntimeError(f"Parsl worker pool exited at startup: {st!r}")
            if _pgrp_members(ex._peer_pgrps):
                break
            time.sleep(0.01)
    except BaseException:
        shutdown(ex)
        raise
    return ex


def shutdown(executor, grace: float = 5.0):
    """Cancel the block (SIGTERM to its process group, SIGKILL after `grace`
    seconds) and then shut down the interchange/result thread.

    HTEx.shutdown() alone does NOT stop workers (they would linger until the
    120 s heartbeat_threshold).  The DFK's order is: scale in blocks first
    (needs the interchange alive), then executor.shutdown().  The
    HTEx.scale_in path also sends HOLD_MANAGER over the command channel with no
    timeout, so call the provider directly instead.  Idempotent."""
    if getattr(executor, "_peer_shut", False):
        return
    executor._peer_shut = True
    pgrps = _block_pgrps(executor)
    jobs = [j for j, d in executor.provider.resources.items() if not d.get("cancelled")]
    if jobs:
        try:
            executor.provider.cancel(jobs)  # kill -- -<pgid>
        except Exception as e:
            print(f"parsl_peer: provider.cancel failed: {e!r}", file=sys.stderr)
    deadline = time.monotonic() + grace
    while _pgrp_members(pgrps) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pg in pgrps:
        if _pgrp_members({pg}):
            try:
                os.killpg(pg, signal.SIGKILL)
            except ProcessLookupError:
                pass
    executor.shutdown()
    if getattr(executor, "_peer_atexit", None) is not None:
        atexit.unregister(executor._peer_atexit)
    deadline = time.monotonic() + grace
    while _pgrp_members(pgrps) and time.monotonic() < deadline:
        time.sleep(0.02)


# --------------------------------------------------------------------------
# smoke check
# --------------------------------------------------------------------------

def _find_by_name(names):
    """Every live process on the box whose cmdline mentions one of names."""
    hits = {}
    me = os.getpid()
    for n in os.listdir("/proc"):
        if not n.isdigit() or int(n) == me or not _alive(int(n)):
            continue
        cl = _cmdline(int(n)) or ""
        if any(x in cl for x in names):
            hits[int(n)] = cl
    return hits


# the interchange retitles itself via setproctitle; spawn workers and the
# multiprocessing Manager show up as "python -B -c from multiprocessing..."
_NAMES = ["process_worker_pool", "interchange.py", "HTEX interchange"]


def smoke(n_tasks=100, workers=2, encrypted=False, keep=False):
    import concurrent.futures as cf
    import shutil

    run_dir = tempfile.mkdtemp(prefix="parsl-peer-smoke-")
    pre_existing = set(_find_by_name(_NAMES))
    out = {"tasks": n_tasks, "workers": workers, "encrypted": encrypted,
           "run_dir": run_dir, "ok": False}
    ex = None
    owned = {}
    try:
        t0 = time.perf_counter()
        ex = make_executor(workers=workers, encrypted=encrypted, run_dir=run_dir)
        t_started = time.perf_counter()
        futs = [ex.submit(noop, {}, i) for i in range(n_tasks)]
        t_submitted = time.perf_counter()
        it = cf.as_completed(futs, timeout=60)
        next(it)
        t_first = time.perf_counter()
        for _ in it:
            pass
        t_all = time.perf_counter()
        results = [f.result() for f in futs]
        assert results == list(range(n_tasks)), "wrong results"
        mgrs = ex.command_client.run("MANAGERS", timeout_s=10)
        owned = owned_processes(ex)
        out.update(
            start_s=round(t_started - t0, 4),
            start_to_first_result_s=round(t_first - t0, 4),
            submit_100_s=round(t_submitted - t_started, 4),
            start_to_all_results_s=round(t_all - t0, 4),
            first_to_all_s=round(t_all - t_first, 4),
            managers=len(mgrs),
            worker_count=sum(m["worker_count"] for m in mgrs),
            owned_processes_before_shutdown=len(owned),
        )
    finally:
        if ex is not None:
            ts = time.perf_counter()
            shutdown(ex)
            out["shutdown_s"] = round(time.perf_counter() - ts, 4)
            left = owned_processes(ex)
            left.update({p: c for p, c in owned.items() if _alive(p)})
            others = {p: c for p, c in _find_by_name(_NAMES).items()
                      if p not in pre_existing}
            left.update(others)
            out["leftover_processes"] = left
    out["ok"] = "start_to_first_result_s" in out and not out.get("leftover_processes")
    if out["ok"] and not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="run the smoke check")
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--encrypted", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep run_dir even on success")
    a = ap.parse_args(argv)
    if not a.smoke:
        ap.print_help()
        return 2
    # `timeout` sends SIGTERM: turn it into SystemExit so that the finally /
    # atexit shutdown cancels the block (which lives in its own process group
    # and would otherwise survive us).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import parsl
    out = smoke(a.tasks, a.workers, a.encrypted, a.keep)
    out["parsl_version"] = parsl.__version__
    out["python"] = sys.version.split()[0]
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
