"""The control thread: the one owner of the executor's blocks.

``htex_ref.core.blocks.BlockControl`` decides; this thread (``htex-{label}-control``) is the only one that
drives it. Every ``wake_interval`` it observes what the core asks for (the provider's job statuses, the
interchange's view of the blocks) and hands over a ``Tick``; user calls (``scale_out``, ``scale_in``,
``hold_block``, ``status``, ``shutdown``) are requests queued to it and answered through futures. Each
instruction the core returns is carried out here: ``Launch`` and ``Cancel`` through the provider,
``HoldBlock`` and ``BlockEnded`` as one-way notices to the interchange, ``FailAll`` by failing the
executor, ``FailOutstanding`` by failing the tasks that wait for a block nothing will start, ``Note``
into the log; what a launch or cancel gave goes back to the core.

Because one thread does all of it, a scaling pass that is inside ``provider.submit`` when ``shutdown()``
is called finishes first, and the shutdown's cancel sees the new block. Once the thread has stopped, a
request is served in the caller's thread, under the same lock, so there is still one owner at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from htex_ref.block_errors import failure_exception
from htex_ref.core.blocks import (
    BlockControl,
    BlockEnded,
    Cancel,
    CancelDone,
    Event,
    FailAll,
    FailOutstanding,
    HoldBlock,
    Launch,
    Launched,
    LaunchFailed,
    Needs,
    Observed,
    Start,
    Tick,
    drive,
)
from htex_ref.core.interchange import BlockLoad
from htex_ref.core.jobs import JobStatus
from htex_ref.core.notes import Note
from htex_ref.errors import NoBlocks
from htex_ref.link import InterchangeLink
from htex_ref.protocol import Notice, Query
from htex_ref.providers.base import ExecutionProvider
from htex_ref.tasks import TaskTable

logger = logging.getLogger("htex_ref.control")


@dataclass
class _Request:
    event: Event
    future: Future[Any]


_STOP = object()


class ControlThread:
    """See the module docstring."""

    def __init__(self, label: str, core: BlockControl, provider: ExecutionProvider,
                 launch_command: Callable[[str], str], link: InterchangeLink, table: TaskTable,
                 fail_all: Callable[[BaseException], None],
                 monitor: Callable[[tuple[Any, ...]], None] | None = None) -> None:
        #: The monitoring store's ``put``: each block's state after every pass (the store keeps changes).
        self.monitor = monitor
        self.label = label
        self.core = core
        self.provider = provider
        self.launch_command = launch_command
        self.link = link
        self.table = table
        self.fail_all = fail_all
        self.thread: threading.Thread | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Held while the core is driven: by the thread, or by a caller once the thread has stopped.
        self._owner = threading.Lock()
        self._stopped = False
        self._stopping = threading.Lock()
        #: How long a caller waits for an answer: provider commands are bounded by ``cmd_timeout``.
        self.request_timeout = max(60.0, 4 * float(provider.cmd_timeout))

    # ----------------------------------------------------------------------------- the callers

    def start(self) -> list[str]:
        """Launch ``init_blocks`` (in the caller, before the thread exists), then start the thread."""
        with self._owner:
            launched: list[str] = drive(self.core, [Start()], time.monotonic(), self._execute) or []
        self.thread = threading.Thread(target=self._run, name=f"htex-{self.label}-control", daemon=True)
        self.thread.start()
        return launched

    def request(self, event: Event, timeout: float | None = None) -> Any:
        """Hand ``event`` to the core through the control thread and return its answer."""
        if threading.current_thread() is self.thread:
            raise RuntimeError(f"executor {self.label}: block control cannot be asked from its own thread (from a "
                               "block error handler, say); call it from another thread")
        with self._stopping:
            inline = self._stopped or self.thread is None
            if not inline:
                fut: Future[Any] = Future()
                self._queue.put(_Request(event, fut))
        if inline:
            return self._serve(event)
        wait = self.request_timeout if timeout is None else timeout
        try:
            return fut.result(wait)
        except FutureTimeout:
            raise TimeoutError(f"executor {self.label}: the control thread did not answer within {wait:.0f} s "
                               f"(is a call to {type(self.provider).__name__} hanging?)") from None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread once the requests queued before this are answered."""
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(_STOP)
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
            if self.thread.is_alive():
                logger.error("The control thread of executor %s did not stop within %.0f s", self.label, timeout)

    # ------------------------------------------------------------------------------ the thread

    def _run(self) -> None:
        interval = self.core.settings.wake_interval
        next_wake = time.monotonic() + interval
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_wake - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is None:
                next_wake = time.monotonic() + interval
                try:
                    self._serve(None)
                except Exception:
                    logger.exception("Control pass failed")
                continue
            try:
                item.future.set_result(self._serve(item.event))
            except BaseException as e:
                item.future.set_exception(e)

    def _serve(self, event: Event | None) -> Any:
        """Observe what the core needs, then hand it ``event`` (a ``Tick`` when None)."""
        with self._owner:
            observed = self._observe(self.core.needs(event, time.monotonic()))
            events: list[Event] = [observed] if observed is not None else []
            events.append(Tick() if event is None else event)
            answer = drive(self.core, events, time.monotonic(), self._execute)
            if self.monitor is not None:
                t = time.time()
                jobs = self.core.blocks_to_job_id
                for block, st in self.core.status().items():
                    self.monitor(("block", block, jobs.get(block), t, st.state.name, st.message or ""))
            return answer

    def _observe(self, needs: Needs) -> Observed | None:
        if not needs:
            return None
        jobs: dict[str, JobStatus] | None = None
        if needs.jobs:
            ids = list(self.core.blocks_to_job_id.items())
            try:
                statuses = self.provider.status([job for _, job in ids]) if ids else []
                jobs = {block: st for (block, _), st in zip(ids, statuses, strict=True)}
            except Exception:
                logger.exception("Could not get the status of the blocks from %s", type(self.provider).__name__)
        registered: list[str] | None = None
        loads: dict[str, BlockLoad] | None = None
        if needs.interchange and self.table.failure is None:
            try:
                reply = self.link.query(Query.BLOCKS)
                registered = list(reply["registered"])
                loads = {b: BlockLoad(**load) for b, load in reply["loads"].items()}
                # A restarted interchange ends its recovery once this many pools have registered again.
                self.link.known_managers = sum(load.managers for load in loads.values())
            except Exception as e:
                logger.warning("Could not ask the interchange about its blocks: %s", e)
        return Observed(jobs, registered, loads, len(self.table), self.table.failure is not None)

    def _execute(self, ins: Launch | Cancel | HoldBlock | BlockEnded | FailAll | FailOutstanding | Note
                 ) -> Iterable[Event]:
        if isinstance(ins, Launch):
            try:
                job_id = self.provider.submit(self.launch_command(ins.block_id), 1,
                                              f"htex_ref.{self.label}.block-{ins.block_id}")
                if not job_id:
                    raise RuntimeError("the provider returned no job id")
            except Exception as e:
                return [LaunchFailed(ins.block_id, str(e))]
            if self.monitor is not None:
                self.monitor(("block", ins.block_id, job_id, time.time(), "SUBMITTED", ""))
            return [Launched(ins.block_id, job_id)]
        if isinstance(ins, Cancel):
            try:
                ok = tuple(self.provider.cancel(list(ins.job_ids)))
            except Exception:
                logger.exception("Could not cancel blocks %s", list(ins.block_ids))
                ok = (False,) * len(ins.block_ids)
            return [CancelDone(ins.block_ids, ok, ins.scaled_in)]
        if isinstance(ins, HoldBlock | BlockEnded):
            try:
                if isinstance(ins, HoldBlock):
                    self.link.notify(Notice.HOLD_BLOCK, ins.block_id)
                else:
                    self.link.notify(Notice.BLOCK_ENDED, ins.block_id, ins.reason[:500])
            except Exception as e:
                logger.warning("Could not tell the interchange about block %s: %s", ins.block_id, e)
        elif isinstance(ins, FailAll):
            self.fail_all(failure_exception(ins.failure))
        elif isinstance(ins, FailOutstanding):
            logger.error("%s", ins.reason)
            self.table.fail_outstanding(NoBlocks(ins.reason))
        else:
            logger.log(ins.level, "%s", ins.text)
        return ()
