"""Secrets Manager's rotation trigger, without Docker.

moto's Secrets Manager starts a rotation (a new version staged AWSPENDING) and invokes the
rotation function's four steps through its Lambda backend, which runs functions in Docker. This
module lets it call a Python callable instead, in-process, for the local stack and the tests.
`reattempt` retries a rotation that failed, with the same token, as Secrets Manager does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
Invoke = Callable[[dict[str, Any]], Any]

# Secrets whose RotateSecret is running its steps right now: a reattempt leaves them alone (it would
# run the same token's steps beside them), and never waits for them (the local stack's threads).
_rotating: set[str] = set()
_rotating_lock = threading.Lock()
_this_thread = threading.local()


def rotating(secret_arn: str) -> bool:
    with _rotating_lock:
        return secret_arn in _rotating


def install(functions: dict[str, Invoke], *, refuse_while_pending: bool = False) -> Callable[[], None]:
    """Route moto Lambda invocations of the given function ARNs to callables; returns an undo.

    With refuse_while_pending, RotateSecret on a secret whose last rotation did not complete (a
    version still AWSPENDING) is refused, as Secrets Manager refuses it (moto starts another), and
    a configuration test (RotateImmediately=false) leaves nothing staged, as in Secrets Manager.
    The local stack turns it on; the rotation tests drive Secrets Manager's retries themselves."""
    from moto.awslambda.models import LambdaBackend
    from moto.secretsmanager.exceptions import InvalidRequestException
    from moto.secretsmanager.models import SecretsManagerBackend

    original_get, original_invoke = LambdaBackend.get_function, LambdaBackend.invoke
    original_rotate = SecretsManagerBackend.rotate_secret

    def rotate_secret(
        self: Any,
        secret_id: str,
        client_request_token: str | None = None,
        rotation_lambda_arn: str | None = None,
        rotation_rules: dict[str, Any] | None = None,
        rotate_immediately: bool = True,
    ) -> Any:
        # Like Secrets Manager, RotateSecret without a function ARN uses the configured one (moto forgets it).
        secret: Any = self.secrets[secret_id] if self._is_valid_identifier(secret_id) else None
        if rotation_lambda_arn is None and secret is not None:
            rotation_lambda_arn = getattr(secret, "rotation_lambda_arn", "") or None
        if refuse_while_pending and secret is not None and rotate_immediately:
            stages = [v.get("version_stages", []) for v in secret.versions.values()]
            if any("AWSPENDING" in s and "AWSCURRENT" not in s for s in stages):
                raise InvalidRequestException("A previous rotation isn't complete. That rotation will be reattempted.")
        key = secret.arn if secret is not None else secret_id
        if getattr(_this_thread, "rotating", False):  # an install wrapped in another: the outer one marked it
            return original_rotate(
                self, secret_id, client_request_token, rotation_lambda_arn, rotation_rules, rotate_immediately
            )
        with _rotating_lock:  # one rotation at a time per secret: this one, or a reattempt
            if refuse_while_pending and key in _rotating:
                raise InvalidRequestException("A previous rotation isn't complete. That rotation will be reattempted.")
            _rotating.add(key)
        _this_thread.rotating = True
        try:
            answer = original_rotate(
                self, secret_id, client_request_token, rotation_lambda_arn, rotation_rules, rotate_immediately
            )
            if refuse_while_pending and not rotate_immediately and secret is not None:
                # Secrets Manager's configuration test leaves nothing staged; moto leaves its copy
                # AWSPENDING, and every later rotation would be refused as "not complete"
                for version in secret.versions.values():
                    stages = version.get("version_stages", [])
                    if "AWSPENDING" in stages and "AWSCURRENT" not in stages:
                        stages.remove("AWSPENDING")
            return answer
        finally:
            _this_thread.rotating = False
            with _rotating_lock:
                _rotating.discard(key)

    def get_function(self: Any, name: str, qualifier: str | None = None) -> Any:
        return name if name in functions else original_get(self, name, qualifier)

    def invoke(self: Any, name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any) -> Any:
        if name not in functions:
            return original_invoke(self, name, qualifier, body, headers, response_headers)
        functions[name](json.loads(body))
        return b""

    LambdaBackend.get_function = get_function  # type: ignore[method-assign,assignment]
    LambdaBackend.invoke = invoke  # type: ignore[method-assign,assignment]
    SecretsManagerBackend.rotate_secret = rotate_secret  # type: ignore[method-assign]

    def undo() -> None:
        SecretsManagerBackend.rotate_secret = original_rotate  # type: ignore[method-assign]
        LambdaBackend.get_function = original_get  # type: ignore[method-assign,assignment]
        LambdaBackend.invoke = original_invoke  # type: ignore[method-assign,assignment]

    return undo


def stage_configuration_test(sm: Any, secret_id: str) -> str:
    """What Secrets Manager's configuration test (RotateImmediately=false) stages for testSecret: a
    copy of the current value as AWSPENDING. Returns its token."""
    import uuid

    current = sm.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"]
    token = str(uuid.uuid4())
    sm.put_secret_value(
        SecretId=secret_id, ClientRequestToken=token, SecretString=current, VersionStages=["AWSPENDING"]
    )
    return token


def clear_configuration_test(sm: Any, secret_id: str) -> None:
    """moto leaves the configuration test's AWSPENDING version behind; Secrets Manager does not."""
    token = pending_token(sm, secret_id)
    if token:
        sm.update_secret_version_stage(SecretId=secret_id, VersionStage="AWSPENDING", RemoveFromVersionId=token)


def pending_token(sm: Any, secret_id: str) -> str | None:
    """The version staged AWSPENDING (also when a finishSecret that died left it on AWSCURRENT)."""
    versions = sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    return next((v for v, stages in versions.items() if "AWSPENDING" in stages), None)


def reattempt(sm: Any, secret_id: str, invoke: Invoke) -> bool:
    """Run the four steps again for the rotation left pending; False when none is pending, or when
    the pending one is still running (a RotateSecret in progress, not a failed one)."""
    token = pending_token(sm, secret_id)
    if token is None:
        return False
    with _rotating_lock:  # claimed in one step with the check: a RotateSecret meanwhile is refused
        if secret_id in _rotating:
            return False  # still running: that RotateSecret staged this token
        _rotating.add(secret_id)
    try:
        if pending_token(sm, secret_id) != token:
            return False  # it finished between the two reads
        for step in STEPS:
            invoke({"Step": step, "SecretId": secret_id, "ClientRequestToken": token})
        return True
    finally:
        with _rotating_lock:
            _rotating.discard(secret_id)
