"""The pure parts of the local Slurm cluster script: its configuration and its choice of subnet."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from clusters.local_slurm import ClusterError, Layout, choose_subnet, node_names, slurm_conf, slurmdbd_conf


def conf(tmp_path: Path, dbd_port: int | None = None) -> tuple[Layout, str]:
    lay = Layout(tmp_path / "cluster", "tst")
    text = slurm_conf(lay, host="submit", host_addr="10.88.0.1", nodes={"c1": "10.88.0.11", "c2": "10.88.0.12"},
                      cpus=2, mem_mb=1000, ctld_port=6817, dbd_port=dbd_port)
    return lay, text


def test_every_path_is_under_the_cluster_dir(tmp_path: Path) -> None:
    lay, text = conf(tmp_path, dbd_port=6819)
    paths = re.findall(r"(?<==)(/[^\s,]*)", text + slurmdbd_conf(lay, host="submit", port=6819))
    assert len(paths) >= 10
    for path in paths:
        assert Path(path).is_relative_to(lay.dir), path


def test_nodes_scheduler_and_accounting(tmp_path: Path) -> None:
    _, text = conf(tmp_path)
    lines = text.splitlines()
    assert "SlurmctldHost=submit(10.88.0.1)" in lines
    assert "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0" in lines
    assert "AccountingStorageType=accounting_storage/none" in lines
    assert [x.split()[0] for x in lines if x.startswith("NodeName=")] == ["NodeName=c1", "NodeName=c2"]
    assert "NodeAddr=10.88.0.12 NodeHostname=c2 CPUs=2" in text
    _, with_dbd = conf(tmp_path, dbd_port=7000)
    assert "AccountingStorageType=accounting_storage/slurmdbd" in with_dbd and "AccountingStoragePort=7000" in with_dbd


def test_names_carry_the_prefix(tmp_path: Path) -> None:
    lay = Layout(tmp_path, "abc")
    names = [lay.bridge, lay.netns("c1"), lay.veth("c12"), lay.comment]
    assert all(n.startswith("abc-") for n in names)
    assert all(len(n) <= 15 for n in (lay.bridge, lay.veth("c199")))  # Linux interface names
    assert node_names(3) == ["c1", "c2", "c3"]


def test_subnet_avoids_what_the_host_uses() -> None:
    net = ipaddress.IPv4Network
    assert choose_subnet([net("0.0.0.0/0"), net("192.0.2.0/24")]) == net("10.88.0.0/24")
    assert choose_subnet([net("10.88.0.0/16"), net("10.89.0.5/32")]) == net("10.90.0.0/24")
    with pytest.raises(ClusterError, match="in use"):
        choose_subnet([net("10.0.0.0/8")])


def test_clusters_with_other_prefixes_search_ports_elsewhere() -> None:
    from clusters.local_slurm import DEFAULT_PREFIX, port_offset

    assert port_offset(DEFAULT_PREFIX) == 0
    offsets = {p: port_offset(p) for p in ("htexv", "htexd", "htexw", "a", "b")}
    assert all(o > 0 and o % 2 == 0 and o < 400 for o in offsets.values())
    assert port_offset("htexv") == port_offset("htexv")
    assert len(set(offsets.values())) > 1
