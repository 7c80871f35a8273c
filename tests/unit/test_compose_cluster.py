"""The pure parts of the Docker Compose cluster script (clusters/compose.py) and its container files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clusters import compose

REPO = Path(__file__).resolve().parents[2]

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([("debian.sources", DEB822)], "http://mirror.example/debian"),
        # Security suites and third-party suites that merely contain the word are not the Debian mirror.
        ([("sec.sources", DEB822.split("\n\n")[1]),
          ("gcloud.list", "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")], None),
        ([("sources.list", "# deb http://old.example/debian bookworm main\n"
                           "deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main contrib\n")],
         "http://list.example/debian"),
        ([("a.list", "deb-src http://src.example/debian bookworm main\n"), ("b.sources", DEB822)],
         "http://mirror.example/debian"),
        ([("debian.sources", "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n")], None),
        ([("notes.txt", "deb http://x.example/debian bookworm main\n")], None),
    ],
)
def test_mirror_comes_from_the_first_bookworm_deb_source(files: list[tuple[str, str]], expected: str | None) -> None:
    assert compose.mirror_from_sources(files) == expected


ADDRS = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 172.16.5.2/24 brd 172.16.5.255 scope global eth0\\       valid_lft forever
7: htexs-br    inet 10.88.0.1/24 scope global htexs-br\\       valid_lft forever
"""
ROUTES = """default via 172.16.5.1 dev eth0
10.88.0.0/24 dev htexs-br proto kernel scope link src 10.88.0.1
local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1
broadcast 172.16.5.255 dev eth0 table local proto kernel scope link src 172.16.5.2
"""


def test_subnet_is_the_first_candidate_nothing_uses() -> None:
    candidates = ["10.88.0.0/24", "10.89.0.0/24", "10.90.0.0/24"]
    assert compose.choose_subnet(ADDRS, ROUTES, candidates) == "10.89.0.0/24"
    # A route alone (no local address) also makes a network unusable; the default route does not.
    assert compose.choose_subnet(ADDRS, ROUTES + "10.89.0.0/16 via 172.16.5.9 dev eth0\n", candidates) == \
        "10.90.0.0/24"
    assert compose.choose_subnet("", "", candidates) == "10.88.0.0/24"
    assert compose.choose_subnet(ADDRS, ROUTES + "10.0.0.0/8 dev tun0\n", candidates) is None


def test_default_candidates_stay_clear_of_the_local_namespace_cluster() -> None:
    # clusters/local_slurm.py takes its bridge from 10.88-10.99: both clusters can run at once.
    import ipaddress
    local = [ipaddress.IPv4Network(f"10.{i}.0.0/24") for i in range(88, 100)]
    assert not any(ipaddress.IPv4Network(c).overlaps(n) for c in compose.SUBNET_CANDIDATES for n in local)


def test_host_conf_points_both_munge_users_at_the_host_socket() -> None:
    conf = "ClusterName=compose\nAuthInfo=socket=/run/munge/munge.socket.2\nSlurmctldHost=controller(10.1.2.10)\n"
    text = compose.host_conf_text(conf + "AccountingStorageType=accounting_storage/slurmdbd\n", "/h/munge.sock")
    lines = text.splitlines()
    assert "AuthInfo=socket=/h/munge.sock" in lines
    assert "AccountingStoragePass=/h/munge.sock" in lines
    assert "AuthInfo=socket=/run/munge/munge.socket.2" not in lines
    assert "SlurmctldHost=controller(10.1.2.10)" in lines
    plain = compose.host_conf_text(conf + "AccountingStorageType=accounting_storage/none\n", "/h/munge.sock")
    assert "AccountingStoragePass" not in plain


def render(**env: str) -> list[str]:
    proc = subprocess.run(["bash", str(REPO / "containers" / "entrypoint.sh"), "conf"], capture_output=True,
                          text=True, timeout=30, env={"PATH": os.environ["PATH"], **env}, check=True)
    return proc.stdout.splitlines()


def test_entrypoint_renders_slurm_conf_from_the_environment() -> None:
    lines = render(SLURM_CONTROLLER="controller=10.1.2.10", SLURM_NODES="c1=10.1.2.11 c2=10.1.2.12 c3=10.1.2.13",
                   SLURM_CPUS="4", SLURM_ACCOUNTING="1")
    assert "SlurmctldHost=controller(10.1.2.10)" in lines
    assert "NodeName=c3 NodeAddr=10.1.2.13 CPUs=4 RealMemory=2000 State=UNKNOWN" in lines
    assert [ln for ln in lines if ln.startswith("PartitionName=")] == [
        "PartitionName=debug Nodes=c1,c2,c3 Default=YES MaxTime=INFINITE State=UP"]
    # The submit host reaches slurmdbd by address: it cannot resolve the container names.
    assert "AccountingStorageHost=10.1.2.10" in lines
    assert "AccountingStorageType=accounting_storage/slurmdbd" in lines
    without = render(SLURM_CONTROLLER="controller=10.1.2.10", SLURM_NODES="c1=10.1.2.11")
    assert "AccountingStorageType=accounting_storage/none" in without
    assert not [ln for ln in without if ln.startswith("AccountingStorageHost=")]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_matches_the_script() -> None:
    env = {**os.environ, "HTEX_NET": "10.1.2", "HTEX_SHARED": "/x/shared", "HTEX_BRIDGE": "brtest"}
    base = ["docker-compose", "-p", "check", "-f", str(compose.COMPOSE_FILE), "config"]
    services = subprocess.run([*base, "--services"], capture_output=True, text=True, env=env, timeout=60,
                              check=True).stdout.split()
    assert sorted(services) == sorted([compose.CONTROLLER, *compose.NODES])
    config = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    assert "internal: true" in config
    assert "subnet: 10.1.2.0/24" in config
    assert "com.docker.network.bridge.name: brtest" in config
    for i, name in enumerate([compose.CONTROLLER, *compose.NODES]):
        assert f"ipv4_address: 10.1.2.{10 + i}" in config, name
        assert f"{name}=10.1.2.{10 + i}" in config, name
    assert "/x/shared:/x/shared" in config
