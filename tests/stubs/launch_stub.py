"""Stand-ins for parallel launch tools: ``srun``, ``mpiexec``, ``mpirun``, ``aprun``, ``jsrun``, ``parallel``.

Each starts the number of copies of its command that the real tool would start for the options that
htex_ref's launchers use, concurrently, with the rank variables the real tool sets, and exits as the
real tool does when copies fail. Every copy also gets ``HTEX_STUB_HOST``: the host the real tool would
have placed it on. Usage: ``launch_stub.py TOOL ARGS...`` (tests put small wrappers named TOOL on PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable

Placement = list[tuple[dict[str, str], str]]  # (environment, host) per copy


def take_options(args: list[str], with_value: set[str], flags: set[str]) -> tuple[dict[str, str], list[str]]:
    """Options before the command; ``--opt=value`` and ``--opt value`` forms; unknown options are errors."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if "=" in arg and arg.startswith("--"):
            key, value = arg.split("=", 1)
            if key not in with_value:
                sys.exit(f"stub: unknown option {key}")
            opts[key] = value
        elif arg in with_value:
            if i + 1 >= len(args):
                sys.exit(f"stub: option {arg} needs a value")
            opts[arg] = args[i + 1]
            i += 1
        elif arg in flags:
            opts[arg] = ""
        else:
            sys.exit(f"stub: unknown option {arg}")
        i += 1
    if i >= len(args):
        sys.exit("stub: no command given")
    return opts, args[i:]


def first(opts: dict[str, str], *names: str, default: str | None = None) -> str | None:
    for name in names:
        if name in opts:
            return opts[name]
    return default


def read_hosts(path: str | None) -> list[str]:
    if path is None:
        return ["localhost"]
    with open(path) as f:
        hosts = [line.strip() for line in f if line.strip()]
    if not hosts:
        sys.exit(f"stub: host file {path} is empty")
    return hosts


def run_copies(command: list[str], placement: Placement, label: bool = False) -> list[int]:
    """Start every copy at once (real launchers do), wait for all; their exit codes in rank order."""
    codes = [0] * len(placement)
    lock = threading.Lock()

    def one(rank: int, env: dict[str, str], host: str) -> None:
        full = {**os.environ, **env, "HTEX_STUB_HOST": host}
        try:
            proc = subprocess.Popen(command, env=full, stdout=subprocess.PIPE if label else None)
        except OSError as e:
            print(f"stub: cannot start {command[0]}: {e}", file=sys.stderr)
            codes[rank] = 127
            return
        if label and proc.stdout is not None:
            for line in proc.stdout:
                with lock:
                    sys.stdout.write(f"{rank}: {line.decode(errors='replace')}")
                    sys.stdout.flush()
        codes[rank] = proc.wait()

    threads = [threading.Thread(target=one, args=(r, env, host)) for r, (env, host) in enumerate(placement)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def highest(codes: list[int]) -> int:
    """srun / mpiexec: the highest exit code of any task (a signal counts as 128 + signal)."""
    return max((128 - c if c < 0 else c) for c in codes) if codes else 0


def srun(args: list[str]) -> int:
    opts, command = take_options(
        args, {"--ntasks", "-n", "--nodes", "-N", "--ntasks-per-node", "--cpus-per-task", "-c", "--cpu-bind",
               "--mpi"},
        {"-l", "--label", "--exclusive", "--overlap"})
    alloc_nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1"))
    nodes = int(first(opts, "--nodes", "-N", default="0") or 0)
    if nodes > alloc_nodes:
        print(f"srun: error: only {alloc_nodes} nodes in the allocation, {nodes} asked for", file=sys.stderr)
        return 1
    ntasks = int(first(opts, "--ntasks", "-n", default=str(nodes or 1)) or 1)
    per_node = first(opts, "--ntasks-per-node")
    spread = int(per_node) if per_node else max(1, -(-ntasks // max(nodes, 1)))
    placement = [({"SLURM_PROCID": str(r), "SLURM_NTASKS": str(ntasks), "SLURM_NODEID": str(r // spread),
                   "SLURM_LOCALID": str(r % spread)}, f"node{r // spread}") for r in range(ntasks)]
    return highest(run_copies(command, placement, label="-l" in opts or "--label" in opts))


def mpiexec(args: list[str]) -> int:
    opts, command = take_options(
        args, {"-n", "-np", "-ppn", "--ppn", "--hostfile", "-f", "--bind-to", "--cpu-bind", "--depth", "-d"},
        {"--no-transfer"})
    n = int(first(opts, "-n", "-np", default="1") or 1)
    hosts = read_hosts(first(opts, "--hostfile", "-f"))
    ppn = int(first(opts, "-ppn", "--ppn", default="1") or 1)
    placement = [({"PMI_RANK": str(r), "PMI_SIZE": str(n), "PALS_RANKID": str(r)}, hosts[(r // ppn) % len(hosts)])
                 for r in range(n)]
    return highest(run_copies(command, placement))


def mpirun(args: list[str]) -> int:
    opts, command = take_options(args, {"-np", "-n", "--map-by", "--bind-to"}, {"--oversubscribe"})
    n = int(first(opts, "-np", "-n", default="1") or 1)
    placement = [({"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": str(n)}, "localhost") for r in range(n)]
    return highest(run_copies(command, placement))


def aprun(args: list[str]) -> int:
    opts, command = take_options(args, {"-n", "-N", "-d", "-cc"}, set())
    n = int(first(opts, "-n", default="1") or 1)
    per_node = int(first(opts, "-N", default=str(n)) or n)
    placement = [({"ALPS_APP_PE": str(r)}, f"nid{r // per_node:05d}") for r in range(n)]
    return highest(run_copies(command, placement))


def jsrun(args: list[str]) -> int:
    opts, command = take_options(args, {"-n", "-r", "-a", "-c", "-g"}, set())
    sets = int(first(opts, "-n", default="1") or 1)
    per_host = int(first(opts, "-r", default=str(sets)) or sets)
    per_set = int(first(opts, "-a", default="1") or 1)
    n = sets * per_set
    placement = [({"JSM_NAMESPACE_RANK": str(r), "JSM_NAMESPACE_SIZE": str(n), "OMPI_COMM_WORLD_RANK": str(r)},
                  f"h{(r // per_set) // per_host}") for r in range(n)]
    return highest(run_copies(command, placement))


def parallel(args: list[str]) -> int:
    opts: dict[str, str] = {}
    for key, value in zip(args[::2], args[1::2], strict=False):
        if key not in {"--env", "--joblog", "--sshloginfile", "--jobs", "-j"}:
            sys.exit(f"stub: unknown option {key}")
        opts[key] = value
    if len(args) % 2:
        sys.exit(f"stub: option {args[-1]} needs a value (parallel here reads its commands from stdin)")
    if opts.get("--env") == "_" and not os.path.exists(os.path.expanduser("~/.parallel/ignored_vars")):
        print("parallel: Error: Run 'parallel --record-env' in a clean environment first.", file=sys.stderr)
        return 255
    logins = read_hosts(opts.get("--sshloginfile"))
    slots = int(first(opts, "--jobs", "-j", default="1") or 1) * len(logins)
    lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    codes = [0] * len(lines)
    gate = threading.BoundedSemaphore(slots)

    def one(seq: int, line: str) -> None:
        with gate:
            env = {**os.environ, "PARALLEL_SEQ": str(seq + 1), "HTEX_STUB_HOST": logins[seq % len(logins)]}
            codes[seq] = subprocess.call(["bash", "-c", line], env=env)

    threads = [threading.Thread(target=one, args=(i, line)) for i, line in enumerate(lines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if "--joblog" in opts:
        with open(opts["--joblog"], "w") as f:
            f.write("Seq\tExitval\tCommand\n")
            f.writelines(f"{i + 1}\t{c}\t{line}\n" for i, (c, line) in enumerate(zip(codes, lines, strict=True)))
    return min(101, sum(1 for c in codes if c != 0))


TOOLS: dict[str, Callable[[list[str]], int]] = {
    "srun": srun, "mpiexec": mpiexec, "mpirun": mpirun, "aprun": aprun, "jsrun": jsrun, "parallel": parallel,
}


def install(directory: str) -> None:
    """Write a wrapper for every tool into ``directory`` (to be put first on PATH)."""
    os.makedirs(directory, exist_ok=True)
    for name in TOOLS:
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" {name} "$@"\n')
        os.chmod(path, 0o755)


if __name__ == "__main__":
    sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
