"""Rotation of the Vonage secret: moto for Secrets Manager (its rotate invokes our steps in-process,
see local/rotation_trigger.py) and the simulator over loopback. After every step and every retry
the invariants hold: AWSCURRENT authenticates, at most two Vonage secrets, AWSCURRENT's secret_id
exists, and nothing the rotation did not create (and that is not PREVIOUS) was revoked."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from account_api import AccountClient, ClientOptions, VonageAccount
from account_api.credentials import CredentialStore
from account_api.rotation import RotationError, RotationEvent, RotationSettings, Rotator, generate_secret
from local import rotation_trigger
from local import simulator as simmod
from tests.conftest import JsonLogs, LambdaContext, Sim, load_event, load_handler, vonage_secret_value

ROTATION_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:secret-rotation"
FAST = ClientOptions(connect_timeout=0.5, read_timeout=0.4, total_deadline=2.0, backoff_base=0.01, backoff_cap=0.02)


class FaultySecretsManager:
    """Wraps the boto3 client the rotation uses: raises once at the n-th call of a method,
    before or after the call took effect (the fault points of Secrets Manager)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []
        self.fault: tuple[int, str] | None = None  # (call index, "before" | "after")
        self.exceptions = client.exceptions

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(**kwargs: Any) -> Any:
            index = len(self.calls)
            self.calls.append(name)
            if self.fault == (index, "before"):
                raise RuntimeError(f"injected fault before {name}")
            result = method(**kwargs)
            if self.fault == (index, "after"):
                raise RuntimeError(f"injected fault after {name}")
            return result

        return call


class Harness:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.sm = boto3.client("secretsmanager")
        self.faulty = FaultySecretsManager(self.sm)
        [first_id] = sim.account()["secret_ids"]
        self.arn = self.sm.create_secret(
            Name="account-ops/vonage", SecretString=vonage_secret_value(secret_id=first_id, note="kept")
        )["ARN"]
        settings = RotationSettings(rest_base_url=sim.url, api_base_url=sim.url)
        self.rotator = Rotator(settings, sm=self.faulty, options=FAST)
        self.protected: set[str] = set()  # ids the rotation did not create and must never revoke
        self.seen_ids: set[str] = {first_id}
        self.errors: list[Exception] = []

    def invoke(self, event: dict[str, Any]) -> None:
        try:
            self.rotator.handle(RotationEvent.model_validate(event))
        except Exception as exc:
            self.errors.append(exc)  # moto's server answers 500 to RotateSecret; the reason is here
            raise
        self.check_invariants()

    def rotate_fails(self, match: str) -> None:
        with pytest.raises(Exception):  # noqa: B017 - a 500 from moto's server
            self.rotate()
        assert re.search(match, str(self.errors[-1])), self.errors[-1]

    def rotate(self) -> None:
        self.sm.rotate_secret(
            SecretId=self.arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30}
        )

    def complete(self) -> None:
        """Retry from the top, as Secrets Manager does, until the pending rotation finished."""
        rotation_trigger.reattempt(self.sm, self.arn, self.invoke)

    def current(self) -> dict[str, Any]:
        # by stage: moto does not move its default version when a stage label moves
        result: dict[str, Any] = json.loads(
            self.sm.get_secret_value(SecretId=self.arn, VersionStage="AWSCURRENT")["SecretString"]
        )
        return result

    def check_invariants(self) -> None:
        current = self.current()
        if current.get("api_key") == "REPLACE_ME":
            return  # the first deploy's placeholder: no Vonage credentials to hold to anything
        AccountClient(
            api_key=current["api_key"],
            api_secret=current["api_secret"],
            rest_base_url=self.sim.url,
            api_base_url=self.sim.url,
        ).get_account_balance()  # AWSCURRENT authenticates
        ids = {s.id for s in self.sim.state.accounts[simmod.DEFAULT_API_KEY].secrets}
        assert len(ids) <= 2, "more than two Vonage secrets"
        if "secret_id" in current:  # absent only in a secret put in by hand, before its first rotation
            assert current["secret_id"] in ids, "AWSCURRENT's secret_id does not exist at Vonage"
        assert self.protected <= ids, "a secret the rotation did not create was revoked"
        self.seen_ids |= ids


@pytest.fixture
def harness(aws: None, sim: Sim) -> Iterator[Harness]:
    h = Harness(sim)
    undo = rotation_trigger.install({ROTATION_ARN: h.invoke})
    try:
        yield h
    finally:
        undo()


def test_generated_secrets_meet_vonage_rules() -> None:
    from account_api.client import secret_rule_violation

    values = [generate_secret() for _ in range(200)] + [generate_secret(8) for _ in range(200)]
    assert all(secret_rule_violation(v) is None for v in values)
    assert len(set(values)) == len(values)
    assert {len(generate_secret(n)) for n in (8, 16, 25)} == {8, 16, 25}
    with pytest.raises(ValueError):
        generate_secret(26)


def test_one_rotation(harness: Harness) -> None:
    before = harness.current()
    harness.rotate()
    after = harness.current()
    assert after["api_secret"] != before["api_secret"] and after["secret_id"] != before["secret_id"]
    assert after["topup_trx"] == simmod.DEFAULT_TRX and after["note"] == "kept"  # carried over untouched
    ids = harness.sim.account()["secret_ids"]
    assert ids == [before["secret_id"], after["secret_id"]]  # PREVIOUS's slot is kept until the next rotation
    previous = json.loads(harness.sm.get_secret_value(SecretId=harness.arn, VersionStage="AWSPREVIOUS")["SecretString"])
    assert previous["api_secret"] == before["api_secret"]
    stages = harness.sm.describe_secret(SecretId=harness.arn)["VersionIdsToStages"]
    assert not any("AWSPENDING" in s for s in stages.values())


def test_ten_rotations_in_a_row(harness: Harness) -> None:
    values = []
    for _ in range(10):
        harness.rotate()
        values.append(harness.current()["api_secret"])
        assert len(harness.sim.account()["secret_ids"]) == 2
    assert len(set(values)) == 10


def _run_with_fault(sim: Sim, inject: Callable[[Harness], None]) -> Harness:
    h = Harness(sim)
    undo = rotation_trigger.install({ROTATION_ARN: h.invoke})
    try:
        h.rotate()  # a clean first rotation, so the faulty one also frees PREVIOUS's slot
        sim.control("DELETE", "/_sim/requests")
        h.faulty.calls.clear()
        start = h.current()
        inject(h)
        with contextlib.suppress(Exception):  # the fault surfaces however moto passes it on (or is retried away)
            h.rotate()
        sim.control("DELETE", "/_sim/faults")
        h.faulty.fault = None
        h.complete()
        h.check_invariants()
        end = h.current()
        assert end["secret_id"] != start["secret_id"], "the rotation did not complete"
        h.rotate()  # and the next one still works
        h.check_invariants()
        return h
    finally:
        undo()


def test_secrets_manager_fault_at_every_point(aws: None, sim: Sim) -> None:
    # the calls a second rotation makes, in order
    probe = _run_with_fault(sim, lambda h: None)
    sequence = list(probe.faulty.calls)
    assert {
        "describe_secret",
        "get_secret_value",
        "put_secret_value",
        "update_secret_version_stage",
        "tag_resource",
    } <= set(sequence)
    for index in range(len(sequence)):
        for phase in ("before", "after"):
            sim.state.accounts.clear()
            sim.state.accounts.update(simmod.new_state().accounts)
            boto3.client("secretsmanager").delete_secret(SecretId="account-ops/vonage", ForceDeleteWithoutRecovery=True)

            def inject(h: Harness, index: int = index, phase: str = phase) -> None:
                h.faulty.fault = (index, phase)

            _run_with_fault(sim, inject)


@pytest.mark.parametrize("operation", ["getAccountBalance", "retrieveAPISecrets", "createAPISecret", "revokeAPISecret"])
@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 500, "after": True},
        {"reset": True},
        {"reset": True, "after": True},
        {"latency": 0.6},
        {"latency": 0.6, "after": True},
    ],
    ids=["5xx-before", "5xx-after", "reset-before", "reset-after", "timeout-before", "timeout-after"],
)
def test_vonage_fault_at_every_call(aws: None, sim: Sim, operation: str, fault: dict[str, Any]) -> None:
    # GETs are retried by the client, so a fault there must outlast the retries to fail the step.
    times = 3 if operation.startswith(("get", "retrieve")) else 1
    probe_calls = 3 if operation != "createAPISecret" and operation != "revokeAPISecret" else 1
    for skip in range(probe_calls):
        sim.state.accounts.clear()
        sim.state.accounts.update(simmod.new_state().accounts)
        sim.control("DELETE", "/_sim/faults")
        try:
            boto3.client("secretsmanager").delete_secret(SecretId="account-ops/vonage", ForceDeleteWithoutRecovery=True)
        except Exception:  # noqa: S110 - first round: nothing to delete
            pass

        def inject(h: Harness, skip: int = skip) -> None:
            h.sim.fault(operation, **fault, times=times, skip=skip * times)

        _run_with_fault(sim, inject)


def test_orphan_of_a_crashed_attempt_does_not_block(harness: Harness) -> None:
    harness.rotate()
    # the create answer is lost (created at Vonage, id never stored), and the retry must not leave 3 secrets
    harness.sim.fault("createAPISecret", reset=True, after=True)
    with pytest.raises(Exception):  # noqa: B017 - surfaces through moto
        harness.rotate()
    assert len(harness.sim.account()["secret_ids"]) == 2
    harness.complete()
    assert len(harness.sim.account()["secret_ids"]) == 2
    assert harness.current()["secret_id"] in harness.sim.account()["secret_ids"]


def test_two_rotations_overlapping(harness: Harness) -> None:
    harness.rotate()
    harness.sim.fault("createAPISecret", status=500)
    with pytest.raises(Exception):  # noqa: B017 - surfaces through moto
        harness.rotate()
    first = rotation_trigger.pending_token(harness.sm, harness.arn)
    # the same steps delivered twice (Secrets Manager retrying while an attempt still runs) are harmless
    for step in rotation_trigger.STEPS[:3]:
        for _ in range(2):
            harness.invoke({"Step": step, "SecretId": harness.arn, "ClientRequestToken": first})
    assert len(harness.sim.account()["secret_ids"]) == 2
    # a second rotation starts before the first finished (moto moves AWSPENDING to the new version)
    harness.rotate()
    harness.check_invariants()
    # a late retry of the first rotation's steps is refused and changes nothing
    before = (harness.current(), harness.sim.account()["secret_ids"])
    for step in rotation_trigger.STEPS:
        with pytest.raises(RotationError, match="not staged AWSPENDING"):
            harness.invoke({"Step": step, "SecretId": harness.arn, "ClientRequestToken": first})
    assert (harness.current(), harness.sim.account()["secret_ids"]) == before
    assert rotation_trigger.pending_token(harness.sm, harness.arn) is None


def test_step_with_a_foreign_token_changes_nothing(harness: Harness) -> None:
    harness.rotate()
    before = (harness.current(), harness.sim.account()["secret_ids"])
    for step in rotation_trigger.STEPS:
        with pytest.raises(RotationError, match="not a version of this secret"):
            harness.invoke({"Step": step, "SecretId": harness.arn, "ClientRequestToken": "not-a-version"})
    assert (harness.current(), harness.sim.account()["secret_ids"]) == before


def test_current_already_invalid_fails_closed(harness: Harness) -> None:
    harness.rotate()
    ids_before = harness.sim.account()["secret_ids"]
    current = harness.current()
    harness.sim.state.accounts[simmod.DEFAULT_API_KEY].secrets = [
        s for s in harness.sim.state.accounts[simmod.DEFAULT_API_KEY].secrets if s.id != current["secret_id"]
    ]
    harness.sim.control("POST", "/_sim/secrets", {"secret": "Replaced-Behind-1"})
    ids_mid = harness.sim.account()["secret_ids"]
    harness.check_invariants = lambda: None  # type: ignore[method-assign] - AWSCURRENT is broken on purpose
    harness.rotate_fails("AWSCURRENT does not authenticate")
    assert harness.sim.account()["secret_ids"] == ids_mid  # revoke nothing
    assert ids_before != ids_mid


def test_unknown_second_secret_is_refused(harness: Harness) -> None:
    unknown = harness.sim.control("POST", "/_sim/secrets", {"secret": "Someone-Elses-1"})["id"]
    harness.protected.add(unknown)
    harness.rotate_fails("neither AWSCURRENT nor AWSPREVIOUS")
    assert unknown in harness.sim.account()["secret_ids"]


def test_secret_put_in_by_hand_without_id(harness: Harness) -> None:
    value = {"api_key": simmod.DEFAULT_API_KEY, "api_secret": simmod.DEFAULT_API_SECRET}
    harness.sm.put_secret_value(SecretId=harness.arn, SecretString=json.dumps(value))
    harness.rotate()  # one secret at Vonage: its id is adopted
    harness.rotate()  # and the adopted one is freed as PREVIOUS at the next rotation
    assert len(harness.sim.account()["secret_ids"]) == 2


def test_without_id_and_two_secrets_refuses_with_instructions(harness: Harness) -> None:
    value = {"api_key": simmod.DEFAULT_API_KEY, "api_secret": simmod.DEFAULT_API_SECRET}
    harness.sm.put_secret_value(SecretId=harness.arn, SecretString=json.dumps(value))
    other = harness.sim.control("POST", "/_sim/secrets", {"secret": "Second-Secret-22"})["id"]
    harness.protected.add(other)
    harness.rotate_fails('Add "secret_id"')
    assert len(harness.sim.account()["secret_ids"]) == 2


def test_last_secret_403_fails_clearly_then_recovers(harness: Harness) -> None:
    harness.rotate()
    problem = {
        "type": "https://developer.nexmo.com/api-errors/account/secret-management#delete-last-secret",
        "title": "Secret Deletion Forbidden",
        "detail": "Can not delete the last secret.",
        "instance": "x",
    }
    harness.sim.fault("revokeAPISecret", status=403, problem=problem)
    harness.rotate_fails("last secret")
    harness.complete()
    harness.check_invariants()


def test_subaccount_rotated_with_primary_credentials(aws: None, sim: Sim) -> None:
    sim.control("POST", "/_sim/subaccounts", {"api_key": "sub123", "api_secret": "Sub-Secret-01"})
    sm = boto3.client("secretsmanager")
    primary = sm.create_secret(
        Name="primary",
        SecretString=json.dumps({"api_key": simmod.DEFAULT_API_KEY, "api_secret": simmod.DEFAULT_API_SECRET}),
    )["ARN"]
    arn = sm.create_secret(Name="sub", SecretString=json.dumps({"api_key": "sub123", "api_secret": "Sub-Secret-01"}))[
        "ARN"
    ]
    rotator = Rotator(
        RotationSettings(rest_base_url=sim.url, api_base_url=sim.url, primary_secret_arn=primary), sm=sm, options=FAST
    )
    undo = rotation_trigger.install({ROTATION_ARN: lambda e: rotator.handle(RotationEvent.model_validate(e))})
    try:
        sm.rotate_secret(SecretId=arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
        sm.rotate_secret(SecretId=arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
    finally:
        undo()
    current = json.loads(sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["SecretString"])
    assert current["secret_id"] in sim.account("sub123")["secret_ids"]
    assert len(sim.account("sub123")["secret_ids"]) == 2
    assert len(sim.account()["secret_ids"]) == 1  # the primary's own secrets untouched


def test_readers_keep_working_across_rotations(harness: Harness) -> None:
    reader = VonageAccount(CredentialStore(harness.arn), rest_base_url=harness.sim.url, api_base_url=harness.sim.url)
    reader.call(lambda c: c.get_account_balance())  # caches the value
    harness.rotate()
    harness.sim.control("DELETE", "/_sim/requests")
    reader.call(lambda c: c.get_account_balance())  # old value cached: still works (it is PREVIOUS)
    assert len(harness.sim.requests("getAccountBalance")) == 1
    harness.rotate()  # PREVIOUS (the cached value) is revoked now
    harness.sim.control("DELETE", "/_sim/requests")
    assert reader.call(lambda c: c.get_account_balance()).value == simmod.DEFAULT_BALANCE  # 401, refresh, success
    assert len(harness.sim.requests("getAccountBalance")) == 2


def test_handler_from_its_events_and_no_secret_anywhere(
    aws: None, sim: Sim, monkeypatch: pytest.MonkeyPatch, json_logs: JsonLogs, capfd: pytest.CaptureFixture[str]
) -> None:
    sm = boto3.client("secretsmanager")
    [first_id] = sim.account()["secret_ids"]
    arn = sm.create_secret(Name="account-ops/vonage", SecretString=vonage_secret_value(secret_id=first_id))["ARN"]
    monkeypatch.setenv("VONAGE_REST_BASE_URL", sim.url)
    monkeypatch.setenv("VONAGE_API_BASE_URL", sim.url)
    app = load_handler("secret_rotation")
    undo = rotation_trigger.install({ROTATION_ARN: lambda e: app.lambda_handler(e, LambdaContext("secret-rotation"))})
    try:
        sm.rotate_secret(SecretId=arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
        sm.rotate_secret(SecretId=arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
        sim.fault("createAPISecret", status=500)
        with pytest.raises(Exception):  # noqa: B017
            sm.rotate_secret(SecretId=arn, RotationLambdaARN=ROTATION_ARN, RotationRules={"AutomaticallyAfterDays": 30})
        # the events/ files run through the handler: with their token they are refused, nothing changes
        for name in ("create", "set", "test", "finish"):
            event = load_event(f"secret_rotation_{name}.json")
            event["SecretId"] = arn
            with pytest.raises(RotationError, match="not a version of this secret"):
                app.lambda_handler(event, LambdaContext("secret-rotation"))
    finally:
        undo()
    values = [
        json.loads(sm.get_secret_value(SecretId=arn, VersionStage=stage)["SecretString"])["api_secret"]
        for stage in ("AWSCURRENT", "AWSPREVIOUS")
    ] + [s.value for s in sim.state.accounts[simmod.DEFAULT_API_KEY].secrets]
    text = json_logs.text + capfd.readouterr().out
    for message in ("rotation step", "new Vonage secret created", "rotation finished", "rotation step failed"):
        assert message in text
    assert '"RotationFinished":[1.0]' in text and '"RotationFailed":[1.0]' in text
    for value in [*values, simmod.DEFAULT_TRX]:
        assert value not in text


# -- after an operator's roll-back, with a stale intent tag, and with null fields -----------------


def stage_of(harness: Harness, stage: str) -> str:
    versions = harness.sm.describe_secret(SecretId=harness.arn)["VersionIdsToStages"]
    return next(v for v, stages in versions.items() if stage in stages)


def test_rotation_after_the_readmes_roll_back(harness: Harness) -> None:
    """Two rotations (A -> B -> C), then the README's roll-back moves AWSCURRENT back to B. B's JSON
    still says its previous was A, but the version staged AWSPREVIOUS is now C's: its slot is the one
    to free, and the next rotation succeeds."""
    harness.rotate()
    harness.rotate()
    b_version, c_version = stage_of(harness, "AWSPREVIOUS"), stage_of(harness, "AWSCURRENT")
    harness.sm.update_secret_version_stage(
        SecretId=harness.arn, VersionStage="AWSCURRENT", MoveToVersionId=b_version, RemoveFromVersionId=c_version
    )
    assert stage_of(harness, "AWSPREVIOUS") == c_version  # Secrets Manager moves PREVIOUS along
    b_id = harness.current()["secret_id"]
    harness.rotate()
    assert b_id in harness.sim.account()["secret_ids"]  # the rolled-back-to secret is kept
    assert harness.current()["secret_id"] != b_id


def test_a_stale_intent_tag_never_licenses_revoking_a_secret(harness: Harness) -> None:
    """An attempt tagged its intent, failed and was cancelled; an operator then adds a second secret
    for another integration. The next rotation must refuse, not take it for the dead attempt's orphan."""
    harness.sim.fault("createAPISecret", status=500)
    with pytest.raises(Exception):  # noqa: B017 - surfaces through moto
        harness.rotate()
    tags = harness.sm.describe_secret(SecretId=harness.arn).get("Tags", [])
    assert any(t["Key"] == "account-ops:rotation-intent" for t in tags)  # the attempt's tag stays
    harness.sm.cancel_rotate_secret(SecretId=harness.arn)
    other = harness.sim.control("POST", "/_sim/secrets", {"secret": "Other-Integration-7"})["id"]
    harness.protected.add(other)
    harness.rotate_fails("neither AWSCURRENT nor AWSPREVIOUS")
    assert other in harness.sim.account()["secret_ids"]


def test_every_field_is_carried_over_exactly_a_null_included(harness: Harness) -> None:
    value = json.loads(vonage_secret_value(secret_id=harness.current()["secret_id"]))
    value.update(note=None, team={"owner": "ops", "pager": None}, tags=[1, None])
    harness.sm.put_secret_value(SecretId=harness.arn, SecretString=json.dumps(value))
    harness.rotate()
    after = harness.current()
    assert (after["note"], after["team"], after["tags"]) == (None, {"owner": "ops", "pager": None}, [1, None])


PLACEHOLDER = '{"api_key": "REPLACE_ME", "api_secret": "REPLACE_ME"}'


def test_a_placeholder_is_not_configured_in_every_step_and_vonage_is_never_called(
    harness: Harness, json_logs: JsonLogs
) -> None:
    """A first deploy with rotation on: Secrets Manager rotates (or runs its configuration test on)
    a secret that still holds the placeholder. Every step passes, says "not configured", and sends
    nothing to Vonage; the secret still holds the placeholder afterwards."""
    harness.sm.put_secret_value(SecretId=harness.arn, SecretString=PLACEHOLDER)
    harness.sim.control("DELETE", "/_sim/requests")
    harness.rotate()
    assert json.loads(PLACEHOLDER) == {k: v for k, v in harness.current().items() if k in ("api_key", "api_secret")}
    assert harness.sim.requests() == []
    from account_api.observability import metrics

    assert "NotConfigured" in metrics.metric_set  # the harness calls the steps; the handler would flush it
    steps = [e["step"] for e in json_logs.entries() if "not configured" in e["message"]]
    assert steps == ["createSecret", "setSecret", "testSecret"]
    assert all(e["level"] == "WARNING" for e in json_logs.entries() if "not configured" in e["message"])


def test_the_configuration_test_passes_on_a_placeholder(harness: Harness) -> None:
    """Secrets Manager's configuration test (RotateImmediately=false) stages a copy of AWSCURRENT
    and calls testSecret alone: with the placeholder it passes without calling Vonage."""
    harness.rotate()  # rotation configured (and one real rotation done)
    harness.sm.put_secret_value(SecretId=harness.arn, SecretString=PLACEHOLDER)
    harness.sim.control("DELETE", "/_sim/requests")
    token = "configuration-test-token-0000000001"
    harness.sm.put_secret_value(
        SecretId=harness.arn, ClientRequestToken=token, SecretString=PLACEHOLDER, VersionStages=["AWSPENDING"]
    )
    harness.invoke({"Step": "testSecret", "SecretId": harness.arn, "ClientRequestToken": token})
    assert harness.sim.requests() == []
