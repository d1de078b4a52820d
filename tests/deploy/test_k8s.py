"""deploy/k8s/: every manifest validates against Kubernetes' OpenAPI schemas (offline), and invariants.

kubernetes-validate ships the JSON schemas of each Kubernetes release; ``--strict`` uses the
variants that reject unknown fields, so a misspelt key fails instead of being dropped by the API
server. We validate against the oldest release we support and the newest the package ships.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest
import yaml
from django.urls import resolve

from tasks.fleet.readiness import CHECKS as HEALTH_CHECKS
from tests.deploy.helpers import (
    DEPLOY,
    DOCKERFILE,
    IMAGE_DEPLOY,
    K8S,
    consumed,
    default_queues,
    k8s_configmap,
    k8s_documents,
    max_time_limit,
    ops_queues,
    run,
    tool,
    unknown_env_names,
)
from tests.deploy.keda_schema import SCHEMAS as KEDA_SCHEMAS

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KUSTOMIZATION = K8S / "kustomization.yaml"


def validate(*paths: Path) -> tuple[int, str]:
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    result = run(tool("kubernetes-validate"), *versions, "--strict", *map(str, paths))
    return result.returncode, result.stdout + result.stderr


KEDA_API = "keda.sh/v1alpha1"
KEDA_FILE = K8S / "worker-autoscaling.yaml"


def manifests() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path != KUSTOMIZATION)


def builtin_manifests() -> list[Path]:
    """The manifests of built-in kinds, which kubernetes-validate knows (KEDA's are checked below)."""
    return [path for path in manifests() if path != KEDA_FILE]


def keda_documents() -> list[dict[str, Any]]:
    return [doc for path, doc in k8s_documents() if doc.get("apiVersion") == KEDA_API]


def app_secret() -> dict[str, Any]:
    (secret,) = [doc for doc in objects("Secret") if doc["metadata"]["name"] == "terminus-secrets"]
    return secret


def objects(kind: str, component: str | None = None) -> list[dict[str, Any]]:
    return [
        doc
        for path, doc in k8s_documents()
        if path != KUSTOMIZATION
        and doc["kind"] == kind
        and (component is None or doc["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]) for d in workloads()]


def workloads() -> list[dict[str, Any]]:
    return objects("Deployment") + objects("Job")


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{name}/{c['name']}", c) for name, spec in pod_specs() for c in spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_every_manifest_validates_strictly() -> None:
    returncode, output = validate(*builtin_manifests())
    assert returncode == 0, output
    # kubernetes-validate only warns (exit 0) about a kind it has no schema for: refuse that too.
    assert not re.search(r"^(WARN|ERROR|FATAL)", output, re.MULTILINE), output
    passed = len(re.findall(r"^INFO .* passed for resource", output, re.MULTILINE))
    builtin = [d for p, d in k8s_documents() if p != KUSTOMIZATION and d.get("apiVersion") != KEDA_API]
    assert passed == len(KUBERNETES_VERSIONS) * len(builtin)
    # Every KEDA object lives in worker-autoscaling.yaml, and nothing else does.
    assert {d["apiVersion"] for p, d in k8s_documents() if p == KEDA_FILE} == {KEDA_API}
    assert all(path == KEDA_FILE for path, doc in k8s_documents() if doc.get("apiVersion") == KEDA_API)


def keda_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(KEDA_SCHEMAS[doc["kind"]])
    return ["/".join(map(str, e.absolute_path)) + f": {e.message}" for e in validator.iter_errors(doc)]


def test_keda_objects_match_kedas_schema() -> None:
    docs = keda_documents()
    assert {doc["kind"] for doc in docs} == {"ScaledObject", "TriggerAuthentication"}
    for doc in docs:
        assert keda_errors(doc) == [], doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        pytest.param(lambda d: d["spec"].update(minReplicas=1), "minReplicas", id="hpa-field-in-keda"),
        pytest.param(lambda d: d["spec"]["triggers"][0]["metadata"].update(listLength=10), "listLength", id="not-str"),
        pytest.param(lambda d: d["spec"]["triggers"][0]["metadata"].update(queue="x"), "queue", id="misspelt-key"),
        pytest.param(lambda d: d["spec"].update(maxReplicaCount="ten"), "maxReplicaCount", id="count-not-int"),
    ],
)
def test_a_broken_scaled_object_fails_the_keda_schema(breakage: Any, expected: str) -> None:
    """The check is live: a ScaledObject with one mistake is rejected, naming the mistake."""
    broken = copy.deepcopy(next(doc for doc in keda_documents() if doc["kind"] == "ScaledObject"))
    breakage(broken)
    errors = keda_errors(broken)
    assert errors and expected in " ".join(errors), errors


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),
            "livenesProbe",
            id="misspelt-field",
        ),
        pytest.param(lambda d: d["spec"].update(replicas="two"), "replicas", id="replicas-not-int"),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="1h"),
            "terminationGracePeriodSeconds",
            id="grace-not-int",
        ),
    ],
)
def test_a_broken_manifest_fails_validation(tmp_path: Path, breakage: Any, expected: str) -> None:
    """The validator is live: web.yaml with one mistake is rejected, naming the mistake."""
    docs = list(yaml.safe_load_all((K8S / "web.yaml").read_text()))
    breakage(docs[0])
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    returncode, output = validate(path)
    assert returncode != 0, output
    assert expected in output, output


def test_the_kustomization_lists_every_manifest_and_sets_the_image() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert sorted(kustomization["resources"]) == [path.name for path in manifests()]
    images = {image["name"] for image in kustomization["images"]}
    assert {container["image"] for _, container in containers()} == images == {"terminus"}


def test_beat_is_a_single_replica_that_is_recreated() -> None:
    (beat,) = objects("Deployment", "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}, "a rolling update would run two beats"
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [f"{IMAGE_DEPLOY}start-beat.sh"]
    targets = {
        o["spec"]["scaleTargetRef"]["name"] for o in objects("HorizontalPodAutoscaler") + objects("ScaledObject")
    }
    assert beat["metadata"]["name"] not in targets, "never autoscale beat"
    beats = [name for name, c in containers() if c.get("args") == [f"{IMAGE_DEPLOY}start-beat.sh"]]
    assert len(beats) == 1


def test_workers_outlive_the_longest_job() -> None:
    """SIGTERM starts a warm shutdown; the kubelet SIGKILLs after terminationGracePeriodSeconds."""
    workers = objects("Deployment", "worker")
    assert workers
    for worker in workers:
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > max_time_limit(), f"{worker['metadata']['name']}: {grace} <= {max_time_limit()}"


def test_one_worker_deployment_per_queue_each_scaled_by_keda_on_its_queue_depth() -> None:
    workers = objects("Deployment", "worker")
    queues = {}
    for worker in workers:
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [f"{IMAGE_DEPLOY}start-worker.sh"]
        queues[worker["metadata"]["name"]] = env_of(container)["WORKER_QUEUES"]
        assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    configured = k8s_configmap().get("TERMINUS_QUEUES", ",".join(default_queues())).split(",")
    assert sorted(configured) == sorted(default_queues())
    # Every configured queue has a consumer, and so do final failures and the crons.
    assert consumed(list(queues.values())) == sorted([*configured, *ops_queues()])

    # KEDA creates the HPA of each scaled Deployment: a CPU HPA next to it would fight it.
    assert objects("HorizontalPodAutoscaler") == []
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in objects("ScaledObject")}
    assert set(scaled) == set(queues), "exactly one ScaledObject per worker Deployment"
    (auth,) = objects("TriggerAuthentication")
    for name, scaler in scaled.items():
        spec = scaler["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec["scaleTargetRef"].get("apiVersion", "apps/v1") == "apps/v1"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], f"{name}: never scale a queue to zero"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queues[name].split(",")[0], f"{name} scales on another queue"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 300, f"{name}: scale-down drains jobs; keep it slow"


def test_keda_reads_the_broker_the_workers_use() -> None:
    """KEDA's Redis address and database index are those of CELERY_BROKER_URL."""
    broker = urlparse(app_secret()["stringData"]["CELERY_BROKER_URL"])
    assert broker.scheme == "redis"
    (keda_secret,) = [doc for doc in objects("Secret") if doc["metadata"]["name"] == "terminus-keda-redis"]
    assert keda_secret["stringData"]["address"] == f"{broker.hostname}:{broker.port}"
    (auth,) = objects("TriggerAuthentication")
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert refs == {"address": ("terminus-keda-redis", "address"), "password": ("terminus-keda-redis", "password")}
    for scaler in objects("ScaledObject"):
        assert scaler["spec"]["triggers"][0]["metadata"]["databaseIndex"] == (broker.path.strip("/") or "0")


def test_workers_serve_their_metrics_on_a_named_port() -> None:
    for worker in objects("Deployment", "worker"):
        template = worker["spec"]["template"]
        (container,) = template["spec"]["containers"]
        env = env_of(container)
        port = int(env["TERMINUS_WORKER_METRICS_PORT"])
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert any(env["PROMETHEUS_MULTIPROC_DIR"].startswith(path + "/") for path in mounts), "read-only root"


def test_worker_readiness_is_the_worker_healthcheck_and_no_liveness_probe_restarts_them() -> None:
    """A worker is ready while it answers, beats and the repair loop runs (deploy/healthcheck.py worker);
    a liveness probe would restart every worker, and kill their jobs, in a broker or database outage."""
    for worker in objects("Deployment", "worker"):
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["exec"]["command"] == ["python", "/app/deploy/healthcheck.py", "worker"]
        assert container["readinessProbe"]["timeoutSeconds"] > 5, "the ping alone may take HEALTHCHECK_TIMEOUT (5 s)"
        assert "livenessProbe" not in container


def test_web_probes_hit_routed_health_endpoints_with_an_allowed_host() -> None:
    (web,) = objects("Deployment", "web")
    (container,) = web["spec"]["template"]["spec"]["containers"]
    allowed_hosts = k8s_configmap()["ALLOWED_HOSTS"].split(",")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        http = container[probe]["httpGet"]
        path = urlparse(http["path"]).path
        assert resolve(path).url_name in {"healthz", "readyz"}, f"{probe}: {http['path']} is not a health endpoint"
        assert http["port"] == "http"
        hosts = [h["value"] for h in http.get("httpHeaders", []) if h["name"].lower() == "host"]
        assert hosts and hosts[0] in allowed_hosts, f"{probe}: Django answers 400 unless Host is allowed"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Readiness: /readyz, restricted to what the API needs to take jobs (the database), so a grown
    # DLQ or a stopped beat never takes every web pod out of the Service.
    readiness = urlparse(container["readinessProbe"]["httpGet"]["path"])
    assert readiness.path == "/readyz"
    checks = parse_qs(readiness.query)["check"][0].split(",")
    assert checks == ["database"] and set(checks) <= set(HEALTH_CHECKS)
    (service,) = objects("Service")
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert {"name": "http", "containerPort": 8000} in container["ports"]


def test_pods_run_as_the_images_non_root_user() -> None:
    uid = int(re.search(r"^ARG APP_UID=(\d+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1))
    assert uid != 0
    for name, spec in pod_specs():
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == uid, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
    for name, container in containers():
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        assert security.get("runAsUser", uid) != 0, name


def test_every_container_has_requests_and_limits() -> None:
    for name, container in containers():
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name


def test_only_the_migration_job_migrates() -> None:
    assert k8s_configmap()["RUN_MIGRATIONS"] == "0"
    migrating = [name for name, c in containers() if env_of(c).get("RUN_MIGRATIONS") == "1"]
    (job,) = objects("Job")
    assert migrating == [f"Job/{job['metadata']['name']}/migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"].get("parallelism", 1) == 1


def test_commands_are_deploy_scripts_or_manage_py() -> None:
    for name, container in containers():
        args = container["args"]
        if args[0].startswith(IMAGE_DEPLOY):
            assert (DEPLOY / args[0].removeprefix(IMAGE_DEPLOY)).is_file(), name
        else:
            assert args[:2] == ["python", "/app/manage.py"], name
        assert "command" not in container, f"{name}: keep the image's entrypoint (waits for the database)"


def test_config_and_secret_keys_are_read_by_settings_or_a_deploy_script() -> None:
    secret = app_secret()
    keys = list(k8s_configmap()) + list(secret["stringData"])
    keys += [item["name"] for _, container in containers() for item in container.get("env", [])]
    assert not unknown_env_names(keys), unknown_env_names(keys)
    assert k8s_configmap()["TERMINUS_ENV"] == "production"
    assert {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"} <= set(secret["stringData"])
    for key, value in secret["stringData"].items():
        assert value == "" or "CHANGE-ME" in value, f"{key}: the Secret holds placeholders only"
    for other in objects("Secret"):
        assert other["stringData"].get("password", "CHANGE-ME") == "CHANGE-ME", other["metadata"]["name"]
    for _, container in containers():
        refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
        assert refs == ["terminus-config", secret["metadata"]["name"]]
