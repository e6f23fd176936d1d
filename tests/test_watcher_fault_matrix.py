"""The balance watcher's fault matrix: every call of every situation, every way a call can fail.

Nothing here lists the faults by hand. For each situation a clean run is recorded first: the
ordered list of its calls (AWS calls as botocore makes them through the layer's shared clients,
Vonage calls as the client's HTTP session sends them). Then, for every position in that list and
every fault mode, a fresh stack runs:

- the attempt, with the fault at that call;
- its retry (Lambda's or the Scheduler's) of the same scheduled time, two minutes later, which is
  after the one-minute top-up cooldown: the case where a retry that re-decides sends a second top-up;
- the next tick, five minutes after the first.

Fault modes (the three ways a call can go wrong for a process that cannot see inside it):
- `fails`: the call fails before taking effect (AWS: every attempt answers 503, so botocore's
  retries give up; Vonage: the simulator answers 503 without acting);
- `answer_lost`: the call takes effect and its answer is lost (AWS: botocore retries it and the
  retry meets the effect of the first attempt; Vonage: the simulator acts, then resets the
  connection);
- `dies_after`: the call takes effect and the process dies at once (no handler, no cleanup runs).

And the invariants, after the attempt and its retry: at most one top-up reached Vonage for the
run; the run is finished with exactly one history row, whose outcome is the retry's answer; the
outcome does not claim less than happened (a top-up that reached Vonage is "succeeded" or
"unknown"); every alert the decision owes was published at least once; no invocation took longer
than its deadline allows; the next tick decides normally. A call added to the watcher grows the
matrix by itself.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest

from account_api import ClientOptions, VonageAccount, aws_clients, deadline
from account_api.balance import (
    Alerts,
    BalanceWatcher,
    Outcome,
    RunResult,
    ScheduledRun,
    WatcherSettings,
    WatcherStore,
)
from account_api.client import AccountClient
from account_api.credentials import CredentialStore
from account_api.models import Credentials
from local import aws_resources
from local import simulator as simmod
from tests.conftest import Sim, vonage_secret_value
from tests.test_balance_watcher import run_at, ts

MODES = ("fails", "answer_lost", "dies_after")
TEMPLATE = aws_resources.load_template()
INVOCATION_SECONDS = 15.0  # each invocation's deadline in the matrix; none may outlive it by much
# (an AWS call is not started with less than its worst case left, 7 s: the rest is slack for a loaded machine)

# The alert each outcome owes, whatever else happened (a run that ends in this outcome must have
# published it at least once).
OWED_ALERT = {
    Outcome.TOPUP_SUCCEEDED: "Vonage top-up sent",
    Outcome.TOPUP_UNKNOWN: "Vonage top-up outcome unknown",
    Outcome.TOPUP_REFUSED: "Vonage top-up refused",
    Outcome.TOPUP_FAILED: "Vonage top-up failed",
}


class ProcessDied(BaseException):
    """The Lambda process died right after a call took effect: no except clause, no cleanup runs."""


@dataclass
class Tap:
    """Sees every AWS and Vonage call of one invocation, in order, and injects one fault."""

    sim: Sim
    target: int | None = None
    mode: str = ""
    calls: list[str] = field(default_factory=list)
    _current: int = -1
    _lost_sent: bool = False

    # -- AWS: botocore's events on the layer's shared clients ---------------------------------------

    def _before_call(self, event_name: str, **kwargs: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        self.calls.append(f"{service}.{operation}")
        self._current = len(self.calls) - 1  # retries of this call reach before-send with this index

    def _before_send(self, request: Any, **kwargs: Any) -> Any:
        if self._current != self.target:
            return None
        if self.mode == "fails":
            return _aws_failure()
        if self.mode == "answer_lost":
            if self._lost_sent:
                return None  # botocore's retry goes through and meets the first attempt's effect
            self._lost_sent = True
            _send_for_real(request)
            return _aws_failure()
        _send_for_real(request)
        raise ProcessDied(self.calls[self._current])

    # -- Vonage: the client's requests session ----------------------------------------------------

    def tap_session(self, session: Any) -> Any:
        real_send = session.send

        def send(request: Any, **kwargs: Any) -> Any:
            self.calls.append("vonage." + _vonage_operation(request.method, request.url))
            index = len(self.calls) - 1
            if index == self.target and self.mode == "fails":
                self.sim.fault(_vonage_operation(request.method, request.url), status=503, times=20)
            elif index == self.target and self.mode == "answer_lost":
                self.sim.fault(_vonage_operation(request.method, request.url), reset=True, after=True)
            response = real_send(request, **kwargs)
            if index == self.target and self.mode == "dies_after":
                raise ProcessDied(self.calls[index])
            return response

        session.send = send
        return session


class TapSocket:
    """botocore's hooks, registered once on the layer's shared clients, handing each event to the
    tap of the invocation under way (building new clients per invocation would cost more than the
    calls: a new process's clients hold no state that matters here, its caches are built anew)."""

    def __init__(self) -> None:
        self.tap: Tap | None = None
        self.clients = _ReusedClients()
        for service in ("dynamodb", "sns", "secretsmanager"):
            events = aws_clients.client(service).meta.events
            events.register_first("before-call", self._before_call)
            events.register_first("before-send", self._before_send)

    def _before_call(self, **kwargs: Any) -> None:
        if self.tap is not None:
            self.tap._before_call(**kwargs)

    def _before_send(self, **kwargs: Any) -> Any:
        return self.tap._before_send(**kwargs) if self.tap is not None else None


def _vonage_operation(method: str, url: str) -> str:
    """The operation id the simulator's faults are keyed by, from its own route table."""
    path = urlparse(url).path
    for verb, operation, pattern in simmod.OPERATIONS:
        if verb == method and pattern.match(path):
            return operation
    raise AssertionError(f"a Vonage call the simulator does not know: {method} {path}")


def _aws_failure() -> Any:
    """A 503 with no body: botocore's standard mode retries it, then raises a ClientError."""
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def stream(self, **kwargs: Any) -> Iterator[bytes]:
            yield b""

    return AWSResponse("http://injected", 503, {}, _Raw())


def _send_for_real(request: Any) -> None:
    from botocore.httpsession import URLLib3Session

    response = URLLib3Session(timeout=5).send(request)
    assert response.status_code < 500, f"the real call failed: {response.status_code}"


class _TappedAccount(VonageAccount):
    """The real VonageAccount, its clients' sessions seen by the tap (nothing else changes)."""

    tap: Tap

    def client_for(self, creds: Credentials, *, api_secret: str | None = None) -> AccountClient:
        from account_api.client import _new_session

        return AccountClient(
            api_key=creds.api_key,
            api_secret=api_secret if api_secret is not None else creds.api_secret,
            rest_base_url=self.rest_base_url,
            api_base_url=self.api_base_url,
            options=self.options,
            session=self.tap.tap_session(_new_session()),
        )


@dataclass
class _Context:
    seconds: float = INVOCATION_SECONDS

    def get_remaining_time_in_millis(self) -> int:
        return int((self.seconds + deadline.DEFAULT_MARGIN_SECONDS) * 1000)


# -- situations ------------------------------------------------------------------------------------


@dataclass
class Situation:
    name: str
    expected: Outcome
    prepare: Callable[[MatrixStack], None]
    env: dict[str, str] = field(default_factory=dict)


class _ReusedClients:
    """A boto3 session whose clients are made once: the test's own set-up and reads would otherwise
    build a few hundred clients (0.1 s each) over the matrix."""

    def __init__(self) -> None:
        self._session = boto3.Session()
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(service)
        return self._clients[service]


class MatrixStack:
    """A fresh stack per case: moto reset, the template's tables, topic and secret, a new simulator state."""

    invocation_seconds = INVOCATION_SECONDS

    def __init__(self, moto_url: str, sim: Sim, socket: TapSocket, env: dict[str, str]) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10).close()
        self.socket = socket
        sim.server.state = simmod.new_state(topup_lag=3600)
        sim.state = sim.server.state
        self.sim = sim
        session = socket.clients
        self.session = session
        self.resources = aws_resources.create_resources(session, vonage_secret_value(), TEMPLATE)
        self.read_alerts = aws_resources.sqs_messages_of_topic(session, self.resources.topic_arn)
        self.alerts: list[dict[str, str]] = []
        self.last_error = ""
        self.env = {
            "BALANCE_THRESHOLD_EUR": "10",
            "TOPUP_COOLDOWN_MINUTES": "1",  # the template's minimum: a retry two minutes later is past it
            "ALERT_COOLDOWN_MINUTES": "360",
            "DAILY_TOPUP_CAP": "3",
            "DRY_RUN": "false",
            "STATE_TABLE": self.resources.tables["WatcherStateTable"],
            "HISTORY_TABLE": self.resources.tables["TopUpHistoryTable"],
            "ALERT_TOPIC_ARN": self.resources.topic_arn,
            **env,
        }

    def invoke(self, tap: Tap, minute: float, *, now_minute: float | None = None) -> tuple[RunResult | None, float]:
        """One invocation as a fresh process would run it: new caches, the deadline of a Lambda."""
        self.socket.tap = tap
        settings = WatcherSettings.from_environment(self.env)
        account = _TappedAccount(
            CredentialStore(self.resources.secret_arn),
            rest_base_url=self.sim.url,
            api_base_url=self.sim.url,
            # no fault here is a slow answer: the timeouts only have to survive a loaded machine
            options=ClientOptions(read_timeout=2.0, total_deadline=5.0, backoff_base=0.01, backoff_cap=0.02),
        )
        account.tap = tap
        watcher = BalanceWatcher(settings, account, WatcherStore(settings), Alerts(settings.alert_topic_arn))
        started = time.monotonic()
        deadline.start(_Context(self.invocation_seconds))
        try:
            return self.decide(watcher, run_at(minute), ts(minute if now_minute is None else now_minute)), (
                time.monotonic() - started
            )
        except (Exception, ProcessDied) as exc:
            self.last_error = repr(exc)[:300]  # said by a failure that did not expect it
            return None, time.monotonic() - started
        finally:
            self.socket.tap = None
            deadline.clear()
            self.sim.control("DELETE", "/_sim/faults")

    def decide(self, watcher: BalanceWatcher, run: ScheduledRun, now: float) -> RunResult:
        """What the invocation runs (the subaccount matrix runs a primary's funding instead)."""
        return watcher.run(run, now=now)

    def topups_effected(self) -> int:
        return len(self.sim.server.state.pending_credits)  # the lag keeps every credit pending

    def history(self) -> dict[str, str]:
        items = self.session.client("dynamodb").scan(TableName=self.env["HISTORY_TABLE"])["Items"]
        return {i["at"]["S"]: i["outcome"]["S"] for i in items}

    def published(self) -> list[str]:
        self.alerts += self.read_alerts()
        return [a["subject"] for a in self.alerts]

    def pause(self) -> None:
        from account_api.switch import TopUpSwitchChange, change_topup_switch

        change_topup_switch(
            self.env["STATE_TABLE"],
            TopUpSwitchChange(paused=True, reason="test"),
            "ops",
            history_table=self.env["HISTORY_TABLE"],
            account_key=simmod.DEFAULT_API_KEY,
        )


def _low(balance: float, **more: Any) -> Callable[[MatrixStack], None]:
    return lambda s: s.sim.set(balance=balance, **more)


def _paused(s: MatrixStack) -> None:
    s.sim.set(balance=1.0)
    s.pause()


def _invalid(s: MatrixStack) -> None:
    s.sim.server.state.accounts[simmod.DEFAULT_API_KEY].balance = -3  # type: ignore[assignment]


def _recovering(s: MatrixStack) -> None:
    """An episode is open (a low-balance alert went out five minutes ago); now the balance is fine."""
    s.sim.set(balance=3.0, auto_reload=False)
    result, _ = s.invoke(Tap(s.sim), -5)
    assert result is not None and result.outcome is Outcome.LOW_ALERTED
    s.published()
    s.alerts.clear()
    s.sim.set(balance=50.0)


SITUATIONS = [
    Situation("top_up", Outcome.TOPUP_SUCCEEDED, _low(1.0)),
    Situation("top_up_refused", Outcome.TOPUP_REFUSED, _low(1.0, payment_refused=True)),
    Situation("alert_only", Outcome.LOW_ALERTED, _low(3.0, auto_reload=False)),
    Situation("dry_run", Outcome.DRY_RUN, _low(1.0), {"DRY_RUN": "true"}),
    Situation("paused", Outcome.SKIPPED_PAUSED, _paused),
    Situation("daily_cap", Outcome.SKIPPED_DAILY_CAP, _low(1.0), {"DAILY_TOPUP_CAP": "0"}),
    Situation("invalid_balance", Outcome.INVALID_BALANCE, _invalid),
    Situation("recovery_notice", Outcome.OK, _recovering),
]


@pytest.fixture
def fast_aws_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore retries as deployed (3 attempts), without its jittered sleeps between them."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


@pytest.mark.parametrize("situation", SITUATIONS, ids=[s.name for s in SITUATIONS])
def test_every_fault_at_every_call(
    situation: Situation, moto_server: str, aws: None, sim: Sim, fast_aws_retries: None
) -> None:
    socket = TapSocket()
    probe_stack = MatrixStack(moto_server, sim, socket, situation.env)
    situation.prepare(probe_stack)
    probe = Tap(sim)
    clean, _ = probe_stack.invoke(probe, 0)
    assert clean is not None and clean.outcome is situation.expected, clean
    clean_alerts = set(probe_stack.published())
    calls = list(probe.calls)
    assert any(c.startswith("vonage.") for c in calls) and any(c.startswith("dynamodb.") for c in calls)

    violations: list[str] = []
    for index, call in enumerate(calls):
        for mode in MODES:
            case = f"{situation.name}: {mode} at #{index} {call}"
            violations += [
                f"{case}: {v}" for v in _run_case(moto_server, sim, socket, situation, index, mode, clean_alerts)
            ]
    print(f"{situation.name}: {len(calls)} calls x {len(MODES)} modes = {len(calls) * len(MODES)} cases")
    assert not violations, "\n".join(violations)


def _run_case(
    moto_url: str, sim: Sim, socket: TapSocket, situation: Situation, index: int, mode: str, clean_alerts: set[str]
) -> list[str]:
    stack = MatrixStack(moto_url, sim, socket, situation.env)
    situation.prepare(stack)
    found: list[str] = []
    _, first_took = stack.invoke(Tap(sim, target=index, mode=mode), 0)
    retry, retry_took = stack.invoke(Tap(sim), 0, now_minute=2)
    sent = stack.topups_effected()
    if retry is None:
        return [f"the retry failed: {stack.last_error}"]
    history = stack.history()
    recorded = history.get(run_at(0).key)
    if recorded is None:
        return ["no history row for the run"]
    # The run's outcome: the retry's answer, or, when the first attempt had finished, its record.
    outcome = Outcome(recorded) if retry.outcome is Outcome.DUPLICATE else retry.outcome
    if max(first_took, retry_took) > INVOCATION_SECONDS + 1:
        found.append(f"an invocation took {max(first_took, retry_took):.1f} s")
    if sent > 1:
        found.append(f"{sent} top-ups reached Vonage for one run")
    if sent and outcome not in (Outcome.TOPUP_SUCCEEDED, Outcome.TOPUP_UNKNOWN):
        found.append(f"a top-up reached Vonage but the run says {outcome}")
    if outcome is Outcome.TOPUP_SUCCEEDED and not sent:
        found.append("the run says a top-up succeeded but none reached Vonage")
    if recorded != outcome:
        found.append(f"history row {recorded!r}, the retry said {outcome}")
    published = set(stack.published())
    owed = clean_alerts if outcome is situation.expected else {OWED_ALERT.get(outcome, "")} - {""}
    if owed - published:
        found.append(f"alerts owed but never published: {sorted(owed - published)} (outcome {outcome})")
    again, _ = stack.invoke(Tap(sim), 0, now_minute=3)
    if again is None or again.outcome is not Outcome.DUPLICATE:
        found.append(f"a third delivery of the finished run was not a duplicate: {again}")
    following, _ = stack.invoke(Tap(sim), 5)
    if following is None or following.outcome is Outcome.DUPLICATE or run_at(5).key not in stack.history():
        found.append(f"the next tick did not decide: {following} ({stack.last_error if following is None else ''})")
    return found
