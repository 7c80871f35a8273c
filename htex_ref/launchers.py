"""Launchers: pure functions from (command, tasks_per_node, nodes_per_block) to the shell text a job runs.

A block's job script ends with what its launcher returns; that text starts the worker-pool command once
per node (or per task slot). Every launcher's output is plain bash, checked with ``bash -n`` in tests.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

logger = logging.getLogger(__name__)


class Launcher(ABC):
    @abstractmethod
    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        """Shell text that runs ``command`` tasks_per_node * nodes_per_block times."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SimpleLauncher(Launcher):
    """Run the command once, as is (the batch system or an MPI launcher places it)."""

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        if nodes_per_block > 1:
            logger.warning("SimpleLauncher starts one copy of the command although nodes_per_block=%d",
                           nodes_per_block)
        return command


class SingleNodeLauncher(Launcher):
    """Start tasks_per_node * nodes_per_block copies on this node and wait for all of them.

    The job's exit code is the first non-zero exit code among the copies when ``fail_on_any`` is set,
    else non-zero only when every copy failed (then it is the last copy's code).
    """

    def __init__(self, fail_on_any: bool = False) -> None:
        self.fail_on_any = fail_on_any

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        count = tasks_per_node * nodes_per_block
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

    def __repr__(self) -> str:
        return f"SingleNodeLauncher(fail_on_any={self.fail_on_any})"
