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
from botocore import exceptions as boto
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from account_ops.errors import CliError, Exit, api_failure, aws_failure, no_credentials, one_line

AWS_CONFIG = Config(connect_timeout=5, read_timeout=35, retries={"mode": "standard", "total_max_attempts": 3})
API_TIMEOUT = (5.0, 35.0)  # API Gateway answers within 29 s
REPOSITORY = Path(__file__).resolve().parent.parent  # where `make local` writes its state file


@dataclass
class ApiAnswer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def json_ok(self) -> bool:
        """2xx with a JSON object: what every read route answers (anything else is a fault)."""
        return self.ok and isinstance(self.body, dict)


def session_for(profile: str | None, region: str | None) -> Any:
    """A boto3 session; the region from --region, AWS_REGION (which this botocore does not read
    itself), AWS_DEFAULT_REGION or the profile."""
    try:
        session = boto3.Session(profile_name=profile, region_name=region or os.environ.get("AWS_REGION") or None)
    except boto.ProfileNotFound:
        known = boto3.Session().available_profiles if not os.environ.get("AWS_PROFILE") else []
        raise CliError(
            Exit.CREDENTIALS,
            f"no profile {profile or os.environ.get('AWS_PROFILE')!r} in the AWS config files"
            f" (profiles there: {', '.join(sorted(known)) or 'none'})",
        ) from None
    if not session.region_name:
        raise CliError(
            Exit.USAGE,
            "no region: pass --region R or --config-env NAME, or set AWS_REGION, or give the profile a region",
        )
    known_regions = {
        r for p in session.get_available_partitions() for r in session.get_available_regions("cloudformation", p)
    }
    if session.region_name not in known_regions:
        raise CliError(Exit.USAGE, f"unknown region {session.region_name!r} (for example eu-west-1, us-east-1)")
    return session


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
    state_file: Path | None = None

    @classmethod
    def from_stack(cls, stack: str, region: str | None, profile: str | None) -> Target:
        session = session_for(profile, region)
        if session.get_credentials() is None:
            raise CliError(Exit.CREDENTIALS, no_credentials())
        cloudformation = session.client("cloudformation", config=AWS_CONFIG)
        where = f"{stack!r} in {session.region_name}"
        try:
            [described] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except boto.ClientError as exc:
            if "does not exist" in str(exc.response.get("Error", {}).get("Message", "")):
                raise CliError(Exit.NOT_FOUND, _not_found(cloudformation, stack, session.region_name)) from None
            raise aws_failure(exc, f"cannot read the stack {where}") from None
        except boto.BotoCoreError as exc:
            raise aws_failure(exc, f"cannot read the stack {where}") from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        if "SettingsApiUrl" not in outputs:
            raise CliError(
                Exit.NOT_FOUND, f"the stack {where} has no SettingsApiUrl output: it is not an account-ops stack"
            )
        parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
        return cls(stack, outputs["SettingsApiUrl"].rstrip("/"), session.region_name, session, outputs, parameters)

    @classmethod
    def from_local(cls, state_file: Path) -> Target:
        if not state_file.exists():
            raise CliError(
                Exit.NOT_FOUND,
                f"no local stack is running (no {state_file}): start it with `make local` in another terminal",
            )
        try:
            state = json.loads(state_file.read_text())
            env: dict[str, str] = state["env"]
            api_url = str(state["api_url"]).rstrip("/")
        except (ValueError, KeyError, TypeError):
            raise CliError(
                Exit.NOT_FOUND, f"{state_file} is not a local stack's state file: delete it and run `make local`"
            ) from None
        session = boto3.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        outputs = {
            "SettingsApiUrl": api_url,
            "AlertTopicArn": env["ALERT_TOPIC_ARN"],
            "VonageSecretArn": env["VONAGE_SECRET_ARN"],
        }
        parameters = {"DryRun": env.get("DRY_RUN", "false")}
        return cls(
            "local stack",
            api_url,
            env["AWS_DEFAULT_REGION"],
            session,
            outputs,
            parameters,
            local=True,
            endpoint=env["AWS_ENDPOINT_URL"],
            state_file=state_file,
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
        try:
            credentials = self.session.get_credentials()
        except boto.BotoCoreError as exc:
            raise aws_failure(exc, "reading the AWS credentials") from None
        if credentials is None:
            raise CliError(Exit.CREDENTIALS, no_credentials())
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(request)
        prepared = request.prepare()
        try:
            response = requests.request(
                method,
                prepared.url,
                headers=dict(prepared.headers),
                data=data,
                timeout=API_TIMEOUT,
                allow_redirects=False,
            )
        except requests.ConnectionError as exc:
            if self.local:  # the stack that wrote the state file is gone (killed, or the machine restarted)
                raise CliError(
                    Exit.NOT_FOUND,
                    f"the local stack in {self.state_file} does not answer at {self.api_url}: it is not running;"
                    " start it with `make local`",
                ) from None
            raise api_failure(exc, self.api_url) from None
        except requests.RequestException as exc:
            raise api_failure(exc, self.api_url) from None
        try:
            parsed: Any = response.json() if response.content else None
        except ValueError:
            parsed = one_line(response.text, 200)  # not JSON (a proxy's page): shown, never parsed
        return ApiAnswer(response.status_code, parsed, dict(response.headers))


def _not_found(cloudformation: Any, stack: str, region: str) -> str:
    """Say which account-ops stacks do exist in the region (those with a SettingsApiUrl output)."""
    try:
        found = [
            s["StackName"]
            for page in cloudformation.get_paginator("describe_stacks").paginate()
            for s in page["Stacks"]
            if any(o.get("OutputKey") == "SettingsApiUrl" for o in s.get("Outputs", []))
        ]
    except (boto.BotoCoreError, boto.ClientError):
        found = []
    there = f"account-ops stacks there: {', '.join(sorted(found))}" if found else "no account-ops stack there"
    return f"no stack {stack!r} in {region} ({there}): check --stack, --region or --config-env"


def default_state_file() -> Path:
    """`make local`'s state file: ACCOUNT_OPS_LOCAL_STATE, else the current folder's, else the
    repository's (so that --local works from any folder of the checkout)."""
    if os.environ.get("ACCOUNT_OPS_LOCAL_STATE"):
        return Path(os.environ["ACCOUNT_OPS_LOCAL_STATE"])
    here = Path.cwd() / ".local-stack.json"
    return here if here.exists() else REPOSITORY / ".local-stack.json"
