"""bench-10k's shape at a fifth of its size: a whole machine of 128-worker nodes asked for at once, and a
bag of tasks that fills most of it as its pools register (``examples/scenarios/bench-10k.toml``)."""

from __future__ import annotations

import tomllib
from collections import Counter

from simcluster import parse_scenario
from tests.sim.helpers import ROOT, simulate


def test_bench_10k_shape_at_2000_nodes_fills_the_pools_in_registration_order() -> None:
    data = tomllib.loads((ROOT / "examples" / "scenarios" / "bench-10k.toml").read_text())
    data["cluster"]["partitions"][0]["nodes"] = 2000
    data["workload"][0]["tasks"] = 200_000
    data["executor"][0].update(nodes_per_block=200)  # still 10 blocks: the whole machine
    r, p = simulate(parse_scenario(data))
    assert r.metrics["done"] == 200_000 and r.metrics["tasks"] == 200_000
    # 200,000 tasks fill ceil(200,000 / 128) = 1,563 pools, 128 tasks each but the last, all at once;
    # the 2 blocks with no pool that got work are given back, the other 8 run to the end.
    per_pool = Counter(p.t_mgr)
    assert len(per_pool) == 1563 and sorted(per_pool.values())[1:] == [128] * 1562
    assert sum(1 for ti in range(200_000) if p.t_start[ti] == p.t_start[0]) == 200_000
    assert r.metrics["blocks_submitted"] == 10 and r.metrics["blocks_scaled_in"] == 2
