"""The template as CloudFormation receives it (SAM's transform, run offline in .venv-sam), and what
a deployment with given parameter values creates from it."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

OLD_TEMPLATE = ROOT / "tests" / "data" / "template-before-deploy-review.yaml"
SAM_PYTHON = ROOT / ".venv-sam" / "bin" / "python"
Template = dict[str, Any]


def transformed(path: Path = ROOT / "template.yaml", parameters: dict[str, str] | None = None) -> Template:
    """The template after SAM's transform, with these parameter values (SAM resolves some of them
    at transform time, so each documented environment gets its own transform)."""
    return _transformed(path, tuple(sorted((parameters or {}).items())))


@cache
def _transformed(path: Path, parameters: tuple[tuple[str, str], ...]) -> Template:
    completed = subprocess.run(
        [str(SAM_PYTHON), str(ROOT / "tests" / "tools" / "sam_transform.py"), str(path)]
        + [f"{name}={value}" for name, value in parameters],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: Template = json.loads(completed.stdout)
    return result


def samconfig_parameters(env: str) -> dict[str, str]:
    overrides = tomllib.loads((ROOT / "samconfig.toml").read_text())[env]["deploy"]["parameters"]["parameter_overrides"]
    return dict(re.findall(r'(\w+)="([^"]*)"', overrides))


# -- evaluating what CloudFormation would create, for given parameter values ---------------------


class Deployment:
    """The resources and properties that a deployment with these parameter values creates."""

    def __init__(self, template: Template, overrides: dict[str, str] | None = None) -> None:
        self.template = template
        self.params = {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}
        self.params.update({k: v for k, v in (overrides or {}).items() if k in self.params})
        self.conditions = {name: self.value(expr) for name, expr in template.get("Conditions", {}).items()}
        self.resources = {
            name: self.value({k: v for k, v in r.items() if k != "Condition"})
            for name, r in template["Resources"].items()
            if "Condition" not in r or self.conditions[r["Condition"]]
        }

    def value(self, node: Any) -> Any:
        """Resolve Fn::If, conditions and parameter Refs; leave other intrinsics as they are."""
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v != _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, arg)] = node.items()
            if key == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self._condition(name) else no)
            if key == "Fn::Equals":
                left, right = (str(self.value(a)) for a in arg)
                return left == right
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::And":
                return all(self.value(a) for a in arg)
            if key == "Fn::Or":
                return any(self.value(a) for a in arg)
            if key == "Condition":
                return self._condition(arg)
            if key == "Ref" and arg == "AWS::NoValue":
                return _NO_VALUE
            if key == "Ref" and arg in self.params:
                return self.params[arg]
            if key == "Fn::FindInMap":
                mapping, first, second = (self.value(a) for a in arg)
                return self.template["Mappings"][mapping][str(first)][second]
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v != _NO_VALUE}

    def _condition(self, name: str) -> bool:
        if name not in getattr(self, "conditions", {}):
            return bool(self.value(self.template["Conditions"][name]))
        return bool(self.conditions[name])

    def of_type(self, kind: str) -> dict[str, Template]:
        return {name: r for name, r in self.resources.items() if r["Type"] == kind}

    def role_statements(self, role: str) -> list[Template]:
        policies = self.resources[role]["Properties"].get("Policies", [])
        return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


_NO_VALUE = object()


def refs(node: Any) -> set[str]:
    """Every resource or parameter a node names by Ref, GetAtt or ${} in Sub."""
    if isinstance(node, list):
        return set().union(*(refs(n) for n in node)) if node else set()
    if isinstance(node, str):
        return set(re.findall(r"\$\{([A-Za-z0-9]+)", node))
    if not isinstance(node, dict):
        return set()
    found: set[str] = set()
    for key, value in node.items():
        if key == "Ref" and isinstance(value, str):
            found.add(value)
        elif key == "Fn::GetAtt":
            found.add(value[0] if isinstance(value, list) else value.split(".")[0])
        found |= refs(value)
    return found


def actions(statement: Template) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


# -- what each reference names, in a deployment ------------------------------------------------------

REGION, ACCOUNT = "eu-west-1", "123456789012"


class Names:
    """The physical names and ARNs a deployment's references resolve to: `Ref`, `Fn::GetAtt`,
    `Fn::Sub`, `Fn::Join`, `Fn::Select`/`Fn::Split` and the pseudo parameters, over the resources
    of a Deployment. A resource without a name of its own gets one as CloudFormation would make
    it (stack name, logical id, a suffix); `known` pins the names of resources that exist (moto's)."""

    def __init__(self, deployment: Deployment, stack: str = "account-ops", known: dict[str, str] | None = None):
        self.d, self.stack = deployment, stack
        self.known = known or {}
        self.pseudo = {
            "AWS::StackName": stack,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack}/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        }

    def name(self, logical: str) -> str:
        if logical in self.known:
            return self.known[logical]
        resource = self.d.resources[logical]
        props = resource.get("Properties", {})
        for key in _NAME_PROPERTIES.get(resource["Type"], ()):
            if key in props:
                return str(self.resolve(props[key]))
        return f"{self.stack}-{logical}-1A2B3C4D5E6F"

    def ref(self, logical: str) -> str:
        if logical in self.pseudo:
            return self.pseudo[logical]
        if logical in self.d.params:
            return self.d.params[logical]
        kind = self.d.resources[logical]["Type"]
        if kind in ("AWS::SecretsManager::Secret", "AWS::SNS::Topic"):
            return self.attribute(logical, "Arn")
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{self.name(logical)}"
        if kind == "AWS::ApiGateway::RestApi":
            return "abc123defg"
        return self.name(logical)

    def attribute(self, logical: str, attribute: str) -> str:
        kind, name = self.d.resources[logical]["Type"], self.name(logical)
        arns = {
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
            "AWS::SecretsManager::Secret": name
            if name.startswith("arn:")
            else f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf",
            "AWS::SNS::Topic": f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}",
            "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
            "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}",
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{name}",
            "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*",
            "AWS::Scheduler::Schedule": f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/{name}",
            "AWS::CloudWatch::Alarm": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}",
        }
        if attribute in ("Arn", "TopicArn") and kind in arns:
            return arns[kind]
        if attribute == "QueueName" or attribute == "TopicName" or attribute == "Name":
            return name
        if attribute == "QueueUrl":
            return self.ref(logical)
        if attribute == "RootResourceId":
            return "root123"
        return f"{logical}.{attribute}"

    def resolve(self, node: Any) -> Any:
        node = self.d.value(node)
        if isinstance(node, list):
            return [self.resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, arg)] = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.attribute(logical, attribute)
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
                return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub(m.group(1), variables), text)
            if key == "Fn::Join":
                separator, parts = arg
                return separator.join(str(p) for p in self.resolve(parts))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                separator, text = arg
                return str(self.resolve(text)).split(separator)
            if key == "Fn::ToJsonString":
                return json.dumps(self.resolve(arg))
        return {k: self.resolve(v) for k, v in node.items()}

    def _sub(self, name: str, variables: dict[str, Any]) -> str:
        if name in variables:
            return str(variables[name])
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if "." in name and name.split(".", 1)[0] in self.d.resources:
            logical, attribute = name.split(".", 1)
            return self.attribute(logical, attribute)
        return self.ref(name)


_NAME_PROPERTIES = {
    "AWS::DynamoDB::Table": ("TableName",),
    "AWS::SecretsManager::Secret": ("Name",),
    "AWS::SNS::Topic": ("TopicName",),
    "AWS::SQS::Queue": ("QueueName",),
    "AWS::Lambda::Function": ("FunctionName",),
    "AWS::IAM::Role": ("RoleName",),
    "AWS::Logs::LogGroup": ("LogGroupName",),
    "AWS::Scheduler::Schedule": ("Name",),
    "AWS::CloudWatch::Alarm": ("AlarmName",),
    "AWS::CloudWatch::Dashboard": ("DashboardName",),
    "AWS::ApiGateway::RestApi": ("Name",),
}


def iam_matches(pattern: str, value: str) -> bool:
    """IAM's wildcard match: `*` any run of characters, `?` one character; case-sensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def allowed(statements: list[Template], names: Names, action: str, resource: str) -> bool:
    """Whether these Allow statements let `action` on `resource` (conditions are judged apart)."""
    for statement in statements:
        if statement.get("Effect", "Allow") != "Allow":
            continue
        if not any(iam_matches(a.lower(), action.lower()) for a in actions(statement)):
            continue
        targets = names.resolve(statement.get("Resource", []))
        for target in targets if isinstance(targets, list) else [targets]:
            if isinstance(target, str) and iam_matches(target, resource):
                return True
    return False
