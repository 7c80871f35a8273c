"""A real Grid Engine cluster on this machine (Son of Grid Engine 8.1.9 from Debian); started and stopped here.

This module owns everything the Grid Engine test cluster needs while it runs, and nothing else:

- a private Grid Engine installation: its own ``SGE_ROOT`` (links to Debian's binaries and a cell of its
  own, ``htex``, with a Berkeley DB spool), so Debian's ``/var/lib/gridengine/default`` is never touched;
- ``sge_qmaster`` on this host, in a mount namespace of its own where a cluster ``/etc/hosts`` is bound
  (the qmaster must resolve every execution host's name and address both ways), on a free port;
- one ``sge_execd`` per execution host ``g1..gN``, each in its own network namespace with its own address
  on a Linux bridge (no default route: nothing leaves the machine), its own host name (UTS namespace) and
  the cluster ``/etc/hosts`` (private mount namespace);
- one iptables ``FORWARD ACCEPT`` rule for the bridge when iptables exists (Docker's firewall drops bridged
  traffic otherwise).

Name resolution is what Grid Engine is strict about: clients on this host resolve this host's name through
the host's own ``/etc/hosts`` (often to 127.0.0.1, which the qmaster resolves back to ``localhost``), so
the cell's ``host_aliases`` makes ``localhost`` an alias of this host's name. Admin commands (``qconf``
with execution host names) run inside the qmaster's mount namespace, where those names resolve.

Every file lives under one cluster directory, every network object is named with the cluster's prefix, and
the daemons are found again by their pid files and by the ``SGE_ROOT`` in their environment: that is what
lets ``up`` clear what a crashed run left behind and ``down`` check that nothing is left. Packages come from
``scripts/install-gridengine.sh``; this module installs nothing. Must run as root.

    python -m clusters.gridengine up --info FILE [--nodes 2] [--dir DIR] [--prefix PREFIX]
    python -m clusters.gridengine status --info FILE
    python -m clusters.gridengine down --info FILE [--keep-dir]
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clusters.info import ClusterInfo
from clusters.local_slurm import (
    ClusterError,
    free_port,
    pick_subnet,
    pid_alive,
    port_offset,
    stop_pids,
    tail,
    wait_for,
)

DEFAULT_DIR = "/tmp/htex-gridengine"
DEFAULT_PREFIX = "htexg"
CELL = "htex"
QUEUE = "all.q"
STATE_FILE = "cluster-state.json"
NODE_HOST_OFFSET = 11
#: Debian's Grid Engine: binaries, and the SGE_ROOT whose bin/lib/utilbin/util our private root links to.
GE_LIB = Path("/usr/lib/gridengine")
DEBIAN_ROOT = Path("/var/lib/gridengine")
DEFAULT_CONFIGURATION = Path("/usr/share/gridengine/default-configuration")
RESOURCES = Path("/usr/share/gridengine/util/resources")
REQUIRED = ["sge_qmaster", "sge_execd", "qsub", "qstat", "qconf", "qacct", "qdel", "ip", "nsenter", "unshare"]


def log(msg: str) -> None:
    print(f"gridengine: {msg}", file=sys.stderr, flush=True)


def run(args: Sequence[str], *, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a short command; a failure or time-out raises ClusterError naming the command and its output."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"command timed out after {timeout} s: {' '.join(args)}") from e
    except FileNotFoundError as e:
        raise ClusterError(f"command not found: {args[0]} (run scripts/install-gridengine.sh)") from e
    if check and proc.returncode != 0:
        raise ClusterError(f"command failed (exit {proc.returncode}): {' '.join(args)}\n"
                           f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------------------------------------- layout


@dataclass
class Layout:
    """Names of every file, network object and rule of one cluster."""

    dir: Path
    prefix: str

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def common(self) -> Path:
        return self.root / CELL / "common"

    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    @property
    def hosts(self) -> Path:
        return self.etc / "hosts"

    @property
    def logs(self) -> Path:
        return self.dir / "log"

    @property
    def qmaster_spool(self) -> Path:
        return self.dir / "spool" / "qmaster"

    @property
    def execd_spool(self) -> Path:
        return self.dir / "spool" / "execd"

    @property
    def spooldb(self) -> Path:
        return self.dir / "spooldb"

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
        return f"{self.prefix}-gridengine"

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def veth(self, node: str) -> str:
        return f"{self.prefix}-{node}h"

    def execd_pid_file(self, node: str) -> Path:
        return self.execd_spool / node / "execd.pid"

    def env(self, qmaster_port: int) -> dict[str, str]:
        return {"SGE_ROOT": str(self.root), "SGE_CELL": CELL, "SGE_QMASTER_PORT": str(qmaster_port),
                "SGE_EXECD_PORT": str(qmaster_port + 1)}


def node_names(count: int) -> list[str]:
    return [f"g{i}" for i in range(1, count + 1)]


# ----------------------------------------------------------------------------------------- config files


def bootstrap(lay: Layout) -> str:
    return "\n".join([
        "admin_user              none",
        "default_domain          none",
        "ignore_fqdn             true",
        "spooling_method         berkeleydb",
        "spooling_lib            libspoolb",
        f"spooling_params         {lay.spooldb}",
        "binary_path             /usr/sbin",
        f"qmaster_spool_dir       {lay.qmaster_spool}",
        "security_mode           none",
        "listener_threads        2",
        "worker_threads          2",
        "scheduler_threads       1",
    ]) + "\n"


#: Changes to Debian's default global configuration, and why.
GLOBAL_CHANGES = {
    # Root submits the test jobs; the default refuses uids and gids below 1000.
    "min_uid": "0",
    "min_gid": "0",
    "mailer": "/bin/true",
    # Execution hosts report every 5 s (default 40 s), so they are up sooner after start.
    "load_report_time": "00:00:05",
    # Accounting written a second after a job ends (default 15 s): qacct has exit codes sooner.
    "reporting_params": "accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00",
    # Jobs' shells are not login shells: a login bash reads root's profile on every job start (here it runs
    # `pyenv rehash`, whose lock makes jobs that start together print errors into their output).
    "login_shells": "none",
    # qdel and h_rt also kill what a job started in another session or process group (worker pools do),
    # found by the extra group id every job's processes carry.
    "execd_params": "ENABLE_ADDGRP_KILL=true",
}

#: Scheduler settings: schedule every second and at once on submit and job end (default: every 15 s).
SCHED_CHANGES = {
    "schedule_interval": "0:0:1",
    "flush_submit_sec": "1",
    "flush_finish_sec": "1",
    "job_load_adjustments": "NONE",
    "load_adjustment_decay_time": "0:0:0",
}


def edit_settings(text: str, changes: dict[str, str]) -> str:
    """``key value`` lines of a Grid Engine configuration with ``changes`` applied (keys it lacks appended)."""
    out, seen = [], set()
    for line in text.splitlines():
        key = line.split(None, 1)[0] if line.strip() and not line.startswith("#") else ""
        if key in changes:
            out.append(f"{key} {changes[key]}")
            seen.add(key)
        else:
            out.append(line)
    out += [f"{k} {v}" for k, v in changes.items() if k not in seen]
    return "\n".join(out) + "\n"


def queue_conf(nodes: list[str]) -> str:
    """One queue over every execution host with one slot each, so each job (block) has a host to itself,
    as Slurm's exclusive nodes do."""
    limits = " ".join(f"{pfx}_{res}" for res in ("rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem")
                      for pfx in ("s", "h"))
    lines = [
        f"qname {QUEUE}", f"hostlist {' '.join(nodes)}", "seq_no 0", "load_thresholds NONE",
        "suspend_thresholds NONE", "nsuspend 1", "suspend_interval 00:05:00", "priority 0",
        "min_cpu_interval 00:05:00", "processors UNDEFINED", "qtype BATCH INTERACTIVE", "ckpt_list NONE",
        "pe_list NONE", "rerun FALSE", "slots 1", "tmpdir /tmp", "shell /bin/bash", "prolog NONE", "epilog NONE",
        "shell_start_mode posix_compliant", "starter_method NONE", "suspend_method NONE", "resume_method NONE",
        "terminate_method NONE", "notify 00:00:60", "owner_list NONE", "user_lists NONE", "xuser_lists NONE",
        "subordinate_list NONE", "complex_values NONE", "projects NONE", "xprojects NONE", "calendar NONE",
        "initial_state default",
    ]
    lines += [f"{name} INFINITY" for name in limits.split()]
    return "\n".join(lines) + "\n"


def exec_host_conf(node: str) -> str:
    return "\n".join([f"hostname {node}", "load_scaling NONE", "complex_values NONE", "user_lists NONE",
                      "xuser_lists NONE", "projects NONE", "xprojects NONE", "usage_scaling NONE",
                      "report_variables NONE"]) + "\n"


def hosts_file(host: str, host_addrs: list[str], nodes: dict[str, str]) -> str:
    lines = ["127.0.0.1 localhost"] + [f"{a} {host}" for a in host_addrs]
    return "\n".join(lines + [f"{a} {n}" for n, a in nodes.items()]) + "\n"


# ------------------------------------------------------------------------------------------ the state


def read_state(lay: Layout) -> dict[str, object]:
    try:
        data = json.loads(lay.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(lay: Layout, state: dict[str, object]) -> None:
    lay.state_file.write_text(json.dumps(state, indent=2) + "\n")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def is_ours(lay: Layout, pid: int) -> bool:
    """A Grid Engine daemon or shepherd of this cluster: its program is Debian's Grid Engine binary and its
    SGE_ROOT is this cluster's (a reused pid, or anybody's shell that exported our SGE_ROOT, is not)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return exe.startswith(str(GE_LIB) + "/") and environ_of(pid).get("SGE_ROOT") == str(lay.root) \
        and pid_alive(pid)


# ------------------------------------------------------------------------------------------- clean-up


def our_netns(lay: Layout) -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(f"{lay.prefix}-g"))


def our_links(lay: Layout) -> list[str]:
    links = []
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(f"{lay.prefix}-"):
                links.append(name)
    return links


def our_iptables_rules(lay: Layout) -> list[list[str]]:
    if shutil.which("iptables") is None:
        return []
    proc = run(["iptables", "-w", "5", "-S", "FORWARD"], check=False)
    return [line.split()[1:] for line in proc.stdout.splitlines() if lay.comment in line and line.startswith("-A ")]


def iptables_rule_args(lay: Layout) -> list[str]:
    return ["FORWARD", "-i", lay.bridge, "-o", lay.bridge, "-m", "comment", "--comment", lay.comment, "-j", "ACCEPT"]


def our_processes(lay: Layout) -> dict[int, str]:
    """Every process of this cluster: all processes in its namespaces (execds, shepherds, jobs) and its
    Grid Engine daemons on this host (the qmaster)."""
    found: dict[int, str] = {}
    for ns in our_netns(lay):
        for p in run(["ip", "netns", "pids", ns], check=False).stdout.split():
            if p.isdigit() and int(p) != os.getpid():
                found[int(p)] = f"process in {ns}"
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in found and is_ours(lay, int(entry)):
            found[int(entry)] = "Grid Engine daemon of this cluster"
    return found


def leftovers(lay: Layout) -> list[str]:
    left = [f"network namespace {n}" for n in our_netns(lay)]
    left += [f"network link {n}" for n in our_links(lay)]
    left += [f"iptables rule {' '.join(r)}" for r in our_iptables_rules(lay)]
    left += [f"process {p} ({what})" for p, what in our_processes(lay).items()]
    return left


def sweep(lay: Layout) -> None:
    """Remove whatever exists with this cluster's names; safe on a clean host."""
    victims = our_processes(lay)
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


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the Grid Engine cluster needs root (network namespaces, bridge, daemons)")
    missing = [b for b in REQUIRED if shutil.which(b) is None]
    missing += [str(p) for p in (GE_LIB / "spoolinit", GE_LIB / "spooldefaults", DEFAULT_CONFIGURATION)
                if not p.exists()]
    if missing:
        raise ClusterError(f"missing {missing}: run scripts/install-gridengine.sh first")


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
    if shutil.which("iptables"):
        # Docker's FORWARD chain drops bridged traffic between namespaces; this rule lets ours through.
        run(["iptables", "-w", "5", "-I", *iptables_rule_args(lay)])
    return host_addr, addrs


def make_cell(lay: Layout, host: str, env: dict[str, str]) -> None:
    """A private SGE_ROOT with the cell ``htex``: bootstrap, spool, global configuration, complexes."""
    lay.root.mkdir()
    for name in ("bin", "lib", "utilbin", "util"):
        (lay.root / name).symlink_to(DEBIAN_ROOT / name)
    lay.common.mkdir(parents=True)
    (lay.common / "bootstrap").write_text(bootstrap(lay))
    (lay.common / "act_qmaster").write_text(host + "\n")
    # Clients here may resolve this host to 127.0.0.1, which the qmaster reads back as "localhost".
    (lay.common / "host_aliases").write_text(f"{host} localhost\n")
    for d in (lay.qmaster_spool / "job_scripts", lay.execd_spool, lay.spooldb):
        d.mkdir(parents=True)
    conf = lay.etc / "global"
    conf.write_text(edit_settings(DEFAULT_CONFIGURATION.read_text(), {
        **GLOBAL_CHANGES, "execd_spool_dir": str(lay.execd_spool)}))
    # What Debian's init_cluster does, with our paths and configuration.
    run([str(GE_LIB / "spoolinit"), "berkeleydb", "libspoolb", str(lay.spooldb), "init"], env=env)
    run([str(GE_LIB / "spooldefaults"), "configuration", str(conf)], env=env)
    run([str(GE_LIB / "spooldefaults"), "complexes", str(RESOURCES / "centry")], env=env)
    run([str(GE_LIB / "spooldefaults"), "usersets", str(RESOURCES / "usersets")], env=env)
    run([str(GE_LIB / "spooldefaults"), "managers", "root"], env=env)


def daemon_failed(name: str, logs: Sequence[Path]) -> ClusterError:
    return ClusterError("\n".join([f"{name} did not come up; its logs:"] + [f"  {p}:\n{tail(p)}" for p in logs]))


def start_qmaster(lay: Layout, state: dict[str, object], env: dict[str, str]) -> int:
    out = lay.logs / "qmaster.out"
    inner = f"mount --bind {lay.hosts} /etc/hosts && exec sge_qmaster"
    with open(out, "ab") as f:
        # sge_qmaster daemonizes: this returns when its parent exits; the daemon keeps the mount namespace.
        rc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", inner],
                            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, timeout=60,
                            env={**os.environ, **env}).returncode
    pid_file = lay.qmaster_spool / "qmaster.pid"
    logs = [out, lay.qmaster_spool / "messages"]
    if rc != 0 or not wait_for(lambda: read_pid(pid_file) is not None, 30):
        raise daemon_failed(f"sge_qmaster (exit {rc})", logs)
    pid = read_pid(pid_file)
    assert pid is not None
    state.setdefault("pids", {})["sge_qmaster"] = pid  # type: ignore[index]
    write_state(lay, state)
    if not wait_for(lambda: run(["qstat"], check=False, env=env, timeout=10).returncode == 0
                    or not pid_alive(pid), 30, 0.2) or not pid_alive(pid):
        raise daemon_failed("sge_qmaster", logs)
    return pid


def qconf_admin(lay: Layout, qmaster_pid: int, env: dict[str, str], *args: str) -> None:
    """``qconf`` inside the qmaster's mount namespace, where execution host names resolve."""
    run(["nsenter", f"--mount=/proc/{qmaster_pid}/ns/mnt", "--", "qconf", *args], env=env)


def configure(lay: Layout, qmaster_pid: int, env: dict[str, str], host: str, nodes: list[str]) -> None:
    for node in nodes:
        path = lay.etc / f"exec-{node}"
        path.write_text(exec_host_conf(node))
        qconf_admin(lay, qmaster_pid, env, "-Ae", str(path))
        qconf_admin(lay, qmaster_pid, env, "-ah", node)
    qconf_admin(lay, qmaster_pid, env, "-as", host)
    sched = lay.etc / "sched"
    sched.write_text(edit_settings(run(["qconf", "-ssconf"], env=env).stdout, SCHED_CHANGES))
    qconf_admin(lay, qmaster_pid, env, "-Msconf", str(sched))
    queue = lay.etc / "queue"
    queue.write_text(queue_conf(nodes))
    qconf_admin(lay, qmaster_pid, env, "-Aq", str(queue))


def start_execd(lay: Layout, state: dict[str, object], env: dict[str, str], node: str) -> int:
    out = lay.logs / f"execd-{node}.out"
    inner = f"hostname {node} && mount --bind {lay.hosts} /etc/hosts && exec sge_execd"
    # `ip netns exec` would remount /sys; nsenter keeps the host's view (as for slurmd, cluster-facts.md).
    args = ["nsenter", f"--net=/run/netns/{lay.netns(node)}", "unshare", "--uts", "--mount", "--propagation",
            "private", "--", "sh", "-c", inner]
    with open(out, "ab") as f:
        rc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, timeout=60,
                            env={**os.environ, **env}).returncode
    pid_file = lay.execd_pid_file(node)
    if rc != 0 or not wait_for(lambda: read_pid(pid_file) is not None, 30):
        raise daemon_failed(f"sge_execd on {node} (exit {rc})", [out, lay.execd_spool / node / "messages"])
    pid = read_pid(pid_file)
    assert pid is not None
    state.setdefault("pids", {})[f"sge_execd-{node}"] = pid  # type: ignore[index]
    write_state(lay, state)
    return pid


def smoke_test(lay: Layout, env: dict[str, str], nodes: list[str]) -> None:
    """One job on each execution host (``qsub -sync y``, in parallel); each must print its host's name."""
    procs = {}
    for node in nodes:
        out = lay.shared / f"smoke-{node}.out"
        procs[node] = (out, subprocess.Popen(
            ["qsub", "-sync", "y", "-b", "y", "-q", f"{QUEUE}@{node}", "-j", "y", "-o", str(out), "-N",
             f"smoke-{node}", "/bin/hostname"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}))
    problems = []
    for node, (out, proc) in procs.items():
        try:
            said, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            said, _ = proc.communicate()
            problems.append(f"{node}: no result within 90 s ({said.strip()!r})")
            continue
        got = out.read_text().strip() if out.exists() else None
        if proc.returncode != 0 or got != node:
            problems.append(f"{node}: qsub exit {proc.returncode}, output {got!r}, qsub said {said.strip()!r}")
    if problems:
        logs = [lay.qmaster_spool / "messages"] + [lay.execd_spool / n / "messages" for n in nodes]
        raise ClusterError("smoke test failed: " + "; ".join(problems) + "\nlogs:\n"
                           + "\n".join(f"  {p}:\n{tail(p)}" for p in logs))


def up(lay: Layout, info_path: Path, nodes: list[str]) -> ClusterInfo:
    started = time.monotonic()
    check_prerequisites()
    if lay.dir.exists() or our_netns(lay) or our_links(lay) or our_iptables_rules(lay):
        log(f"clearing what a previous cluster left ({lay.dir}, prefix {lay.prefix})")
        sweep(lay)
        shutil.rmtree(lay.dir, ignore_errors=True)
    for sub in ("etc", "log", "shared"):
        (lay.dir / sub).mkdir(parents=True, exist_ok=True)
    lay.dir.chmod(0o755)
    lay.shared.chmod(0o1777)
    state: dict[str, object] = {"prefix": lay.prefix, "dir": str(lay.dir), "nodes": nodes, "pids": {}}
    write_state(lay, state)

    host = socket.gethostname().split(".")[0]
    host_addr, addrs = setup_network(lay, state, nodes)
    # Clients on this host connect from the address this host's name resolves to here; the qmaster must
    # read that address back as this host too.
    host_addrs = [host_addr]
    with contextlib.suppress(OSError):
        seen = socket.gethostbyname(host)
        if not ipaddress.ip_address(seen).is_loopback and seen != host_addr:
            host_addrs.append(seen)
    lay.hosts.write_text(hosts_file(host, host_addrs, addrs))
    qmaster_port = free_port(16444 + port_offset(lay.prefix))
    env = lay.env(qmaster_port)
    state["env"] = env
    write_state(lay, state)
    make_cell(lay, host, env)
    qmaster = start_qmaster(lay, state, env)
    configure(lay, qmaster, env, host, nodes)
    for node in nodes:
        start_execd(lay, state, env, node)
    smoke_test(lay, env, nodes)

    info = ClusterInfo(
        name="gridengine",
        env=env,
        address=host_addr,
        nodes=nodes,
        cores_per_node=os.cpu_count() or 1,
        partition=QUEUE,
        shared_dir=str(lay.shared),
        worker_pool_cmd=None,
        accounting=True,
        worker_init="",
        extra={"cluster_dir": str(lay.dir), "prefix": lay.prefix, "logs": str(lay.logs),
               "qmaster_messages": str(lay.qmaster_spool / "messages"),
               "up_seconds": f"{time.monotonic() - started:.2f}"},
    )
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info.write(info_path)
    log(f"cluster up in {time.monotonic() - started:.1f} s: execution hosts {nodes} at {list(addrs.values())}, "
        f"qmaster {host}({host_addr}):{qmaster_port}; SGE_ROOT={lay.root} SGE_CELL={CELL} "
        f"SGE_QMASTER_PORT={qmaster_port}")
    return info


# ------------------------------------------------------------------------------------------------ down


def live_jobs(env: dict[str, str]) -> list[str] | None:
    """Ids of every user's jobs in the queue, or None when the qmaster does not answer."""
    proc = run(["qstat", "-u", "*", "-xml"], check=False, env=env, timeout=15)
    if proc.returncode != 0:
        return None
    return sorted(set(re.findall(r"<JB_job_number>(\d+)</JB_job_number>", proc.stdout)))


def down(lay: Layout, info_path: Path | None, keep_dir: bool) -> list[str]:
    """Stop the cluster; returns what could not be removed (empty on success)."""
    started = time.monotonic()
    state = read_state(lay)
    env = state.get("env")
    pids = state.get("pids", {})
    assert isinstance(pids, dict)
    qmaster = pids.get("sge_qmaster")
    if isinstance(env, dict) and isinstance(qmaster, int) and is_ours(lay, qmaster):
        jobs = live_jobs(env)
        if jobs:
            # Stopping execd does not end running jobs: delete them and wait until the queue is empty.
            log(f"deleting jobs {jobs}")
            run(["qdel", "-f", *jobs], check=False, env=env)
            if not wait_for(lambda: not live_jobs(env), 30, 0.2):
                log(f"jobs still in the queue after 30 s: {live_jobs(env)}; their processes are killed below")
        # Execution daemons first, then the qmaster; each exits by itself when told.
        run(["qconf", "-ke", "all"], check=False, env=env)
        wait_for(lambda: not any(isinstance(p, int) and is_ours(lay, p) for n, p in pids.items()
                                 if n.startswith("sge_execd")), 10)
        run(["qconf", "-km"], check=False, env=env)
        if not wait_for(lambda: not is_ours(lay, qmaster), 5):
            # It often hangs in its shutdown (SIGTERM does not help either); its spool is thrown away anyway.
            log(f"sge_qmaster (pid {qmaster}) still runs 5 s after `qconf -km`: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(qmaster, signal.SIGKILL)
            wait_for(lambda: not is_ours(lay, qmaster), 5)
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
        print(f"{name:16} pid {pid:>7} {'running' if is_ours(lay, int(pid)) else 'NOT RUNNING'}")
    env = state.get("env")
    if isinstance(env, dict):
        print(run(["qstat", "-f", "-u", "*"], check=False, env=env).stdout)
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
    parser = argparse.ArgumentParser(prog="python -m clusters.gridengine", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--info", required=name == "up", help="ClusterInfo JSON file (written by up)")
        p.add_argument("--dir", help=f"cluster directory (default {DEFAULT_DIR})")
        p.add_argument("--prefix", help=f"name prefix of namespaces, links and rules (default {DEFAULT_PREFIX})")
        if name == "up":
            p.add_argument("--nodes", type=int, default=2, help="execution hosts (default 2)")
        if name == "down":
            p.add_argument("--keep-dir", action="store_true", help="keep the cluster directory (logs)")
    args = parser.parse_args(argv)
    if args.prefix is not None and not re.fullmatch(r"[a-z][a-z0-9]{0,7}", args.prefix):
        # Interface names are at most 15 characters: prefix, "-g", host number and "h".
        parser.error(f"--prefix must be 1-8 lower-case letters or digits, starting with a letter: {args.prefix!r}")
    lay, info_path = layout_from(args)
    try:
        if args.command == "up":
            assert info_path is not None
            if not 1 <= args.nodes <= 50:
                raise ClusterError(f"--nodes must be 1..50, got {args.nodes}")
            try:
                up(lay, info_path, node_names(args.nodes))
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
