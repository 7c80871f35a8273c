"""A Docker Compose Slurm cluster (controller + compute nodes in containers); started and stopped here.

This module owns the compose test cluster while it runs, and nothing else:

- the base image: ``local/debian:bookworm``, made once with ``debootstrap`` and ``docker import`` when no
  registry can be reached (its root file system tarball is cached so a lost image costs seconds, not a
  bootstrap); ``--base-image debian:bookworm`` uses the stock image instead;
- a private ``dockerd`` when none answers, started so that it changes nothing on the host network
  (no ``docker0``, no iptables rules, no ``ip_forward``); its data root lives in the cache directory, so
  images survive between runs. An already running daemon is used and left alone;
- the image built from ``containers/Dockerfile`` with htex_ref and its dependencies as wheels made on this
  host, labelled with a hash of its inputs so an unchanged tree skips the build;
- the compose project ``containers/docker-compose.yml`` on a /24 network declared ``internal: true``;
- a private ``munged`` on this host with the cluster's key and a host ``slurm.conf`` naming the controller
  by its container address, so ``sbatch``/``srun``/``squeue`` run here, on the submit host;
- three iptables ``FORWARD`` rules tagged with a comment: traffic within the cluster bridge is accepted,
  traffic between the bridge and anything else is dropped (Docker 20.10 gives containers on internal
  networks a default route and relies on its own firewall rules, which a private daemon does not make).

State (what was started, with PIDs) goes to ``state.json`` in the state directory as it happens, so
``down`` undoes exactly that, even after a failed ``up``; ``up`` first clears what a crashed run left.
Must run as root; packages come from ``scripts/install-docker.sh``.

    python -m clusters.compose up --info FILE [--state-dir DIR] [--cache-dir DIR] [--base-image IMAGE]
    python -m clusters.compose down --info FILE [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.metadata
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from clusters.info import ClusterInfo

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
COMPOSE_FILE = CONTAINERS / "docker-compose.yml"

DEFAULT_STATE_DIR = "/tmp/htex-compose"
DEFAULT_CACHE_DIR = "/var/lib/htex-ref-compose"
#: Short on purpose: containerd puts unix sockets under the exec root, and their paths have a length limit.
PRIVATE_EXEC_ROOT = "/run/htex-compose-docker"
PROJECT = "htexslurm"
BRIDGE = "htexslurm0"
IMAGE = "htex-ref-slurm:latest"
LOCAL_BASE_IMAGE = "local/debian:bookworm"
SOURCE_LABEL = "org.htex-ref.inputs"
#: Candidate /24 networks; the local namespace cluster (clusters/local_slurm.py) takes from 10.88-10.99.
SUBNET_CANDIDATES = [f"10.{i}.0.0/24" for i in range(100, 112)]
#: Three, so that a block can hold MPI tasks of one, two and three nodes (tests/cluster/test_mpi.py).
NODES = ["c1", "c2", "c3"]
CONTROLLER = "controller"
CPUS_PER_NODE = 2
PARTITION = "debug"
WORKER_POOL_CMD = "/opt/htex_ref/bin/htex-worker-pool"
IPTABLES_COMMENT = "htex-compose"
STATE_FILE = "state.json"


class ClusterError(RuntimeError):
    """Something the cluster needs failed; the message names the command or daemon and where to look."""


def log(msg: str) -> None:
    print(f"compose: {msg}", file=sys.stderr, flush=True)


def run(args: Sequence[str], *, check: bool = True, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with a deadline; a failure or timeout raises ClusterError naming the command."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(args)}` did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise ClusterError(f"`{args[0]}` not found; run scripts/install-docker.sh (as root)") from None
    if check and proc.returncode != 0:
        out = ((proc.stderr or "") + (proc.stdout or "")).strip()[-3000:]
        raise ClusterError(f"`{' '.join(args)}` exited {proc.returncode}: {out}")
    return proc


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


def pid_alive(pid: int, must_mention: str) -> bool:
    """Whether ``pid`` is a live process whose command line contains ``must_mention`` (guards PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return must_mention in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_pid(pid: int, must_mention: str, name: str, grace: float = 20) -> None:
    if not pid_alive(pid, must_mention):
        return
    log(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid, must_mention):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if pid_alive(pid, must_mention):
        log(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f} s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- state


class State:
    """What this module started, written to disk at once so a later ``down`` can undo it."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE
        self.data: dict[str, Any] = {}
        if self.path.exists():
            with contextlib.suppress(ValueError, OSError):
                self.data = json.loads(self.path.read_text())

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def host_dir(self) -> Path:
        return self.dir / "host"

    @property
    def munge_dir(self) -> Path:
        return self.host_dir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket.2"

    @property
    def host_conf(self) -> Path:
        return self.host_dir / "slurm.conf"

    @property
    def shared(self) -> Path:
        return self.dir / "shared"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def slurm_env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.host_conf)}


# ---------------------------------------------------------------------------------------------- docker


def docker_cli() -> str:
    # Prefer the CLI that ships with the engine package: another docker CLI earlier on PATH may be a newer
    # major version that speaks to a 20.10 engine only through API-version negotiation.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ClusterError("no docker CLI found; run scripts/install-docker.sh (as root)")


def docker_env(docker_host: str) -> dict[str, str]:
    return {"DOCKER_HOST": docker_host}


def docker_answers(docker_host: str) -> bool:
    try:
        proc = subprocess.run([docker_cli(), "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              timeout=15, env={**os.environ, **docker_env(docker_host)}, stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return proc.returncode == 0


def net_snapshot() -> dict[str, Any]:
    """The host network settings a dockerd may change, to put back what it changed after stopping it."""
    snap: dict[str, Any] = {"ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
                            "docker0": Path("/sys/class/net/docker0").exists()}
    if shutil.which("iptables"):
        for table in ("filter", "nat"):
            proc = run(["iptables", "-t", table, "-S"], check=False, timeout=20)
            snap[f"chains_{table}"] = sorted({ln.split()[1] for ln in proc.stdout.splitlines()
                                              if ln.startswith("-N ")})
            if table == "filter":
                policy = [ln.split()[2] for ln in proc.stdout.splitlines() if ln.startswith("-P FORWARD ")]
                snap["forward_policy"] = policy[0] if policy else "ACCEPT"
    return snap


def restore_net(before: dict[str, Any]) -> None:
    """Undo what a stopped dockerd left on the host network, compared with ``before``.

    Only Docker's own objects are touched (docker0, chains named DOCKER*, the FORWARD policy it sets), so
    rules and bridges that others added meanwhile (the local namespace cluster's) stay.
    """
    after = net_snapshot()
    changed = False
    if after["docker0"] and not before.get("docker0", False):
        log("removing docker0 left by dockerd")
        run(["ip", "link", "del", "docker0"], check=False)
        changed = True
    if "forward_policy" in after and after["forward_policy"] != before.get("forward_policy", "ACCEPT"):
        log(f"restoring iptables FORWARD policy {before['forward_policy']}")
        run(["iptables", "-P", "FORWARD", before["forward_policy"]], check=False)
        changed = True
    for table in ("filter", "nat"):
        new = [c for c in after.get(f"chains_{table}", [])
               if c.startswith("DOCKER") and c not in before.get(f"chains_{table}", [])]
        if not new:
            continue
        changed = True
        log(f"removing iptables chains left by dockerd in {table}: {new}")
        # Jumps into the new chains go first, then the chains themselves.
        for rule in run(["iptables", "-t", table, "-S"], check=False).stdout.splitlines():
            parts = rule.split()
            if parts[:1] == ["-A"] and parts[1] not in new and any(f"-j {c}" in rule for c in new):
                run(["iptables", "-t", table, "-D", *parts[1:]], check=False)
        for chain in new:
            run(["iptables", "-t", table, "-F", chain], check=False)
        for chain in new:
            run(["iptables", "-t", table, "-X", chain], check=False)
    # ip_forward is a host-wide switch others may flip too: put it back only when dockerd evidently
    # set up its forwarding (it made docker0 or its chains), not merely because it differs now.
    if changed and after["ip_forward"] != before.get("ip_forward", after["ip_forward"]):
        log(f"restoring net.ipv4.ip_forward={before['ip_forward']}")
        Path("/proc/sys/net/ipv4/ip_forward").write_text(before["ip_forward"] + "\n")


def ensure_dockerd(state: State, cache_dir: Path) -> str:
    """A docker daemon to use: DOCKER_HOST, a running one, or a private one started (and recorded) here."""
    if os.environ.get("DOCKER_HOST"):
        host = os.environ["DOCKER_HOST"]
        if not docker_answers(host):
            raise ClusterError(f"DOCKER_HOST={host} is set but no docker daemon answers there")
        state.set("docker_host", host)
        return host
    default = "unix:///var/run/docker.sock"
    if docker_answers(default):
        log("using the docker daemon already running at /var/run/docker.sock (left running)")
        state.set("docker_host", default)
        return default
    if shutil.which("dockerd") is None and not Path("/usr/sbin/dockerd").exists():
        raise ClusterError("dockerd not found; run scripts/install-docker.sh (as root)")
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    exec_root = Path(PRIVATE_EXEC_ROOT)
    sock = f"unix://{exec_root}/docker.sock"
    data_root = cache_dir / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    exec_root.mkdir(parents=True, exist_ok=True)
    state.logs.mkdir(parents=True, exist_ok=True)
    log_path = state.logs / "dockerd.log"
    state.set("net_before_dockerd", net_snapshot())
    # No default bridge, no firewall rules, no forwarding, no masquerading: the host network stays as it was.
    # Compose's own network still gets its bridge; isolation rules for it are added by add_isolation().
    args = [dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
            f"--data-root={data_root}", f"--exec-root={exec_root}", f"--pidfile={exec_root}/dockerd.pid",
            f"--host={sock}"]
    log(f"starting a private dockerd (data root {data_root}, log {log_path})")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    state.set("dockerd_pid", proc.pid)
    state.set("dockerd_mention", str(exec_root))
    state.set("docker_host", sock)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"dockerd exited with {proc.returncode} while starting; see {log_path}:\n"
                               f"{tail(log_path)}")
        if docker_answers(sock):
            return sock
        time.sleep(0.3)
    raise ClusterError(f"dockerd (pid {proc.pid}) did not answer at {sock} within 60 s; see {log_path}:\n"
                       f"{tail(log_path)}")


def mirror_from_sources(files: Sequence[tuple[str, str]]) -> str | None:
    """The first bookworm ``deb`` URI in apt source files given as (name, text): deb822 or one-line format."""
    for name, text in files:
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):[ \t]*(.*)$", stanza, re.MULTILINE))
                if "bookworm" in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    uris = fields.get("URIs", "").split()
                    if uris:
                        return str(uris[0])
        elif name.endswith(".list"):
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if parts[:1] == ["deb"] and len(parts) >= 3 and "://" in parts[1] and parts[2] == "bookworm":
                    return parts[1]
    return None


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (so debootstrap goes where apt is allowed to go)."""
    if os.environ.get("HTEX_DEBIAN_MIRROR"):
        return os.environ["HTEX_DEBIAN_MIRROR"]
    files = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            files.append((path.name, path.read_text()))
    return mirror_from_sources(files) or "http://deb.debian.org/debian"


def image_exists(docker_host: str, image: str) -> bool:
    proc = run([docker_cli(), "image", "inspect", "--format", "{{.Id}}", image], check=False,
               env=docker_env(docker_host), timeout=30)
    return proc.returncode == 0


def ensure_base_image(docker_host: str, cache_dir: Path) -> None:
    """local/debian:bookworm: imported from the cached root file system tarball, bootstrapped if none."""
    if image_exists(docker_host, LOCAL_BASE_IMAGE):
        return
    tarball = cache_dir / "debian-bookworm-minbase.tar"
    if not tarball.exists():
        if shutil.which("debootstrap") is None:
            raise ClusterError("debootstrap not found; run scripts/install-docker.sh (as root)")
        mirror = debian_mirror()
        log(f"bootstrapping a Debian bookworm root file system from {mirror} (about 30-50 s, once)")
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], timeout=600)
            partial = tarball.with_suffix(".tar.partial")
            run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], timeout=300)
            partial.replace(tarball)
    log(f"importing {tarball} as {LOCAL_BASE_IMAGE}")
    with open(tarball, "rb") as f:
        proc = subprocess.run([docker_cli(), "import", "-", LOCAL_BASE_IMAGE], stdin=f, capture_output=True,
                              text=True, timeout=300, env={**os.environ, **docker_env(docker_host)})
    if proc.returncode != 0:
        raise ClusterError(f"`docker import` of {tarball} failed: {proc.stderr.strip()}")


def dependency_requirements() -> list[str]:
    """htex_ref's runtime dependencies, pinned to the versions this interpreter has where it has them.

    Tasks are pickled on the host and unpickled in the containers: the same cloudpickle on both sides.
    """
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = []
    for spec in deps:
        name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(spec)
    return pinned


def build_inputs_hash(base_image: str, requirements: list[str]) -> str:
    """Hash of everything that goes into the image; an image labelled with it needs no rebuild."""
    h = hashlib.sha256()
    h.update(f"{base_image}\n{requirements}\n".encode())
    files = [CONTAINERS / "Dockerfile", CONTAINERS / "entrypoint.sh", REPO / "pyproject.toml",
             *sorted(p for p in (REPO / "htex_ref").rglob("*") if p.is_file() and "__pycache__" not in p.parts)]
    for path in files:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def make_wheels(context: Path, requirements: list[str]) -> None:
    """Wheels for the image, made here: pip in the containers cannot verify PyPI's TLS on this machine."""
    deps = context / "wheels" / "deps"
    own = context / "wheels" / "htex_ref"
    deps.mkdir(parents=True)
    own.mkdir(parents=True)
    # The containers run Debian bookworm's CPython 3.11 (glibc 2.36), whatever this interpreter is.
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    if os.uname().machine != "x86_64":
        platforms = [p.replace("x86_64", os.uname().machine) for p in platforms]
    plat_args = [a for p in platforms for a in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none", *plat_args,
         "-d", str(deps), *requirements], timeout=300)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(own)], timeout=300)


def ensure_image(docker_host: str, state: State, base_image: str, force: bool) -> None:
    requirements = dependency_requirements()
    inputs = build_inputs_hash(base_image, requirements)
    if not force and image_exists(docker_host, IMAGE):
        label = run([docker_cli(), "image", "inspect", "--format", f'{{{{index .Config.Labels "{SOURCE_LABEL}"}}}}',
                     IMAGE], env=docker_env(docker_host), check=False).stdout.strip()
        if label == inputs:
            log(f"image {IMAGE} is up to date with the source tree ({inputs})")
            return
    context = state.dir / "build"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for name in ("Dockerfile", "entrypoint.sh"):
        shutil.copy2(CONTAINERS / name, context / name)
    log(f"building wheels for {', '.join(requirements)} and htex_ref")
    make_wheels(context, requirements)
    log(f"building image {IMAGE} from {base_image}")
    build_log = state.logs / "docker-build.log"
    state.logs.mkdir(parents=True, exist_ok=True)
    with open(build_log, "w") as out:
        proc = subprocess.run([docker_cli(), "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}",
                               "--label", f"{SOURCE_LABEL}={inputs}", "-t", IMAGE, str(context)],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900,
                              env={**os.environ, **docker_env(docker_host)})
    if proc.returncode != 0:
        raise ClusterError(f"`docker build` exited {proc.returncode}; see {build_log}:\n{tail(build_log)}")
    # Each source change leaves the previous image untagged; only ours (by label) are removed.
    run([docker_cli(), "image", "prune", "-f", "--filter", f"label={SOURCE_LABEL}"], check=False,
        env=docker_env(docker_host), timeout=120)


# --------------------------------------------------------------------------------------------- network


def choose_subnet(addr_output: str, route_output: str, candidates: Sequence[str] = SUBNET_CANDIDATES) -> str | None:
    """The first candidate network that overlaps no address (``ip -4 -o addr``) or route (``ip -4 route show
    table all``) of this host."""
    used: list[ipaddress.IPv4Network] = []
    for line in addr_output.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    for line in route_output.splitlines():
        parts = line.split()
        dest = parts[0] if parts else ""
        if dest in ("broadcast", "local", "unicast", "blackhole", "unreachable", "prohibit") and len(parts) > 1:
            dest = parts[1]
        with contextlib.suppress(ValueError):
            net = ipaddress.IPv4Network(dest, strict=False)
            # The default route (0/0) overlaps everything and says nothing about what is in use.
            if net.prefixlen > 0:
                used.append(net)
    for candidate in candidates:
        if not any(ipaddress.IPv4Network(candidate).overlaps(u) for u in used):
            return candidate
    return None


def pick_subnet() -> ipaddress.IPv4Network:
    found = choose_subnet(run(["ip", "-4", "-o", "addr", "show"]).stdout,
                          run(["ip", "-4", "route", "show", "table", "all"]).stdout)
    if found is None:
        raise ClusterError(f"every candidate subnet {SUBNET_CANDIDATES} is in use on this host")
    return ipaddress.IPv4Network(found)


def isolation_rules() -> list[list[str]]:
    tag = ["-m", "comment", "--comment", IPTABLES_COMMENT]
    return [
        ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, *tag, "-j", "ACCEPT"],
        ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, *tag, "-j", "DROP"],
        ["FORWARD", "!", "-i", BRIDGE, "-o", BRIDGE, *tag, "-j", "DROP"],
    ]


def add_isolation(state: State) -> None:
    """Keep cluster traffic on the bridge: nodes talk to each other and to the host, never beyond."""
    if shutil.which("iptables") is None:
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0":
            raise ClusterError("iptables is missing and ip_forward is on: the cluster network would not be "
                               "isolated; run scripts/install-docker.sh")
        return
    added = state.get("iptables", [])
    for rule in isolation_rules():
        run(["iptables", "-I", *rule])
        added.append(rule)
        state.set("iptables", added)


def remove_isolation(state: State) -> None:
    for rule in state.get("iptables", []):
        while run(["iptables", "-C", *rule], check=False).returncode == 0:
            run(["iptables", "-D", *rule], check=False)
    state.set("iptables", [])


# ------------------------------------------------------------------------------------------- compose


def compose_env(state: State) -> dict[str, str]:
    return {**docker_env(state.get("docker_host", "")), "HTEX_IMAGE": IMAGE, "HTEX_NET": state.get("net_prefix", ""),
            "HTEX_SHARED": str(state.shared), "HTEX_BRIDGE": BRIDGE,
            "HTEX_ACCOUNTING": "1" if state.get("accounting", True) else "0"}


def compose(state: State, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        raise ClusterError("docker-compose not found; run scripts/install-docker.sh (as root)")
    return run([exe, "--no-ansi", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args], env=compose_env(state),
               timeout=timeout, check=check)


def project_containers(state: State, service: str | None = None) -> list[str]:
    labels = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
    if service:
        labels += ["--filter", f"label=com.docker.compose.service={service}"]
    proc = run([docker_cli(), "ps", "-aq", *labels], env=docker_env(state.get("docker_host", "")), timeout=30)
    return proc.stdout.split()


def controller_exec(state: State, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in the controller container (docker exec: docker-compose exec costs ~0.8 s a call)."""
    ids = project_containers(state, CONTROLLER)
    if not ids:
        raise ClusterError(f"no {CONTROLLER} container in project {PROJECT}; {slurm_logs_hint(state)}")
    return run([docker_cli(), "exec", ids[0], *args], env=docker_env(state.get("docker_host", "")), check=check,
               timeout=30)


def compose_logs(state: State) -> str:
    proc = compose(state, "logs", "--no-color", "--tail=15", check=False, timeout=30)
    return (proc.stdout + proc.stderr).strip()


def slurm_logs_hint(state: State) -> str:
    return (f"container logs: `DOCKER_HOST={state.get('docker_host')} docker-compose -p {PROJECT} -f {COMPOSE_FILE} "
            f"logs`; Slurm logs in the containers under /var/log/slurm/, copied to {state.logs}/<service>/ by down")


def start_host_munged(state: State) -> None:
    """A munged on this host with the cluster's key, on a private socket (another munged may be running)."""
    key = controller_exec(state, "base64", "-w0", "/etc/munge/munge.key").stdout.strip()
    d = state.munge_dir
    d.mkdir(parents=True, exist_ok=True)
    keyfile = d / "munge.key"
    keyfile.write_bytes(base64.b64decode(key))
    shutil.chown(d, "munge", "munge")
    shutil.chown(keyfile, "munge", "munge")
    # munged refuses a key others can read; Slurm clients (any user) need to traverse to the socket.
    keyfile.chmod(0o400)
    d.chmod(0o711)
    for parent in (state.host_dir, state.dir):
        parent.chmod(parent.stat().st_mode | 0o011)
    pidfile = d / "munged.pid"
    log_path = d / "munged.log"
    run(["runuser", "-u", "munge", "--", "munged", f"--socket={state.munge_socket}", f"--key-file={keyfile}",
         f"--pid-file={pidfile}", f"--log-file={log_path}", f"--seed-file={d / 'munged.seed'}"], timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (pidfile.exists() and pidfile.read_text().strip()):
        time.sleep(0.05)
    if not pidfile.exists():
        raise ClusterError(f"host munged wrote no pid file; see {log_path}:\n{tail(log_path)}")
    state.set("munged_pid", int(pidfile.read_text().strip()))


def host_conf_text(cluster_conf: str, munge_socket: str) -> str:
    """The cluster's slurm.conf for Slurm commands on this host: the same, but through the host's munged."""
    lines = [ln for ln in cluster_conf.splitlines() if not ln.startswith(("AuthInfo=", "AccountingStoragePass="))]
    lines.append(f"AuthInfo=socket={munge_socket}")
    # The connection to slurmdbd (sacct) authenticates through this setting, not AuthInfo.
    if "AccountingStorageType=accounting_storage/slurmdbd" in lines:
        lines.append(f"AccountingStoragePass={munge_socket}")
    return "\n".join(lines) + "\n"


def write_host_conf(state: State) -> None:
    conf = controller_exec(state, "cat", "/etc/slurm/slurm.conf").stdout
    state.host_conf.write_text(host_conf_text(conf, str(state.munge_socket)))


def node_states(state: State) -> dict[str, str]:
    proc = run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, env=state.slurm_env(), timeout=15)
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            found[parts[0]] = parts[1]
    return found


def wait_idle(state: State, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = node_states(state)
        if all(states.get(n, "").rstrip("*") == "idle" for n in NODES):
            return
        time.sleep(0.3)
    raise ClusterError(f"nodes not idle within {timeout:.0f} s: {states or 'sinfo gave nothing'}; "
                       f"{slurm_logs_hint(state)}\n{compose_logs(state)}")


def wait_controller_ready(state: State, timeout: float = 60) -> None:
    """The controller's entrypoint has written slurm.conf and munged has made its socket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = controller_exec(state, "test", "-S", "/run/munge/munge.socket.2", "-a", "-s", "/etc/slurm/slurm.conf",
                               check=False)
        if proc.returncode == 0:
            return
        time.sleep(0.3)
    raise ClusterError(f"controller container not ready within {timeout:.0f} s; {slurm_logs_hint(state)}\n"
                       f"{compose_logs(state)}")


# ------------------------------------------------------------------------------------------------- up


def wait_accounted(state: State, job_id: str, timeout: float = 20) -> None:
    """sacct answers from this host and knows ``job_id`` (it can lag a few seconds behind the job)."""
    deadline = time.monotonic() + timeout
    proc = None
    while time.monotonic() < deadline:
        proc = run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State"], check=False,
                   env=state.slurm_env(), timeout=15)
        if proc.returncode == 0 and proc.stdout.startswith(f"{job_id}|"):
            return
        time.sleep(0.3)
    detail = f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()!r}" if proc else "no answer"
    raise ClusterError(f"sacct does not show the smoke job {job_id} within {timeout:.0f} s ({detail}); "
                       f"slurmdbd and MariaDB logs in the controller under /var/log/slurm/")


def up(info_path: Path, state_dir: Path, cache_dir: Path, base_image: str | None, rebuild: bool,
       accounting: bool = True) -> ClusterInfo:
    started = time.monotonic()
    if os.geteuid() != 0:
        raise ClusterError("clusters.compose must run as root (dockerd, iptables, a munged as the munge user)")
    for tool in ("sbatch", "srun", "sinfo", "squeue", "scancel", "munged", "runuser", "ip", "docker-compose"):
        if shutil.which(tool) is None:
            raise ClusterError(f"`{tool}` not found; run scripts/install-docker.sh (as root)")
    if (state_dir / STATE_FILE).exists():
        log(f"clearing what an earlier run left ({state_dir / STATE_FILE})")
        down(None, state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    state = State(state_dir)
    state.set("started", time.time())
    state.set("accounting", accounting)
    for d in (state.shared, state.logs, state.host_dir):
        d.mkdir(parents=True, exist_ok=True)
    state.shared.chmod(0o1777)

    docker_host = ensure_dockerd(state, cache_dir)
    timings = {"dockerd": time.monotonic() - started}
    if base_image is None:
        base_image = LOCAL_BASE_IMAGE
        ensure_base_image(docker_host, cache_dir)
    timings["base_image"] = time.monotonic() - started
    ensure_image(docker_host, state, base_image, rebuild)
    timings["image"] = time.monotonic() - started

    net = pick_subnet()
    prefix = str(net.network_address).rsplit(".", 1)[0]
    state.set("net_prefix", prefix)
    address = f"{prefix}.1"
    state.set("compose_up", True)
    log(f"starting controller and nodes {NODES} on {net} (internal network, bridge {BRIDGE})")
    # A network or container a crashed run left in the daemon would be reused with its old settings.
    if project_containers(state) or run([docker_cli(), "network", "inspect", f"{PROJECT}_cluster"], check=False,
                                        env=docker_env(docker_host)).returncode == 0:
        compose(state, "down", "-v", "--remove-orphans", "--timeout", "5", timeout=120)
    # Rules first (iptables takes an interface name before it exists): the containers never run unisolated.
    add_isolation(state)
    compose(state, "up", "-d", "--no-build", timeout=180)
    bridge_addrs = run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout
    if f"inet {address}/" not in bridge_addrs:
        raise ClusterError(f"bridge {BRIDGE} does not have the gateway address {address}: {bridge_addrs.strip()}")
    wait_controller_ready(state)
    write_host_conf(state)
    start_host_munged(state)
    wait_idle(state)
    timings["idle"] = time.monotonic() - started

    # Also proves the image's htex_ref imports on every node and that the nodes' host names are as listed.
    probe = "import socket, htex_ref.worker_pool; print(socket.gethostname())"
    smoke = run(["srun", f"--nodes={len(NODES)}", "--ntasks-per-node=1", "--time=1", f"--chdir={state.shared}",
                 "--job-name=compose-smoke", "/opt/htex_ref/bin/python", "-c", probe], check=False,
                env=state.slurm_env(), timeout=60)
    seen = sorted(smoke.stdout.split())
    if smoke.returncode != 0 or seen != sorted(NODES):
        raise ClusterError(f"smoke test `srun -N{len(NODES)}` gave exit {smoke.returncode}, output {seen}, "
                           f"stderr {smoke.stderr.strip()!r}; {slurm_logs_hint(state)}")
    if accounting:
        last = run(["squeue", "-h", "-t", "all", "-n", "compose-smoke", "-o", "%A"],
                   env=state.slurm_env()).stdout.split()
        if not last:
            raise ClusterError("the smoke job is not in `squeue -t all` right after it ran")
        wait_accounted(state, last[-1])
    timings["smoke"] = time.monotonic() - started

    info = ClusterInfo(
        name="compose",
        env=state.slurm_env(),
        address=address,
        nodes=list(NODES),
        cores_per_node=CPUS_PER_NODE,
        partition=PARTITION,
        shared_dir=str(state.shared),
        worker_pool_cmd=WORKER_POOL_CMD,
        accounting=accounting,
        worker_init="",
        extra={"state_dir": str(state.dir), "docker_host": docker_host, "project": PROJECT,
               "compose_file": str(COMPOSE_FILE), "munge_socket": str(state.munge_socket),
               "logs_hint": slurm_logs_hint(state), "up_seconds": f"{time.monotonic() - started:.2f}",
               "timings": json.dumps({k: round(v, 2) for k, v in timings.items()})},
    )
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info.write(info_path)
    state.set("info_path", str(info_path))
    log(f"cluster up in {time.monotonic() - started:.1f} s: nodes {NODES} on {net}, host address {address}; "
        f"SLURM_CONF={state.host_conf}; info {info_path}")
    return info


# ----------------------------------------------------------------------------------------------- down


def live_jobs(state: State) -> list[str] | None:
    proc = run(["squeue", "-h", "-o", "%A"], check=False, env=state.slurm_env(), timeout=15)
    if proc.returncode != 0:
        return None
    return proc.stdout.split()


def save_container_logs(state: State) -> None:
    """Copy /var/log/slurm out of every container before they go: the logs to read after a failed test."""
    for service in [CONTROLLER, *NODES]:
        for cid in project_containers(state, service):
            dest = state.logs / service
            shutil.rmtree(dest, ignore_errors=True)
            run([docker_cli(), "cp", f"{cid}:/var/log/slurm", str(dest)], check=False,
                env=docker_env(state.get("docker_host", "")), timeout=30)


def cancel_jobs(state: State) -> None:
    """Cancel every job and wait for the queue to empty: stopping slurmd alone leaves jobs running."""
    if not state.host_conf.exists() or not pid_alive(state.get("munged_pid", -1), str(state.munge_socket)):
        return
    jobs = live_jobs(state)
    if not jobs:
        return
    log(f"cancelling jobs {jobs}")
    run(["scancel", *jobs], check=False, env=state.slurm_env(), timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = live_jobs(state)
        if not jobs:
            return
        time.sleep(0.3)
    log(f"jobs still in the queue after 30 s: {jobs}; removing the containers anyway")


@contextlib.contextmanager
def step(errors: list[str], what: str) -> Iterator[None]:
    """Run one cleanup step; a failure is collected, not raised, so the remaining steps still run."""
    try:
        yield
    except Exception as e:  # every cleanup step must get its chance
        errors.append(f"{what}: {e}")
        log(f"{what} failed: {e}")


def down(info_path: Path | None, state_dir: Path) -> None:
    if info_path is not None and info_path.exists():
        with contextlib.suppress(Exception):
            state_dir = Path(ClusterInfo.read(info_path).extra.get("state_dir", str(state_dir)))
    state = State(state_dir)
    if not state.data:
        log(f"nothing to stop (no {state.path})")
        return
    errors: list[str] = []
    with step(errors, "cancelling jobs"):
        cancel_jobs(state)
    docker_host = state.get("docker_host")
    if docker_host and state.get("compose_up") and docker_answers(docker_host):
        with step(errors, "saving the containers' Slurm logs"):
            save_container_logs(state)
        with step(errors, "docker-compose down"):
            compose(state, "down", "-v", "--remove-orphans", "--timeout", "10", timeout=120)
            state.set("compose_up", False)
    with step(errors, "stopping the host munged"):
        if state.get("munged_pid"):
            stop_pid(state.get("munged_pid"), str(state.munge_socket), "host munged")
            state.set("munged_pid", None)
    with step(errors, "removing iptables rules"):
        remove_isolation(state)
    if state.get("dockerd_pid"):
        with step(errors, "stopping dockerd"):
            stop_pid(state.get("dockerd_pid"), state.get("dockerd_mention", PRIVATE_EXEC_ROOT), "private dockerd")
            state.set("dockerd_pid", None)
        with step(errors, "cleaning up after dockerd"):
            if state.get("net_before_dockerd"):
                restore_net(state.get("net_before_dockerd"))
            unmount_exec_root(Path(state.get("dockerd_mention", PRIVATE_EXEC_ROOT)))
    with step(errors, "removing the cluster bridge"):
        if Path(f"/sys/class/net/{BRIDGE}").exists() and not (docker_host and docker_answers(docker_host)):
            run(["ip", "link", "del", BRIDGE], check=False)
    left = leftovers(state)
    if errors or left:
        raise ClusterError("down did not finish cleanly: " + "; ".join(errors + left) + f"; state in {state.path}")
    state.path.unlink(missing_ok=True)
    log("cluster stopped; nothing left running")


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(prefix):
            found.append(target)
    return found


def unmount_exec_root(exec_root: Path) -> None:
    """dockerd leaves its network namespace bind mounts (netns/default) under its exec root when stopped."""
    for target in sorted(mounts_under(exec_root), reverse=True):
        run(["umount", target], check=False)
    if not mounts_under(exec_root):
        shutil.rmtree(exec_root, ignore_errors=True)


def leftovers(state: State) -> list[str]:
    left = []
    if pid_alive(state.get("munged_pid") or -1, str(state.munge_socket)):
        left.append(f"host munged pid {state.get('munged_pid')} still running")
    if pid_alive(state.get("dockerd_pid") or -1, state.get("dockerd_mention", PRIVATE_EXEC_ROOT)):
        left.append(f"dockerd pid {state.get('dockerd_pid')} still running")
    docker_host = state.get("docker_host")
    if docker_host and docker_answers(docker_host):
        proc = run([docker_cli(), "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                   check=False, env=docker_env(docker_host))
        if proc.stdout.strip():
            left.append(f"containers still present: {proc.stdout.split()}")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        left.append(f"bridge {BRIDGE} still present")
    mounts = mounts_under(Path(state.get("dockerd_mention"))) if state.get("dockerd_mention") else []
    if mounts:
        left.append(f"mounts left by dockerd: {mounts}")
    return left


# ------------------------------------------------------------------------------------------------- cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clusters.compose", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--info", required=True, type=Path, help="ClusterInfo JSON written by up, read by down")
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("HTEX_COMPOSE_STATE", DEFAULT_STATE_DIR)),
                   help=f"run-time files: shared directory, host munged and slurm.conf, logs ({DEFAULT_STATE_DIR})")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("HTEX_COMPOSE_CACHE", DEFAULT_CACHE_DIR)),
                   help=f"kept between runs: private dockerd data root, base root file system ({DEFAULT_CACHE_DIR})")
    p.add_argument("--base-image", default=os.environ.get("HTEX_BASE_IMAGE"),
                   help="base image for the build (e.g. debian:bookworm where a registry is reachable); "
                        f"default: {LOCAL_BASE_IMAGE}, bootstrapped here if missing")
    p.add_argument("--rebuild", action="store_true", help="build the image even if it matches the source tree")
    p.add_argument("--no-accounting", dest="accounting", action="store_false",
                   help="no slurmdbd/MariaDB on the controller: sacct does not work, status comes from squeue")
    args = p.parse_args(argv)
    try:
        if args.action == "up":
            try:
                up(args.info, args.state_dir, args.cache_dir, args.base_image, args.rebuild, args.accounting)
            except BaseException:
                log("up failed; the cluster stays as it is for inspection until `down` is run")
                raise
        else:
            down(args.info, args.state_dir)
    except ClusterError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
