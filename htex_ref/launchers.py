"""Launchers: pure functions from (command, tasks_per_node, nodes_per_block) to the shell text a job runs.

A block's job script ends with what its launcher returns; that text starts the worker-pool command
``tasks_per_node * nodes_per_block`` times across the block's nodes (once for ``SimpleLauncher`` and
``WrappedLauncher``, which leave placement to something else) and exits with a code that says whether
the copies failed. Every launcher's output is plain bash, checked with ``bash -n`` in tests and run
under stub launch binaries (``srun``, ``mpiexec``, ...) that start the copies the way the real tools do.

Launchers that hand the command to a parallel launch tool first write it to a file with a quoted
heredoc, so no quoting of the command is needed and every rank runs exactly the same text. The file
goes to ``$HTEX_SCRIPT_DIR`` (the cluster providers export their script directory there, which is on
a file system the compute nodes share) or else the job's working directory, and is named after
``$JOBNAME`` and the launching shell's pid so that jobs never overwrite each other's files.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

from htex_ref.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Where launchers write the per-job command file (and host file): a shell expression.
COMMAND_FILE = '"${HTEX_SCRIPT_DIR:-$PWD}/cmd_${JOBNAME:-htex_ref}.$$.sh"'
HOST_FILE = '"${HTEX_SCRIPT_DIR:-$PWD}/hosts_${JOBNAME:-htex_ref}.$$.txt"'


def _check_count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_str(owner: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{owner}.{name} must be a string, got {type(value).__name__} {value!r}")
    if "\n" in value or "\r" in value:
        # A newline would end the launch command line early and run the rest as its own command.
        raise ConfigurationError(f"{owner}.{name} must be a single line, got {value!r}")
    return value


def heredoc_delimiter(command: str) -> str:
    """A heredoc end marker that no line of ``command`` equals, so the whole command lands in the file."""
    lines = set(command.splitlines())
    marker = "HTEX_REF_CMD_EOF"
    n = 0
    while marker in lines:
        n += 1
        marker = f"HTEX_REF_CMD_EOF_{n}"
    return marker


def write_command_file(command: str) -> str:
    """Shell text that writes ``command`` verbatim to ``$HTEX_CMD_FILE``."""
    end = heredoc_delimiter(command)
    body = command if command.endswith("\n") else command + "\n"
    return (
        f"HTEX_CMD_FILE={COMMAND_FILE}\n"
        f"cat > \"$HTEX_CMD_FILE\" <<'{end}'\n"
        f"{body}"
        f"{end}\n"
        'chmod u+x "$HTEX_CMD_FILE"\n'
    )


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


class Launcher(ABC):
    """Turns a command into shell text that starts the right number of copies of it.

    Subclasses keep their constructor arguments as attributes of the same name; ``repr`` shows them.
    """

    #: Parsl's ``debug``: the job's output says what the launcher starts, where and when.
    _debug = False

    @property
    def debug(self) -> bool:
        return self._debug

    def _set_debug(self, debug: object) -> None:
        if not isinstance(debug, bool):
            raise ConfigurationError(f"{type(self).__name__}.debug must be a bool, got {debug!r}")
        self._debug = debug

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        """Shell text that runs ``command`` tasks_per_node * nodes_per_block times."""
        text = self._launch(command, tasks_per_node, nodes_per_block)
        if not self._debug:
            return text
        return (f'echo "htex_ref {type(self).__name__}: {tasks_per_node * nodes_per_block} cop(ies) of the '
                f'worker-pool command, {nodes_per_block} node(s), from $(hostname) at $(date -u +%FT%TZ)"\n' + text)

    @abstractmethod
    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        """The launcher's shell text (``__call__`` adds the debug line)."""

    def _params(self) -> dict[str, Any]:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        if self._debug:
            params["debug"] = True
        return params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    @staticmethod
    def _check(command: str, tasks_per_node: int, nodes_per_block: int) -> int:
        if not isinstance(command, str) or not command.strip():
            raise ConfigurationError(f"command must be a non-empty string, got {command!r}")
        return _check_count("tasks_per_node", tasks_per_node) * _check_count("nodes_per_block", nodes_per_block)


class SimpleLauncher(Launcher):
    """Run the command once, as is (the batch system or an MPI launcher places it).

    Parameters
    ----------
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, debug: bool = False) -> None:
        self._set_debug(debug)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        self._check(command, tasks_per_node, nodes_per_block)
        if nodes_per_block > 1 or tasks_per_node > 1:
            logger.warning("SimpleLauncher starts one copy of the command although tasks_per_node=%d and "
                           "nodes_per_block=%d", tasks_per_node, nodes_per_block)
        return command


class WrappedLauncher(Launcher):
    """Run the command once, prefixed by ``prepend`` (a container runtime, ``time``, a wrapper script).

    Parameters
    ----------
    prepend : str
        Words put before the command, as written (``"apptainer exec image.sif"``); one line. ``""`` runs
        the command as is.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, prepend: str = "", debug: bool = False) -> None:
        self.prepend = _check_str("WrappedLauncher", "prepend", prepend)
        self._set_debug(debug)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        self._check(command, tasks_per_node, nodes_per_block)
        if tasks_per_node > 1:
            logger.warning("WrappedLauncher ignores tasks_per_node=%d: it starts one copy", tasks_per_node)
        if nodes_per_block > 1:
            logger.warning("WrappedLauncher ignores nodes_per_block=%d: it starts one copy", nodes_per_block)
        return _join(self.prepend.strip(), command)


class SingleNodeLauncher(Launcher):
    """Start tasks_per_node * nodes_per_block copies on this node and wait for all of them.

    Each copy gets its number (1..N) as ``$1``. The job's exit code is the first non-zero exit code
    among the copies when ``fail_on_any`` is set, else non-zero only when every copy failed (then it
    is the last copy's code).

    Parameters
    ----------
    fail_on_any : bool
        Fail the job when any copy fails (with the first non-zero exit code); ``False``: only when every
        copy failed.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, fail_on_any: bool = False, debug: bool = False) -> None:
        self._set_debug(debug)
        if not isinstance(fail_on_any, bool):
            raise ConfigurationError(f"SingleNodeLauncher.fail_on_any must be a bool, got {fail_on_any!r}")
        self.fail_on_any = fail_on_any

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = self._check(command, tasks_per_node, nodes_per_block)
        return f"""\
export CORES=$(getconf _NPROCESSORS_ONLN)
HTEX_CMD() {{
{command}
}}
HTEX_PIDS=""
for HTEX_I in $(seq 1 {count}); do
    HTEX_CMD "$HTEX_I" &
    HTEX_PIDS="$HTEX_PIDS $!"
done
HTEX_FAILED=0
HTEX_FIRST_RC=0
HTEX_LAST_RC=0
for HTEX_PID in $HTEX_PIDS; do
    wait "$HTEX_PID"
    HTEX_RC=$?
    if [ "$HTEX_RC" -ne 0 ]; then
        HTEX_FAILED=$((HTEX_FAILED + 1))
        [ "$HTEX_FIRST_RC" -eq 0 ] && HTEX_FIRST_RC=$HTEX_RC
        HTEX_LAST_RC=$HTEX_RC
    fi
done
if [ {1 if self.fail_on_any else 0} -eq 1 ]; then
    exit "$HTEX_FIRST_RC"
elif [ "$HTEX_FAILED" -eq {count} ]; then
    exit "$HTEX_LAST_RC"
fi
exit 0
"""


class SrunLauncher(Launcher):
    """One ``srun`` job step with tasks_per_node * nodes_per_block tasks, each running the command.

    ``-l`` labels every output line with its task number.

    Parameters
    ----------
    overrides : str
        Extra srun options, added to the srun line as written (``"--cpu-bind=none --mpi=none"``); one line.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, overrides: str = "", debug: bool = False) -> None:
        self.overrides = _check_str("SrunLauncher", "overrides", overrides)
        self._set_debug(debug)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = self._check(command, tasks_per_node, nodes_per_block)
        srun = _join("srun", f"--ntasks={count}", f"--ntasks-per-node={tasks_per_node}",
                     f"--nodes={nodes_per_block}", "-l", self.overrides, 'bash "$HTEX_CMD_FILE"')
        return (
            write_command_file(command)
            + "export CORES=$SLURM_CPUS_ON_NODE\n"
            + "export NODES=$SLURM_JOB_NUM_NODES\n"
            + srun + "\n"
        )


class SrunMPILauncher(Launcher):
    """tasks_per_node * nodes_per_block concurrent ``srun`` job steps that share the allocation.

    As in Parsl, each step is an MPI-style launch of the command: when there are more steps than
    nodes, each step gets ``NODES * CORES / steps`` tasks (one per core of its share); otherwise each
    step gets ``NODES / steps`` whole nodes (``--exclusive``) with one task per node. ``NODES`` and
    ``CORES`` come from ``SLURM_JOB_NUM_NODES`` and ``SLURM_CPUS_ON_NODE`` at run time. The job fails
    with the first non-zero exit code of a step.

    Parameters
    ----------
    overrides : str
        Extra srun options, added to every step's srun line as written (``"--mpi=pmi2"``); one line.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, overrides: str = "", debug: bool = False) -> None:
        self.overrides = _check_str("SrunMPILauncher", "overrides", overrides)
        self._set_debug(debug)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        steps = self._check(command, tasks_per_node, nodes_per_block)
        by_cores = _join("srun", '--ntasks="$HTEX_SHARE"', "-l", self.overrides, 'bash "$HTEX_CMD_FILE" &')
        by_nodes = _join("srun", "--exclusive", '--nodes="$HTEX_SHARE"', '--ntasks="$HTEX_SHARE"', "-l",
                         self.overrides, 'bash "$HTEX_CMD_FILE" &')
        return write_command_file(command) + f"""\
export CORES=${{SLURM_CPUS_ON_NODE:-1}}
export NODES=${{SLURM_JOB_NUM_NODES:-1}}
HTEX_STEPS={steps}
if [ "$HTEX_STEPS" -gt "$NODES" ]; then
    HTEX_SHARE=$((NODES * CORES / HTEX_STEPS))
    [ "$HTEX_SHARE" -ge 1 ] || HTEX_SHARE=1
    HTEX_BY_CORES=1
else
    HTEX_SHARE=$((NODES / HTEX_STEPS))
    HTEX_BY_CORES=0
fi
HTEX_PIDS=""
for HTEX_I in $(seq 1 "$HTEX_STEPS"); do
    if [ "$HTEX_BY_CORES" -eq 1 ]; then
        {by_cores}
    else
        {by_nodes}
    fi
    HTEX_PIDS="$HTEX_PIDS $!"
done
HTEX_FIRST_RC=0
for HTEX_PID in $HTEX_PIDS; do
    wait "$HTEX_PID"
    HTEX_RC=$?
    [ "$HTEX_FIRST_RC" -eq 0 ] && HTEX_FIRST_RC=$HTEX_RC
done
exit "$HTEX_FIRST_RC"
"""


def _host_file_from_pbs() -> str:
    """Shell text that writes the block's distinct hosts (from ``$PBS_NODEFILE``) to ``$HTEX_HOSTFILE``."""
    return (
        f"HTEX_HOSTFILE={HOST_FILE}\n"
        'if [ -n "${PBS_NODEFILE:-}" ] && [ -f "$PBS_NODEFILE" ]; then\n'
        '    sort -u "$PBS_NODEFILE" > "$HTEX_HOSTFILE"\n'
        "else\n"
        '    hostname > "$HTEX_HOSTFILE"\n'
        "fi\n"
    )


class MpiExecLauncher(Launcher):
    """One MPICH-style ``mpiexec`` (Cray PALS, Intel MPI, Hydra) with tasks_per_node ranks per host.

    The host file is the distinct hosts of ``$PBS_NODEFILE`` (or this host).

    Parameters
    ----------
    bind_cmd : str
        The mpiexec option that, followed by ``none``, turns CPU binding off (``--bind-to`` for Hydra
        and Intel MPI, ``--cpu-bind`` for PALS), so that each worker pool can pin its own workers. One
        option, without spaces (other options go in ``overrides``); ``""`` leaves binding to mpiexec.
    overrides : str
        Extra mpiexec options, added to the mpiexec line as written (``"--envall"``); one line.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, bind_cmd: str = "--bind-to", overrides: str = "", debug: bool = False) -> None:
        self._set_debug(debug)
        self.bind_cmd = _check_str("MpiExecLauncher", "bind_cmd", bind_cmd)
        if any(c.isspace() for c in bind_cmd):
            # " none" is added after it: "--bind-to none" would become "--bind-to none none".
            raise ConfigurationError(
                "MpiExecLauncher.bind_cmd must be one mpiexec option without spaces, such as '--bind-to' or "
                f"'--cpu-bind' (htex_ref adds 'none' after it); put other mpiexec options in overrides, got "
                f"{bind_cmd!r}")
        self.overrides = _check_str("MpiExecLauncher", "overrides", overrides)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = self._check(command, tasks_per_node, nodes_per_block)
        bind = f"{self.bind_cmd} none" if self.bind_cmd else ""
        mpiexec = _join("mpiexec", f"-n {count}", f"-ppn {tasks_per_node}", '--hostfile "$HTEX_HOSTFILE"',
                        bind, self.overrides, '/bin/bash "$HTEX_CMD_FILE"')
        return write_command_file(command) + _host_file_from_pbs() + mpiexec + "\n"


class MpiRunLauncher(Launcher):
    """One Open MPI-style ``mpirun -np N`` that runs the command with ``bash_location``.

    Parameters
    ----------
    bash_location : str
        The shell that runs the command file on each rank. It goes into the mpirun line as written, so
        it may carry words (``"/usr/bin/env bash"``); quote a path with spaces yourself. Not empty.
    overrides : str
        Extra mpirun options, added to the mpirun line as written (``"--map-by node"``); one line.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, bash_location: str = "/bin/bash", overrides: str = "", debug: bool = False) -> None:
        self._set_debug(debug)
        self.bash_location = _check_str("MpiRunLauncher", "bash_location", bash_location)
        if not self.bash_location.strip():
            raise ConfigurationError(f"MpiRunLauncher.bash_location must name a shell, got {bash_location!r}")
        self.overrides = _check_str("MpiRunLauncher", "overrides", overrides)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = self._check(command, tasks_per_node, nodes_per_block)
        mpirun = _join("mpirun", f"-np {count}", self.overrides, self.bash_location, '"$HTEX_CMD_FILE"')
        return write_command_file(command) + mpirun + "\n"


class AprunLauncher(Launcher):
    """One Cray ALPS ``aprun -n N -N tasks_per_node``.

    Parameters
    ----------
    overrides : str
        Extra aprun options, added to the aprun line as written (``"-cc none"``); one line.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, overrides: str = "", debug: bool = False) -> None:
        self.overrides = _check_str("AprunLauncher", "overrides", overrides)
        self._set_debug(debug)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = self._check(command, tasks_per_node, nodes_per_block)
        aprun = _join("aprun", f"-n {count}", f"-N {tasks_per_node}", self.overrides, '/bin/bash "$HTEX_CMD_FILE"')
        return write_command_file(command) + aprun + "\n"


class JsrunLauncher(Launcher):
    """One IBM LSF ``jsrun`` with N resource sets, tasks_per_node of them per host (one task each).

    Parameters
    ----------
    overrides : str
        Extra jsrun options, added to the jsrun line as written (``"-c 7 -g 1"``); one line.
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, overrides: str = "", debug: bool = False) -> None:
        self.overrides = _check_str("JsrunLauncher", "overrides", overrides)
        self._set_debug(debug)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = self._check(command, tasks_per_node, nodes_per_block)
        jsrun = _join("jsrun", f"-n {count}", f"-r {tasks_per_node}", self.overrides, '/bin/bash "$HTEX_CMD_FILE"')
        return write_command_file(command) + jsrun + "\n"


class GnuParallelLauncher(Launcher):
    """GNU ``parallel`` runs tasks_per_node * nodes_per_block copies, tasks_per_node at a time per host.

    Hosts are the distinct entries of ``$PBS_NODEFILE`` (reached with ssh) or, without one, only this
    host (``:`` in parallel's terms: no ssh). A job log goes next to the command file. The exit code is
    parallel's: the number of copies that failed (at most 101). Copies on other hosts get the job's
    environment (``--env _``) only if ``parallel --record-env`` has been run once, as GNU parallel
    requires; without it they get their login environment (Parsl always passes ``--env _``, which
    makes parallel refuse to run at all until then).

    Parameters
    ----------
    debug : bool
        Say in the job's output what the launcher starts, where and when (Parsl's ``debug``).
    """

    def __init__(self, debug: bool = False) -> None:
        self._set_debug(debug)

    def _launch(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = self._check(command, tasks_per_node, nodes_per_block)
        return write_command_file(command) + f"""\
export CORES=$(getconf _NPROCESSORS_ONLN)
HTEX_HOSTFILE={HOST_FILE}
if [ -n "${{PBS_NODEFILE:-}}" ] && [ -f "$PBS_NODEFILE" ]; then
    sort -u "$PBS_NODEFILE" > "$HTEX_HOSTFILE"
else
    echo ":" > "$HTEX_HOSTFILE"
fi
# GNU parallel copies the environment to other hosts (--env _) only once `parallel --record-env` was run.
HTEX_PARALLEL_ENV=""
[ -f "$HOME/.parallel/ignored_vars" ] && HTEX_PARALLEL_ENV="--env _"
for HTEX_I in $(seq 1 {count}); do
    echo "bash $HTEX_CMD_FILE"
done | parallel $HTEX_PARALLEL_ENV --joblog "$HTEX_CMD_FILE.parallel.log" --sshloginfile "$HTEX_HOSTFILE" \
    --jobs {tasks_per_node}
"""


ALL_LAUNCHERS: tuple[type[Launcher], ...] = (
    SimpleLauncher, WrappedLauncher, SingleNodeLauncher, SrunLauncher, SrunMPILauncher, MpiExecLauncher,
    MpiRunLauncher, AprunLauncher, JsrunLauncher, GnuParallelLauncher,
)
