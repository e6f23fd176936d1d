"""A primary's funding run, its fault matrix: every call of the run, every way a call can fail.

The same machinery as the watcher's matrix (tests/test_watcher_fault_matrix.py): a clean run of
the primary's tick is recorded (its AWS calls through the layer's shared clients, its Vonage calls
through the client's session, the Subaccounts API's included), then for every call and every mode
(`fails`, `answer_lost`, `dies_after`) a fresh stack runs the attempt with that fault, its retry
two minutes later (Lambda's or SQS's redelivery of the same tick), and the next tick.

Invariants, whatever the fault:
- a balance transfer moves money, so at most one reaches Vonage for the subaccount's need, and a
  low subaccount whose need is real is funded by the end (exactly one transfer);
- the run says what happened: a transfer that reached Vonage is recorded as succeeded or
  confirmed (found by its reference) in the subaccount's history, and none that did not;
- the primary is never topped up twice for one tick, and never transferred below its threshold;
- no invocation outlives its deadline, and the ticks after the fault decide normally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from account_api.balance import BalanceWatcher, RunResult, ScheduledRun
from account_api.registry import AccountSettings, FleetAccount, SubaccountsRule
from account_api.subaccounts import DEADLINE_MARGIN_SECONDS, FundingOutcome, SubaccountFunder
from local import simulator as simmod
from tests.conftest import Sim
from tests.test_watcher_fault_matrix import (  # noqa: F401 - fast_aws_retries: a fixture used by name
    INVOCATION_SECONDS,
    MODES,
    MatrixStack,
    Tap,
    TapSocket,
    fast_aws_retries,
)

LOW, FINE, SHARED = "sub00001", "sub00002", "sub00003"
DONE = {FundingOutcome.TRANSFER_SUCCEEDED, FundingOutcome.TRANSFER_CONFIRMED}


class FundingStack(MatrixStack):
    """The matrix's stack, its account a primary: each invocation is the primary's funding run."""

    # a run defers transfers when less than DEADLINE_MARGIN_SECONDS is left: give it that and the
    # watcher matrix's invocation on top
    invocation_seconds = DEADLINE_MARGIN_SECONDS + INVOCATION_SECONDS

    def decide(self, watcher: BalanceWatcher, run: ScheduledRun, now: float) -> RunResult:
        primary = FleetAccount(
            api_key=simmod.DEFAULT_API_KEY,
            secret_arn=self.resources.secret_arn,
            settings=AccountSettings(name="primary", subaccounts=SubaccountsRule()),
        )
        result, _ = SubaccountFunder(primary, watcher).run(run, now)
        return result

    def add_subaccounts(self) -> None:
        for key, balance in ((LOW, 1.0), (FINE, 50.0), (SHARED, None)):
            body = {"api_key": key, "api_secret": f"Sub-{key}-Secret1", "balance": balance}
            self.sim.control("POST", "/_sim/subaccounts", body)

    def transfers(self) -> list[dict[str, Any]]:
        return list(self.sim.server.state.transfers)

    def outcomes_of(self, account: str) -> dict[str, str]:
        """The account's history: tick -> outcome."""
        items = self.session.client("dynamodb").scan(TableName=self.env["HISTORY_TABLE"])["Items"]
        return {i["at"]["S"]: i["outcome"]["S"] for i in items if i["account"]["S"] == account}


@dataclass
class Situation:
    name: str
    primary_balance: float
    transfers_expected: int  # by the end of the ticks

    def prepare(self, stack: FundingStack) -> None:
        stack.sim.set(balance=self.primary_balance)
        stack.add_subaccounts()


# The primary too low to fund (topped up first, the transfer waiting) moves money only by the
# primary's top-up, whose own matrix is the watcher's; tests/test_subaccounts.py covers the waiting.
SITUATIONS = [Situation("transfer", primary_balance=500.0, transfers_expected=1)]


@pytest.mark.usefixtures("fast_aws_retries")
@pytest.mark.parametrize("situation", SITUATIONS, ids=[s.name for s in SITUATIONS])
def test_every_fault_at_every_call_of_a_funding_run(
    situation: Situation, moto_server: str, aws: None, sim: Sim
) -> None:
    socket = TapSocket()
    probe_stack = FundingStack(moto_server, sim, socket, {})
    situation.prepare(probe_stack)
    probe = Tap(sim)
    clean, _ = probe_stack.invoke(probe, 0)
    assert clean is not None, probe_stack.last_error
    assert len(probe_stack.transfers()) == min(1, situation.transfers_expected)
    calls = list(probe.calls)
    assert "vonage.retrieveSubaccountsList" in calls
    if situation.transfers_expected:
        assert {"vonage.retrieveSubaccount", "vonage.transferBalance"} <= set(calls)

    violations: list[str] = []
    for index, call in enumerate(calls):
        for mode in MODES:
            case = f"{situation.name}: {mode} at #{index} {call}"
            violations += [f"{case}: {v}" for v in _run_case(moto_server, sim, socket, situation, index, mode)]
    print(f"{situation.name}: {len(calls)} calls x {len(MODES)} modes = {len(calls) * len(MODES)} cases")
    assert not violations, "\n".join(violations)


def _run_case(moto_url: str, sim: Sim, socket: TapSocket, situation: Situation, index: int, mode: str) -> list[str]:
    stack = FundingStack(moto_url, sim, socket, {})
    situation.prepare(stack)
    found: list[str] = []
    took: list[float] = []

    def invoke(minute: float, now_minute: float | None = None, tap: Tap | None = None) -> RunResult | None:
        result, seconds = stack.invoke(tap or Tap(sim), minute, now_minute=now_minute)
        took.append(seconds)
        return result

    invoke(0, tap=Tap(sim, target=index, mode=mode))
    retry = invoke(0, now_minute=2)
    if retry is None:
        found.append(f"the retry failed: {stack.last_error}")
    if stack.topups_effected() > 1:
        found.append(f"{stack.topups_effected()} top-ups reached Vonage for one tick")
    # the next tick settles what is unknown and decides the need again (once funded, the subaccount
    # is no longer low: a later tick has nothing left to send twice)
    if invoke(5) is None:
        found.append(f"the next tick failed: {stack.last_error}")
    moved = [t for t in stack.transfers() if t["to"] == LOW]
    if [t for t in stack.transfers() if t["to"] != LOW]:
        found.append("a transfer to a subaccount that was not low")
    if len(moved) > 1:
        found.append(f"{len(moved)} transfers reached Vonage for one need")
    if len(moved) != situation.transfers_expected:
        found.append(f"{len(moved)} transfer(s) by the end, expected {situation.transfers_expected}")
    outcomes = stack.outcomes_of(LOW)
    said_done = [o for o in outcomes.values() if o in DONE]
    if moved:
        # its reference names the tick that decided it: that tick's row says it happened, or a later
        # tick's says it found it (confirmed)
        decided_at = moved[0]["reference"].split()[1]
        later = [o for at, o in outcomes.items() if at > decided_at]
        if outcomes.get(decided_at) not in DONE and FundingOutcome.TRANSFER_CONFIRMED not in later:
            found.append(f"a transfer decided at {decided_at} reached Vonage but the history says {outcomes}")
    if not moved and said_done:
        found.append(f"the history says {said_done} but no transfer reached Vonage")
    primary = sim.server.state.accounts[simmod.DEFAULT_API_KEY].balance
    if moved and primary < 10.0:
        found.append(f"the primary was transferred below its threshold: {primary}")
    if max(took) > stack.invocation_seconds + 1:
        found.append(f"an invocation took {max(took):.1f} s")
    return found
