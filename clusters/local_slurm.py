"""A multi-node Slurm cluster on this machine, one slurmd per network namespace; started and stopped here.

This module owns everything the local test cluster needs while it runs, and nothing else:

- a private ``munged`` (own key, socket, log under the cluster directory);
- ``slurmctld`` on this host, reached by the nodes at the bridge address;
- one ``slurmd`` per node ``c1..cN``, each in its own network namespace with its own address on a Linux
  bridge (no default route: nothing leaves the machine) and its own host name (UTS namespace, with a
  private mount namespace in which a cluster ``/etc/hosts`` is bound);
- optionally ``slurmdbd`` with a private MariaDB (own data directory and socket), so that ``sacct`` works;
- one iptables ``FORWARD ACCEPT`` rule for the bridge (Docker's firewall drops bridged traffic otherwise).

Every file lives under one cluster directory; every network object is named with the cluster's prefix
and the iptables rule carries a comment with it. That is what lets ``up`` clear what a crashed run left
behind, and ``down`` check that nothing is left. Packages come from ``scripts/install-slurm.sh``: this
module installs nothing. Must run as root.

    python -m clusters.local_slurm up --info FILE [--nodes 3] [--accounting] [--dir DIR]
    python -m clusters.local_slurm status --info FILE
    python -m clusters.local_slurm down --info FILE
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clusters.info import ClusterInfo

DEFAULT_DIR = "/tmp/htex-local-slurm"
DEFAULT_PREFIX = "htexs"
#: Candidate /24 subnets for the bridge; the first that no interface or route on this host uses is taken.
SUBNET_CANDIDATES = [f"10.{i}.0.0/24" for i in range(88, 100)]
NODE_HOST_OFFSET = 11
CLUSTER_NAME = "local"
PARTITION = "debug"
STATE_FILE = "cluster-state.json"
REQUIRED = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun", "scontrol", "scancel", "ip",
            "iptables", "nsenter", "unshare"]
REQUIRED_ACCOUNTING = ["slurmdbd", "sacct", "sacctmgr", "mariadbd", "mariadb-install-db"]


class ClusterError(RuntimeError):
    """Something the cluster needs failed; the message names the command or daemon and its log files."""


def log(msg: str) -> None:
    print(f"local_slurm: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- helpers


def run(args: Sequence[str], *, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a short command; a failure or time-out raises ClusterError naming the command and its stderr."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"command timed out after {timeout} s: {' '.join(args)}") from e
    except FileNotFoundError as e:
        raise ClusterError(f"command not found: {args[0]} (run scripts/install-slurm.sh)") from e
    if check and proc.returncode != 0:
        raise ClusterError(f"command failed (exit {proc.returncode}): {' '.join(args)}\n"
                           f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}")
    return proc


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    ({path} could not be read)"
    return "\n".join("    " + line for line in text[-lines:])


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] != b"Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ancestors() -> set[int]:
    """This process and its parents: never to be killed by a sweep, even if their command lines name the dir."""
    found = set()
    pid = os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            pid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def stop_pids(pids: dict[int, str], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, each pid (value: a name for the log)."""
    live = {p: n for p, n in pids.items() if pid_alive(p)}
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not any(pid_alive(p) for p in live), grace)
    for pid, name in live.items():
        if pid_alive(pid):
            log(f"{name} (pid {pid}) ignored SIGTERM for {grace} s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if not wait_for(lambda: not any(pid_alive(p) for p in live), 5):
        left = [f"{live[p]} (pid {p})" for p in live if pid_alive(p)]
        raise ClusterError(f"processes survived SIGKILL: {left}")


def port_offset(prefix: str) -> int:
    """0 for the default prefix; a stable even offset below 400 for any other."""
    if prefix == DEFAULT_PREFIX:
        return 0
    return 2 * (1 + zlib.crc32(prefix.encode()) % 199)


def free_port(start: int) -> int:
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the daemons bind: a port whose last connections linger in TIME_WAIT is free for them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free TCP port in {start}..{start + 199}")


# ---------------------------------------------------------------------------------------------- layout


@dataclass
class Layout:
    """Names of every file, network object and rule of one cluster."""

    dir: Path
    prefix: str

    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def hosts(self) -> Path:
        return self.etc / "hosts"

    @property
    def logs(self) -> Path:
        return self.dir / "log"

    @property
    def munge(self) -> Path:
        return self.dir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket"

    @property
    def mysql(self) -> Path:
        return self.dir / "mysql"

    @property
    def mysql_socket(self) -> Path:
        return self.mysql / "mysqld.sock"

    @property
    def shared(self) -> Path:
        return self.dir / "shared"

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def comment(self) -> str:
        return f"{self.prefix}-local-slurm"

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def veth(self, node: str) -> str:
        return f"{self.prefix}-{node}h"

    def slurm_env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}


def node_names(count: int) -> list[str]:
    return [f"c{i}" for i in range(1, count + 1)]


def pick_subnet() -> ipaddress.IPv4Network:
    """The first candidate /24 that overlaps nothing this host already has an address on or a route to."""
    used: list[ipaddress.IPv4Network] = []
    for line in run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    for line in run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit", "throw", "multicast"):
            dest = line.split()[1] if len(line.split()) > 1 else ""
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(dest, strict=False))
    return choose_subnet(used)


def choose_subnet(used: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first candidate that overlaps none of ``used`` (default routes, 0.0.0.0/0, do not count)."""
    taken = [u for u in used if u.prefixlen > 0]
    for cand in SUBNET_CANDIDATES:
        net = ipaddress.IPv4Network(cand)
        if not any(net.overlaps(u) for u in taken):
            return net
    raise ClusterError(f"every candidate subnet {SUBNET_CANDIDATES} is in use on this host (see `ip -4 addr`)")


# ----------------------------------------------------------------------------------------- config files


def slurm_conf(lay: Layout, *, host: str, host_addr: str, nodes: dict[str, str], cpus: int, mem_mb: int,
               ctld_port: int, dbd_port: int | None) -> str:
    d = lay.dir
    lines = [
        f"# Written by clusters/local_slurm.py for the cluster in {d}; removed by its `down`.",
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={host}({host_addr})",
        f"SlurmctldPort={ctld_port}",
        "AuthType=auth/munge",
        f"AuthInfo=socket={lay.munge_socket}",
        "CredType=cred/munge",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={d}/state",
        f"SlurmdSpoolDir={d}/spool/%n",
        f"SlurmctldPidFile={d}/run/slurmctld.pid",
        f"SlurmdPidFile={d}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={lay.logs}/slurmctld.log",
        f"SlurmdLogFile={lay.logs}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        # Without these, back-to-back jobs start about 3 s apart (cluster-facts.md).
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={lay.logs}/jobcomp.log",
        "ReturnToService=2",
        # Finished jobs stay visible to `squeue -t all` for this long: the squeue status path needs that.
        "MinJobAge=300",
        "KillWait=5",
        "InactiveLimit=0",
        # Nodes claim CPUs and memory of their own although they share this machine's.
        "SlurmdParameters=config_overrides",
    ]
    if dbd_port is not None:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={dbd_port}",
            # With a private munged, slurmctld finds the socket for slurmdbd traffic here.
            f"AccountingStoragePass={lay.munge_socket}",
        ]
    else:
        lines.append("AccountingStorageType=accounting_storage/none")
    for name, addr in nodes.items():
        lines.append(f"NodeName={name} NodeAddr={addr} NodeHostname={name} CPUs={cpus} RealMemory={mem_mb} "
                     "State=UNKNOWN")
    lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def slurmdbd_conf(lay: Layout, *, host: str, port: int) -> str:
    return "\n".join([
        f"# Written by clusters/local_slurm.py for the cluster in {lay.dir}.",
        "AuthType=auth/munge",
        f"AuthInfo=socket={lay.munge_socket}",
        f"DbdHost={host}",
        "DbdAddr=127.0.0.1",
        f"DbdPort={port}",
        "SlurmUser=root",
        f"PidFile={lay.dir}/run/slurmdbd.pid",
        f"LogFile={lay.logs}/slurmdbd.log",
        "DebugLevel=info",
        "StorageType=accounting_storage/mysql",
        # localhost: the client library talks over the Unix socket named by MYSQL_UNIX_PORT.
        "StorageHost=localhost",
        "StorageUser=root",
        "StorageLoc=slurm_acct_db",
    ]) + "\n"


# ------------------------------------------------------------------------------------------ the state


def read_state(lay: Layout) -> dict[str, object]:
    try:
        data = json.loads(lay.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(lay: Layout, state: dict[str, object]) -> None:
    lay.state_file.write_text(json.dumps(state, indent=2) + "\n")


def record_pid(lay: Layout, state: dict[str, object], name: str, pid: int) -> None:
    pids = state.setdefault("pids", {})
    assert isinstance(pids, dict)
    pids[name] = pid
    write_state(lay, state)


def spawn(lay: Layout, state: dict[str, object], name: str, args: Sequence[str], *,
          env: dict[str, str] | None = None, user: str | None = None) -> subprocess.Popen[bytes]:
    """Start a daemon in the foreground of its own session, its output in log/{name}.out; record its pid."""
    out = open(lay.logs / f"{name}.out", "ab")  # noqa: SIM115 - the child keeps it; closed here after fork
    try:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env={**os.environ, **(env or {})},
                                user=user, group=user, extra_groups=[] if user else None)
    finally:
        out.close()
    record_pid(lay, state, name, proc.pid)
    return proc


def daemon_failed(name: str, proc: subprocess.Popen[bytes], logs: Iterable[Path]) -> ClusterError:
    parts = [f"{name} did not come up (pid {proc.pid}, exit code {proc.poll()}); its logs:"]
    for path in logs:
        parts.append(f"  {path}:\n{tail(path)}")
    return ClusterError("\n".join(parts))


# ------------------------------------------------------------------------------------------- clean-up


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def our_netns(lay: Layout) -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(f"{lay.prefix}-c"))


def our_links(lay: Layout) -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    links = []
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(f"{lay.prefix}-"):
                links.append(name)
    return links


def our_iptables_rules(lay: Layout) -> list[list[str]]:
    proc = run(["iptables", "-w", "5", "-S", "FORWARD"], check=False)
    rules = []
    for line in proc.stdout.splitlines():
        if lay.comment in line and line.startswith("-A "):
            rules.append(line.split()[1:])
    return rules


def iptables_rule_args(lay: Layout) -> list[str]:
    return ["FORWARD", "-i", lay.bridge, "-o", lay.bridge, "-m", "comment", "--comment", lay.comment,
            "-j", "ACCEPT"]


def pids_in_netns(name: str) -> list[int]:
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def pids_naming_dir(lay: Layout) -> list[int]:
    """Processes whose command line names the cluster directory (our daemons, or jobs' processes)."""
    mine = ancestors()
    marker = str(lay.dir) + "/"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in mine and marker in cmdline(int(entry)) and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def leftovers(lay: Layout) -> list[str]:
    """Everything of this cluster that still exists on the host (empty once it is fully down)."""
    left = [f"network namespace {n}" for n in our_netns(lay)]
    left += [f"network link {n}" for n in our_links(lay)]
    left += [f"iptables rule {' '.join(r)}" for r in our_iptables_rules(lay)]
    left += [f"process {p}: {cmdline(p)[:200]}" for p in pids_naming_dir(lay)]
    return left


def sweep(lay: Layout) -> None:
    """Remove whatever exists with this cluster's names: processes in its namespaces or naming its directory,
    namespaces, links, iptables rules. Safe to run on a clean host."""
    victims: dict[int, str] = {}
    for ns in our_netns(lay):
        for pid in pids_in_netns(ns):
            victims[pid] = f"process in {ns}: {cmdline(pid)[:120]}"
    for pid in pids_naming_dir(lay):
        victims.setdefault(pid, f"process naming {lay.dir}: {cmdline(pid)[:120]}")
    if victims:
        for pid, what in victims.items():
            log(f"stopping {what} (pid {pid})")
        stop_pids(victims, grace=3)
    for ns in our_netns(lay):
        run(["ip", "netns", "delete", ns], check=False)
    for link in our_links(lay):
        run(["ip", "link", "delete", link], check=False)
    for rule in our_iptables_rules(lay):
        run(["iptables", "-w", "5", "-D", *rule], check=False)


# -------------------------------------------------------------------------------------------------- up


def check_prerequisites(accounting: bool) -> None:
    if os.geteuid() != 0:
        raise ClusterError("the local Slurm cluster needs root (network namespaces, bridge, iptables)")
    missing = [b for b in REQUIRED + (REQUIRED_ACCOUNTING if accounting else []) if shutil.which(b) is None]
    if missing:
        raise ClusterError(f"missing commands {missing}: run scripts/install-slurm.sh first")


def setup_network(lay: Layout, state: dict[str, object], nodes: list[str]) -> tuple[str, dict[str, str]]:
    net = pick_subnet()
    hosts = list(net.hosts())
    host_addr = str(hosts[0])
    addrs = {n: str(hosts[NODE_HOST_OFFSET - 1 + i]) for i, n in enumerate(nodes)}
    state["subnet"] = str(net)
    write_state(lay, state)
    run(["ip", "link", "add", lay.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{host_addr}/{net.prefixlen}", "dev", lay.bridge])
    run(["ip", "link", "set", lay.bridge, "up"])
    for node, addr in addrs.items():
        ns, veth = lay.netns(node), lay.veth(node)
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", veth, "master", lay.bridge, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{addr}/{net.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    # Docker's FORWARD chain drops bridged traffic between namespaces; this rule lets ours through.
    run(["iptables", "-w", "5", "-I", *iptables_rule_args(lay)])
    return host_addr, addrs


def start_munge(lay: Layout, state: dict[str, object]) -> None:
    lay.munge.mkdir(mode=0o755)
    key = lay.munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(lay.munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    # The socket directory must be world-executable so that root clients (and all users) reach the socket.
    lay.munge.chmod(0o755)
    args = ["munged", "--foreground", f"--socket={lay.munge_socket}", f"--key-file={key}",
            f"--pid-file={lay.munge}/munged.pid", f"--log-file={lay.munge}/munged.log",
            f"--seed-file={lay.munge}/munged.seed"]
    proc = spawn(lay, state, "munged", args, user="munge")
    if not wait_for(lambda: lay.munge_socket.exists() or proc.poll() is not None, 15) or proc.poll() is not None:
        raise daemon_failed("munged", proc, [lay.logs / "munged.out", lay.munge / "munged.log"])


def start_mariadb(lay: Layout, state: dict[str, object]) -> None:
    data = lay.mysql / "data"
    data.mkdir(parents=True)
    run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db",
         "--auth-root-authentication-method=socket"], timeout=120)
    args = ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={lay.mysql_socket}",
            f"--pid-file={lay.mysql}/mariadbd.pid", "--skip-networking", "--user=root",
            f"--log-error={lay.logs}/mariadbd.log", "--innodb-buffer-pool-size=32M"]
    proc = spawn(lay, state, "mariadbd", args)
    if not wait_for(lambda: lay.mysql_socket.exists() or proc.poll() is not None, 60) or proc.poll() is not None:
        raise daemon_failed("mariadbd", proc, [lay.logs / "mariadbd.out", lay.logs / "mariadbd.log"])


def start_slurmdbd(lay: Layout, state: dict[str, object], host: str, port: int) -> None:
    conf = lay.etc / "slurmdbd.conf"
    conf.write_text(slurmdbd_conf(lay, host=host, port=port))
    conf.chmod(0o600)
    # slurmdbd finds slurmdbd.conf beside the slurm.conf named by SLURM_CONF.
    env = {**lay.slurm_env(), "MYSQL_UNIX_PORT": str(lay.mysql_socket)}
    # slurmdbd takes no config path argument; started through a link in the cluster dir, its command line
    # still names the dir, which is how down and later runs recognise it as this cluster's.
    link = lay.dir / "run" / "slurmdbd"
    link.symlink_to(shutil.which("slurmdbd") or "/usr/sbin/slurmdbd")
    proc = spawn(lay, state, "slurmdbd", [str(link), "-D"], env=env)

    def listening() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    if not wait_for(lambda: listening() or proc.poll() is not None, 60) or proc.poll() is not None:
        raise daemon_failed("slurmdbd", proc, [lay.logs / "slurmdbd.out", lay.logs / "slurmdbd.log",
                                               lay.logs / "mariadbd.log"])
    run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], env=lay.slurm_env(), check=False)


def start_slurmctld(lay: Layout, state: dict[str, object]) -> None:
    proc = spawn(lay, state, "slurmctld", ["slurmctld", "-D", "-f", str(lay.conf)], env=lay.slurm_env())

    def up() -> bool:
        if proc.poll() is not None:
            return True
        return "UP" in run(["scontrol", "ping"], check=False, env=lay.slurm_env(), timeout=10).stdout

    if not wait_for(up, 30, 0.2) or proc.poll() is not None:
        raise daemon_failed("slurmctld", proc, [lay.logs / "slurmctld.out", lay.logs / "slurmctld.log"])


def start_slurmd(lay: Layout, state: dict[str, object], node: str) -> subprocess.Popen[bytes]:
    inner = (f"hostname {node} && mount --bind {lay.hosts} /etc/hosts && "
             f"exec slurmd -D -f {lay.conf} -N {node}")
    # `ip netns exec` would remount /sys and hide /sys/fs/cgroup, which slurmd needs (cluster-facts.md).
    args = ["nsenter", f"--net=/run/netns/{lay.netns(node)}", "unshare", "--uts", "--mount",
            "--propagation", "private", "--", "sh", "-c", inner]
    return spawn(lay, state, f"slurmd-{node}", args, env=lay.slurm_env())


def node_states(lay: Layout) -> dict[str, str]:
    proc = run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, env=lay.slurm_env(), timeout=10)
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def up(lay: Layout, info_path: Path, nodes: list[str], accounting: bool) -> ClusterInfo:
    started = time.monotonic()
    check_prerequisites(accounting)
    if len(str(lay.munge_socket)) > 100 or len(str(lay.mysql_socket)) > 100:
        raise ClusterError(f"cluster directory {lay.dir} is too long for Unix socket paths; choose a shorter --dir")
    if lay.dir.exists() or our_netns(lay) or our_links(lay) or our_iptables_rules(lay):
        log(f"clearing what a previous cluster left ({lay.dir}, prefix {lay.prefix})")
        sweep(lay)
        shutil.rmtree(lay.dir, ignore_errors=True)
    for sub in ("etc", "log", "state", "run", "shared"):
        (lay.dir / sub).mkdir(parents=True, exist_ok=True)
    lay.dir.chmod(0o755)
    lay.shared.chmod(0o1777)
    for node in nodes:
        (lay.dir / "spool" / node).mkdir(parents=True)
    state: dict[str, object] = {"prefix": lay.prefix, "dir": str(lay.dir), "nodes": nodes, "info": str(info_path),
                                "pids": {}}
    write_state(lay, state)

    host = socket.gethostname().split(".")[0]
    host_addr, addrs = setup_network(lay, state, nodes)
    lay.hosts.write_text(f"127.0.0.1 localhost\n{host_addr} {host}\n"
                         + "".join(f"{a} {n}\n" for n, a in addrs.items()))
    cpus = os.cpu_count() or 1
    mem_mb = 1000
    # Clusters with other prefixes start their port search elsewhere, so two started at the same moment
    # (a CI run and a validation run, say) do not both find the same port free.
    base = 6817 + port_offset(lay.prefix)
    ctld_port = free_port(base)
    dbd_port = free_port(ctld_port + 2) if accounting else None

    def write_conf() -> None:
        lay.conf.write_text(slurm_conf(lay, host=host, host_addr=host_addr, nodes=addrs, cpus=cpus, mem_mb=mem_mb,
                                       ctld_port=ctld_port, dbd_port=dbd_port))

    write_conf()
    start_munge(lay, state)
    if accounting:
        assert dbd_port is not None
        start_mariadb(lay, state)
        start_slurmdbd(lay, state, host, dbd_port)
    for attempt in range(5):
        try:
            start_slurmctld(lay, state)
            break
        except ClusterError as e:
            # The port was free when probed but taken before slurmctld bound it: take the next one.
            if "Address already in use" not in str(e) or attempt == 4:
                raise
            log(f"slurmctld port {ctld_port} was taken meanwhile; trying another")
            ctld_port = free_port(ctld_port + 4)
            write_conf()
    slurmds = {node: start_slurmd(lay, state, node) for node in nodes}

    def nodes_idle() -> bool:
        # A slurmd that exited will never make its node idle: stop waiting at once.
        return any(p.poll() is not None for p in slurmds.values()) or \
            all(node_states(lay).get(n) == "idle" for n in nodes)

    if not wait_for(nodes_idle, 60, 0.2) or any(p.poll() is not None for p in slurmds.values()):
        dead = {n: p.poll() for n, p in slurmds.items() if p.poll() is not None}
        logs = [lay.logs / "slurmctld.log"] + [lay.logs / f"slurmd-{n}.log" for n in nodes] + \
               [lay.logs / f"slurmd-{n}.out" for n in nodes]
        raise ClusterError(f"nodes did not become idle (waited up to 60 s): {node_states(lay)}"
                           + (f"; slurmd exited on {dead} (node: exit code)" if dead else "") + "; logs:\n"
                           + "\n".join(f"  {p}:\n{tail(p)}" for p in logs))
    smoke = run(["srun", f"--nodes={len(nodes)}", "--ntasks-per-node=1", "--time=1", "hostname"],
                check=False, env=lay.slurm_env(), timeout=60)
    seen = sorted(smoke.stdout.split())
    if smoke.returncode != 0 or seen != sorted(nodes):
        raise ClusterError(f"smoke test `srun hostname` on {nodes} gave exit {smoke.returncode}, output {seen}, "
                           f"stderr {smoke.stderr.strip()!r}; see {lay.logs}/slurmctld.log and slurmd-*.log")
    if accounting:
        acct = run(["sacct", "-X", "-n", "-P", "-o", "JobID,State"], check=False, env=lay.slurm_env())
        if acct.returncode != 0:
            raise ClusterError(f"sacct does not work although slurmdbd runs: {acct.stderr.strip()}; "
                               f"see {lay.logs}/slurmdbd.log and {lay.logs}/mariadbd.log")

    info = ClusterInfo(
        name="local",
        env=lay.slurm_env(),
        address=host_addr,
        nodes=nodes,
        cores_per_node=cpus,
        partition=PARTITION,
        shared_dir=str(lay.shared),
        worker_pool_cmd=None,
        accounting=accounting,
        worker_init="",
        extra={"cluster_dir": str(lay.dir), "prefix": lay.prefix, "logs": str(lay.logs),
               "up_seconds": f"{time.monotonic() - started:.2f}"},
    )
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info.write(info_path)
    log(f"cluster up in {time.monotonic() - started:.1f} s: nodes {nodes} at {list(addrs.values())}, "
        f"controller {host}({host_addr}):{ctld_port}, accounting={accounting}; SLURM_CONF={lay.conf}")
    return info


# ------------------------------------------------------------------------------------------------ down


def live_jobs(lay: Layout) -> list[str] | None:
    """Ids of jobs not yet finished, or None when slurmctld does not answer."""
    proc = run(["squeue", "-h", "-o", "%A"], check=False, env=lay.slurm_env(), timeout=15)
    if proc.returncode != 0:
        return None
    return proc.stdout.split()


def down(lay: Layout, info_path: Path | None, keep_dir: bool) -> list[str]:
    """Stop the cluster; returns what could not be removed (empty on success)."""
    started = time.monotonic()
    state = read_state(lay)
    pids = state.get("pids", {})
    assert isinstance(pids, dict)
    if lay.conf.exists() and pids.get("slurmctld") and pid_alive(int(pids["slurmctld"])):
        # Killing slurmd does not end running jobs: cancel them and wait until the queue is empty.
        jobs = live_jobs(lay)
        if jobs:
            log(f"cancelling jobs {jobs}")
            run(["scancel", *jobs], check=False, env=lay.slurm_env())
            if not wait_for(lambda: not live_jobs(lay), 60, 0.2):
                log(f"jobs still in the queue after 60 s: {live_jobs(lay)}; their processes are killed below")
    # Nodes first (they report to slurmctld), then the controller, accounting, and munge last.
    nodes = state.get("nodes")
    order = [f"slurmd-{n}" for n in (nodes if isinstance(nodes, list) else [])]
    order += ["slurmctld", "slurmdbd", "mariadbd", "munged"]
    marker = str(lay.dir)
    for name in order:
        pid = pids.get(name)
        # The command line must still name the cluster dir: a pid reused by another process is left alone.
        if isinstance(pid, int) and pid_alive(pid) and marker in cmdline(pid):
            stop_pids({pid: name}, grace=10)
    sweep(lay)
    left = leftovers(lay)
    if info_path is not None:
        info_path.unlink(missing_ok=True)
    if not keep_dir and not left:
        shutil.rmtree(lay.dir, ignore_errors=True)
    log(f"cluster down in {time.monotonic() - started:.1f} s" + (f"; LEFT: {left}" if left else ""))
    return left


def status(lay: Layout) -> int:
    state = read_state(lay)
    if not state:
        print(f"no cluster in {lay.dir}")
        return 1
    pids = state.get("pids", {})
    assert isinstance(pids, dict)
    for name, pid in pids.items():
        print(f"{name:14} pid {pid:>7} {'running' if pid_alive(int(pid)) else 'NOT RUNNING'}")
    print(run(["sinfo", "-N", "-l"], check=False, env=lay.slurm_env()).stdout)
    print(run(["squeue"], check=False, env=lay.slurm_env()).stdout)
    return 0


# ------------------------------------------------------------------------------------------------- main


def layout_from(args: argparse.Namespace) -> tuple[Layout, Path | None]:
    info_path = Path(args.info).absolute() if args.info else None
    directory, prefix = args.dir, args.prefix
    if info_path is not None and info_path.exists() and args.command != "up":
        extra = ClusterInfo.read(info_path).extra
        directory = directory or extra.get("cluster_dir")
        prefix = prefix or extra.get("prefix")
    return Layout(Path(directory or DEFAULT_DIR).absolute(), prefix or DEFAULT_PREFIX), info_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clusters.local_slurm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--info", required=name == "up", help="ClusterInfo JSON file (written by up)")
        p.add_argument("--dir", help=f"cluster directory (default {DEFAULT_DIR})")
        p.add_argument("--prefix", help=f"name prefix of namespaces, links and rules (default {DEFAULT_PREFIX})")
        if name == "up":
            p.add_argument("--nodes", type=int, default=3)
            p.add_argument("--accounting", action="store_true", help="also run slurmdbd + MariaDB (sacct)")
        if name == "down":
            p.add_argument("--keep-dir", action="store_true", help="keep the cluster directory (logs)")
    args = parser.parse_args(argv)
    if args.prefix is not None and not re.fullmatch(r"[a-z][a-z0-9]{0,7}", args.prefix):
        # Interface names are at most 15 characters: prefix, "-c", node number and "h".
        parser.error(f"--prefix must be 1-8 lower-case letters or digits, starting with a letter: {args.prefix!r}")
    lay, info_path = layout_from(args)
    try:
        if args.command == "up":
            assert info_path is not None
            if not 1 <= args.nodes <= 200:
                raise ClusterError(f"--nodes must be 1..200, got {args.nodes}")
            try:
                up(lay, info_path, node_names(args.nodes), args.accounting)
            except BaseException:
                # Stop what did start, but keep the directory: the error names logs in it.
                with contextlib.suppress(Exception):
                    down(lay, None, keep_dir=True)
                raise
            return 0
        if args.command == "down":
            return 1 if down(lay, info_path, args.keep_dir) else 0
        return status(lay)
    except ClusterError as e:
        log(f"ERROR: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
