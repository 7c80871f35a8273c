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

The rules themselves are pure functions in ``htex_ref.core.scaling``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from htex_ref.core.scaling import blocks_all_failed, blocks_last_failed, last_blocks
from htex_ref.core.selectors import block_rank
from htex_ref.errors import ScalingFailed
from htex_ref.providers.base import JobStatus

if TYPE_CHECKING:
    from htex_ref.executor import HighThroughputExecutor

__all__ = [
    "HANDLER_NAMES",
    "describe_failed_blocks",
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
        for name, text in (("STDOUT", st.stdout_summary), ("STDERR", st.stderr_summary)):
            if text and text.strip():
                lines.append(f"    {name}: " + text.strip().replace("\n", "\n      "))
    return "\n".join(lines)


def _state_names(statuses: Mapping[str, JobStatus]) -> dict[str, str]:
    return {b: s.state.name for b, s in statuses.items()}


def _check_threshold(threshold: Any, handler: str) -> int:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ValueError(f"{handler}: threshold must be an int >= 1, got {threshold!r}")
    return threshold


def noop_error_handler(executor: HighThroughputExecutor, statuses: Mapping[str, JobStatus],
                       threshold: int = 3) -> None:
    """Never put the executor in bad state because of failed blocks."""


def simple_error_handler(executor: HighThroughputExecutor, statuses: Mapping[str, JobStatus],
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


def windowed_error_handler(executor: HighThroughputExecutor, statuses: Mapping[str, JobStatus],
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
