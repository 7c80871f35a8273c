"""KubernetesProvider: each block is one pod running the worker pool, created through the Kubernetes API.

The official ``kubernetes`` Python client is an optional extra (``pip install htex-ref[kubernetes]``):
this module imports without it, and the provider loads it only when no API object is passed in (then a
missing client is a ``KubernetesClientMissing`` error at construction, naming the package). Any object
with ``create_namespaced_pod``, ``list_namespaced_pod`` and ``delete_namespaced_pod`` will do as the API
(tests pass a small fake); pods go in as plain dicts, which the API accepts as they are.

Pure parts, table-tested on recorded ``kubectl get pod -o json`` outputs: ``pod_name_for`` (a valid,
unique pod name), ``memory_gb`` (a memory quantity such as ``500Mi``), ``pod_manifest`` (the whole pod
object), ``pods_by_name`` (a pod list into pods by name) and ``pod_status`` (a pod's phase and container
states into a ``JobStatus``).

Status comes from one ``list_namespaced_pod`` call per refresh, selecting this provider's pods by a
label that holds a token drawn when the provider is made. Cancel deletes the pod; a pod this provider
deleted is CANCELLED. A pod the API no longer lists is MISSING once ``absent_grace`` has passed since
its creation; a failing API call changes nothing until ``query_failure_limit`` (then UNKNOWN), as for
the batch providers.

Pod phases: Pending PENDING (the scheduler's reason, such as "0/3 nodes are available: 3 Insufficient
cpu", in the message), except containers waiting for a reason that will not pass by itself:
ErrImageNeverPull, InvalidImageName, CreateContainerConfigError, CreateContainerError and
RunContainerError FAILED at once, ErrImagePull and ImagePullBackOff HELD (the kubelet retries the pull)
and FAILED once the pod has failed to pull for ``IMAGE_PULL_LIMIT`` seconds; Running RUNNING (a
container in CrashLoopBackOff FAILED); Succeeded COMPLETED; Failed FAILED with the container's exit code
and reason (OOMKilled, Error, an eviction), or TIMEOUT when the pod ran past an active deadline
(DeadlineExceeded); Unknown UNKNOWN (its node stopped reporting). A pod reported FAILED while it still
exists (stuck pulling, crashing) is deleted, so that it stops holding its resources.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htex_ref.errors import ConfigurationError, ExecutionProviderException, SubmitException
from htex_ref.launchers import SingleNodeLauncher
from htex_ref.providers.base import ExecutionProvider, JobState, JobStatus, check_number
from htex_ref.providers.cluster import JOB_START_EXPORT, merge_status

logger = logging.getLogger(__name__)

#: The label that selects this provider's pods (its value: the provider's token).
PROVIDER_LABEL = "htex-ref/provider"
#: The calls the provider makes on its API object.
API_CALLS = ("create_namespaced_pod", "list_namespaced_pod", "delete_namespaced_pod")
#: Seconds a pod may keep failing to pull its image (ErrImagePull, ImagePullBackOff) before it is FAILED.
IMAGE_PULL_LIMIT = 300.0

_FAIL_AT_ONCE = {"ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
                 "RunContainerError", "CrashLoopBackOff"}
_PULLING = {"ErrImagePull", "ImagePullBackOff"}
_PHASES = {"Pending": JobState.PENDING, "Running": JobState.RUNNING, "Succeeded": JobState.COMPLETED,
           "Failed": JobState.FAILED, "Unknown": JobState.UNKNOWN}
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i?|k|m)?$")
_UNITS = {None: 1, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class KubernetesClientMissing(ConfigurationError, ImportError):
    """The ``kubernetes`` package is not installed and no API object was passed in."""


class KubernetesApiError(ExecutionProviderException):
    """The Kubernetes API gave no usable answer."""


# ------------------------------------------------------------------------------------------ pure


def memory_gb(quantity: str) -> float:
    """GB (of 2^30 bytes, as the worker pool counts memory) in a Kubernetes memory quantity such as ``500Mi``,
    ``2Gi``, ``1G`` or ``1048576`` (bytes); ValueError for anything else."""
    m = _MEMORY.match(quantity.strip()) if isinstance(quantity, str) else None
    if m is None:
        raise ValueError(f"not a Kubernetes memory quantity (like '500Mi' or '2Gi'): {quantity!r}")
    number = float(m.group(1)) * _UNITS[m.group(2)]
    return number / 2**30


def cpu_quantity(cpu: float) -> str:
    """A CPU count as the API writes it: whole cores as an integer, fractions in millicores (``500m``)."""
    if float(cpu).is_integer():
        return str(int(cpu))
    return f"{math.ceil(cpu * 1000)}m"


def pod_name_for(job_name: str, token: str) -> str:
    """A pod name (a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters,
    starting and ending with a letter or digit) made of ``job_name`` and ``token``, which makes it unique."""
    base = re.sub(r"[^a-z0-9.-]+", "-", job_name.lower())
    base = re.sub(r"[.-]{2,}", "-", base).strip(".-") or "block"
    suffix = re.sub(r"[^a-z0-9]", "", token.lower()) or "0"
    return f"{base[:253 - len(suffix) - 1].rstrip('.-')}-{suffix}"


def label_value(text: str) -> str:
    """``text`` made into a valid label value (at most 63 of ``[A-Za-z0-9_.-]``, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def render_pod_command(*, worker_init: str, environment: str, launcher_text: str) -> str:
    """The bash script the container runs (``/bin/bash -c SCRIPT``)."""
    return (
        # First, before worker_init: a pool that drains before a deadline counts it from here.
        JOB_START_EXPORT + "\n"
        + (worker_init.rstrip("\n") + "\n" if worker_init.strip() else "")
        + environment
        + launcher_text.rstrip("\n") + "\n"
    )


def pod_manifest(
    *,
    name: str,
    namespace: str,
    image: str,
    script: str,
    env: Mapping[str, str],
    init_cpu: float,
    max_cpu: float,
    init_mem: str,
    max_mem: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    service_account_name: str | None,
    secret: str | None,
    user_id: int | None,
    group_id: int | None,
    run_as_non_root: bool,
    persistent_volumes: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """The pod object, in the API's own (camelCase) form: one container running ``script`` with bash,
    never restarted (a block that ends stays ended)."""
    container: dict[str, Any] = {
        "name": "worker-pool",
        "image": image,
        "command": ["/bin/bash", "-c", script],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {
            "requests": {"cpu": cpu_quantity(init_cpu), "memory": init_mem},
            "limits": {"cpu": cpu_quantity(max_cpu), "memory": max_mem},
        },
    }
    security: dict[str, Any] = {}
    if user_id is not None:
        security["runAsUser"] = user_id
    if group_id is not None:
        security["runAsGroup"] = group_id
    if run_as_non_root:
        security["runAsNonRoot"] = True
    if security:
        container["securityContext"] = security
    if persistent_volumes:
        container["volumeMounts"] = [{"name": claim, "mountPath": path} for claim, path in persistent_volumes]
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if service_account_name:
        spec["serviceAccountName"] = service_account_name
    if secret:
        spec["imagePullSecrets"] = [{"name": secret}]
    if persistent_volumes:
        spec["volumes"] = [{"name": claim, "persistentVolumeClaim": {"claimName": claim}}
                           for claim, _ in persistent_volumes]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def pods_by_name(doc: Any) -> dict[str, Mapping[str, Any]]:
    """The pods of a pod list (``{"items": [...]}``, as ``kubectl get pods -o json`` prints and the API
    returns) by name; ValueError when ``doc`` is not one."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("items"), list):
        raise ValueError("not a pod list: no 'items' array")
    pods: dict[str, Mapping[str, Any]] = {}
    for pod in doc["items"]:
        metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"a pod without metadata.name: {pod!r:.200}")
        pods[name] = pod
    return pods


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _code(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _said(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return ": ".join(kept) if kept else None


def pod_status(pod: Mapping[str, Any], pulling_for: float = 0.0) -> JobStatus:
    """A pod's state from its ``status`` (phase, reason, conditions, container states). ``pulling_for``:
    seconds the pod has been failing to pull its image, which turns HELD into FAILED after
    ``IMAGE_PULL_LIMIT``. Never raises, whatever the pod holds."""
    status = _mapping(pod.get("status"))
    phase = _text(status.get("phase")) or "Unknown"
    containers = _list(status.get("containerStatuses")) + _list(status.get("initContainerStatuses"))
    waiting = [_mapping(_mapping(c.get("state")).get("waiting")) for c in containers]
    waiting = [w for w in waiting if _text(w.get("reason"))]
    terminated = [_mapping(_mapping(c.get("state")).get("terminated")) for c in containers]
    terminated = [t for t in terminated if t]
    reason, message = _text(status.get("reason")), _text(status.get("message"))
    for w in waiting:
        why = str(w.get("reason")).strip()
        said = _said(why, _text(w.get("message")))
        if why in _FAIL_AT_ONCE:
            return JobStatus(JobState.FAILED, f"the container cannot run ({said})")
        if why in _PULLING:
            if pulling_for >= IMAGE_PULL_LIMIT:
                return JobStatus(JobState.FAILED, f"the image could not be pulled for {pulling_for:.0f} s ({said})")
            return JobStatus(JobState.HELD, f"waiting for the image ({said}); the kubelet retries the pull")
    if phase == "Failed":
        if reason == "DeadlineExceeded":
            return JobStatus(JobState.TIMEOUT, f"ran past its active deadline ({_said(reason, message)})")
        code = next((_code(t.get("exitCode")) for t in terminated if _code(t.get("exitCode")) not in (None, 0)),
                    None)
        ended = next((_text(t.get("reason")) for t in terminated if _text(t.get("reason"))), None)
        detail = _said(reason, message) or _said(ended, next((_text(t.get("message")) for t in terminated), None))
        text = f"the container exited with code {code}" if code is not None else "the pod failed"
        return JobStatus(JobState.FAILED, text + (f" ({detail})" if detail else ""), code)
    if phase == "Succeeded":
        return JobStatus(JobState.COMPLETED, None, 0)
    if phase == "Pending":
        unscheduled = next((c for c in _list(status.get("conditions"))
                            if c.get("type") == "PodScheduled" and c.get("status") == "False"), None)
        if unscheduled is not None:
            return JobStatus(JobState.PENDING, _said("not scheduled", _text(unscheduled.get("reason")),
                                                     _text(unscheduled.get("message"))))
        return JobStatus(JobState.PENDING, _said(*(str(w.get("reason")).strip() for w in waiting)) or reason)
    if phase == "Running":
        ending = "being deleted" if _text(_mapping(pod.get("metadata")).get("deletionTimestamp")) else None
        return JobStatus(JobState.RUNNING, ending)
    if phase == "Unknown":
        return JobStatus(JobState.UNKNOWN, _said("the pod's node stopped reporting its state", reason, message))
    return JobStatus(JobState.UNKNOWN, f"unknown pod phase {status.get('phase')!r}")


def is_pulling(pod: Mapping[str, Any]) -> bool:
    """Whether a container of the pod waits because its image cannot be pulled (yet)."""
    for c in _list(_mapping(pod.get("status")).get("containerStatuses")):
        reason = _text(_mapping(_mapping(c.get("state")).get("waiting")).get("reason"))
        if reason in _PULLING:
            return True
    return False


# ---------------------------------------------------------------------------------------- checks


def _check_word(owner: str, name: str, value: object, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        what = "None or a" if optional else "a"
        raise ConfigurationError(f"{owner}.{name} must be {what} non-empty string without spaces, got {value!r}")
    return value


def _check_dns(owner: str, name: str, value: object, *, optional: bool) -> str | None:
    checked = _check_word(owner, name, value, optional=optional)
    if checked is not None and not _DNS_LABEL.match(checked):
        raise ConfigurationError(f"{owner}.{name} must be a DNS-1123 label (lowercase letters, digits and '-', at "
                                 f"most 63, starting and ending with a letter or digit), got {value!r}")
    return checked


def _check_strings(owner: str, name: str, value: object, *, labels: bool) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigurationError(f"{owner}.{name} must be None or a dict of str to str, got {value!r}")
    if labels:
        for k, v in value.items():
            if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(v):
                raise ConfigurationError(f"{owner}.{name} has {k!r}: {v!r}, which is not a valid label (keys "
                                         f"[prefix/]name, values at most 63 of [A-Za-z0-9_.-])")
            if k == PROVIDER_LABEL:
                raise ConfigurationError(f"{owner}.{name} must not set {PROVIDER_LABEL!r}: htex_ref finds its pods "
                                         f"by it")
    return dict(value)


def _check_id(owner: str, name: str, value: object) -> int | None:
    # Parsl takes these as strings; the API wants integers.
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigurationError(f"{owner}.{name} must be None or a user/group id (an int >= 0, or a string of "
                             f"digits), got {value!r}")


def _check_volumes(owner: str, value: object) -> list[tuple[str, str]]:
    if value is None:
        return []
    pairs: list[tuple[str, str]] = []
    if isinstance(value, Sequence) and not isinstance(value, str):
        for v in value:
            if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and isinstance(v[0], str) \
                    and _DNS_LABEL.match(v[0]) and isinstance(v[1], str) and v[1].startswith("/"):
                pairs.append((v[0], v[1]))
    if not isinstance(value, Sequence) or isinstance(value, str) or len(pairs) != len(value):
        raise ConfigurationError(f"{owner}.persistent_volumes must be a list of (claim name, absolute mount path) "
                                 f"pairs, got {value!r}")
    return pairs


# -------------------------------------------------------------------------------------- provider


@dataclass
class _Pod:
    name: str
    job_name: str
    created_at: float
    manifest_path: str
    status: JobStatus
    cancel_requested: bool = False
    pulling_since: float | None = None


class KubernetesProvider(ExecutionProvider):
    """Blocks as Kubernetes pods, one pod per block, each running one worker pool.

    Each pod's manifest is written (as JSON) to the executor's ``{run_dir}/submit_scripts/J.pod.json``.
    Parameters keep the names and meanings of Parsl's KubernetesProvider; bad values raise
    ``ConfigurationError`` (a ``ValueError``) here, naming the parameter.

    Parameters
    ----------
    image : str
        Container image of the pods; it must have bash and htex_ref (the worker pool) installed.
    namespace : str
        Namespace the pods are created in.
    nodes_per_block : int
        Must be 1: a block is one pod.
    init_blocks : int
        Pods created when the executor starts; not more than ``max_blocks``.
    min_blocks : int
        Fewest pods the scaling strategy keeps; not more than ``max_blocks``.
    max_blocks : int
        Most pods at a time, pending ones included.
    max_cpu : float
        CPU limit of each pod's container, in cores; the worker pool sizes itself by it (``PARSL_CORES``).
    max_mem : str
        Memory limit of each pod's container, a Kubernetes quantity (``500Mi``, ``2Gi``); the worker pool
        sizes itself by it (``PARSL_MEMORY_GB``).
    init_cpu : float
        CPU request of each pod's container, in cores; not more than ``max_cpu``.
    init_mem : str
        Memory request of each pod's container, a Kubernetes quantity; not more than ``max_mem``.
    parallelism : float
        Share (0 to 1) of waiting tasks that the scaling strategy finds worker slots for.
    worker_init : str
        Shell lines the container runs before the worker pool.
    pod_name : str | None
        Start of the pods' names (a unique suffix is added); ``None``: the block's job name.
    user_id : int | str | None
        User id the container runs as (``runAsUser``).
    group_id : int | str | None
        Group id the container runs as (``runAsGroup``).
    run_as_non_root : bool
        Require the container to run as a non-root user (``runAsNonRoot``).
    secret : str | None
        Name of the secret used to pull the image (``imagePullSecrets``).
    incluster_config : bool
        When no ``api`` is given: True reads the service account's configuration (htex_ref runs in a pod
        of the cluster), False the kubeconfig file (``~/.kube/config``).
    persistent_volumes : list[tuple[str, str]] | None
        (persistent volume claim name, mount path) pairs mounted in each pod.
    service_account_name : str | None
        Service account the pods run as.
    annotations : dict[str, str] | None
        Annotations of each pod.
    extra_labels : dict[str, str] | None
        Labels of each pod, besides htex_ref's (``htex-ref/provider``, ``htex-ref/job-name``,
        ``app.kubernetes.io/managed-by``).
    cmd_timeout : float
        Seconds an API call may take (its ``_request_timeout``).
    label : str
        Name of the provider in logs.
    status_polling_interval : float
        Seconds between the executor's pod list queries.
    absent_grace : float
        Seconds after creation during which a pod the API does not list counts as pending; a pod not
        listed after that (deleted from outside) is MISSING.
    query_failure_limit : float
        Seconds of failing pod list queries after which live pods are reported UNKNOWN (until a query
        works again); until then they keep their last known states.
    api : object | None
        The API object (a ``kubernetes.client.CoreV1Api``, or anything with ``create_namespaced_pod``,
        ``list_namespaced_pod`` and ``delete_namespaced_pod``); ``None``: one is made with the
        ``kubernetes`` package, configured as ``incluster_config`` says.
    """

    def __init__(
        self,
        image: str,
        namespace: str = "default",
        nodes_per_block: int = 1,
        init_blocks: int = 4,
        min_blocks: int = 0,
        max_blocks: int = 10,
        max_cpu: float = 2,
        max_mem: str = "500Mi",
        init_cpu: float = 1,
        init_mem: str = "250Mi",
        parallelism: float = 1,
        worker_init: str = "",
        pod_name: str | None = None,
        user_id: int | str | None = None,
        group_id: int | str | None = None,
        run_as_non_root: bool = False,
        secret: str | None = None,
        incluster_config: bool = False,
        persistent_volumes: list[tuple[str, str]] | None = None,
        service_account_name: str | None = None,
        annotations: dict[str, str] | None = None,
        extra_labels: dict[str, str] | None = None,
        cmd_timeout: float = 30,
        label: str = "kubernetes",
        status_polling_interval: float = 10.0,
        absent_grace: float = 30.0,
        query_failure_limit: float = 600.0,
        api: Any = None,
    ) -> None:
        owner = type(self).__name__
        self.image = _check_word(owner, "image", image, optional=False)
        self.namespace = _check_dns(owner, "namespace", namespace, optional=False)
        if nodes_per_block != 1 or isinstance(nodes_per_block, bool):
            raise ConfigurationError(f"{owner}.nodes_per_block must be 1 (a block is one pod), got {nodes_per_block!r}")
        self.max_cpu = check_number(owner, "max_cpu", max_cpu, unit="cores")
        self.init_cpu = check_number(owner, "init_cpu", init_cpu, unit="cores")
        if self.init_cpu > self.max_cpu:
            raise ConfigurationError(f"{owner}: init_cpu ({init_cpu}) is greater than max_cpu ({max_cpu})")
        sizes = {}
        for name, quantity in (("max_mem", max_mem), ("init_mem", init_mem)):
            try:
                sizes[name] = memory_gb(quantity)
            except ValueError as e:
                raise ConfigurationError(f"{owner}.{name}: {e}") from None
            if not sizes[name] > 0:
                raise ConfigurationError(f"{owner}.{name} must be more than zero, got {quantity!r}")
        if sizes["init_mem"] > sizes["max_mem"]:
            raise ConfigurationError(f"{owner}: init_mem ({init_mem}) is greater than max_mem ({max_mem})")
        self.max_mem, self.init_mem = max_mem.strip(), init_mem.strip()
        self.pod_name = _check_word(owner, "pod_name", pod_name, optional=True)
        self.user_id = _check_id(owner, "user_id", user_id)
        self.group_id = _check_id(owner, "group_id", group_id)
        if not isinstance(run_as_non_root, bool):
            raise ConfigurationError(f"{owner}.run_as_non_root must be True or False, got {run_as_non_root!r}")
        self.run_as_non_root = run_as_non_root
        self.secret = _check_word(owner, "secret", secret, optional=True)
        if not isinstance(incluster_config, bool):
            raise ConfigurationError(f"{owner}.incluster_config must be True or False, got {incluster_config!r}")
        self.incluster_config = incluster_config
        self.persistent_volumes = _check_volumes(owner, persistent_volumes)
        self.service_account_name = _check_word(owner, "service_account_name", service_account_name, optional=True)
        self.annotations = _check_strings(owner, "annotations", annotations, labels=False)
        self.extra_labels = _check_strings(owner, "extra_labels", extra_labels, labels=True)
        self._configure(
            label=label, launcher=SingleNodeLauncher(), worker_init=worker_init, cmd_timeout=cmd_timeout,
            nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks,
            parallelism=parallelism, cores_per_node=max(1, math.floor(self.max_cpu)),
            mem_per_node=sizes["max_mem"],
        )
        self._status_polling_interval = check_number(owner, "status_polling_interval", status_polling_interval,
                                                      unit="seconds")
        self.absent_grace = check_number(owner, "absent_grace", absent_grace, zero_ok=True, unit="seconds")
        self.query_failure_limit = check_number(owner, "query_failure_limit", query_failure_limit, unit="seconds")
        #: Drawn once: the label value that selects this provider's pods, and the start of their names' suffix.
        self.token = secrets.token_hex(4)
        if api is not None:
            missing = [m for m in API_CALLS if not callable(getattr(api, m, None))]
            if missing:
                raise ConfigurationError(f"{owner}.api must have the Kubernetes API's {', '.join(API_CALLS)} (a "
                                         f"kubernetes.client.CoreV1Api does); {type(api).__name__} lacks "
                                         f"{', '.join(missing)}")
        self.api = api if api is not None else _load_api(owner, incluster_config)
        self.pods: dict[str, _Pod] = {}
        self._count = 0
        self._failing_since: float | None = None
        #: Monotonic clock; tests replace it to step through time limits without waiting.
        self.clock: Callable[[], float] = time.monotonic
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        names = ("label", "image", "namespace", "init_blocks", "min_blocks", "max_blocks", "max_cpu", "max_mem",
                 "init_cpu", "init_mem", "parallelism")
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    @property
    def status_polling_interval(self) -> float:
        return self._status_polling_interval

    # ------------------------------------------------------------------------------ the pod

    def manifest(self, name: str, job_name: str, command: str, tasks_per_node: int) -> dict[str, Any]:
        """The pod for one block (pure, given the provider's settings and token)."""
        script = render_pod_command(worker_init=self.worker_init, environment="",
                                    launcher_text=self.launcher(command, tasks_per_node, 1))
        env = {"JOBNAME": job_name, "PARSL_CORES": f"{self.max_cpu:g}",
               "PARSL_MEMORY_GB": f"{self.mem_per_node:g}"}
        labels = {**self.extra_labels, "app.kubernetes.io/managed-by": "htex_ref", PROVIDER_LABEL: self.token,
                  "htex-ref/job-name": label_value(job_name)}
        return pod_manifest(
            name=name, namespace=self.namespace or "default", image=self.image or "", script=script, env=env,
            init_cpu=self.init_cpu, max_cpu=self.max_cpu, init_mem=self.init_mem, max_mem=self.max_mem,
            labels=labels, annotations=self.annotations, service_account_name=self.service_account_name,
            secret=self.secret, user_id=self.user_id, group_id=self.group_id, run_as_non_root=self.run_as_non_root,
            persistent_volumes=self.persistent_volumes,
        )

    # ------------------------------------------------------------------------------- interface

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        if not isinstance(job_name, str) or not job_name:
            raise ConfigurationError(f"job_name must be a non-empty string, got {job_name!r}")
        with self._lock:
            self._count += 1
            name = pod_name_for(self.pod_name or job_name, f"{self.token}{self._count}")
            body = self.manifest(name, job_name, command, tasks_per_node)
            script_dir = Path(self.script_dir or ".").absolute()
            script_dir.mkdir(parents=True, exist_ok=True)
            path = script_dir / f"{name}.pod.json"
            path.write_text(json.dumps(body, indent=2) + "\n")
            try:
                self.api.create_namespaced_pod(namespace=self.namespace, body=body, _request_timeout=self.cmd_timeout)
            except Exception as e:
                raise SubmitException(job_name, f"creating pod {name} in namespace {self.namespace!r} failed: "
                                                f"{_api_error(e)}; manifest {path}") from e
            self.pods[name] = _Pod(name, job_name, self.clock(), str(path), JobStatus(JobState.PENDING, "created"))
            logger.info("%s: created pod %s (%s)", self.label, name, path)
            return name

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        with self._lock:
            live = [j for j in dict.fromkeys(job_ids) if j in self.pods and not self.pods[j].status.terminal]
            if live:
                self._refresh(live)
            return [self.pods[j].status if j in self.pods
                    else JobStatus(JobState.MISSING, f"pod {j} was not created by this provider") for j in job_ids]

    def cancel(self, job_ids: list[str]) -> list[bool]:
        with self._lock:
            done: list[bool] = []
            for job_id in job_ids:
                pod = self.pods.get(job_id)
                if pod is None:
                    logger.warning("%s: cannot delete pod %s: this provider did not create it", self.label, job_id)
                    done.append(False)
                    continue
                if pod.status.terminal:
                    done.append(True)
                    continue
                pod.cancel_requested = True
                error = self._delete(job_id)
                if error is None:
                    pod.status = JobStatus(JobState.CANCELLED, "pod deleted by htex_ref")
                else:
                    logger.error("%s: deleting pod %s failed: %s", self.label, job_id, error)
                done.append(error is None)
            return done

    # ------------------------------------------------------------------------------- internals

    def _delete(self, name: str) -> str | None:
        """Delete a pod; None when it is gone (or was already), else what went wrong."""
        try:
            self.api.delete_namespaced_pod(name=name, namespace=self.namespace, _request_timeout=self.cmd_timeout)
        except Exception as e:
            if getattr(e, "status", None) == 404:
                return None
            return _api_error(e)
        return None

    def _list(self) -> dict[str, Mapping[str, Any]]:
        try:
            reply = self.api.list_namespaced_pod(namespace=self.namespace,
                                                 label_selector=f"{PROVIDER_LABEL}={self.token}",
                                                 _request_timeout=self.cmd_timeout)
        except Exception as e:
            raise KubernetesApiError(f"listing pods in namespace {self.namespace!r} failed: {_api_error(e)}") from e
        try:
            return pods_by_name(_as_plain(self.api, reply))
        except ValueError as e:
            raise KubernetesApiError(f"the pod list from the API is not usable: {e}") from None

    def _refresh(self, names: list[str]) -> None:
        now = self.clock()
        try:
            listed = self._list()
        except KubernetesApiError as e:
            if self._failing_since is None:
                self._failing_since = now
            failing_for = now - self._failing_since
            if failing_for < self.query_failure_limit:
                logger.warning("%s: %s (failing for %.0f s); pods keep their last known states", self.label, e,
                               failing_for)
                return
            logger.error("%s: %s; failing for %.0f s (query_failure_limit=%g s): pods %s are UNKNOWN", self.label, e,
                         failing_for, self.query_failure_limit, names)
            for name in names:
                self.pods[name].status = JobStatus(JobState.UNKNOWN, f"state unknown: the pod list has failed for "
                                                                     f"{failing_for:.0f} s: {e}")
            return
        self._failing_since = None
        for name in names:
            pod = self.pods[name]
            polled: JobStatus | None = None
            if name in listed:
                seen = listed[name]
                if is_pulling(seen):
                    pod.pulling_since = now if pod.pulling_since is None else pod.pulling_since
                else:
                    pod.pulling_since = None
                pulling_for = 0.0 if pod.pulling_since is None else now - pod.pulling_since
                polled = pod_status(seen, pulling_for)
                phase = _mapping(seen.get("status")).get("phase")
                if polled.state is JobState.FAILED and phase in ("Pending", "Running"):
                    # Failed for us, but the pod is still there (stuck pulling, crashing): end it.
                    error = self._delete(name)
                    if error is not None:
                        logger.error("%s: pod %s failed (%s) and deleting it failed too: %s", self.label, name,
                                     polled.message, error)
            new = merge_status(pod.status, polled, pod.created_at, now, self.absent_grace, pod.cancel_requested)
            if new.state is not pod.status.state:
                log = logger.warning if new.state in (JobState.FAILED, JobState.MISSING, JobState.TIMEOUT) \
                    else logger.info
                log("%s: pod %s is now %s%s", self.label, name, new.state.name,
                    f" ({new.message})" if new.message else "")
            pod.status = new


def _as_plain(api: Any, reply: Any) -> Any:
    """The API's reply as plain JSON data: the real client returns model objects, which its own
    ``sanitize_for_serialization`` turns into the API's camelCase dicts; a fake may return dicts."""
    if isinstance(reply, Mapping):
        return reply
    client = getattr(api, "api_client", None)
    if client is not None and hasattr(client, "sanitize_for_serialization"):
        return client.sanitize_for_serialization(reply)
    return reply


def _api_error(e: BaseException) -> str:
    status, reason, body = getattr(e, "status", None), getattr(e, "reason", None), getattr(e, "body", None)
    if status is None:
        return f"{type(e).__name__}: {e}"
    return f"HTTP {status} {reason or ''}".rstrip() + (f": {str(body)[:500]}" if body else "")


def _load_api(owner: str, incluster_config: bool) -> Any:
    """A ``CoreV1Api`` from the ``kubernetes`` package, configured from the cluster or the kubeconfig."""
    try:
        client = importlib.import_module("kubernetes.client")
        config = importlib.import_module("kubernetes.config")
    except ImportError:
        raise KubernetesClientMissing(
            f"{owner} needs the 'kubernetes' package (the official Kubernetes Python client) when no api object is "
            f"passed in: pip install 'htex-ref[kubernetes]' (or pip install kubernetes)") from None
    try:
        if incluster_config:
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except Exception as e:
        where = "the in-cluster service account" if incluster_config else "the kubeconfig file (~/.kube/config)"
        raise ConfigurationError(f"{owner}: cannot configure the Kubernetes client from {where} "
                                 f"(incluster_config={incluster_config}): {e}") from e
    return client.CoreV1Api()


__all__ = [
    "API_CALLS",
    "IMAGE_PULL_LIMIT",
    "PROVIDER_LABEL",
    "KubernetesApiError",
    "KubernetesClientMissing",
    "KubernetesProvider",
    "cpu_quantity",
    "is_pulling",
    "label_value",
    "memory_gb",
    "pod_manifest",
    "pod_name_for",
    "pod_status",
    "pods_by_name",
    "render_pod_command",
]
