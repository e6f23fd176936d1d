"""Rotation of the Vonage API secret by Secrets Manager's four-step protocol.

Vonage allows two secrets per account: the slots hold AWSCURRENT and AWSPREVIOUS. The slot of
PREVIOUS is freed at the start of the next rotation, so readers that cached the old value keep
working until then. Every step is safe to run again after a crash at any point:

- createSecret checks that AWSCURRENT authenticates (fail closed), resolves its Vonage id, frees
  PREVIOUS's slot, records an intent on the secret (a tag), creates the new secret at Vonage and
  stores value and id together as AWSPENDING (a version is written once: Secrets Manager versions
  are immutable). A Vonage secret created by an attempt that died before its id was stored is
  recognised by the intent and revoked; nobody holds its value.
- setSecret verifies that the pending secret exists at Vonage.
- testSecret authenticates with the pending value.
- finishSecret moves AWSCURRENT to the new version (Secrets Manager marks the old one AWSPREVIOUS).

Never revoked: AWSCURRENT's id, and any secret this rotation did not create that is not PREVIOUS.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from . import aws_clients, deadline, errors
from .client import API_BASE_URL, REST_BASE_URL, AccountClient, ClientOptions
from .config import timeouts
from .credentials import parse_credentials
from .models import Credentials, SecretInfo
from .observability import MetricUnit, logger, metrics

INTENT_TAG = "account-ops:rotation-intent"
ALPHABET = string.ascii_letters + string.digits


# Vonage's created_at and our clock may disagree by this much.
CLOCK_SKEW_SECONDS = 30


class Intent(BaseModel):
    """The intent tag: which attempt is creating a Vonage secret, from when, until when at most."""

    token: str
    tagged_at: float
    until: float


class RotationError(Exception):
    """Rotation cannot proceed safely; the message says why and what to do. No secret inside."""


class RotationEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    step: Literal["createSecret", "setSecret", "testSecret", "finishSecret"] = Field(alias="Step")
    secret_id: str = Field(alias="SecretId", min_length=1)
    token: str = Field(alias="ClientRequestToken", min_length=1)


class RotationSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    secret_length: int = Field(default=25, ge=8, le=25)
    primary_secret_arn: str | None = None
    rest_base_url: str = REST_BASE_URL
    api_base_url: str = API_BASE_URL

    @classmethod
    def from_environment(cls) -> RotationSettings:
        try:
            return cls(
                secret_length=int(os.environ.get("ROTATION_SECRET_LENGTH") or 25),
                primary_secret_arn=os.environ.get("VONAGE_PRIMARY_SECRET_ARN") or None,
                rest_base_url=os.environ.get("VONAGE_REST_BASE_URL") or REST_BASE_URL,
                api_base_url=os.environ.get("VONAGE_API_BASE_URL") or API_BASE_URL,
            )
        except (ValueError, ValidationError):
            raise RotationError("ROTATION_SECRET_LENGTH must be a whole number from 8 to 25") from None


def generate_secret(length: int = 25) -> str:
    """A new API secret from a cryptographic source that always meets Vonage's rules."""
    if not 8 <= length <= 25:
        raise ValueError("length must be 8-25")
    required = [
        secrets.choice(string.ascii_lowercase),
        secrets.choice(string.ascii_uppercase),
        secrets.choice(string.digits),
    ]
    chars = required + [secrets.choice(ALPHABET) for _ in range(length - len(required))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def _not_configured(step: str) -> None:
    """The secret still holds the first deploy's placeholder: a state to report, not a failure to
    retry, and nothing to send to Vonage."""
    logger.warning(
        "not configured: the Vonage secret still holds the placeholder; nothing to rotate (README, Deploy)",
        step=step,
    )
    metrics.add_metric(name="NotConfigured", unit=MetricUnit.Count, value=1)


class Rotator:
    def __init__(self, settings: RotationSettings, sm: Any = None, options: ClientOptions | None = None) -> None:
        self.sm = sm or aws_clients.client("secretsmanager")
        self.settings = settings
        self.options = options or ClientOptions.from_timeouts(timeouts())

    @classmethod
    def from_environment(cls) -> Rotator:
        return cls(RotationSettings.from_environment())

    # -- entry -----------------------------------------------------------------------------------

    def handle(self, event: RotationEvent) -> None:
        metrics.add_metric(name="RotationStep", unit=MetricUnit.Count, value=1)
        try:
            self._handle(event)
        except Exception as exc:
            metrics.add_metric(name="RotationFailed", unit=MetricUnit.Count, value=1)
            reason = str(exc) if isinstance(exc, RotationError | errors.AccountApiError) else type(exc).__name__
            logger.error("rotation step failed", step=event.step, error=type(exc).__name__, reason=reason)
            raise

    def _handle(self, event: RotationEvent) -> None:
        """The entry checks of AWS's rotation template, then the step."""
        arn, token = event.secret_id, event.token
        metadata = self.sm.describe_secret(SecretId=arn)
        if not metadata.get("RotationEnabled"):
            raise RotationError(f"rotation is not enabled for the secret {metadata.get('Name', '')}")
        versions: dict[str, list[str]] = metadata.get("VersionIdsToStages", {})
        if token not in versions:
            raise RotationError(f"version {token} is not a version of this secret: refusing to act")
        if "AWSCURRENT" in versions[token]:
            if "AWSPENDING" in versions[token]:  # an earlier finishSecret died between its two updates
                self.sm.update_secret_version_stage(SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=token)
            logger.info("version already AWSCURRENT: nothing to do", step=event.step)
            return
        if "AWSPENDING" not in versions[token]:
            raise RotationError(f"version {token} is not staged AWSPENDING: refusing to act")
        if event.step == "createSecret":
            metrics.add_metric(name="RotationStarted", unit=MetricUnit.Count, value=1)
        logger.info("rotation step", step=event.step)
        getattr(self, f"_{event.step}")(arn, token)

    # -- the four steps --------------------------------------------------------------------------

    def _createSecret(self, arn: str, token: str) -> None:
        current = self._read(arn, stage="AWSCURRENT")
        assert current is not None
        pending = self._read(arn, version_id=token)
        if current.is_placeholder:
            # Nothing to rotate: the pending version is the placeholder again, so the later steps
            # (and Secrets Manager's configuration test on a first deploy) pass without Vonage.
            _not_configured("createSecret")
            if pending is None:
                raw = self.sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["SecretString"]
                self.sm.put_secret_value(
                    SecretId=arn, ClientRequestToken=token, SecretString=raw, VersionStages=["AWSPENDING"]
                )
            return
        if pending is not None and pending.model_extra and pending.model_extra.get("rotation_token") == token:
            if pending.secret_id and pending.secret_id in self._ids(self._manager(current), current):
                logger.info("pending secret already created", secret_id=pending.secret_id)
                return
            raise RotationError(
                "the pending version's Vonage secret no longer exists; cancel this rotation "
                "(aws secretsmanager cancel-rotate-secret) and rotate again"
            )
        self._check_authenticates(current, "AWSCURRENT")
        manager = self._manager(current)
        listed = self._list(manager, current)
        current_id = self._current_id(arn, current, listed)
        # PREVIOUS's id: the version actually staged AWSPREVIOUS says it (also after an operator's
        # roll-back moved the stages). Only an adopted secret has no id in its own JSON, which
        # cannot be changed; the rotation that made it PREVIOUS recorded it in AWSCURRENT's JSON.
        previous = self._read(arn, stage="AWSPREVIOUS")
        previous_id = (previous.secret_id if previous else None) or (current.model_extra or {}).get(
            "previous_secret_id"
        )
        if previous_id == current_id:
            previous_id = None
        intent = self._intent(arn)
        for info in listed:
            if info.id == current_id:
                continue
            if info.id == previous_id:
                self._revoke(manager, current, info.id, "freeing the slot of AWSPREVIOUS")
            elif self._created_by_unfinished_rotation(arn, token, intent, info):
                self._revoke(manager, current, info.id, "revoking the secret of a rotation attempt that never finished")
            else:
                raise RotationError(
                    f"the account has a second API secret ({info.id}) that is neither AWSCURRENT nor AWSPREVIOUS "
                    "and that this rotation did not create; revoke it (if unused) in the Vonage dashboard or with "
                    "DELETE /accounts/{api_key}/secrets/{id}, then rotation resumes. Nothing was revoked."
                )
        self._tag_intent(arn, token)
        value = generate_secret(self.settings.secret_length)
        created = manager.create_api_secret(value, api_key=current.api_key)
        metrics.add_metric(name="RotationSecretCreated", unit=MetricUnit.Count, value=1)
        fields = json.loads(current.to_secret_string())  # everything else (topup_trx, ...) carried over
        fields.update(api_secret=value, secret_id=created.id, rotation_token=token, previous_secret_id=current_id)
        self.sm.put_secret_value(
            SecretId=arn, ClientRequestToken=token, SecretString=json.dumps(fields), VersionStages=["AWSPENDING"]
        )
        logger.info("new Vonage secret created and stored as AWSPENDING", secret_id=created.id)

    def _setSecret(self, arn: str, token: str) -> None:
        # The secret was created at Vonage in createSecret (its id must be stored with its value).
        current = self._read(arn, stage="AWSCURRENT")
        if current is not None and current.is_placeholder:
            _not_configured("setSecret")
            return
        pending = self._pending(arn, token)
        assert current is not None
        if pending.secret_id not in self._ids(self._manager(current), current):
            raise RotationError("the pending Vonage secret does not exist: cancel this rotation and rotate again")

    def _testSecret(self, arn: str, token: str) -> None:
        # Also Secrets Manager's configuration test (RotateImmediately=false), which stages a copy
        # of the current value as AWSPENDING and calls only this step: test whatever is pending.
        pending = self._read(arn, version_id=token)
        if pending is None:
            raise RotationError("the AWSPENDING version holds no value: createSecret has not completed")
        if pending.is_placeholder:
            _not_configured("testSecret")
            return
        self._check_authenticates(pending, "AWSPENDING")
        metrics.add_metric(name="RotationTested", unit=MetricUnit.Count, value=1)

    def _finishSecret(self, arn: str, token: str) -> None:
        versions: dict[str, list[str]] = self.sm.describe_secret(SecretId=arn)["VersionIdsToStages"]
        current_version = next((v for v, stages in versions.items() if "AWSCURRENT" in stages), None)
        if current_version != token:
            self.sm.update_secret_version_stage(
                SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=current_version
            )
        self.sm.update_secret_version_stage(SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=token)
        self._clear_intent(arn)
        metrics.add_metric(name="RotationFinished", unit=MetricUnit.Count, value=1)
        logger.info("rotation finished: new secret is AWSCURRENT")

    # -- helpers ---------------------------------------------------------------------------------

    def _read(self, arn: str, *, stage: str | None = None, version_id: str | None = None) -> Credentials | None:
        kwargs: dict[str, Any] = {"SecretId": arn}
        if version_id:
            kwargs["VersionId"] = version_id
        if stage:
            kwargs["VersionStage"] = stage
        try:
            response = self.sm.get_secret_value(**kwargs)
        except Exception as exc:
            if aws_clients.error_code(exc) == "ResourceNotFoundException":
                return None
            raise
        return parse_credentials(response.get("SecretString") or "")

    def _pending(self, arn: str, token: str) -> Credentials:
        pending = self._read(arn, version_id=token)
        if pending is None or not pending.model_extra or pending.model_extra.get("rotation_token") != token:
            raise RotationError("the AWSPENDING version holds no new secret: createSecret has not completed")
        return pending

    def _client(self, creds: Credentials, secret: SecretStr | None = None) -> AccountClient:
        return AccountClient(
            api_key=creds.api_key,
            api_secret=secret or creds.api_secret,
            rest_base_url=self.settings.rest_base_url,
            api_base_url=self.settings.api_base_url,
            options=self.options,
        )

    def _manager(self, current: Credentials) -> AccountClient:
        """Who manages the secrets: the primary account for a subaccount (a fleet subaccount's own
        secret names its primary's secret; the stack's, PrimarySecretArn), else the account itself
        with its current secret."""
        primary_arn = current.primary_secret_arn or self.settings.primary_secret_arn
        if primary_arn:
            primary = self._read(primary_arn, stage="AWSCURRENT")
            if primary is None:
                raise RotationError("the primary account's secret has no AWSCURRENT value")
            return self._client(primary)
        return self._client(current)

    def _list(self, manager: AccountClient, current: Credentials) -> list[SecretInfo]:
        return manager.retrieve_api_secrets(api_key=current.api_key)

    def _ids(self, manager: AccountClient, current: Credentials) -> set[str]:
        return {info.id for info in self._list(manager, current)}

    def _check_authenticates(self, creds: Credentials, label: str) -> None:
        try:
            self._client(creds).get_account_balance()
        except errors.AuthenticationError:
            raise RotationError(
                f"{label} does not authenticate at Vonage: refusing to rotate, nothing was revoked"
            ) from None

    def _current_id(self, arn: str, current: Credentials, listed: list[SecretInfo]) -> str:
        ids = [info.id for info in listed]
        if current.secret_id in ids:
            return current.secret_id
        if len(ids) == 1:
            logger.info("adopting the account's only secret id for AWSCURRENT", secret_id=ids[0])
            return ids[0]
        raise RotationError(
            "AWSCURRENT has no known secret_id and the account has two API secrets, so the one it holds cannot be "
            'told apart. Add "secret_id" to the secret\'s JSON (GET /secrets lists the ids), or revoke the unused '
            "secret in the Vonage dashboard, then rotate again. Nothing was revoked."
        )

    def _revoke(self, manager: AccountClient, current: Credentials, secret_id: str, why: str) -> None:
        assert secret_id != current.secret_id
        logger.info(why, secret_id=secret_id)
        try:
            manager.revoke_api_secret(secret_id, api_key=current.api_key)
        except errors.SecretNotFoundError:
            logger.info("already revoked", secret_id=secret_id)

    def _intent(self, arn: str) -> Intent | None:
        tags = self.sm.describe_secret(SecretId=arn).get("Tags", [])
        value = next((t["Value"] for t in tags if t.get("Key") == INTENT_TAG), "")
        token, _, stamps = value.partition("|")
        tagged, _, until = stamps.partition("|")
        if not 32 <= len(token) <= 64:  # not a version id of ours: a tag nobody should act on
            return None
        try:
            return Intent(token=token, tagged_at=float(tagged), until=float(until or tagged))
        except ValueError:
            return None

    def _created_by_unfinished_rotation(self, arn: str, token: str, intent: Intent | None, info: SecretInfo) -> bool:
        """Whether a Vonage secret is the orphan of a rotation attempt that never finished. Proven
        when the attempt's own pending version holds its id. Otherwise (the attempt died between
        creating the secret and storing its id) only for a retry of that same attempt (the same
        token: Secrets Manager retries a rotation with it), and only for a secret created while the
        attempt could still run, between its intent tag and its deadline. Nobody reads a secret that
        never became AWSCURRENT, so revoking it loses nothing. Anything else (a stale tag of another
        attempt, a secret an operator added) is not ours: refuse, revoke nothing."""
        if intent is None:
            return False
        stored = self._read(arn, version_id=intent.token)
        if stored is not None and (stored.model_extra or {}).get("rotation_token") == intent.token:
            return stored.secret_id == info.id
        if intent.token != token:
            return False
        created = info.created_at.timestamp()
        return intent.tagged_at - CLOCK_SKEW_SECONDS <= created <= intent.until + CLOCK_SKEW_SECONDS

    def _tag_intent(self, arn: str, token: str) -> None:
        now = time.time()
        until = now + (deadline.remaining() or 900.0)  # the attempt cannot create anything after this
        self.sm.tag_resource(SecretId=arn, Tags=[{"Key": INTENT_TAG, "Value": f"{token}|{now:.0f}|{until:.0f}"}])

    def _clear_intent(self, arn: str) -> None:
        self.sm.untag_resource(SecretId=arn, TagKeys=[INTENT_TAG])
