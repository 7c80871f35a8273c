"""Workload generators, SWF traces and scenario parsing."""

from __future__ import annotations

import math
import random
from itertools import islice, pairwise

import pytest

from simcluster import ScenarioError, parse_scenario
from simcluster.scenario import Background, Distribution, Partition, Phase
from simcluster.workload import background_jobs, build_tasks, parse_swf_line, rng_for, sampler
from tests.sim.helpers import ROOT, scenario, simulate

SWF = ROOT / "examples" / "scenarios" / "sample.swf"


def test_swf_lines() -> None:
    # job submit wait run procs cpu mem req_procs req_time ...: 70 processors on 32-core nodes = 3 nodes.
    assert parse_swf_line("7 100 5 3600 70 -1 -1 70 7200 -1 1 3 1 -1 1 1 -1 -1", 32) == (100.0, 3, 3600.0, 7200.0)
    # Allocated processors unknown: the requested ones count. Requested time unknown: the run time.
    assert parse_swf_line("8 200 -1 50 -1 -1 -1 16 -1 -1 1 3 1 -1 1 1 -1 -1", 32) == (200.0, 1, 50.0, 50.0)
    assert parse_swf_line("; MaxNodes: 16", 32) is None
    assert parse_swf_line("9 1 -1 -1 4 -1 -1 4 10 -1 0 3 1 -1 1 1 -1 -1", 32) is None  # no run time
    with pytest.raises(ValueError, match="18 fields"):
        parse_swf_line("1 2 3", 32)


def test_swf_trace_feeds_the_cluster_in_order() -> None:
    bg = Background(kind="swf", path=str(SWF), offset=0.0, time_scale=0.5)
    jobs = list(background_jobs(bg, Partition(nodes=16, cores=32), seed=1))
    assert len(jobs) == 200
    assert jobs[0].submit == 153.0 and jobs[0].nodes == 1 and jobs[0].walltime == 600.0  # 306 s x 0.5
    assert all(a.submit <= b.submit for a, b in pairwise(jobs))
    small = list(background_jobs(bg, Partition(nodes=4, cores=32), seed=1))
    assert all(j.nodes <= 4 for j in small) and len(small) < 200  # jobs bigger than the partition are left out


def test_swf_background_delays_the_executors_blocks() -> None:
    busy = scenario(partition={"nodes": 16, "cores": 32}, background={"kind": "swf", "path": str(SWF),
                                                                      "warmup": 20000})
    idle = scenario(partition={"nodes": 16, "cores": 32})
    r_busy, _ = simulate(busy)
    r_idle, _ = simulate(idle)
    assert r_idle.metrics["block_wait_mean"] == 0
    assert r_busy.metrics["block_wait_mean"] > 0


def test_generators_are_seeded_and_shaped() -> None:
    phases = (
        Phase(kind="bag", tasks=5, duration=Distribution("uniform", low=1, high=2)),
        Phase(kind="arrivals", tasks=1000, rate=2.0, start=100, duration=Distribution("exponential", mean=3)),
        Phase(kind="bursts", tasks=3, bursts=2, interval=50, start=10, priority=1.0),
        Phase(kind="waves", tasks=2, waves=3, duration=Distribution("pareto", minimum=1, alpha=1.5, cap=20)),
    )
    a, b, c = build_tasks(phases, 1), build_tasks(phases, 1), build_tasks(phases, 2)
    assert list(a.duration) == list(b.duration) and list(a.duration) != list(c.duration)
    assert len(a) == 5 + 1000 + 6 + 6
    assert all(1 <= d <= 2 for d in a.duration[:5])
    arrivals = a.release[5:1005]
    assert all(x < y for x, y in pairwise(arrivals)) and arrivals[0] > 100
    assert 400 < arrivals[-1] - 100 < 600  # 1000 arrivals at 2 per second
    assert list(a.release[1005:1011]) == [10, 10, 10, 60, 60, 60] and set(a.priority[1005:1011]) == {1.0}
    assert all(1 <= d <= 20 for d in a.duration[1011:])
    assert math.isnan(a.release[1013]) and a.group[1011] == 0 and a.group[1016] == 2
    assert a.gate == [-1, 0, 1] and a.next_group == [1, 2, -1]


def test_samples_are_the_standard_library_draws() -> None:
    # The sampler does random.expovariate's and random.lognormvariate's arithmetic itself (for speed):
    # seeds keep giving the numbers they gave when it called them, caps included.
    lognormal = Distribution("lognormal", mean=1500, sigma=0.8, cap=4000)
    ours = list(islice(sampler(lognormal, random.Random("s")), 5000))
    ref = random.Random("s")
    mu = math.log(1500) - 0.8 * 0.8 / 2
    assert ours == [min(ref.lognormvariate(mu, 0.8), 4000) for _ in range(5000)]
    assert max(ours) == 4000
    exponential = Distribution("exponential", mean=3)
    ref = random.Random("e")
    assert list(islice(sampler(exponential, random.Random("e")), 5000)) == [ref.expovariate(1 / 3) for _ in range(5000)]
    arrivals = build_tasks((Phase(kind="arrivals", tasks=2000, rate=2.5, start=7),), 4).release
    ref = rng_for(4, "arrivals-0")
    t = 7.0
    for x in arrivals:
        t += ref.expovariate(2.5)
        assert x == t


def test_synthetic_background_is_reproducible() -> None:
    bg = Background(kind="synthetic", load=0.8, max_nodes=4)
    first = list(islice(background_jobs(bg, Partition(nodes=16), seed=5), 50))
    again = list(islice(background_jobs(bg, Partition(nodes=16), seed=5), 50))
    other = list(islice(background_jobs(bg, Partition(nodes=16), seed=6), 50))
    assert first == again != other
    assert {j.nodes for j in first} <= {1, 2, 4}
    assert all(j.walltime >= j.runtime for j in first)


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": "x"}, "seed must be an int"),
    ({"workload": [{"kind": "stream"}]}, "workload[0].kind must be one of"),
    ({"workload": [{"duration": {"dist": "uniform", "low": 5, "high": 1}}]}, "high (1.0) is below low"),
    ({"executor": [{"strategy": "fast"}]}, "executor[0].strategy must be one of"),
    ({"executor": [{"nodes_per_block": 9}]}, "nodes_per_block (9) exceeds the 4 nodes"),
    ({"executor": [{"prefetch_capacity": "lots"}]}, "prefetch_capacity must be \"auto\" or an int"),
    ({"executor": [{"label": "a"}, {"label": "a"}]}, "labels must differ"),
    ({"executor": [{"drain_before_walltime": 0}]}, "executor[0].drain_before_walltime must be"),
    ({"executor": [{"drain_period": "soon"}]}, "executor[0].drain_period must be"),
    ({"executor": [{"walltime": 600, "drain_before_walltime": 600}]}, "must be less than walltime (600.0)"),
    ({"executor": [{"strategy": "none", "drain_before_walltime": 60}]}, "needs a strategy other than"),
    ({"background": {"kind": "swf"}}, "background.path must name an SWF trace"),
    ({"cluster": {"partitions": [{"nodes": 0}]}}, "cluster.partitions[0].nodes must be an int >= 1"),
    ({"cluster": {"failures": [{"time": 1, "node": 7}], "partitions": [{"nodes": 4}]}},
     "cluster.failures[0].node must be below 4"),
])
def test_bad_fields_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(change)
    assert message in str(info.value)
