"""Print the template as CloudFormation receives it: SAM's transform, run offline.

    .venv-sam/bin/python tests/tools/sam_transform.py template.yaml [Name=Value ...]

Runs in the SAM CLI's environment (.venv-sam: samtranslator pins its own pydantic). Local CodeUri
and ContentUri become s3:// placeholders, as `sam package` would make them; managed policies are
resolved to placeholder ARNs (no AWS call).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class _OfflinePolicyLoader:
    """SAM asks for the ARN of each AWS managed policy a function names; answer without AWS."""

    def load(self) -> dict[str, str]:
        return {}


def _packaged(template: dict[str, Any]) -> dict[str, Any]:
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = f"s3://account-ops-artifacts/{props[key].strip('/').replace('/', '-')}.zip"
    return template


def main(argv: list[str]) -> int:
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")  # the transform's pseudo parameters; no AWS call
    path, *assignments = argv
    with open(path) as handle:
        template = _packaged(yaml_parse(handle.read()))
    parameters: dict[str, Any] = {"AWS::Region": "eu-west-1", "AWS::Partition": "aws", "AWS::AccountId": "123456789012"}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        parameters[name] = value
    print(json.dumps(transform(template, parameters, _OfflinePolicyLoader()), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
