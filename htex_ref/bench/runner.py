"""``htex-ref bench``: run benchmark rounds in fresh processes and summarise them.

Each round runs ``child.py`` once per implementation, interleaved (htex_ref, parsl, htex_ref, parsl, ...),
each in a new session with a timeout. The medians of the rounds are printed as a table and, with
``--compare parsl``, as ratios htex_ref/parsl next to the targets.

Process hygiene: every child gets its own session. On Linux this process makes itself a child subreaper,
so that worker pools and interchanges a child leaves behind are re-parented here, where they are found,
reported and killed. On a timeout the child's process group and the groups of all its descendants (all
of them created by processes we started) are killed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARSL_VERSION = "2026.10.26"
DEFAULT_PARSL_PYTHON = ".bench/parsl-venv/bin/python"
CHILD = Path(__file__).resolve().with_name("child.py")
STDERR_TAIL_LINES = 25
LEFTOVER_GRACE_S = 10.0

IMPL_HTEX = "htex_ref"
IMPL_HTEX_P0 = "htex_ref prefetch=0"
IMPL_HTEX_ENC = "htex_ref encrypted"
IMPL_HTEX_NOMON = "htex_ref no monitoring"
#: Monitoring (on by default) may cost at most this fraction of no-op throughput.
MONITORING_BUDGET = 0.05
#: Encryption may cost at most this fraction of throughput or round trip.
ENCRYPTION_BUDGET = 0.10
IMPL_PARSL = "parsl"


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    fmt: str
    higher_is_better: bool
    # target on the ratio htex_ref/parsl: (">=" or "<=", bound); None: no ratio target
    ratio_target: tuple[str, float] | None = None
    # target on htex_ref's own value
    absolute_target: tuple[str, float] | None = None


METRICS: list[Metric] = [
    Metric("noop_tasks_per_s", "no-op tasks/s", "{:.0f}", True, ratio_target=(">=", 5.0)),
    Metric("rtt_median_ms", "RTT median ms", "{:.3f}", False, ratio_target=("<=", 0.35)),
    Metric("rtt_p99_ms", "RTT p99 ms", "{:.3f}", False),
    Metric("sleep10ms_efficiency", "10 ms efficiency", "{:.3f}", True, absolute_target=(">=", 0.95)),
    Metric("mib_per_s", "MiB/s", "{:.1f}", True, ratio_target=(">=", 2.0)),
    Metric("start_to_first_s", "start-to-first-result s", "{:.3f}", False, ratio_target=("<=", 0.3)),
]


@dataclass
class ChildRun:
    impl: str
    round: int
    command: list[str]
    ok: bool = False
    returncode: int | None = None
    timed_out: bool = False
    wall_s: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None
    stderr_tail: str = ""
    kept_tmpdir: str | None = None
    leftovers: list[str] = field(default_factory=list)
    orphans_lingered_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "impl": self.impl, "round": self.round, "command": self.command, "ok": self.ok,
            "returncode": self.returncode, "timed_out": self.timed_out, "wall_s": round(self.wall_s, 3),
            "result": self.result, "error": self.error, "stderr_tail": self.stderr_tail,
            "kept_tmpdir": self.kept_tmpdir, "leftover_processes": self.leftovers,
            "orphans_lingered_s": round(self.orphans_lingered_s, 3),
        }


# ----------------------------------------------------------------------------------------- /proc helpers


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str


def _proc_info(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return ProcInfo(pid, int(rest[1]), int(rest[2]), rest[0])


def _all_procs() -> dict[int, ProcInfo]:
    out: dict[int, ProcInfo] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            info = _proc_info(int(name))
            if info is not None:
                out[info.pid] = info
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _descendants(root: int) -> list[ProcInfo]:
    procs = _all_procs()
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: list[ProcInfo] = []
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(procs[c])
            stack.append(c)
    return out


def _become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux), so that leftovers can be found."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        return int(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _kill_groups(pgids: set[int], sig: int) -> None:
    own = os.getpgrp()
    for pg in sorted(pgids):
        if pg <= 1 or pg == own:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pg, sig)


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _orphans(known: set[int]) -> list[ProcInfo]:
    """Processes re-parented to us (we are a subreaper) that we did not start directly; zombies reaped."""
    me = os.getpid()
    mine = [p for p in _all_procs().values() if p.ppid == me and p.pid not in known]
    _reap([p.pid for p in mine if p.state == "Z"])
    return [p for p in mine if p.state != "Z"]


def _sweep_leftovers(known: set[int], grace: float) -> tuple[float, list[str]]:
    """Wait up to ``grace`` s for orphaned descendants to exit, then kill their groups.

    Returns how long orphans outlived the child (0.0 when there were none) and the processes killed.
    """
    t0 = time.monotonic()
    orphans = _orphans(known)
    if not orphans:
        return 0.0, []
    while orphans and time.monotonic() < t0 + grace:
        time.sleep(0.05)
        orphans = _orphans(known)
    lingered = time.monotonic() - t0
    if not orphans:
        return lingered, []
    found: list[ProcInfo] = []
    for o in orphans:
        found.append(o)
        found.extend(_descendants(o.pid))
    described = [f"pid {p.pid} pgid {p.pgid}: {_cmdline(p.pid)}" for p in found if p.state != "Z"]
    groups = {p.pgid for p in found}
    _kill_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    while _orphans(known) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_groups(groups, signal.SIGKILL)
    time.sleep(0.1)
    _orphans(known)
    return lingered, described


# ------------------------------------------------------------------------------------------ running children


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _parse_bench(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("BENCH "):
            value = json.loads(line[len("BENCH "):])
            if isinstance(value, dict):
                return value
    return None


def _kill_child_groups(pid: int, subreaper: bool) -> None:
    """SIGKILL the child's process group and the groups of everything it started.

    Worker pools and interchanges run in sessions of their own, and some launchers background them and
    exit (Parsl's LocalProvider), so they are re-parented to us as a subreaper rather than found below the
    child: as only one child runs at a time, everything below us is this child's. All of these groups
    were created by processes we started.
    """
    below = _descendants(os.getpid()) if subreaper else _descendants(pid)
    _kill_groups({pid} | {p.pgid for p in below}, signal.SIGKILL)


def _run_child(run: ChildRun, env: dict[str, str], timeout: float, subreaper: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="htex-bench-"))
    child_env = dict(env, TMPDIR=str(tmp))
    out_path, err_path = tmp / "child.stdout", tmp / "child.stderr"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            run.command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=child_env,
            start_new_session=True, close_fds=True,
        )
        try:
            try:
                run.returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                run.timed_out = True
                _kill_child_groups(proc.pid, subreaper)
                run.returncode = proc.wait()
        except BaseException:
            _kill_child_groups(proc.pid, subreaper)
            proc.wait()
            if subreaper:
                _sweep_leftovers({proc.pid}, 0.0)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    run.wall_s = time.perf_counter() - t0
    if subreaper:
        run.orphans_lingered_s, run.leftovers = _sweep_leftovers(
            {proc.pid}, 2.0 if run.timed_out else LEFTOVER_GRACE_S)
    stdout = out_path.read_text(errors="replace")
    run.stderr_tail = _tail(err_path)
    try:
        run.result = _parse_bench(stdout)
    except ValueError as e:
        run.error = f"unparsable BENCH line: {e}"
    if run.timed_out:
        run.error = f"timed out after {timeout:g} s (process groups killed)"
    elif run.returncode != 0:
        run.error = f"exited with code {run.returncode}"
    elif run.result is None and run.error is None:
        run.error = "no BENCH line in its output"
    if run.error is None:
        missing = [m.key for m in METRICS if not isinstance((run.result or {}).get(m.key), int | float)]
        if missing:
            run.error = f"BENCH result lacks {missing}"
    run.ok = run.error is None
    if run.ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        if not run.stderr_tail:
            run.stderr_tail = "\n".join(stdout.rstrip().splitlines()[-STDERR_TAIL_LINES:])
        run.kept_tmpdir = str(tmp)


# ---------------------------------------------------------------------------------------------- the venv


def _ensure_parsl_python(python: Path) -> bool:
    if python.exists():
        return True
    venv = python.parent.parent if python.parent.name == "bin" else None
    if venv is None:
        print(f"error: --parsl-python {python} does not exist and is not <venv>/bin/python", file=sys.stderr)
        return False
    base = shutil.which("python3") or sys.executable
    commands = [
        [base, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", f"parsl=={PARSL_VERSION}"],
    ]
    print(f"{python} does not exist: creating a Parsl {PARSL_VERSION} venv at {venv}", flush=True)
    for cmd in commands:
        print(f"+ {shlex.join(cmd)}", flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"error: {shlex.join(cmd)} failed with exit code {rc}", file=sys.stderr)
            return False
    if not python.exists():
        print(f"error: {python} still does not exist after creating the venv", file=sys.stderr)
        return False
    return True


# -------------------------------------------------------------------------------------------- reporting


def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as f:
        for line in f:
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "nproc": os.cpu_count(), "affinity_cpus": affinity, "cpu_model": model,
        "platform": platform.platform(), "python": platform.python_version(), "hostname": platform.node(),
    }


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _medians(runs: list[ChildRun]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for impl in dict.fromkeys(r.impl for r in runs):
        ok = [r.result for r in runs if r.impl == impl and r.ok and r.result is not None]
        if ok:
            out[impl] = {m.key: statistics.median(float(res[m.key]) for res in ok) for m in METRICS}
            out[impl]["rounds"] = float(len(ok))
    return out


def _meets(value: float, target: tuple[str, float]) -> bool:
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def _fmt(m: Metric, value: float | None) -> str:
    return "-" if value is None else m.fmt.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _table(rows: list[list[str]], left_tail: int = 0) -> str:
    """Rows of cells as aligned text: first column and the last ``left_tail`` columns left-aligned."""
    ncols = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(ncols)]
    left = {0} | set(range(ncols - left_tail, ncols))
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _summary(medians: dict[str, dict[str, float]], impls: list[str], compare: bool,
             counts: dict[str, int]) -> tuple[str, list[dict[str, Any]]]:
    header = ["metric (median)"] + [f"{i} (n={int(medians.get(i, {}).get('rounds', 0))}/{counts[i]})"
                                    for i in impls]
    verdicts: list[dict[str, Any]] = []
    if compare:
        header += ["htex_ref/parsl", "target", "status"]
    rows = [header]
    for m in METRICS:
        row = [m.title] + [_fmt(m, medians.get(i, {}).get(m.key)) for i in impls]
        if compare:
            own = medians.get(IMPL_HTEX, {}).get(m.key)
            ratio = _ratio(own, medians.get(IMPL_PARSL, {}).get(m.key))
            row.append("-" if ratio is None else f"{ratio:.2f}x")
            if m.ratio_target is not None:
                op, bound = m.ratio_target
                target, value = f"ratio {op} {bound:g}x", ratio
                met = None if ratio is None else _meets(ratio, m.ratio_target)
            elif m.absolute_target is not None:
                op, bound = m.absolute_target
                target, value = f"htex_ref {op} {bound:g}", own
                met = None if own is None else _meets(own, m.absolute_target)
            else:
                target, value, met = "", None, None
            status = "" if not target else ("n/a (no results)" if met is None else
                                            ("met" if met else "NOT MET"))
            row += [target, status]
            if target:
                verdicts.append({"metric": m.key, "target": target, "value": value, "ratio": ratio,
                                 "met": met})
        rows.append(row)
    return _table(rows, 2 if compare else 0), verdicts


def _encryption_cost(medians: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """Encrypted vs plain htex_ref from the same rounds: throughput and round-trip ratios."""
    plain, enc = medians.get(IMPL_HTEX, {}), medians.get(IMPL_HTEX_ENC, {})
    tput = _ratio(enc.get("noop_tasks_per_s"), plain.get("noop_tasks_per_s"))
    rtt = _ratio(enc.get("rtt_median_ms"), plain.get("rtt_median_ms"))
    if tput is None or rtt is None:
        return None
    met = tput >= 1 - ENCRYPTION_BUDGET and rtt <= 1 + ENCRYPTION_BUDGET
    text = (f"encryption cost (encrypted/plain, same rounds): throughput {tput:.3f}x, RTT median {rtt:.3f}x "
            f"(target within {ENCRYPTION_BUDGET:.0%} of plain: {'met' if met else 'NOT MET'})")
    return {"throughput_ratio": tput, "rtt_ratio": rtt, "met": met, "text": text}


def _monitoring_cost(medians: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """Monitoring on (the default) against off, from the same rounds."""
    on, off = medians.get(IMPL_HTEX, {}), medians.get(IMPL_HTEX_NOMON, {})
    tput = _ratio(on.get("noop_tasks_per_s"), off.get("noop_tasks_per_s"))
    rtt = _ratio(on.get("rtt_median_ms"), off.get("rtt_median_ms"))
    if tput is None or rtt is None:
        return None
    met = tput >= 1 - MONITORING_BUDGET
    text = (f"monitoring cost (on/off, same rounds): throughput {tput:.3f}x, RTT median {rtt:.3f}x "
            f"(target: throughput within {MONITORING_BUDGET:.0%} of off: {'met' if met else 'NOT MET'})")
    return {"throughput_ratio": tput, "rtt_ratio": rtt, "met": met, "text": text}


# ------------------------------------------------------------------------------------------------- main


class _Terminated(Exception):
    """SIGTERM or SIGHUP arrived: stop, killing the running child's processes on the way out."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


def _terminate_on_signals() -> dict[signal.Signals, Any]:
    """Turn SIGTERM and SIGHUP into ``_Terminated`` (where they have their default action)."""
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, _raise_terminated)
    return previous


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="htex-ref bench",
        description="Benchmark htex_ref (optionally against Parsl's HighThroughputExecutor): each round runs "
                    "every implementation once, interleaved, each in a fresh process.",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per implementation (default 3)")
    p.add_argument("--tasks", type=int, default=None,
                   help="no-op tasks in the throughput test (default 10000; 50000 with --fake-managers)")
    p.add_argument("--workers", type=int, default=2, help="workers per node (default 2)")
    p.add_argument("--encrypted", action="store_true", help="run both executors with CurveZMQ encryption")
    p.add_argument("--compare", choices=[IMPL_PARSL], help="also run Parsl's HighThroughputExecutor")
    p.add_argument("--parsl-python", default=DEFAULT_PARSL_PYTHON,
                   help=f"Python of a venv with parsl=={PARSL_VERSION}, created when missing "
                        f"(default {DEFAULT_PARSL_PYTHON}, relative to the current directory)")
    p.add_argument("--also-prefetch0", action="store_true",
                   help="also run htex_ref with --prefetch 0 as a separate row")
    p.add_argument("--also-encrypted", action="store_true",
                   help="also run htex_ref with CurveZMQ encryption as a separate row, and report its cost")
    p.add_argument("--also-monitoring", action="store_true",
                   help="also run htex_ref with monitoring=False as a separate row, and report monitoring's cost")
    p.add_argument("--json", metavar="PATH", help="write all raw results to PATH")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per child before it and its process groups are killed (default 300)")
    g = p.add_argument_group(
        "interchange load generator",
        "With --fake-managers, measure the interchange alone: M fake managers whose workers take zero time "
        "connect, probe and register with a real interchange all at once (the registration storm), say "
        "goodbye, and register again onto a full queue (the throughput window); then, where they have room "
        "for every task, they keep all the results and send them at once (the result path). Reports for each "
        "M: registration time, refused and lost managers, dispatches/s, completions/s and their ratio to the "
        "first M, the result path's rate, CPU per 1,000 tasks, the interchange's RSS and RSS per manager, and "
        "futures failed with ManagerLost.")
    g.add_argument("--fake-managers", metavar="M[,M...]",
                   help="comma-separated manager counts to sweep, e.g. 1,10,100,1000")
    g.add_argument("--workers-per-manager", type=int, default=64, help="worker slots per fake manager (default 64)")
    g.add_argument("--fake-prefetch", default="0",
                   help="prefetch_capacity for the sweep: an int, or 'auto' (default 0: slots only)")
    g.add_argument("--fake-processes", type=int, default=None,
                   help="processes holding the fake managers (default min(4, M), and one per 2,500 beyond 10,000)")
    g.add_argument("--fake-stagger", type=float, default=0.0, metavar="SECONDS",
                   help="registration storm: spread the managers' connections over SECONDS (default 0: all at once)")
    g.add_argument("--fake-heartbeat-period", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between each fake manager's heartbeats (default 30, the executor's default; the "
                        "interchange keeps its default heartbeat_threshold of 120 s)")
    g.add_argument("--fake-block-size", type=int, default=0, metavar="N",
                   help="fake managers per block (default 0: all in one block, as one allocation's nodes)")
    g2 = p.add_argument_group("payloads")
    g2.add_argument("--payloads", metavar="MIB,...",
                    help="large arguments and results: one task at a time with an argument, then a result, of each "
                         "size (MiB, e.g. 1,16,64,256), on ProcessPoolExecutor, htex_ref plain and encrypted (and "
                         "Parsl's HTEx with --compare parsl), interleaved per round; bandwidth and the most copies "
                         "of the payload any process held")
    r = p.add_argument_group("reliability")
    r.add_argument("--soak", type=int, metavar="N",
                   help="run N echo tasks while killing a worker mid-task every --kill-every seconds and one "
                        "worker pool half-way; check that every future resolves correctly")
    r.add_argument("--kill-every", type=float, default=2.0, help="seconds between worker kills (default 2)")
    r.add_argument("--interchange-kills", type=int, default=2,
                   help="soak: SIGKILL the interchange this many times, spread over the run (restart_interchange "
                        "replaces it; default 2; 0: none)")
    r.add_argument("--pauses", type=int, default=1,
                   help="soak: stop a worker pool (SIGSTOP) this many times for 0.6 x heartbeat_threshold, as a "
                        "short partition would (default 1)")
    r.add_argument("--memory", type=int, metavar="N",
                   help="run N no-op tasks and report the executor's and the interchange's RSS as they go")
    return p


def _reliability_main(args: argparse.Namespace) -> int:
    from htex_ref.bench import soak

    rc = 0
    if args.soak:
        print(f"soak: {args.soak} echo tasks, 2 blocks x {args.workers} workers, encrypted, a worker killed "
              f"mid-task every {args.kill_every} s, one pool killed half-way, the interchange killed "
              f"{args.interchange_kills} times, a pool paused {args.pauses} times", flush=True)
        report = soak.soak(args.soak, workers=args.workers, kill_every=args.kill_every, progress=True,
                           interchange_kills=args.interchange_kills, pauses=args.pauses)
        print(report.text())
        rc |= 0 if report.ok else 1
    if args.memory:
        print(f"memory: {args.memory} no-op tasks, {args.workers} workers", flush=True)
        print(soak.memory_text(soak.memory(args.memory, workers=args.workers, progress=True)))
    return rc


def _fake_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from htex_ref.bench import fakemanagers

    try:
        managers = [int(x) for x in args.fake_managers.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--fake-managers must be comma-separated integers, got {args.fake_managers!r}")
    if not managers or min(managers) < 1:
        parser.error("--fake-managers needs at least one count, each at least 1")
    if args.workers_per_manager < 1:
        parser.error("--workers-per-manager must be at least 1")
    prefetch: int | None
    if args.fake_prefetch == "auto":
        prefetch = None
    else:
        try:
            prefetch = int(args.fake_prefetch)
        except ValueError:
            parser.error(f"--fake-prefetch must be an int or 'auto', got {args.fake_prefetch!r}")
        if prefetch < 0:
            parser.error("--fake-prefetch must be at least 0")
    if args.fake_processes is not None and args.fake_processes < 1:
        parser.error("--fake-processes must be at least 1")
    if args.fake_stagger < 0 or args.fake_heartbeat_period <= 0 or args.fake_block_size < 0:
        parser.error("--fake-stagger and --fake-block-size must be >= 0, --fake-heartbeat-period positive")
    return fakemanagers.sweep_main(managers, args.workers_per_manager, args.tasks or 50_000, args.rounds,
                                   args.json, processes=args.fake_processes, prefetch_capacity=prefetch,
                                   stagger=args.fake_stagger, heartbeat_period=args.fake_heartbeat_period,
                                   block_size=args.fake_block_size)


PAYLOADS = Path(__file__).resolve().with_name("payloads.py")


def _payload_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--payloads``: see ``htex_ref.bench.payloads``; prints one table of medians over the rounds."""
    import json
    import statistics

    try:
        sizes = [int(x) for x in args.payloads.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--payloads must be comma-separated sizes in MiB, got {args.payloads!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--payloads sizes must be at least 1 MiB")
    compare = args.compare == IMPL_PARSL
    parsl_python = Path(os.path.abspath(args.parsl_python))
    if compare and not _ensure_parsl_python(parsl_python):
        return 2
    common = ["--sizes", ",".join(map(str, sizes)), "--workers", str(args.workers)]
    plan = [("ProcessPoolExecutor", [sys.executable, str(PAYLOADS), "--impl", "process", *common]),
            ("htex_ref", [sys.executable, str(PAYLOADS), "--impl", "htex_ref", *common]),
            ("htex_ref encrypted", [sys.executable, str(PAYLOADS), "--impl", "htex_ref", "--encrypted", *common])]
    if compare:
        plan.append(("parsl", [str(parsl_python), str(PAYLOADS), "--impl", "parsl", *common]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(Path(__file__).resolve().parents[2]),
                                                    os.environ.get("PYTHONPATH")) if x)
    machine = _machine()
    print(f"htex-ref bench --payloads {args.payloads}: {args.rounds} round(s), one task at a time, "
          f"{args.workers} workers; order per round: {', '.join(n for n, _ in plan)}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine['hostname']}, nproc {machine['nproc']}, CPU {machine['cpu_model']}, "
          f"Python {machine['python']}; load average at start: {' '.join(map(str, _loadavg()))}", flush=True)
    got: dict[str, list[dict[int, dict[str, Any]]]] = {name: [] for name, _ in plan}
    for rnd in range(args.rounds):
        for name, cmd in plan:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("PAYLOAD ")), None)
            if proc.returncode or line is None:
                print(f"round {rnd + 1}: {name} FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
                continue
            rows = {r["mib"]: r for r in json.loads(line.split(" ", 1)[1])["rows"]}
            got[name].append(rows)
            print(f"round {rnd + 1}/{args.rounds} {name:20s} " + "  ".join(
                f"{m} MiB: arg {r['arg_mibps']:.0f} result {r['result_mibps']:.0f} MiB/s" for m, r in rows.items()),
                flush=True)

    def med(name: str, mib: int, key: str) -> float:
        vals = [rows[mib][key] for rows in got[name] if mib in rows]
        return statistics.median(vals) if vals else float("nan")

    def copies(name: str, mib: int, key: str) -> str:
        vals = [(rows[mib][key], rows[mib][key + "_in"]) for rows in got[name] if mib in rows]
        return f"{max(vals)[0]:.1f} ({max(vals)[1]})" if vals else "n/a"

    ok = True
    print()
    head = ("size", "", "ProcessPool MiB/s", "htex_ref", "ratio", "encrypted", "ratio", *(["parsl"] if compare else []),
            "most copies (plain)", "most copies (encrypted)")
    table = []
    for mib in sizes:
        for direction, key in (("argument", "arg"), ("result", "result")):
            ppe = med("ProcessPoolExecutor", mib, f"{key}_mibps")
            plain = med("htex_ref", mib, f"{key}_mibps")
            enc = med("htex_ref encrypted", mib, f"{key}_mibps")
            c_plain = copies("htex_ref", mib, f"{key}_copies")
            c_enc = copies("htex_ref encrypted", mib, f"{key}_copies")
            table.append((f"{mib} MiB", direction, f"{ppe:.0f}", f"{plain:.0f}", f"{plain / ppe:.2f}x", f"{enc:.0f}",
                          f"{enc / ppe:.2f}x", *([f"{med('parsl', mib, f'{key}_mibps'):.0f}"] if compare else []),
                          c_plain, c_enc))
            ok &= plain >= 0.8 * ppe and enc >= 0.5 * ppe
    widths = [max(len(str(r[i])) for r in [head, *table]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *table]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"\ngoals (htex_ref >= 0.8x ProcessPoolExecutor plain, >= 0.5x encrypted): {'met' if ok else 'NOT MET'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("rounds", "tasks", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.fake_managers is not None:
        return _fake_main(args, parser)
    if args.payloads is not None:
        return _payload_main(args, parser)
    if args.soak is not None or args.memory is not None:
        if args.interchange_kills < 0 or args.pauses < 0:
            parser.error("--interchange-kills and --pauses must be >= 0")
        if (args.soak or 1) < 1 or (args.memory or 1) < 1 or args.kill_every <= 0:
            parser.error("--soak and --memory need at least 1 task, --kill-every a positive time")
        return _reliability_main(args)
    if args.tasks is None:
        args.tasks = 10000
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    compare = args.compare == IMPL_PARSL
    parsl_python = Path(os.path.abspath(args.parsl_python))
    if compare and not _ensure_parsl_python(parsl_python):
        return 2

    from htex_ref import __version__

    common = ["--workers", str(args.workers), "--tasks", str(args.tasks)]
    if args.encrypted:
        common.append("--encrypted")
    htex_cmd = [sys.executable, str(CHILD), "--impl", "htex_ref", *common]
    plan: list[tuple[str, list[str]]] = [(IMPL_HTEX, htex_cmd)]
    if compare:
        plan.append((IMPL_PARSL, [str(parsl_python), str(CHILD), "--impl", "parsl", *common]))
    if args.also_prefetch0:
        plan.append((IMPL_HTEX_P0, [*htex_cmd, "--prefetch", "0"]))
    also_enc = args.also_encrypted and not args.encrypted
    if also_enc:
        # Right after the plain run in every round, so both see the same machine state.
        plan.insert(1, (IMPL_HTEX_ENC, [*htex_cmd, "--encrypted"]))
    if args.also_monitoring:
        plan.insert(1, (IMPL_HTEX_NOMON, [*htex_cmd, "--no-monitoring"]))
    impls = ([IMPL_HTEX] + ([IMPL_HTEX_NOMON] if args.also_monitoring else []) + ([IMPL_HTEX_ENC] if also_enc else [])
             + ([IMPL_HTEX_P0] if args.also_prefetch0 else []) + ([IMPL_PARSL] if compare else []))

    base_env = dict(os.environ, PYTHONUNBUFFERED="1")
    htex_env = dict(base_env)
    pkg_root = str(Path(__file__).resolve().parents[2])
    htex_env["PYTHONPATH"] = os.pathsep.join(x for x in (pkg_root, os.environ.get("PYTHONPATH")) if x)

    subreaper = _become_subreaper()
    machine = _machine()
    load_start = _loadavg()
    started = datetime.datetime.now().astimezone()
    print(f"htex-ref bench (htex_ref {__version__}): {args.rounds} round(s), {args.tasks} no-op tasks, "
          f"{args.workers} workers, {'encrypted' if args.encrypted else 'unencrypted'}, "
          f"order per round: {', '.join(name for name, _ in plan)}")
    print(f"date: {started.isoformat(timespec='seconds')}")
    print(f"machine: {machine['hostname']}, nproc {machine['nproc']} (usable {machine['affinity_cpus']}), "
          f"CPU {machine['cpu_model']}, Python {machine['python']}, {machine['platform']}")
    print(f"load average at start: {' '.join(map(str, load_start))}", flush=True)
    if not subreaper:
        print("note: cannot become a child subreaper; leftover processes will not be detected")

    runs: list[ChildRun] = []
    interrupted = False
    previous = _terminate_on_signals()
    try:
        for rnd in range(1, args.rounds + 1):
            for impl, cmd in plan:
                run = ChildRun(impl, rnd, cmd)
                env = base_env if impl == IMPL_PARSL else htex_env
                print(f"round {rnd}/{args.rounds}  {impl:<20} ...", end=" ", flush=True)
                _run_child(run, env, args.timeout, subreaper)
                runs.append(run)
                if run.ok and run.result is not None:
                    r = run.result
                    print(f"ok in {run.wall_s:.1f} s: {r['noop_tasks_per_s']:.0f} tasks/s, "
                          f"RTT {r['rtt_median_ms']:.3f}/{r['rtt_p99_ms']:.3f} ms, "
                          f"eff {r['sleep10ms_efficiency']:.3f}, {r['mib_per_s']:.1f} MiB/s, "
                          f"first {r['start_to_first_s']:.3f} s", flush=True)
                else:
                    print(f"FAILED after {run.wall_s:.1f} s: {run.error}", flush=True)
                    print(f"  command: {shlex.join(cmd)}")
                    if run.kept_tmpdir:
                        print(f"  logs kept in {run.kept_tmpdir}")
                    print("  stderr tail:")
                    for line in (run.stderr_tail or "(empty)").splitlines():
                        print(f"    {line}")
                if run.orphans_lingered_s and not run.leftovers:
                    print(f"  note: processes it started outlived it by {run.orphans_lingered_s:.2f} s, "
                          "then exited on their own")
                if run.leftovers:
                    print(f"  WARNING: {len(run.leftovers)} process(es) it started were still running "
                          f"{run.orphans_lingered_s:.1f} s after it exited; killed:")
                    for line in run.leftovers:
                        print(f"    {line}")
    except (KeyboardInterrupt, _Terminated) as e:
        interrupted = True
        print(f"\n{'terminated' if isinstance(e, _Terminated) else 'interrupted'}: the running child and "
              "the processes it started were killed", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    load_end = _loadavg()
    counts = {i: sum(1 for r in runs if r.impl == i) for i in impls}
    medians = _medians(runs)
    table, verdicts = _summary(medians, impls, compare, counts)
    print()
    print(table)
    if compare:
        met = sum(1 for v in verdicts if v["met"])
        unknown = sum(1 for v in verdicts if v["met"] is None)
        print(f"targets met: {met}/{len(verdicts)}" + (f" ({unknown} without results)" if unknown else ""))
    encryption = _encryption_cost(medians) if also_enc else None
    if encryption is not None:
        print(encryption["text"])
    monitoring = _monitoring_cost(medians) if args.also_monitoring else None
    if monitoring is not None:
        print(monitoring["text"])
    print(f"load average at end: {' '.join(map(str, load_end))}")
    failed = [r for r in runs if not r.ok]
    leftovers = sum(len(r.leftovers) for r in runs)
    if leftovers:
        print(f"WARNING: {leftovers} leftover process(es) were found and killed (see above)")
    if failed:
        print(f"{len(failed)} of {len(runs)} children failed: "
              + ", ".join(f"{r.impl} round {r.round} ({r.error})" for r in failed))

    if args.json:
        doc = {
            "date": started.isoformat(timespec="seconds"),
            "htex_ref_version": __version__,
            "machine": machine,
            "load_average": {"start": load_start, "end": load_end},
            "options": {k: v for k, v in vars(args).items()},
            "parsl_python": str(parsl_python) if compare else None,
            "interrupted": interrupted,
            "runs": [r.as_json() for r in runs],
            "medians": medians,
            "targets": verdicts,
            "encryption": encryption,
            "monitoring": monitoring,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"raw results written to {path}")

    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
