"""KubernetesProvider without a cluster: the pod manifest, pod states on recorded pod lists
(tests/data/providers/kubernetes/README.md), create/list/delete through a small fake API, the missing
client, and fuzzing of the parsers. None of it needs the kubernetes package."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htex_ref.errors import ConfigurationError, SubmitException
from htex_ref.providers.base import JobState
from htex_ref.providers.kubernetes import (
    IMAGE_PULL_LIMIT,
    PROVIDER_LABEL,
    KubernetesClientMissing,
    KubernetesProvider,
    cpu_quantity,
    label_value,
    memory_gb,
    pod_name_for,
    pod_status,
    pods_by_name,
)

DATA = Path(__file__).parent.parent / "data" / "providers" / "kubernetes"
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text())


class ApiError(Exception):
    """As the client's ApiException: an HTTP status, reason and body."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason, self.body = status, reason, body


class FakeApi:
    """The three calls the provider makes, on an in-memory namespace; tests set pod states by hand."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, Exception] = {}

    def _call(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((name, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        self._call("create", {"namespace": namespace, "body": body, **kwargs})
        pod = copy.deepcopy(body)
        pod["status"] = {"phase": "Pending"}
        self.pods[body["metadata"]["name"]] = pod
        return pod

    def list_namespaced_pod(self, namespace: str, label_selector: str = "", **kwargs: Any) -> dict[str, Any]:
        self._call("list", {"namespace": namespace, "label_selector": label_selector, **kwargs})
        key, _, value = label_selector.partition("=")
        return {"apiVersion": "v1", "kind": "List",
                "items": [p for p in self.pods.values() if p["metadata"]["labels"].get(key) == value]}

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> dict[str, Any]:
        self._call("delete", {"name": name, "namespace": namespace, **kwargs})
        if name not in self.pods:
            raise ApiError(404, "Not Found", '{"reason":"NotFound"}')
        return self.pods.pop(name)

    def set_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.pods[name]["status"] = dict(status)


def provider(tmp_path: Path, api: FakeApi, **kwargs: Any) -> KubernetesProvider:
    kwargs.setdefault("image", "registry.example.org/science/htex:1.2")
    p = KubernetesProvider(api=api, **kwargs)
    p.script_dir = str(tmp_path / "scripts")
    return p


# -------------------------------------------------------------------------------------- the pod


def test_manifest_has_everything_asked_for(tmp_path: Path) -> None:
    api = FakeApi()
    p = provider(tmp_path, api, namespace="science", max_cpu=4, init_cpu=0.5, max_mem="2Gi", init_mem="1Gi",
                 worker_init="source /opt/env.sh", pod_name="Science_Run", user_id="1000", group_id=100,
                 run_as_non_root=True, secret="regcred", persistent_volumes=[("data-claim", "/data")],
                 service_account_name="htex", annotations={"team": "astro"}, extra_labels={"project": "sky"})
    name = p.submit("htex-worker-pool --x", 1, "htex_ref.k8s.block-0")
    assert name.startswith("science-run-") and len(name) <= 253
    (call,) = [c for c in api.calls if c[0] == "create"]
    body = call[1]["body"]
    assert call[1]["namespace"] == "science" and call[1]["_request_timeout"] == 30
    assert body["metadata"]["labels"] == {"project": "sky", "app.kubernetes.io/managed-by": "htex_ref",
                                          PROVIDER_LABEL: p.token, "htex-ref/job-name": "htex_ref.k8s.block-0"}
    assert body["metadata"]["annotations"] == {"team": "astro"}
    spec = body["spec"]
    assert (spec["restartPolicy"], spec["serviceAccountName"], spec["imagePullSecrets"]) == (
        "Never", "htex", [{"name": "regcred"}])
    assert spec["volumes"] == [{"name": "data-claim", "persistentVolumeClaim": {"claimName": "data-claim"}}]
    (container,) = spec["containers"]
    assert container["image"] == "registry.example.org/science/htex:1.2"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "4", "memory": "2Gi"}}
    assert container["securityContext"] == {"runAsUser": 1000, "runAsGroup": 100, "runAsNonRoot": True}
    assert container["volumeMounts"] == [{"name": "data-claim", "mountPath": "/data"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"JOBNAME": "htex_ref.k8s.block-0", "PARSL_CORES": "4", "PARSL_MEMORY_GB": "2"}
    command, flag, script = container["command"]
    assert (command, flag) == ("/bin/bash", "-c")
    assert script.index("source /opt/env.sh") < script.index("htex-worker-pool --x")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # The manifest is kept beside the other submit files, and is what was sent.
    assert json.loads((tmp_path / "scripts" / f"{name}.pod.json").read_text()) == body


def test_minimal_manifest_leaves_out_what_is_not_set(tmp_path: Path) -> None:
    api = FakeApi()
    name = provider(tmp_path, api).submit("pool", 1, "b")
    spec = api.pods[name]["spec"]
    assert set(spec) == {"restartPolicy", "containers"}
    assert "securityContext" not in spec["containers"][0] and "annotations" not in api.pods[name]["metadata"]


def test_defaults_and_repr() -> None:
    p = KubernetesProvider(image="python:3.11", api=FakeApi())
    assert (p.namespace, p.init_blocks, p.max_blocks, p.max_cpu, p.max_mem, p.init_cpu, p.init_mem) == (
        "default", 4, 10, 2.0, "500Mi", 1.0, "250Mi")
    assert (p.cores_per_node, round(p.mem_per_node or 0, 4), p.label) == (2, 0.4883, "kubernetes")
    assert repr(p).startswith("KubernetesProvider(label='kubernetes', image='python:3.11'")


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"image": ""}, "image"),
    ({"image": "a b"}, "image"),
    ({"namespace": "Science"}, "namespace"),
    ({"nodes_per_block": 2}, "nodes_per_block"),
    ({"max_cpu": 0}, "max_cpu"),
    ({"init_cpu": 3}, "init_cpu"),
    ({"max_mem": "lots"}, "max_mem"),
    ({"init_mem": "1Gi"}, "init_mem"),
    ({"init_mem": "0"}, "init_mem"),
    ({"user_id": "root"}, "user_id"),
    ({"group_id": -1}, "group_id"),
    ({"run_as_non_root": "yes"}, "run_as_non_root"),
    ({"incluster_config": None}, "incluster_config"),
    ({"persistent_volumes": [("claim", "relative/path")]}, "persistent_volumes"),
    ({"persistent_volumes": ["claim:/data"]}, "persistent_volumes"),
    ({"extra_labels": {"app": "no spaces allowed"}}, "extra_labels"),
    ({"extra_labels": {PROVIDER_LABEL: "x"}}, "extra_labels"),
    ({"annotations": {"a": 1}}, "annotations"),
    ({"init_blocks": 11}, "init_blocks"),
    ({"cmd_timeout": 0}, "cmd_timeout"),
    ({"absent_grace": -1}, "absent_grace"),
    ({"api": object()}, "api"),
])
def test_bad_settings_are_named(kwargs: dict[str, Any], name: str) -> None:
    kwargs.setdefault("image", "python:3.11")
    kwargs.setdefault("api", FakeApi())
    with pytest.raises(ConfigurationError, match=name):
        KubernetesProvider(**kwargs)


@pytest.mark.skipif(importlib.util.find_spec("kubernetes") is not None, reason="the kubernetes package is installed")
def test_without_the_client_and_without_an_api_construction_names_the_package() -> None:
    with pytest.raises(KubernetesClientMissing, match="'kubernetes' package") as info:
        KubernetesProvider(image="python:3.11")
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(("quantity", "gb"), [("500Mi", 500 / 1024), ("2Gi", 2.0), ("1G", 1e9 / 2**30),
                                              ("1048576", 1 / 1024), ("1.5Gi", 1.5), ("128974848", 0.1201171875)])
def test_memory_quantities(quantity: str, gb: float) -> None:
    assert memory_gb(quantity) == pytest.approx(gb)


@pytest.mark.parametrize("bad", ["", "lots", "5 Gi", "-1Gi", "1gi", "Gi"])
def test_bad_memory_quantities(bad: str) -> None:
    with pytest.raises(ValueError):
        memory_gb(bad)


def test_cpu_quantities_and_names() -> None:
    assert (cpu_quantity(2), cpu_quantity(0.5), cpu_quantity(1.25)) == ("2", "500m", "1250m")
    assert pod_name_for("htex_ref.K8s.block-3", "ab12") == "htex-ref.k8s.block-3-ab12"
    assert pod_name_for("__", "x") == "block-x"
    assert label_value("-htex_ref/k8s block-") == "htex_ref-k8s-block"


# ---------------------------------------------------------------------------- recorded pods


EXPECTED = {
    0: (JobState.PENDING, None, "Insufficient cpu"),
    1: (JobState.PENDING, None, "ContainerCreating"),
    2: (JobState.HELD, None, "ErrImagePull"),
    3: (JobState.HELD, None, "ImagePullBackOff"),
    4: (JobState.FAILED, None, "InvalidImageName"),
    5: (JobState.FAILED, None, "secret \"science-token\" not found"),
    6: (JobState.RUNNING, None, None),
    7: (JobState.FAILED, None, "CrashLoopBackOff"),
    8: (JobState.COMPLETED, 0, None),
    9: (JobState.FAILED, 3, "exited with code 3"),
    10: (JobState.FAILED, 137, "OOMKilled"),
    11: (JobState.FAILED, 137, "Evicted"),
    12: (JobState.TIMEOUT, None, "DeadlineExceeded"),
    13: (JobState.UNKNOWN, None, "stopped reporting"),
    14: (JobState.RUNNING, None, "being deleted"),
}


def test_recorded_pod_states() -> None:
    pods = pods_by_name(recorded("pods.json"))
    assert len(pods) == len(EXPECTED)
    for name, pod in pods.items():
        block = int(pod["metadata"]["labels"]["htex-ref/job-name"].rsplit("-", 1)[1])
        state, code, words = EXPECTED[block]
        st = pod_status(pod)
        assert (block, st.state, st.exit_code) == (block, state, code)
        if words:
            assert words in (st.message or ""), (name, st.message)
    assert pods_by_name(recorded("pods_none.json")) == {}


def test_an_image_that_cannot_be_pulled_fails_after_the_limit() -> None:
    pod = next(p for p in pods_by_name(recorded("pods.json")).values() if p["metadata"]["name"].startswith(
        "htex-ref.k8s.block-3-"))
    assert pod_status(pod, IMAGE_PULL_LIMIT - 1).state is JobState.HELD
    failed = pod_status(pod, IMAGE_PULL_LIMIT)
    assert failed.state is JobState.FAILED and "Back-off pulling image" in (failed.message or "")


@pytest.mark.parametrize("bad", [None, [], {"items": None}, {"items": [{"metadata": {}}]}, {"items": [3]}])
def test_what_is_not_a_pod_list_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        pods_by_name(bad)


# ------------------------------------------------------------------------------ through the API


def test_life_of_a_pod(tmp_path: Path) -> None:
    api = FakeApi()
    p = provider(tmp_path, api)
    a, b = p.submit("pool", 1, "a"), p.submit("pool", 1, "b")
    assert a != b
    assert [s.state for s in p.status([a, b])] == [JobState.PENDING, JobState.PENDING]
    (selector,) = {c[1]["label_selector"] for c in api.calls if c[0] == "list"}
    assert selector == f"{PROVIDER_LABEL}={p.token}"
    api.set_status(a, {"phase": "Running"})
    api.set_status(b, {"phase": "Failed", "containerStatuses": [
        {"name": "worker-pool", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]})
    sa, sb = p.status([a, b])
    assert (sa.state, sb.state, sb.exit_code) == (JobState.RUNNING, JobState.FAILED, 1)
    assert p.cancel([a, b, "nobody"]) == [True, True, False]
    assert [c[1]["name"] for c in api.calls if c[0] == "delete"] == [a]  # b had already ended
    assert p.status([a])[0].state is JobState.CANCELLED
    # A cancelled pod stays CANCELLED and is not asked about again.
    lists = len([c for c in api.calls if c[0] == "list"])
    p.status([a, b])
    assert len([c for c in api.calls if c[0] == "list"]) == lists


def test_a_pod_deleted_from_outside_is_missing_after_the_grace(tmp_path: Path) -> None:
    api = FakeApi()
    p = provider(tmp_path, api, absent_grace=30)
    now = [0.0]
    p.clock = lambda: now[0]
    name = p.submit("pool", 1, "a")
    del api.pods[name]
    assert p.status([name])[0].state is JobState.PENDING
    now[0] = 31
    assert p.status([name])[0].state is JobState.MISSING
    # Cancelling a pod the API no longer has (404) is a success: it is gone.
    api.pods.clear()
    other = p.submit("pool", 1, "b")
    del api.pods[other]
    assert p.cancel([other]) == [True]


def test_a_pod_stuck_pulling_is_failed_and_deleted(tmp_path: Path) -> None:
    api = FakeApi()
    p = provider(tmp_path, api)
    now = [0.0]
    p.clock = lambda: now[0]
    name = p.submit("pool", 1, "a")
    pulling = {"phase": "Pending", "containerStatuses": [
        {"name": "worker-pool", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}}}]}
    api.set_status(name, pulling)
    assert p.status([name])[0].state is JobState.HELD
    now[0] = IMAGE_PULL_LIMIT + 1
    st = p.status([name])[0]
    assert st.state is JobState.FAILED and "could not be pulled" in (st.message or "")
    assert name not in api.pods and [c[1]["name"] for c in api.calls if c[0] == "delete"] == [name]


def test_api_failures(tmp_path: Path) -> None:
    api = FakeApi()
    p = provider(tmp_path, api, query_failure_limit=60)
    now = [0.0]
    p.clock = lambda: now[0]
    name = p.submit("pool", 1, "a")
    api.set_status(name, {"phase": "Running"})
    assert p.status([name])[0].state is JobState.RUNNING
    api.fail["list"] = ApiError(503, "Service Unavailable")
    assert p.status([name])[0].state is JobState.RUNNING  # kept while the API is down
    now[0] = 61
    st = p.status([name])[0]
    assert st.state is JobState.UNKNOWN and "503" in (st.message or "")
    del api.fail["list"]
    assert p.status([name])[0].state is JobState.RUNNING
    api.fail["create"] = ApiError(403, "Forbidden", 'pods is forbidden: User "x" cannot create resource "pods"')
    with pytest.raises(SubmitException, match=r"403 Forbidden.*cannot create resource"):
        p.submit("pool", 1, "b")
    api.fail["delete"] = ApiError(500, "Internal Server Error")
    assert p.cancel([name]) == [False]


# ----------------------------------------------------------------------------------- fuzzing

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["status", "phase", "reason", "message", "containerStatuses", "state",
                                          "waiting", "terminated", "exitCode", "conditions", "type", "metadata",
                                          "deletionTimestamp", "initContainerStatuses", "items", "name"]),
                         inner, max_size=4),
                     max_leaves=20)


@given(_JSON, st.floats(0, 1e6))
def test_any_pod_gives_a_status(pod: Any, pulling_for: float) -> None:
    if isinstance(pod, dict):
        assert isinstance(pod_status(pod, pulling_for).state, JobState)
    try:
        pods_by_name(pod)
    except ValueError:
        pass


@given(st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True), unique=True, max_size=5))
def test_pod_lists_round_trip(names: list[str]) -> None:
    doc = json.loads(json.dumps({"items": [{"metadata": {"name": n}, "status": {"phase": "Running"}} for n in names]}))
    assert list(pods_by_name(doc)) == names


@given(st.text(max_size=300), st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12))
def test_pod_names_are_always_valid(job_name: str, token: str) -> None:
    assert re.fullmatch(DNS_SUBDOMAIN, pod_name_for(job_name, token))


@given(st.integers(1, 10**6), st.sampled_from(["", "Ki", "Mi", "Gi", "k", "M", "G"]))
def test_memory_round_trips(number: int, unit: str) -> None:
    factor = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}[unit]
    assert memory_gb(f"{number}{unit}") == pytest.approx(number * factor / 2**30)
