"""Where the commands go: a deployed stack (found by its CloudFormation outputs) or the local stack.

Every AWS call uses boto3 with the standard credential chain (environment, profiles, SSO, container
credentials); the settings API is called with botocore's SigV4 signer. No signing code of ours.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

AWS_CONFIG = Config(connect_timeout=5, read_timeout=35, retries={"mode": "standard", "total_max_attempts": 3})
API_TIMEOUT = (5.0, 35.0)  # API Gateway answers within 29 s


class TargetError(Exception):
    """The stack, its outputs or the local stack cannot be found; the message says what to do."""


@dataclass
class ApiAnswer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Target:
    name: str
    api_url: str
    region: str
    session: Any
    outputs: dict[str, str]
    parameters: dict[str, str]
    local: bool = False
    endpoint: str | None = None  # moto's server, for the local stack

    @classmethod
    def from_stack(cls, stack: str, region: str | None, profile: str | None) -> Target:
        session = boto3.Session(profile_name=profile, region_name=region)
        if not session.region_name:
            raise TargetError("no region: pass --region or set AWS_REGION (or a profile's region)")
        cloudformation = session.client("cloudformation", config=AWS_CONFIG)
        try:
            [described] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except Exception as exc:
            raise TargetError(
                f"cannot read the stack {stack!r} in {session.region_name} ({type(exc).__name__})"
            ) from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        if "SettingsApiUrl" not in outputs:
            raise TargetError(f"the stack {stack!r} has no SettingsApiUrl output: is it an account-ops stack?")
        parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
        return cls(stack, outputs["SettingsApiUrl"].rstrip("/"), session.region_name, session, outputs, parameters)

    @classmethod
    def from_local(cls, state_file: Path) -> Target:
        if not state_file.exists():
            raise TargetError("no local stack is running: start it with `make local` (in another terminal) first")
        state = json.loads(state_file.read_text())
        env: dict[str, str] = state["env"]
        session = boto3.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        outputs = {
            "SettingsApiUrl": state["api_url"],
            "AlertTopicArn": env["ALERT_TOPIC_ARN"],
            "VonageSecretArn": env["VONAGE_SECRET_ARN"],
        }
        parameters = {"DryRun": env.get("DRY_RUN", "false")}
        return cls(
            "local stack",
            state["api_url"].rstrip("/"),
            env["AWS_DEFAULT_REGION"],
            session,
            outputs,
            parameters,
            True,
            env["AWS_ENDPOINT_URL"],
        )

    def client(self, service: str) -> Any:
        return self.session.client(service, config=AWS_CONFIG, endpoint_url=self.endpoint)

    def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> ApiAnswer:
        """One SigV4-signed request to the settings API (the local stack ignores the signature)."""
        url = self.api_url + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = AWSRequest(method=method, url=url, data=data, headers=headers, params=query or {})
        credentials = self.session.get_credentials()
        if credentials is None:
            raise TargetError("no AWS credentials: configure a profile, SSO or environment credentials")
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(request)
        prepared = request.prepare()
        response = requests.request(
            method, prepared.url, headers=dict(prepared.headers), data=data, timeout=API_TIMEOUT, allow_redirects=False
        )
        try:
            parsed: Any = response.json() if response.content else None
        except ValueError:
            parsed = response.text[:500]
        return ApiAnswer(response.status_code, parsed, dict(response.headers))


def default_state_file() -> Path:
    return Path(os.environ.get("ACCOUNT_OPS_LOCAL_STATE") or Path.cwd() / ".local-stack.json")
