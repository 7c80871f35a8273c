"""Block error handlers: when failed blocks put the executor in bad state (Parsl's ``block_error_handler``).

After each block-status refresh the executor calls its handler as ``handler(executor, statuses)``, with
``statuses`` mapping every block id to its ``JobStatus``. A block that ended before any worker pool of it
registered, or that ran past ``block_registration_timeout`` without one registering, is MISSING; FAILED
and MISSING blocks count as failed. A handler that decides the executor cannot work calls
``executor.set_bad_state_and_fail_all(exception)``: every outstanding future fails with
``BadStateException`` and the executor stops scaling.

``block_error_handler`` accepts:

- ``True`` or ``"simple"``: ``simple_error_handler``, bad state once every block failed and there are at
  least ``max(1, provider.init_blocks)`` of them (the default, as in Parsl);
- ``"windowed"``: ``windowed_error_handler``, bad state once the last 3 blocks in block-id order failed;
- ``False`` or ``"none"``: ``noop_error_handler``, never;
- any callable ``(executor, statuses)``, for example ``functools.partial(windowed_error_handler, threshold=2)``.

The rules themselves are pure functions in ``htex_ref.core.scaling``. Block control does not call a
handler itself: ``error_rule`` turns the configured handler into the rule block control applies
(``AllFailedRule`` and ``LastFailedRule`` for the built-in handlers; any other callable is called with a
stand-in for the executor that records what it asks for), and the executor's control thread reports the
failure it returns, reading the failed blocks' output files here (``describe_failed_blocks``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from htex_ref.core.jobs import JobStatus
from htex_ref.core.scaling import (
    AllFailedRule,
    BlockFailure,
    LastFailedRule,
    blocks_all_failed,
    blocks_last_failed,
    last_blocks,
)
from htex_ref.core.selectors import block_rank
from htex_ref.errors import ScalingFailed
from htex_ref.providers.base import JobStatus as ProviderJobStatus
from htex_ref.providers.base import output_summary


class FailureTarget(Protocol):
    """What a block error handler is given as ``executor``: the executor, or simcluster's pilot."""

    @property
    def label(self) -> str: ...

    @property
    def provider(self) -> Any: ...

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None: ...

__all__ = [
    "HANDLER_NAMES",
    "FailureTarget",
    "describe_failed_blocks",
    "error_rule",
    "failure_exception",
    "noop_error_handler",
    "resolve_block_error_handler",
    "simple_error_handler",
    "windowed_error_handler",
]


def describe_failed_blocks(headline: str, statuses: Mapping[str, JobStatus]) -> str:
    """``headline``, then for each block (in block-id order) its state and message, exit code, and the
    head and tail of its stdout and stderr."""
    lines = [headline]
    for block_id in sorted(statuses, key=block_rank):
        st = statuses[block_id]
        lines.append(f"  block {block_id}: {st.state.name}: {st.message or ''}")
        if st.exit_code is not None:
            lines.append(f"    EXIT CODE: {st.exit_code}")
        for name, text in (("STDOUT", output_summary(st.stdout_path)), ("STDERR", output_summary(st.stderr_path))):
            if text and text.strip():
                lines.append(f"    {name}: " + text.strip().replace("\n", "\n      "))
    return "\n".join(lines)


def _state_names(statuses: Mapping[str, JobStatus]) -> dict[str, str]:
    return {b: s.state.name for b, s in statuses.items()}


def _check_threshold(threshold: Any, handler: str) -> int:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ValueError(f"{handler}: threshold must be an int >= 1, got {threshold!r}")
    return threshold


def noop_error_handler(executor: FailureTarget, statuses: Mapping[str, JobStatus],
                       threshold: int = 3) -> None:
    """Never put the executor in bad state because of failed blocks."""


def simple_error_handler(executor: FailureTarget, statuses: Mapping[str, JobStatus],
                         threshold: int | None = None) -> None:
    """Bad state when every block failed and there are at least ``threshold`` blocks.

    ``threshold=None`` (the default) means ``max(1, provider.init_blocks)``, Parsl's rule. Unlike Parsl,
    which always replaces it with that, an explicit ``threshold`` is used as given.
    """
    if threshold is None:
        threshold = max(1, executor.provider.init_blocks)
    threshold = _check_threshold(threshold, "simple_error_handler")
    if blocks_all_failed(_state_names(statuses), threshold):
        executor.set_bad_state_and_fail_all(ScalingFailed(describe_failed_blocks(
            f"all {len(statuses)} blocks of executor {executor.label} failed:", statuses)))


def windowed_error_handler(executor: FailureTarget, statuses: Mapping[str, JobStatus],
                           threshold: int = 3) -> None:
    """Bad state when the last ``threshold`` blocks, in block-id order ('10' after '9'), all failed.

    The message describes those blocks only.
    """
    threshold = _check_threshold(threshold, "windowed_error_handler")
    if blocks_last_failed(_state_names(statuses), threshold):
        window = {b: statuses[b] for b in last_blocks(statuses, threshold)}
        executor.set_bad_state_and_fail_all(ScalingFailed(describe_failed_blocks(
            f"the last {threshold} blocks of executor {executor.label} (by block id) failed:", window)))


HANDLER_NAMES: dict[str, Callable[..., None]] = {
    "simple": simple_error_handler,
    "windowed": windowed_error_handler,
    "none": noop_error_handler,
}


def resolve_block_error_handler(value: Any) -> Callable[..., Any]:
    """The handler a ``block_error_handler`` setting names; ``ValueError``/``TypeError`` naming the
    parameter for anything else. A ``functools.partial`` of a handler here has its threshold checked now."""
    accepted = f"True, False, one of {sorted(HANDLER_NAMES)} or a callable (executor, statuses)"
    if value is True:
        return simple_error_handler
    if value is False:
        return noop_error_handler
    if isinstance(value, str):
        try:
            return HANDLER_NAMES[value]
        except KeyError:
            raise ValueError(f"block_error_handler must be {accepted}, got {value!r}") from None
    if not callable(value):
        raise TypeError(f"block_error_handler must be {accepted}, got {value!r}")
    handler: Callable[..., Any] = value
    if isinstance(value, functools.partial) and value.func in (simple_error_handler, windowed_error_handler):
        threshold = value.keywords.get("threshold")
        if "threshold" in value.keywords and not (threshold is None and value.func is simple_error_handler):
            try:
                _check_threshold(threshold, value.func.__name__)
            except ValueError as e:
                raise ValueError(f"block_error_handler: {e}") from None
    return handler


def failure_exception(failure: BlockFailure) -> BaseException:
    """The exception a ``BlockFailure`` puts the executor in bad state with (reads the blocks' output)."""
    if failure.error is not None:
        return failure.error
    return ScalingFailed(describe_failed_blocks(failure.headline, failure.statuses))


class _Recorder:
    """Stands in for the executor when a handler of the user's is called: it reads whatever the executor
    has, but a call to ``set_bad_state_and_fail_all`` is recorded and becomes the rule's verdict."""

    def __init__(self, target: FailureTarget) -> None:
        self._target = target
        self.failure: BaseException | None = None

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        if self.failure is None:
            self.failure = exception

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def error_rule(handler: Callable[..., Any], target: FailureTarget,
               init_blocks: int) -> Callable[[Mapping[str, JobStatus]], BlockFailure | None] | None:
    """The rule block control applies for ``handler`` (as ``resolve_block_error_handler`` gives it);
    None for a handler that never fails the executor."""
    func, keywords = handler, {}
    if isinstance(handler, functools.partial) and not handler.args:
        func, keywords = handler.func, dict(handler.keywords)
    if func is noop_error_handler:
        return None
    if func is simple_error_handler and set(keywords) <= {"threshold"}:
        threshold = keywords.get("threshold")
        return AllFailedRule(max(1, init_blocks) if threshold is None else threshold, target.label)
    if func is windowed_error_handler and set(keywords) <= {"threshold"}:
        return LastFailedRule(keywords.get("threshold", 3), target.label)

    def rule(statuses: Mapping[str, JobStatus]) -> BlockFailure | None:
        recorder = _Recorder(target)
        # As Parsl hands them over: statuses that can read their job's output files.
        handler(recorder, {b: ProviderJobStatus.of(st) for b, st in statuses.items()})
        return None if recorder.failure is None else BlockFailure(error=recorder.failure)

    return rule
