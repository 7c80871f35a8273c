"""Unit tests for CPU affinity and accelerator planning (htex_ref.core.affinity).

The property tests take their example budget from HTEX_FUZZ_EXAMPLES (default 200); ``nox -s fuzz``
raises it for a long run.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htex_ref.core.affinity import (
    STRATEGIES,
    AffinitySpec,
    accelerator_environment,
    affinity_environment,
    count_gpus,
    format_cpu_affinity,
    parse_cpu_affinity,
    plan_accelerators,
    plan_cpu_affinity,
)

FUZZ_EXAMPLES = int(os.environ.get("HTEX_FUZZ_EXAMPLES", "200"))
fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def raises_exactly(message: str):
    """pytest.raises(ValueError) whose message is exactly ``message``."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


# ------------------------------------------------------------------------------------ documented example


def sapphire_rapids_lists() -> list[tuple[int, ...]]:
    """12 workers on a 208-thread node: worker i gets cores 8i..8i+7 and their hyperthread siblings."""
    return [tuple(range(8 * i, 8 * i + 8)) + tuple(range(104 + 8 * i, 104 + 8 * i + 8)) for i in range(12)]


def sapphire_rapids_text() -> str:
    return "list:" + ":".join(f"{8 * i}-{8 * i + 7},{104 + 8 * i}-{104 + 8 * i + 7}" for i in range(12))


def test_documented_list_example_parses_and_plans():
    text = sapphire_rapids_text()
    assert text.startswith("list:0-7,104-111:8-15,112-119:")
    assert text.endswith(":88-95,192-199")
    expected = sapphire_rapids_lists()

    spec = parse_cpu_affinity(text)
    assert spec == AffinitySpec("list", tuple(expected))

    plan = plan_cpu_affinity(spec, range(208), 12)
    assert plan == expected
    assert plan_cpu_affinity(text, range(208), 12) == expected
    assert [set(p) for p in plan] == [set(range(8 * i, 8 * i + 8)) | set(range(104 + 8 * i, 112 + 8 * i))
                                      for i in range(12)]
    # Threads 96-103 and 200-207 are not listed, so they stay idle.
    used = set().union(*plan)
    assert set(range(208)) - used == set(range(96, 104)) | set(range(200, 208))
    assert format_cpu_affinity(expected) == text


# ---------------------------------------------------------------------------------------- strategies


def test_block_small_example_leaves_remainder_idle():
    assert plan_cpu_affinity("block", range(8), 3) == [(0, 1), (2, 3), (4, 5)]


def test_block_reverse_small_example():
    assert plan_cpu_affinity("block-reverse", range(8), 3) == [(4, 5), (2, 3), (0, 1)]


def test_alternating_small_example_uses_every_thread():
    assert plan_cpu_affinity("alternating", range(8), 3) == [(0, 3, 6), (1, 4, 7), (2, 5)]


def test_strategies_work_on_sorted_unique_available_threads():
    available = [7, 3, 5, 1, 3, 9]  # unsorted, with a duplicate
    assert plan_cpu_affinity("block", available, 2) == [(1, 3), (5, 7)]
    assert plan_cpu_affinity("block-reverse", available, 2) == [(5, 7), (1, 3)]
    assert plan_cpu_affinity("alternating", available, 2) == [(1, 5, 9), (3, 7)]


def test_one_worker_per_thread():
    assert plan_cpu_affinity("block", range(4), 4) == [(0,), (1,), (2,), (3,)]
    assert plan_cpu_affinity("alternating", range(4), 4) == [(0,), (1,), (2,), (3,)]
    assert plan_cpu_affinity("block-reverse", range(4), 4) == [(3,), (2,), (1,), (0,)]


@pytest.mark.parametrize("workers", [0, 1, 3, 1000])
def test_none_plans_to_no_pinning(workers):
    assert parse_cpu_affinity("none") == AffinitySpec("none")
    assert plan_cpu_affinity("none", range(8), workers) is None
    assert plan_cpu_affinity(AffinitySpec("none"), [], workers) is None


@pytest.mark.parametrize(
    ("text", "strategy"),
    [
        ("NONE", "none"),
        ("Block", "block"),
        ("BLOCK-REVERSE", "block-reverse"),
        ("Alternating", "alternating"),
        ("  block\n", "block"),
    ],
)
def test_strategy_names_are_case_insensitive(text, strategy):
    assert parse_cpu_affinity(text) == AffinitySpec(strategy)


def test_list_prefix_is_case_insensitive_and_whitespace_tolerant():
    expected = AffinitySpec("list", ((0, 1, 2), (3,)))
    assert parse_cpu_affinity("LIST:0-2:3") == expected
    assert parse_cpu_affinity("List:0-2:3") == expected
    assert parse_cpu_affinity("  list: 0 , 1-2 : 3 \n") == expected


def test_list_keeps_listed_order_and_plan_sorts():
    spec = parse_cpu_affinity("list:5,1-2:0")
    assert spec.lists == ((5, 1, 2), (0,))
    assert plan_cpu_affinity(spec, range(8), 2) == [(1, 2, 5), (0,)]


def test_single_thread_range_and_leading_zeros():
    assert parse_cpu_affinity("list:3-3:007").lists == ((3,), (7,))


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("list:0-3:4,x", "cpu_affinity 'list:0-3:4,x': worker 1: 'x' is not a thread id or a range a-b of thread ids"),
        ("list:abc", "cpu_affinity 'list:abc': worker 0: 'abc' is not a thread id or a range a-b of thread ids"),
        ("list:0:1:2-", "cpu_affinity 'list:0:1:2-': worker 2: '2-' is not a thread id or a range a-b of thread ids"),
        ("list:0,", "cpu_affinity 'list:0,': worker 0: '' is not a thread id or a range a-b of thread ids"),
        ("list:-1", "cpu_affinity 'list:-1': worker 0: '-1' is not a thread id or a range a-b of thread ids"),
        ("list:1-2-3", "cpu_affinity 'list:1-2-3': worker 0: '1-2-3' is not a thread id or a range a-b of thread ids"),
        ("list:1 2", "cpu_affinity 'list:1 2': worker 0: '1 2' is not a thread id or a range a-b of thread ids"),
    ],
)
def test_malformed_token_names_worker_and_token(text, message):
    with raises_exactly(message):
        parse_cpu_affinity(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("list:0::1", "cpu_affinity 'list:0::1': worker 1 has an empty thread list"),
        ("list:0:1:", "cpu_affinity 'list:0:1:': worker 2 has an empty thread list"),
        ("list:0: :1", "cpu_affinity 'list:0: :1': worker 1 has an empty thread list"),
        ("list:", "cpu_affinity 'list:': worker 0 has an empty thread list"),
        ("list:   ", "cpu_affinity 'list:   ': worker 0 has an empty thread list"),
    ],
)
def test_empty_part(text, message):
    with raises_exactly(message):
        parse_cpu_affinity(text)


def test_reversed_range():
    with raises_exactly("cpu_affinity 'list:5-3': worker 0: range '5-3' is reversed"):
        parse_cpu_affinity("list:5-3")
    with raises_exactly("cpu_affinity 'list:0:9-8': worker 1: range '9-8' is reversed"):
        parse_cpu_affinity("list:0:9-8")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("list:1,2,1", "cpu_affinity 'list:1,2,1': thread 1 is listed twice"),
        ("list:0-3,2", "cpu_affinity 'list:0-3,2': thread 2 is listed twice"),
        ("list:0:4-7,5-6", "cpu_affinity 'list:0:4-7,5-6': thread 5 is listed twice"),
    ],
)
def test_duplicate_within_a_worker(text, message):
    with raises_exactly(message):
        parse_cpu_affinity(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("list:0-3:3-5", "cpu_affinity 'list:0-3:3-5': thread 3 is listed for workers 0 and 1"),
        ("list:0:1:2:0", "cpu_affinity 'list:0:1:2:0': thread 0 is listed for workers 0 and 3"),
        ("list:0:10-12:4,11", "cpu_affinity 'list:0:10-12:4,11': thread 11 is listed for workers 1 and 2"),
    ],
)
def test_duplicate_across_workers_names_both(text, message):
    with raises_exactly(message):
        parse_cpu_affinity(text)


@pytest.mark.parametrize("text", ["compact", "", "   ", "blocks", "list", "list 0-3", "scatter:0", "none:"])
def test_unknown_strategy(text):
    message = ("cpu_affinity must be one of ['none', 'block', 'block-reverse', 'alternating'] "
               f"or 'list:<threads>:<threads>:...', got {text!r}")
    with raises_exactly(message):
        parse_cpu_affinity(text)


@pytest.mark.parametrize("value", [None, 3, ["block"], b"block"])
def test_non_string_rejected(value):
    with raises_exactly(f"cpu_affinity must be a string, got {type(value).__name__}"):
        parse_cpu_affinity(value)


def test_wrong_worker_count_for_list_suggests_max_workers_per_node():
    message = ("cpu_affinity lists threads for 2 workers but this pool runs 3; "
               "set max_workers_per_node=2 or list 3 workers")
    with raises_exactly(message):
        plan_cpu_affinity("list:0:1", range(4), 3)
    with pytest.raises(ValueError, match="set max_workers_per_node=12 or list 11 workers"):
        plan_cpu_affinity(sapphire_rapids_text(), range(208), 11)


def test_listed_thread_missing_on_node():
    with raises_exactly("cpu_affinity: worker 1 is given thread(s) [8, 9] which this node does not offer "
                        "(available: 0-7)"):
        plan_cpu_affinity("list:0-1:6-9", range(8), 2)
    # The documented 208-thread layout on a 104-thread node: worker 0 already asks for 104-111.
    with pytest.raises(ValueError, match=re.escape("worker 0 is given thread(s) [104, 105, 106, 107, 108, 109, 110, "
                                                   "111] which this node does not offer (available: 0-103)")):
        plan_cpu_affinity(sapphire_rapids_text(), range(104), 12)
    # Gaps in the available threads are shown as such.
    with raises_exactly("cpu_affinity: worker 0 is given thread(s) [2] which this node does not offer "
                        "(available: 0-1,4-5)"):
        plan_cpu_affinity("list:1-2", [0, 1, 4, 5], 1)


@pytest.mark.parametrize("strategy", ["block", "block-reverse", "alternating"])
def test_more_workers_than_threads(strategy):
    with raises_exactly(f"cpu_affinity={strategy!r}: 5 workers but only 4 hardware threads available (0-3)"):
        plan_cpu_affinity(strategy, range(4), 5)
    with raises_exactly(f"cpu_affinity={strategy!r}: 3 workers but only 2 hardware threads available (0,8)"):
        plan_cpu_affinity(strategy, [8, 0, 8], 3)
    with pytest.raises(ValueError, match="1 workers but only 0 hardware threads"):
        plan_cpu_affinity(strategy, [], 1)


@pytest.mark.parametrize("strategy", ["block", "block-reverse", "alternating", "list:0"])
@pytest.mark.parametrize("workers", [0, -1])
def test_no_workers_cannot_be_planned(strategy, workers):
    with raises_exactly(f"cannot plan cpu_affinity for {workers} workers"):
        plan_cpu_affinity(strategy, range(8), workers)


def _cpu_time_limit(seconds: float):
    """Raise TimeoutError in this thread after ``seconds`` of process CPU time (SIGVTALRM, so it does not
    disturb pytest-timeout's SIGALRM)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s of CPU time")

    previous = signal.signal(signal.SIGVTALRM, expire)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    return previous


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_absurd_range_fails_fast():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    previous = _cpu_time_limit(0.5)
    try:
        with raises_exactly("cpu_affinity 'list:0-10230000000': worker 0: '0-10230000000' names thread "
                            "10230000000, above the largest possible thread id 65535"):
            parse_cpu_affinity("list:0-10230000000")
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def test_thread_id_bound():
    assert parse_cpu_affinity("list:65535").lists == ((65535,),)
    assert parse_cpu_affinity("list:65500-65535").lists == (tuple(range(65500, 65536)),)
    with raises_exactly("cpu_affinity 'list:0:65536': worker 1: '65536' names thread 65536, above the largest "
                        "possible thread id 65535"):
        parse_cpu_affinity("list:0:65536")
    with pytest.raises(ValueError, match="above the largest possible thread id"):
        parse_cpu_affinity("list:" + "9" * 30)


# -------------------------------------------------------------------------------------- environment


def test_affinity_environment():
    assert affinity_environment((0, 1, 2, 3, 104, 105)) == {
        "OMP_NUM_THREADS": "6",
        "GOMP_CPU_AFFINITY": "0,1,2,3,104,105",
        "KMP_AFFINITY": "explicit,proclist=[0,1,2,3,104,105]",
    }
    assert affinity_environment([7]) == {
        "OMP_NUM_THREADS": "1",
        "GOMP_CPU_AFFINITY": "7",
        "KMP_AFFINITY": "explicit,proclist=[7]",
    }


def test_affinity_environment_for_each_planned_worker():
    plan = plan_cpu_affinity("alternating", range(8), 3)
    envs = [affinity_environment(threads) for threads in plan]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["3", "3", "2"]
    assert [e["GOMP_CPU_AFFINITY"] for e in envs] == ["0,3,6", "1,4,7", "2,5"]


@pytest.mark.parametrize("devices", ["0", "3", "0,1", "GPU-5f6b1c2d-aaaa-bbbb-cccc-0123456789ab"])
def test_accelerator_environment(devices):
    assert accelerator_environment(devices) == {
        "CUDA_VISIBLE_DEVICES": devices,
        "ROCR_VISIBLE_DEVICES": devices,
        "ZE_AFFINITY_MASK": devices,
        "ZE_ENABLE_PCI_ID_DEVICE_ORDER": "1",
    }


# ------------------------------------------------------------------------------------- accelerators


def test_one_entry_per_worker():
    entries = ["0", "1", "2", "3"]
    assert plan_accelerators(entries, 4, 4) == ["0", "1", "2", "3"]
    assert plan_accelerators(entries, 2, 4) == ["0", "1"]
    assert plan_accelerators(entries, 0, 4) == []


def test_multi_device_entries_passed_through():
    entries = ["0,1", "2,3"]
    assert plan_accelerators(entries, 2, 4) == ["0,1", "2,3"]
    # Even when there are fewer physical GPUs than entries, a multi-device entry is used as given.
    assert plan_accelerators(["0,1", "0,1", "0,1"], 3, 2) == ["0,1", "0,1", "0,1"]
    assert plan_accelerators(["0", "1", "0,1"], 3, 2) == ["0", "1", "0,1"]


def test_mps_oversubscription_32_on_4():
    entries = [str(i) for i in range(32)]
    plan = plan_accelerators(entries, 32, 4)
    assert plan == ["0"] * 8 + ["1"] * 8 + ["2"] * 8 + ["3"] * 8
    # Fewer workers than entries keep the same placement for those that run.
    assert plan_accelerators(entries, 10, 4) == ["0"] * 8 + ["1"] * 2


def test_mps_oversubscription_10_on_4_contiguous_and_balanced():
    plan = plan_accelerators([str(i) for i in range(10)], 10, 4)
    assert plan == ["0", "0", "0", "1", "1", "2", "2", "2", "3", "3"]
    gpus = [int(d) for d in plan]
    assert gpus == sorted(gpus)  # contiguous blocks
    sizes = [gpus.count(g) for g in range(4)]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 10


@given(physical=st.integers(1, 16), extra=st.integers(1, 64), data=st.data())
@fuzz
def test_mps_oversubscription_property(physical, extra, data):
    n = physical + extra
    workers = data.draw(st.integers(0, n))
    full = plan_accelerators([str(i) for i in range(n)], n, physical)
    gpus = [int(d) for d in full]
    assert gpus == sorted(gpus)
    assert set(gpus) == set(range(physical))
    sizes = [gpus.count(g) for g in range(physical)]
    assert max(sizes) - min(sizes) <= 1
    assert plan_accelerators([str(i) for i in range(n)], workers, physical) == full[:workers]


@pytest.mark.parametrize("physical", [None, 0, 4, 5, 64])
def test_physical_unknown_or_enough_leaves_entries(physical):
    entries = ["0", "1", "2", "3"]
    assert plan_accelerators(entries, 4, physical) == entries
    assert plan_accelerators(["3", "2", "1", "0"], 3, physical) == ["3", "2", "1"]


def test_non_numeric_entries_unchanged():
    uuids = [f"MIG-{i:08x}-1111-2222-3333-444455556666" for i in range(7)]
    assert plan_accelerators(uuids, 7, 1) == uuids
    mixed = ["0", "1", "MIG-abc"]
    assert plan_accelerators(mixed, 3, 1) == mixed


def test_more_workers_than_entries():
    with raises_exactly("5 workers but only 4 accelerator entries"):
        plan_accelerators(["0", "1", "2", "3"], 5, 4)
    with raises_exactly("1 workers but only 0 accelerator entries"):
        plan_accelerators([], 1, None)


NVIDIA_SMI_4 = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-9d2b7a4e-3c1f-5e6a-8b7c-0d1e2f3a4b5c)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-2b3c4d5e-6f7a-8b9c-0d1e-2f3a4b5c6d7e)
GPU 3: NVIDIA H100 80GB HBM3 (UUID: GPU-3c4d5e6f-7a8b-9c0d-1e2f-3a4b5c6d7e8f)
"""

NVIDIA_SMI_MIG = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5f6b1c2d-aaaa-bbbb-cccc-0123456789ab)
  MIG 3g.20gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
  MIG 2g.10gb     Device  1: (UUID: MIG-66666666-7777-8888-9999-000000000000)
  MIG 1g.5gb      Device  2: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-6a7b8c9d-aaaa-bbbb-cccc-0123456789ab)
  MIG 7g.40gb     Device  0: (UUID: MIG-ffffffff-0000-1111-2222-333333333333)
"""


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (NVIDIA_SMI_4, 4),
        (NVIDIA_SMI_MIG, 2),
        (NVIDIA_SMI_4.replace("\n", "\r\n"), 4),
        ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-9d2b7a4e-3c1f-5e6a-8b7c-0d1e2f3a4b5c)", 1),
        ("", 0),
        ("No devices were found\n", 0),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 0),
    ],
)
def test_count_gpus(output, expected):
    assert count_gpus(output) == expected


# ------------------------------------------------------------------------------------ property tests


@st.composite
def threads_and_workers(draw, min_workers=1, extra_workers=0):
    """A nonempty set of thread ids 0..511 (as an unsorted list, perhaps with repeats) and a worker count."""
    threads = draw(st.sets(st.integers(0, 511), min_size=1, max_size=512))
    available = draw(st.permutations(sorted(threads)))
    if draw(st.booleans()):
        available = available + available[: draw(st.integers(0, len(available)))]
    if extra_workers:
        workers = draw(st.integers(len(threads) + 1, len(threads) + extra_workers))
    else:
        workers = draw(st.integers(min_workers, len(threads)))
    return sorted(threads), available, workers


def assert_disjoint_and_drawn_from(plan, threads):
    seen: set[int] = set()
    for part in plan:
        assert len(set(part)) == len(part)
        assert list(part) == sorted(part)
        assert set(part) <= set(threads)
        assert seen.isdisjoint(part)
        seen.update(part)
    return seen


@given(threads_and_workers())
@fuzz
def test_block_property(case):
    threads, available, workers = case
    plan = plan_cpu_affinity("block", available, workers)
    assert len(plan) == workers
    assert_disjoint_and_drawn_from(plan, threads)
    per = len(threads) // workers
    assert all(len(p) == per for p in plan)
    # Worker 0 gets the lowest threads; only the highest len % workers threads stay idle.
    assert [t for p in plan for t in p] == threads[: per * workers]


@given(threads_and_workers())
@fuzz
def test_block_reverse_is_reversed_block(case):
    threads, available, workers = case
    block = plan_cpu_affinity("block", available, workers)
    reverse = plan_cpu_affinity("block-reverse", available, workers)
    assert reverse == block[::-1]
    assert_disjoint_and_drawn_from(reverse, threads)
    assert all(len(p) == len(threads) // workers for p in reverse)


@given(threads_and_workers())
@fuzz
def test_alternating_property(case):
    threads, available, workers = case
    plan = plan_cpu_affinity("alternating", available, workers)
    assert len(plan) == workers
    used = assert_disjoint_and_drawn_from(plan, threads)
    assert used == set(threads)
    sizes = [len(p) for p in plan]
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)


@given(threads_and_workers(extra_workers=64), st.sampled_from(["block", "block-reverse", "alternating"]))
@fuzz
def test_too_many_workers_raise(case, strategy):
    _, available, workers = case
    with pytest.raises(ValueError, match="hardware threads available"):
        plan_cpu_affinity(strategy, available, workers)


@st.composite
def disjoint_worker_lists(draw):
    """1..64 nonempty, pairwise disjoint lists of thread ids 0..511, each in any order."""
    pool = draw(st.lists(st.integers(0, 511), min_size=1, max_size=256, unique=True))
    workers = draw(st.integers(1, min(len(pool), 64)))
    cuts = sorted(draw(st.sets(st.integers(1, len(pool) - 1), min_size=workers - 1, max_size=workers - 1))
                  if workers > 1 else set())
    bounds = [0, *cuts, len(pool)]
    lists = [pool[a:b] for a, b in pairwise(bounds)]
    lists = [draw(st.permutations(sorted(part))) if draw(st.booleans()) else sorted(part) for part in lists]
    return lists


@given(disjoint_worker_lists(), st.sets(st.integers(0, 511), max_size=64))
@fuzz
def test_list_round_trip(lists, spare):
    text = format_cpu_affinity(lists)
    spec = parse_cpu_affinity(text)
    assert spec == AffinitySpec("list", tuple(tuple(part) for part in lists))
    assert parse_cpu_affinity(text.upper()) == spec
    available = sorted(set().union(*lists) | spare)
    plan = plan_cpu_affinity(spec, available, len(lists))
    assert plan == [tuple(sorted(part)) for part in lists]
    assert plan_cpu_affinity(text, available, len(lists)) == plan
    assert format_cpu_affinity(plan) == format_cpu_affinity([sorted(part) for part in lists])


def check_parses_or_value_error(text: str) -> None:
    try:
        spec = parse_cpu_affinity(text)
    except ValueError:
        return
    assert spec.strategy in (*STRATEGIES, "list")
    if spec.strategy != "list":
        assert spec.lists == ()
        assert text.strip().lower() == spec.strategy
        return
    assert text.strip().lower().startswith("list:")
    assert spec.lists
    seen: set[int] = set()
    for part in spec.lists:
        assert part
        assert all(isinstance(t, int) and t >= 0 for t in part)
        assert len(set(part)) == len(part)
        assert seen.isdisjoint(part)
        seen.update(part)
    # A list that parses can be planned on a node offering exactly its threads.
    assert plan_cpu_affinity(spec, sorted(seen), len(spec.lists)) == [tuple(sorted(p)) for p in spec.lists]


@given(st.text())
@fuzz
def test_arbitrary_text_parses_or_raises_value_error(text):
    check_parses_or_value_error(text)


_PARSER_ALPHABET = "list:0123456789,- \n"

# Mostly well-formed tokens (ids and small ranges, with some junk and whitespace) so that many examples get
# past the token check into duplicate detection and multi-worker lists.
_token = st.one_of(
    st.integers(0, 255).map(str),
    st.tuples(st.integers(0, 255), st.integers(0, 8)).map(lambda r: f"{r[0]}-{r[0] + r[1]}"),
    st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda r: f"{r[0]}-{r[1]}"),
    st.text(alphabet="0123456789- ", max_size=4),
)
_part = st.lists(_token, min_size=1, max_size=5).map(",".join)
_list_text = st.tuples(
    st.sampled_from(["list:", "LIST:", " list:", "List:"]),
    st.lists(_part, min_size=1, max_size=8).map(":".join),
    st.sampled_from(["", " ", "\n", ":"]),
).map("".join)


@given(
    st.one_of(
        st.text(alphabet=_PARSER_ALPHABET),
        st.text(alphabet=_PARSER_ALPHABET).map(lambda s: "list:" + s),
        st.lists(st.text(alphabet="0123456789,- ", max_size=12), min_size=1, max_size=8).map(
            lambda parts: "list:" + ":".join(parts)
        ),
        _list_text,
    )
)
@fuzz
def test_parser_alphabet_parses_or_raises_value_error(text):
    check_parses_or_value_error(text)


def test_only_ascii_digits_are_thread_ids_and_device_indexes():
    with pytest.raises(ValueError, match="not a thread id"):
        parse_cpu_affinity("list:\u0663")  # Arabic-Indic three
    assert plan_accelerators(["\u00b2", "3"], 2, 1) == ["\u00b2", "3"]  # superscript two is a name
