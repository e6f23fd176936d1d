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


@cache
def transformed(path: Path = ROOT / "template.yaml") -> Template:
    completed = subprocess.run(
        [str(SAM_PYTHON), str(ROOT / "tests" / "tools" / "sam_transform.py"), str(path)],
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
