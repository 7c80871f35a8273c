"""``htex-worker-pool``: the manager process a launcher starts on each node of a block.

It probes the interchange addresses it was given (all at once; the first to answer wins), plans its
worker count from the node's resources, registers, starts one process per worker and then runs a
ZeroMQ loop around ``htex_ref.core.manager.ManagerState``: tasks in from the interchange, one task at a
time to each idle worker over a local IPC socket, results back in batches, heartbeats both ways, and
worker deaths seen at once through Linux pidfds. Everything it decides is in the pure core.

Logs go to ``{logdir}/block-{block_id}/{uid}/manager.log`` and ``worker_{rank}.log`` beside it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

import zmq

from htex_ref.core.affinity import (
    accelerator_environment,
    affinity_environment,
    count_gpus,
    format_cpu_affinity,
    parse_cpu_affinity,
    plan_accelerators,
    plan_cpu_affinity,
)
from htex_ref.core.manager import (
    CancelTasks,
    DropTasks,
    Exit,
    InterchangeConnected,
    InterchangeContact,
    InterchangeDisconnected,
    ManagerState,
    PoolTask,
    Register,
    RegisterAgainRequested,
    RegistrationAccepted,
    ResultsAcked,
    RunTask,
    SendHeartbeat,
    SendResults,
    SignalWorker,
    StartWorker,
    StopRequested,
    TasksArrived,
    WorkerExited,
    WorkerMemory,
    WorkerReady,
    WorkerResult,
    make_pool_task,
)
from htex_ref.core.mpi import (
    MPI_LAUNCHERS,
    MPI_POLICIES,
    MpiScheduler,
    Node,
    expand_slurm_cpus,
    mpi_policy,
    nodes_from_hostnames,
    nodes_from_list,
    nodes_from_nodefile,
)
from htex_ref.core.notes import Note
from htex_ref.core.planning import drain_delay, plan_workers
from htex_ref.errors import ProtocolError
from htex_ref.framing import encode_parts
from htex_ref.memory import OomWatch, set_data_limit, tree_rss
from htex_ref.netutil import Contexts, recv_message, tcp_url
from htex_ref.protocol import (
    Kind,
    Outcome,
    Registration,
    dump_json,
    join_results,
    load_json_object,
    pack_task_header,
    split_tasks,
    task_spec,
    unpack_cancel,
    unpack_ids,
    unpack_result_header,
)
from htex_ref.streams import BIG_BUFFERS, NonBlockingWriter, StreamReader
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

logger = logging.getLogger("htex_ref.worker_pool")

#: When this pool's program was loaded (epoch seconds): the walltime counts from here when the job
#: script did not record its own start.
POOL_STARTED = time.time()
#: Epoch seconds at which the batch job started: htex_ref's job scripts export it first thing.
JOB_START_VARIABLES = ("HTEX_REF_JOB_START", "SLURM_JOB_START_TIME")

#: A task header without a resource specification after it.
HEADER_SIZE = len(pack_task_header(0, 0.0))

EXIT_NO_INTERCHANGE = 2
EXIT_BAD_PLAN = 3
EXIT_REJECTED = 4
EXIT_ERROR = 1

#: Seconds between samples of busy workers' memory, when memory limits are enforced.
MEMORY_SAMPLE_PERIOD = 0.5


def monitoring_interval(body: Mapping[str, Any]) -> float | None:
    """Seconds between samples of the workers when the executor monitors (None: it does not)."""
    value = body.get("monitoring")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ProtocolError(f"registered: monitoring must be a number of seconds > 0 or null, got {value!r}")
    return float(value)


#: With monitoring: seconds between monitor messages (task runs, worker samples) to the interchange.
MONITOR_PERIOD = 0.25


def reconnect_timeout(body: Mapping[str, Any]) -> float | None:
    """Seconds this pool waits for a silent interchange, from its ``registered`` answer (None: the default)."""
    value = body.get("reconnect_timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ProtocolError(f"registered: reconnect_timeout must be a number of seconds > 0 or null, got {value!r}")
    return float(value)


def too_large(task_id: int, size: int, limit: int) -> tuple[Outcome, bytes]:
    """The result that replaces one over ``max_payload_bytes``: ``PayloadTooLarge`` as the task's exception."""
    # Imported here: the pool never pickles anything else, and this is rare.
    from htex_ref.errors import PayloadTooLarge
    from htex_ref.serialize import dumps_exception

    logger.warning("Result of task %d is %d bytes, over max_payload_bytes=%d: failing the task", task_id, size, limit)
    return Outcome.EXCEPTION, dumps_exception(PayloadTooLarge(f"the result of task {task_id}", size, limit))


def task_control(body: Mapping[str, Any]) -> tuple[float, bool]:
    """(kill grace in seconds, enforce memory) from the interchange's ``registered`` answer."""
    grace = body.get("kill_grace", 2.0)
    enforce = body.get("enforce_memory", False)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
        raise ProtocolError(f"registered: kill_grace must be a number of seconds >= 0, got {grace!r}")
    if not isinstance(enforce, bool):
        raise ProtocolError(f"registered: enforce_memory must be a bool, got {enforce!r}")
    return float(grace), enforce


def job_start_from_env(env: Mapping[str, str]) -> float | None:
    """When the batch job started (epoch seconds), from the first variable that holds a sane value."""
    for name in JOB_START_VARIABLES:
        raw = env.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return value
        logger.warning("Ignoring %s=%r: not a time in epoch seconds", name, raw)
    return None


def _none_or_float(value: str) -> float | None:
    return None if value in ("None", "none", "") else float(value)


def _max_workers(value: str) -> float:
    if value in ("None", "none", "inf", ""):
        return math.inf
    n = int(value)
    return math.inf if n == 0 else float(n)


def build_parser() -> argparse.ArgumentParser:
    """The pool's options, under htex_ref's names and Parsl's (a launch command written for Parsl's
    ``process_worker_pool.py``, 2026 or 1.x, runs this pool unchanged)."""
    p = argparse.ArgumentParser(prog="htex-worker-pool", description="htex_ref worker pool (one per node)")
    p.add_argument("-a", "--addresses", default=None, help="comma-separated interchange addresses to probe")
    p.add_argument("-P", "--port", type=int, default=None, help="interchange port for managers")
    p.add_argument("--task_url", "--task-url", dest="task_url", default=None,
                   help="Parsl 1.x: tcp://address:port of the interchange (gives --addresses and --port)")
    p.add_argument("--result_url", "--result-url", dest="result_url", default=None,
                   help="Parsl 1.x: accepted; htex_ref's pools send results on the task connection")
    p.add_argument("-L", "--logconf", default="None", help="Parsl's pickled log configuration: only None")
    p.add_argument("--enable_mpi_mode", "--enable-mpi-mode", dest="enable_mpi_mode", action="store_true",
                   help="MPI mode: place MPI tasks on the block's nodes (this pool runs on its first node)")
    p.add_argument("--mpi-launcher", "--mpi_launcher", dest="mpi_launcher", default=None,
                   choices=MPI_LAUNCHERS, help="the launcher PARSL_MPI_PREFIX is written for (default mpiexec)")
    p.add_argument("--mpi-nodes", dest="mpi_nodes", default=None,
                   help="MPI mode: the block's nodes, 'host[:slots],...' (default: from Slurm or PBS)")
    p.add_argument("--mpi-share-nodes", dest="mpi_share_nodes", action="store_true",
                   help="MPI mode: tasks whose ranks fit share a node (counted in CPUs)")
    p.add_argument("--mpi-policy", dest="mpi_policy", default="backfill", choices=sorted(MPI_POLICIES),
                   help="MPI mode: the order tasks start in")
    p.add_argument("--cert-dir", "--cert_dir", dest="cert_dir", default="None", help="CurveZMQ certificates or None")
    p.add_argument("-b", "--block-id", "--block_id", dest="block_id", default=None)
    p.add_argument("-u", "--uid", default=None)
    p.add_argument("-c", "--cores-per-worker", "--cores_per_worker", dest="cores_per_worker", type=float, default=1.0)
    p.add_argument("-m", "--mem-per-worker", "--mem_per_worker", dest="mem_per_worker", type=_none_or_float,
                   default=None)
    p.add_argument("--max-workers-per-node", "--max_workers_per_node", dest="max_workers_per_node",
                   type=_max_workers, default=math.inf)
    p.add_argument("-p", "--prefetch-capacity", "--prefetch_capacity", dest="prefetch_capacity", type=int, default=0)
    p.add_argument("--hb-period", "--hb_period", dest="hb_period", type=float, default=30.0)
    p.add_argument("--hb-threshold", "--hb_threshold", dest="hb_threshold", type=float, default=120.0)
    p.add_argument("--drain-period", "--drain_period", dest="drain_period", type=_none_or_float, default=None)
    p.add_argument("--walltime", dest="walltime", type=_none_or_float, default=None,
                   help="seconds of the batch job's walltime (with --drain-before-walltime)")
    p.add_argument("--drain-before-walltime", dest="drain_before_walltime", type=_none_or_float, default=None,
                   help="stop taking tasks this many seconds before the walltime ends")
    p.add_argument("--address-probe-timeout", "--address_probe_timeout", dest="address_probe_timeout",
                   type=float, default=30.0)
    p.add_argument("--cpu-affinity", "--cpu_affinity", dest="cpu_affinity", default="none")
    p.add_argument("--available-accelerators", "--available_accelerators", dest="available_accelerators",
                   nargs="*", default=[])
    p.add_argument("-l", "--logdir", default="htex_worker_logs")
    p.add_argument("-d", "--debug", action="store_true")
    p.add_argument("--poll", type=int, default=10, help="accepted for Parsl compatibility; unused")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Settle the options that come in several forms; ``p.error`` (exit 2, the reason on stderr) otherwise."""
    if args.task_url is not None:
        url = urllib.parse.urlsplit(args.task_url)
        if url.scheme != "tcp" or not url.hostname or url.port is None:
            p.error(f"--task_url must be tcp://address:port, got {args.task_url!r}")
        args.addresses = args.addresses or url.hostname
        args.port = args.port or url.port
    if not args.addresses or not args.port:
        p.error("the interchange is needed: --addresses and --port (or Parsl 1.x's --task_url)")
    if args.enable_mpi_mode and args.mpi_launcher is None:
        args.mpi_launcher = "mpiexec"
    if not args.enable_mpi_mode and (args.mpi_nodes or args.mpi_share_nodes):
        p.error("--mpi-nodes and --mpi-share-nodes need --enable_mpi_mode")
    if args.logconf not in ("None", "none", ""):
        p.error(f"--logconf {args.logconf!r}: Parsl's pickled log configurations are not read here; pass None")
    return args


def discover_nodes(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[list[Node], str]:
    """The block's nodes and where they came from: --mpi-nodes, else Slurm's node list (through
    ``scontrol show hostnames``), else the PBS node file. Raises RuntimeError with what to do."""
    default_slots = os.cpu_count() or 1
    if args.mpi_nodes:
        return nodes_from_list(args.mpi_nodes.split(","), default_slots), "--mpi-nodes"
    if env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST"):
        nodelist = env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"]
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"cannot expand SLURM_NODELIST={nodelist!r} with scontrol: {e}") from e
        cpus = None
        if env.get("SLURM_JOB_CPUS_PER_NODE"):
            try:
                cpus = expand_slurm_cpus(env["SLURM_JOB_CPUS_PER_NODE"])
            except ValueError as e:
                logger.warning("%s; counting %d slots per node", e, default_slots)
        return nodes_from_hostnames(out.splitlines(), cpus, default_slots), f"SLURM_NODELIST={nodelist}"
    if env.get("PBS_NODEFILE"):
        path = env["PBS_NODEFILE"]
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise RuntimeError(f"cannot read PBS_NODEFILE={path}: {e}") from e
        return nodes_from_nodefile(text, default_slots), f"PBS_NODEFILE={path}"
    raise RuntimeError("MPI mode needs the block's nodes, and none of SLURM_NODELIST, PBS_NODEFILE or "
                       "--mpi-nodes is set; on one machine, give the executor mpi_nodes=['localhost']")


def probe_addresses(contexts: Contexts, addresses: list[str], port: int, timeout: float) -> str:
    """Send a probe to every address at once and return the URL of the first that answers."""
    socks: dict[Any, str] = {}
    poller = zmq.Poller()
    for address in addresses:
        url = tcp_url(address, port)
        s = contexts.socket(zmq.DEALER, server=False)
        s.connect(url)
        s.send_multipart([Kind.PROBE, str(PROTOCOL_VERSION).encode()], zmq.NOBLOCK)
        poller.register(s, zmq.POLLIN)
        socks[s] = url
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            for s, _ in poller.poll(int(left * 1000) + 1):
                frames = s.recv_multipart()
                if frames and frames[0] == Kind.PROBE_OK:
                    return socks[s]
        raise ConnectionError(
            f"no interchange answered within {timeout} s on port {port} at any of: {', '.join(addresses)}"
        )
    finally:
        for s in socks:
            s.close(linger=0)


def node_resources() -> tuple[float, float]:
    """Cores and memory (GB) this pool may use; PARSL_CORES / PARSL_MEMORY_GB override detection."""
    import psutil

    if os.environ.get("PARSL_CORES"):
        cores = float(os.environ["PARSL_CORES"])
    else:
        try:
            cores = float(len(os.sched_getaffinity(0)))
        except AttributeError:
            cores = float(os.cpu_count() or 1)
    if os.environ.get("PARSL_MEMORY_GB"):
        mem = float(os.environ["PARSL_MEMORY_GB"])
    else:
        mem = round(psutil.virtual_memory().available / 2**30, 1)
    return cores, mem


def _fail(message: str) -> NoReturn:
    logger.error("%s", message)
    print(f"htex-worker-pool: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    sys.exit(EXIT_BAD_PLAN)


def physical_gpus() -> int | None:
    """GPUs on this node according to ``nvidia-smi -L``, or None when it is missing or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return count_gpus(out.stdout) if out.returncode == 0 else None


class WorkerPool:
    def __init__(self, args: argparse.Namespace, uid: str, logdir: str,
                 cpu_plan: list[tuple[int, ...]] | None = None, devices: list[str] | None = None) -> None:
        self.args = args
        self.cpu_plan = cpu_plan
        self.devices = devices or []
        self.uid = uid
        self.logdir = logdir
        self.hostname = socket.gethostname()
        self.contexts = Contexts(None if args.cert_dir in (None, "None") else args.cert_dir)
        self.interchange: Any = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.pidfds: dict[int, int] = {}  # pidfd -> rank
        self.channels: dict[int, socket.socket] = {}  # rank -> manager end of the socketpair
        self.readers: dict[int, tuple[int, StreamReader]] = {}  # socket fd -> (rank, reader)
        # Writes to workers never block: a task handed over in advance goes to a busy worker, which
        # reads it only when its current call ends.
        self.writers: dict[int, NonBlockingWriter] = {}  # rank -> writer
        self._writing: set[int] = set()  # socket fds polled for POLLOUT
        self.poller = zmq.Poller()
        self.stop_reason = ""
        self.worker_count = 0
        #: Process group of each slot's latest worker (the worker leads its own group).
        self.pgids: dict[int, int] = {}
        self.kill_grace = 2.0
        #: Bytes each worker may hold (None: not enforced); set from the interchange's answer.
        self.memory_limit: int | None = None
        self.oom = OomWatch()
        #: Seconds between worker samples when the executor monitors (None: it does not).
        self.monitoring: float | None = None
        #: Seconds to wait for a silent interchange, as the executor set it (None: the core's default).
        self.reconnect_timeout: float | None = None
        #: Largest result this pool passes on (bytes; None: no limit), from the interchange's answer.
        self.max_payload: int | None = None
        #: Monitoring: when each task was handed to its worker, when each worker last ended a task, the
        #: task runs and worker samples not yet sent.
        self._mon_start: dict[int, tuple[int, float]] = {}
        self._mon_free: dict[int, float] = {}
        #: [task id, rank, start, end] of each task run since the last report.
        self._mon_runs: list[Any] = []
        #: The wall clock read once per loop pass, for the monitoring stamps of that pass.
        self._wall = 0.0
        self._mon_samples: list[list[Any]] = []
        self._mon_procs: dict[int, Any] = {}

    # ------------------------------------------------------------------------------- startup

    def connect_and_register(self, worker_count: int) -> None:
        a = self.args
        url = probe_addresses(self.contexts, a.addresses.split(","), a.port, a.address_probe_timeout)
        logger.info("Interchange answered at %s", url)
        self.interchange = self.contexts.socket(zmq.DEALER, server=False)
        self.interchange.setsockopt(zmq.IDENTITY, self.uid.encode())
        self.interchange.setsockopt(zmq.SNDHWM, 0)
        self.interchange.setsockopt(zmq.RCVHWM, 0)
        self.interchange.connect(url)
        self.interchange.send_multipart([Kind.REGISTER, self.registration(worker_count, ()).encode()])
        if not self.interchange.poll(int(a.hb_threshold * 1000)):
            raise ConnectionError(f"the interchange at {url} did not answer the registration within "
                                  f"{a.hb_threshold} s")
        frames = self.interchange.recv_multipart()
        if frames[0] == Kind.REJECTED:
            reason = load_json_object(frames[1]).get("reason", "no reason given")
            raise PermissionError(f"the interchange refused this worker pool: {reason}")
        if frames[0] != Kind.REGISTERED:
            raise ProtocolError(f"unexpected answer to registration: {frames[0][:32]!r}")
        body = load_json_object(frames[1]) if len(frames) > 1 else {}
        self.kill_grace, enforce = task_control(body)
        self.monitoring = monitoring_interval(body)
        self.reconnect_timeout = reconnect_timeout(body)
        limit = body.get("max_payload_bytes")
        if limit is not None and (type(limit) is not int or limit <= 0):
            raise ProtocolError(f"registered: max_payload_bytes must be an int > 0 or null, got {limit!r}")
        self.max_payload = limit
        if enforce and a.mem_per_worker:
            self.memory_limit = int(a.mem_per_worker * 2**30)
            logger.info("Enforcing a memory limit of %.0f MiB per worker (RLIMIT_DATA and sampled RSS)",
                        self.memory_limit / 2**20)
            for proc in self.procs.values():
                self._limit_memory(proc.pid)
        elif enforce:
            logger.warning("enforce_memory is set but mem_per_worker is not: no memory limit")

    def registration(self, worker_count: int, held: tuple[int, ...]) -> Registration:
        """What this pool tells the interchange when it registers, first or again (naming ``held``)."""
        import psutil

        a = self.args
        job_started = job_start_from_env(os.environ)
        drain_in = drain_delay(
            now=time.time(), pool_started=POOL_STARTED, drain_period=a.drain_period, walltime=a.walltime,
            drain_before_walltime=a.drain_before_walltime, job_started=job_started)
        if drain_in is not None and not held:
            logger.info("This pool stops taking tasks in %.1f s (drain_period=%s, walltime=%s, "
                        "drain_before_walltime=%s, job started %s)", drain_in, a.drain_period, a.walltime,
                        a.drain_before_walltime, "at an unknown time" if job_started is None
                        else f"{time.time() - job_started:.1f} s ago")
        return Registration(
            protocol_version=PROTOCOL_VERSION,
            htex_ref_version=__version__,
            python_version=PYTHON_VERSION,
            uid=self.uid,
            block_id=a.block_id,
            worker_count=worker_count,
            prefetch_capacity=a.prefetch_capacity,
            hostname=self.hostname,
            pid=os.getpid(),
            cpu_count=os.cpu_count() or 1,
            total_memory=psutil.virtual_memory().total,
            os=platform.system(),
            drain_in=drain_in,
            held=held,
        )

    def _limit_memory(self, pid: int) -> None:
        if self.memory_limit is None:
            return
        try:
            set_data_limit(pid, self.memory_limit)
        except (OSError, ValueError) as e:
            logger.warning("Could not limit the memory of worker pid %d: %s", pid, e)

    def start_workers(self, count: int) -> None:
        self.worker_count = count
        for rank in range(count):
            self.spawn(rank)

    def _drop_channel(self, rank: int) -> None:
        old = self.channels.pop(rank, None)
        self.writers.pop(rank, None)
        if old is not None:
            self._writing.discard(old.fileno())
            if self.readers.pop(old.fileno(), None) is not None:
                self.poller.unregister(old.fileno())
            old.close()

    def spawn(self, rank: int) -> None:
        self._drop_channel(rank)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env.update({
            "PARSL_WORKER_RANK": str(rank),
            "PARSL_WORKER_COUNT": str(self.worker_count),
            "PARSL_WORKER_POOL_ID": self.uid,
            "PARSL_WORKER_BLOCK_ID": str(self.args.block_id),
        })
        if self.cpu_plan is not None:
            env.update(affinity_environment(self.cpu_plan[rank]))
        if self.devices:
            env.update(accelerator_environment(self.devices[rank]))
        cmd = [sys.executable, "-m", "htex_ref.worker", "--fd", str(theirs.fileno()), "--rank", str(rank),
               "--manager-pid", str(os.getpid()), "--logfile", os.path.join(self.logdir, f"worker_{rank}.log")]
        if self.cpu_plan is not None:
            cmd += ["--cpus", ",".join(map(str, self.cpu_plan[rank]))]
        if self.args.debug:
            cmd.append("--debug")
        try:
            # Each worker leads a process group of its own, so that stopping it (a task's time limit, a
            # cancel) reaches every process its task started, and nothing else.
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True,
                                    pass_fds=(theirs.fileno(),), process_group=0)
        finally:
            theirs.close()
        self._limit_memory(proc.pid)
        self.procs[rank] = proc
        self.pgids[rank] = proc.pid
        self.channels[rank] = ours
        self.writers[rank] = NonBlockingWriter(ours)
        self.readers[ours.fileno()] = (rank, StreamReader(ours))
        self.poller.register(ours.fileno(), zmq.POLLIN)
        fd = os.pidfd_open(proc.pid)
        self.pidfds[fd] = rank
        self.poller.register(fd, zmq.POLLIN)

    # ---------------------------------------------------------------------------------- loop

    def run(self, state: ManagerState) -> int:
        self.poller.register(self.interchange, zmq.POLLIN)
        # Connection events tell us at once when the interchange's end of the TCP connection goes away.
        monitor = self.interchange.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.poller.register(monitor, zmq.POLLIN)
        clock = time.monotonic
        next_sample = clock() + MEMORY_SAMPLE_PERIOD
        next_report = clock() + MONITOR_PERIOD
        next_resources = clock()
        while True:
            self._update_write_interest()
            due = state.next_deadline()
            if self.memory_limit is not None:
                due = min(due, next_sample)
            if self.monitoring is not None:
                due = min(due, next_report)
            timeout = max(0, int((due - clock()) * 1000) + 1)
            socks = dict(self.poller.poll(min(timeout, 1000)))
            if BIG_BUFFERS:
                BIG_BUFFERS.trim(clock())  # maps of big messages no longer coming (streams.BigBuffers)
            if self.monitoring is not None:
                self._wall = time.time()
            events: list[Any] = []
            if self.memory_limit is not None and clock() >= next_sample:
                next_sample = clock() + MEMORY_SAMPLE_PERIOD
                self._sample_memory(state, events)
            if self.monitoring is not None and clock() >= next_report:
                next_report = clock() + MONITOR_PERIOD
                if clock() >= next_resources:
                    next_resources = clock() + self.monitoring
                    self._sample_resources()
                self._send_monitoring()
            if self.stop_reason:
                events.append(StopRequested(self.stop_reason))
            if self.interchange in socks:
                self._read_interchange(events)
            if monitor in socks:
                self._read_monitor(monitor, events)
            # The poller reports plain file descriptors as ints: worker channels and pidfds.
            for key, flags in socks.items():
                if isinstance(key, int) and key in self.readers:
                    if flags & zmq.POLLOUT:
                        self.writers[self.readers[key][0]].flush()
                    if flags & zmq.POLLIN:
                        self._read_worker(key, events)
            for fd in [fd for fd in socks if isinstance(fd, int) and fd in self.pidfds]:
                events.append(self._reap(fd))
            for ins in state.handle(*events, now=clock()):
                code = self._execute(ins)
                if code is not None:
                    return code

    def _update_write_interest(self) -> None:
        for rank, writer in self.writers.items():
            fd = self.channels[rank].fileno()
            if fd not in self.readers:
                continue  # the channel reached end of stream: the worker is exiting
            want = writer.pending
            if want != (fd in self._writing):
                self.poller.modify(fd, zmq.POLLIN | (zmq.POLLOUT if want else 0))
                if want:
                    self._writing.add(fd)
                else:
                    self._writing.discard(fd)

    def _read_monitor(self, monitor: Any, events: list[Any]) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                msg = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg["event"] == zmq.EVENT_DISCONNECTED:
                logger.warning("Lost the connection to the interchange")
                events.append(InterchangeDisconnected())
            else:
                events.append(InterchangeConnected())

    def _read_interchange(self, events: list[Any]) -> None:
        contact = False
        while True:
            try:
                frames = recv_message(self.interchange)
            except zmq.Again:
                break
            contact = True
            kind = frames[0]
            try:
                if kind == Kind.TASKS or kind == Kind.TASKS_SPLIT:
                    events.append(TasksArrived([
                        PoolTask(tid, fr, prio) if len(fr[0]) == HEADER_SIZE
                        else make_pool_task(tid, fr, prio, task_spec(fr[0]))
                        for tid, prio, fr in split_tasks(frames)]))
                elif kind == Kind.CANCEL and len(frames) == 2:
                    task_ids, kill_running = unpack_cancel(frames[1])
                    events.append(CancelTasks(task_ids, kill_running))
                elif kind == Kind.ACK and len(frames) == 2:
                    events.append(ResultsAcked(unpack_ids(frames[1])))
                elif kind == Kind.DROP and len(frames) == 2:
                    events.append(DropTasks(unpack_ids(frames[1])))
                elif kind == Kind.REGISTER_AGAIN:
                    reason = load_json_object(frames[1]).get("reason", "") if len(frames) > 1 else ""
                    events.append(RegisterAgainRequested(str(reason)))
                elif kind == Kind.REGISTERED:
                    events.append(RegistrationAccepted())
                elif kind == Kind.REJECTED:
                    reason = load_json_object(frames[1]).get("reason", "") if len(frames) > 1 else ""
                    events.append(StopRequested(f"the interchange refused this pool's registration: {reason}",
                                                error=True))
                elif kind == Kind.SHUTDOWN:
                    reason = load_json_object(frames[1]).get("reason", "") if len(frames) > 1 else ""
                    events.append(StopRequested(f"the interchange asked this pool to stop: {reason}"))
                elif kind != Kind.HEARTBEAT:
                    raise ProtocolError(f"unexpected message kind {kind[:32]!r}")
            except ProtocolError as e:
                logger.warning("Dropped malformed message from the interchange: %s", e)
        if contact:
            events.insert(0, InterchangeContact())

    def _read_worker(self, fd: int, events: list[Any]) -> None:
        rank, reader = self.readers[fd]
        try:
            messages = reader.read_available()
        except ProtocolError as e:
            logger.error("Corrupt stream from worker %d, dropping its channel: %s", rank, e)
            messages = []
            reader.closed = True
        if reader.closed:
            # EOF: the worker is exiting; its pidfd reports the exit code.
            self.readers.pop(fd, None)
            self.poller.unregister(fd)
        for frames in messages:
            kind = frames[0]
            try:
                if kind == Kind.RESULT and len(frames) == 3:
                    task_id, outcome, run_time = unpack_result_header(frames[1])
                    payload = frames[2]
                    if self.max_payload is not None and len(payload) > self.max_payload:
                        outcome, payload = too_large(task_id, len(payload), self.max_payload)
                    events.append(WorkerResult(rank, task_id, outcome, payload, run_time))
                    if self.monitoring is not None:
                        self._ran(task_id, rank)
                elif kind == Kind.READY:
                    events.append(WorkerReady(rank))
                else:
                    raise ProtocolError(f"unexpected message kind {kind[:32]!r} from worker {rank}")
            except ProtocolError as e:
                logger.warning("Dropped malformed message from worker %d: %s", rank, e)

    def _reap(self, fd: int) -> WorkerExited:
        rank = self.pidfds.pop(fd)
        self.poller.unregister(fd)
        os.close(fd)
        proc = self.procs.pop(rank)
        code = proc.wait()
        oom = code == -signal.SIGKILL and self.oom.struck()
        logger.warning("Worker %d (pid %d) exited with code %s%s", rank, proc.pid, code,
                       " (the OOM killer struck this pool's cgroup)" if oom else "")
        return WorkerExited(rank, code, oom)

    def _ran(self, task_id: int, rank: int) -> None:
        """Monitoring: task ``task_id`` ended on worker ``rank`` now. It started when it was handed over,
        or, if it was handed over in advance, when the worker's previous task ended."""
        now = self._wall
        handed = self._mon_start.pop(task_id, None)
        start = now if handed is None or handed[0] != rank else max(handed[1], self._mon_free.get(rank, 0.0))
        self._mon_free[rank] = now
        self._mon_runs.append((task_id, rank, start, now))

    def _sample_resources(self) -> None:
        """Monitoring: CPU (percent since the last sample) and resident memory of each worker."""
        import psutil

        t = time.time()
        for rank, proc in self.procs.items():
            p = self._mon_procs.get(rank)
            if p is None or p.pid != proc.pid:
                try:
                    p = self._mon_procs[rank] = psutil.Process(proc.pid)
                    p.cpu_percent(None)
                except psutil.Error:
                    continue
            try:
                self._mon_samples.append([rank, proc.pid, p.cpu_percent(None), int(p.memory_info().rss)])
            except psutil.Error:
                continue
        self._mon_sample_t = t

    def _send_monitoring(self) -> None:
        if not self._mon_runs and not self._mon_samples:
            return
        meta = {"workers": self._mon_samples, "t": getattr(self, "_mon_sample_t", time.time()), "host": self.hostname}
        runs = dump_json(self._mon_runs)
        self._mon_runs, self._mon_samples = [], []
        try:
            self.interchange.send_multipart([Kind.MONITOR, dump_json(meta), runs], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            logger.debug("Could not send monitoring: %s", e)

    def _sample_memory(self, state: ManagerState, events: list[Any]) -> None:
        for rank, slot in state.workers.items():
            proc = self.procs.get(rank)
            if slot.state != "busy" or proc is None:
                continue
            rss = tree_rss(proc.pid)
            if rss is not None:
                events.append(WorkerMemory(rank, rss))

    def _signal(self, rank: int, signum: int) -> None:
        pgid = self.pgids.get(rank)
        if pgid is None:
            return
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already

    def _execute(self, ins: Any) -> int | None:
        if isinstance(ins, RunTask):
            if self.monitoring is not None:
                self._mon_start[ins.task.task_id] = (ins.rank, self._wall)
            try:
                parts = [Kind.TASK, *ins.task.frames]
                if ins.env is not None:
                    parts.append(dump_json(ins.env))
                self.writers[ins.rank].write_parts(encode_parts(parts))
            except OSError as e:
                # The worker is dying; its pidfd turns this into WorkerLost for the task.
                logger.warning("Could not send task %d to worker %d: %s", ins.task.task_id, ins.rank, e)
        elif isinstance(ins, SendResults):
            self.interchange.send_multipart(join_results(ins.results), copy=False)
        elif isinstance(ins, SendHeartbeat):
            self.interchange.send_multipart([Kind.HEARTBEAT])
        elif isinstance(ins, Register):
            logger.info("Registering again, holding %d tasks", len(ins.held))
            self.interchange.send_multipart([Kind.REGISTER, self.registration(self.worker_count, ins.held).encode()])
        elif isinstance(ins, StartWorker):
            self.spawn(ins.rank)
        elif isinstance(ins, SignalWorker):
            self._signal(ins.rank, ins.signum)
        elif isinstance(ins, Note):
            logger.log(ins.level, "%s", ins.text)
        elif isinstance(ins, Exit):
            if self.monitoring is not None:
                self._send_monitoring()
            level = logging.ERROR if ins.error else logging.INFO
            logger.log(level, "Worker pool exiting: %s", ins.reason)
            if ins.error:
                print(f"htex-worker-pool {self.uid}: {ins.reason}", file=sys.stderr, flush=True)
            self.interchange.send_multipart([Kind.BYE, dump_json({"reason": ins.reason})])
            return EXIT_ERROR if ins.error else 0
        return None

    def close(self) -> None:
        # Whole groups: a worker's children (a bash app's commands) go with it.
        for rank in self.procs:
            self._signal(rank, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for rank in self.pgids:
            self._signal(rank, signal.SIGKILL)
        for fd in self.pidfds:
            os.close(fd)
        for chan in self.channels.values():
            chan.close()
        if self.interchange is not None:
            self.interchange.close(linger=1000)
        self.contexts.close()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = check_args(parser, parser.parse_args(argv))
    uid = args.uid or uuid.uuid4().hex[:12]
    logdir = os.path.join(args.logdir, f"block-{args.block_id}", uid)
    os.makedirs(logdir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(logdir, "manager.log"),
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    logger.info("htex-worker-pool %s uid %s block %s on %s: %s", __version__, uid, args.block_id,
                socket.gethostname(), " ".join(sys.argv))
    cores, mem = node_resources()
    try:
        affinity = parse_cpu_affinity(args.cpu_affinity)
    except ValueError as e:
        _fail(f"cannot start any worker on {socket.gethostname()}: {e}")
    max_workers = None if math.isinf(args.max_workers_per_node) else int(args.max_workers_per_node)
    if affinity.strategy == "list" and max_workers is None:
        max_workers = len(affinity.lists)  # one worker per listed thread set, unless told otherwise
    plan = plan_workers(
        max_workers_per_node=max_workers,
        cores_per_worker=args.cores_per_worker,
        mem_per_worker=args.mem_per_worker,
        cores=cores,
        mem_gb=mem,
        accelerators=args.available_accelerators,
    )
    logger.info("Node has %s cores and %s GB available; planned %s", cores, mem, plan.explain())
    if plan.count < 1:
        _fail(f"cannot start any worker on {socket.gethostname()}: {plan.explain()}")
    # Pinning is planned before any worker starts: a plan the node cannot satisfy stops the pool here,
    # with the reason in the block's stderr, instead of failing inside each worker again and again.
    available = sorted(os.sched_getaffinity(0))
    try:
        cpu_plan = plan_cpu_affinity(affinity, available, plan.count)
    except ValueError as e:
        _fail(f"cannot pin {plan.count} workers on {socket.gethostname()}: {e}")
    devices: list[str] = []
    if args.available_accelerators:
        physical = physical_gpus()
        devices = plan_accelerators(args.available_accelerators, plan.count, physical)
        logger.info("Accelerators %s on %s physical GPUs: %s", args.available_accelerators, physical, devices)
    if cpu_plan is not None:
        logger.info("CPU affinity %s: %s", args.cpu_affinity, format_cpu_affinity(cpu_plan))

    scheduler = None
    if args.enable_mpi_mode:
        try:
            nodes, source = discover_nodes(args, os.environ)
            scheduler = MpiScheduler(nodes, share=args.mpi_share_nodes, policy=mpi_policy(args.mpi_policy))
        except (RuntimeError, ValueError) as e:
            _fail(f"MPI mode on {socket.gethostname()}: {e}")
        logger.info("MPI mode: launcher %s, policy %s, %s nodes from %s: %s", args.mpi_launcher, args.mpi_policy,
                    "shared" if args.mpi_share_nodes else "whole", source,
                    ",".join(f"{n.name}:{n.slots}" for n in nodes))

    pool = WorkerPool(args, uid, logdir, cpu_plan, devices)
    code = EXIT_ERROR
    try:
        term = "received SIGTERM (its batch job was cancelled or reached its walltime, or it was stopped)"
        signal.signal(signal.SIGTERM, lambda s, f: setattr(pool, "stop_reason", term))
        # Workers start while we probe and register: their interpreter start-up overlaps ours.
        pool.start_workers(plan.count)
        try:
            pool.connect_and_register(plan.count)
        except ConnectionError as e:
            logger.error("%s", e)
            print(f"htex-worker-pool: {e}", file=sys.stderr, flush=True)
            code = EXIT_NO_INTERCHANGE
            return
        except PermissionError as e:
            logger.error("%s", e)
            print(f"htex-worker-pool: {e}", file=sys.stderr, flush=True)
            code = EXIT_REJECTED
            return
        state = ManagerState(plan.count, args.hb_period, args.hb_threshold, time.monotonic(), pool.hostname,
                             mpi=scheduler, mpi_launcher=args.mpi_launcher or "mpiexec",
                             kill_grace=pool.kill_grace, memory_limit=pool.memory_limit,
                             reconnect_timeout=pool.reconnect_timeout)
        code = pool.run(state)
    except Exception:
        logger.exception("Worker pool failed")
        raise
    finally:
        pool.close()
        logger.info("Worker pool %s exiting with code %d", uid, code)
        logging.shutdown()
        if code:
            sys.exit(code)


if __name__ == "__main__":
    main()
