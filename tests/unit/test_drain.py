"""When a pool stops taking tasks: drain_period, drain before the walltime, and the job's start time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htex_ref.core.planning import drain_delay
from htex_ref.worker_pool import job_start_from_env


def test_no_rule_means_no_drain() -> None:
    assert drain_delay(now=100.0, pool_started=90.0) is None
    # A walltime alone, or a margin alone, is not a rule.
    assert drain_delay(now=100.0, pool_started=90.0, walltime=600.0) is None
    assert drain_delay(now=100.0, pool_started=90.0, drain_before_walltime=60.0) is None


def test_drain_period_counts_from_registration() -> None:
    assert drain_delay(now=100.0, pool_started=90.0, drain_period=30.0) == 30.0


def test_walltime_counts_from_the_job_start_when_known() -> None:
    # Job started at 80, walltime 600 ends at 680; drain 60 s before: at 620, 520 s from now.
    assert drain_delay(now=100.0, pool_started=90.0, walltime=600.0, drain_before_walltime=60.0,
                       job_started=80.0) == 520.0
    # Unknown job start: the pool's own start stands in.
    assert drain_delay(now=100.0, pool_started=90.0, walltime=600.0, drain_before_walltime=60.0) == 530.0
    # A job start after the pool's (a clock skewed between nodes) never makes the drain later.
    assert drain_delay(now=100.0, pool_started=90.0, walltime=600.0, drain_before_walltime=60.0,
                       job_started=95.0) == 530.0


def test_the_earlier_rule_wins_and_a_late_pool_drains_at_once() -> None:
    kw = {"pool_started": 90.0, "walltime": 600.0, "drain_before_walltime": 60.0, "job_started": 80.0}
    assert drain_delay(now=100.0, drain_period=30.0, **kw) == 30.0
    assert drain_delay(now=100.0, drain_period=3000.0, **kw) == 520.0
    # A pool that registers after its drain time (its job's worker_init ran long) drains at once.
    assert drain_delay(now=650.0, **kw) == 0.0


@given(now=st.floats(0, 1e6), started=st.floats(0, 1e6), walltime=st.floats(1, 1e5),
       margin=st.floats(0.001, 1e5), period=st.none() | st.floats(0, 1e5))
def test_never_negative_never_after_either_rule(now: float, started: float, walltime: float, margin: float,
                                                period: float | None) -> None:
    d = drain_delay(now=now, pool_started=started, walltime=walltime, drain_before_walltime=margin,
                    drain_period=period)
    assert d is not None and d >= 0
    assert d <= max(0.0, started + walltime - margin - now) + 1e-6
    if period is not None:
        assert d <= period


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"HTEX_REF_JOB_START": "1700000000"}, 1700000000.0),
    ({"SLURM_JOB_START_TIME": "1700000001"}, 1700000001.0),
    ({"HTEX_REF_JOB_START": "1700000000", "SLURM_JOB_START_TIME": "1700000001"}, 1700000000.0),
    # Bad values are ignored (logged), and the next variable is tried.
    ({"HTEX_REF_JOB_START": "", "SLURM_JOB_START_TIME": "1700000001"}, 1700000001.0),
    ({"HTEX_REF_JOB_START": "yesterday"}, None),
    ({"HTEX_REF_JOB_START": "nan"}, None),
    ({"HTEX_REF_JOB_START": "-5"}, None),
])
def test_job_start_from_env(env: dict[str, str], expected: float | None) -> None:
    assert job_start_from_env(env) == expected
