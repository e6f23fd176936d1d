"""The Subaccounts API's operations in the client, over loopback to the simulator: typed answers,
the 403 "not provisioned" state as its own error, a transfer sent once whatever happens, and the
created subaccount's secret never repeated in an error."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from account_api import errors
from account_api.client import AccountClient
from local import simulator as simmod
from tests.conftest import Sim

PRIMARY = simmod.DEFAULT_API_KEY


@pytest.fixture
def family(sim: Sim) -> Sim:
    sim.control("POST", "/_sim/subaccounts", {"api_key": "own00001", "api_secret": "Own-Secret-01", "balance": 2.5})
    sim.control("POST", "/_sim/subaccounts", {"api_key": "shared01", "api_secret": "Shared-Secret-1", "balance": None})
    return sim


def test_the_listing_is_one_call_with_every_balance(family: Sim, client: AccountClient) -> None:
    listing = client.list_subaccounts()
    assert listing.primary.api_key == PRIMARY and listing.primary.balance == 25.0
    subs = {s.api_key: s for s in listing.subaccounts}
    assert subs["own00001"].balance == 2.5 and not subs["own00001"].shares_balance
    assert subs["shared01"].shares_balance and subs["shared01"].balance is None
    assert subs["own00001"].available == 2.5
    assert len(family.requests("retrieveSubaccountsList")) == 1


def test_get_create_and_modify(family: Sim, client: AccountClient) -> None:
    created = client.create_subaccount("Department B", secret="Dept-B-Secret1", use_primary_account_balance=False)
    assert created.name == "Department B" and created.balance == 0.0
    assert created.secret is not None and "Dept-B-Secret1" not in repr(created)
    changed = client.modify_subaccount(created.api_key, suspended=True)
    assert changed.suspended is True
    assert client.get_subaccount(created.api_key).suspended is True


def test_a_transfer_moves_money_and_the_listing_shows_its_reference(family: Sim, client: AccountClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    done = client.transfer_balance("own00001", 7.5, "account-ops:decision-1")
    assert (done.from_account, done.to_account, done.amount) == (PRIMARY, "own00001", 7.5)
    assert family.account("own00001")["balance"] == 10.0 and family.account()["balance"] == 17.5
    listed = client.list_balance_transfers(before, subaccount="own00001")
    assert [t.reference for t in listed] == ["account-ops:decision-1"]
    assert client.list_balance_transfers(before, subaccount="shared01") == []


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503},
        {"reset": True},
        {"status": 503, "after": True},
        {"reset": True, "after": True},
        {"latency": 2.0, "after": True},
    ],
)
def test_a_transfer_is_sent_once_whatever_the_answer(family: Sim, client: AccountClient, fault: dict[str, Any]) -> None:
    family.fault("transferBalance", **fault, times=5)
    with pytest.raises(errors.AccountApiError) as failed:
        client.transfer_balance("own00001", 5.0, "account-ops:decision-2")
    assert errors.outcome_unknown(failed.value)
    assert len(family.requests("transferBalance")) == 1


def test_a_refused_transfer_is_a_known_refusal(family: Sim, client: AccountClient) -> None:
    with pytest.raises(errors.InvalidRequestError) as refused:
        client.transfer_balance("shared01", 5.0, "account-ops:decision-3")
    assert refused.value.status == 422 and not errors.outcome_unknown(refused.value)
    with pytest.raises(errors.InvalidRequestError):
        client.transfer_balance("own00001", 99_999.0, "account-ops:decision-4")  # more than the primary has
    assert family.account()["balance"] == 25.0


def test_not_provisioned_is_its_own_state(family: Sim, client: AccountClient) -> None:
    family.set(subaccounts_enabled=False)
    for call in (
        client.list_subaccounts,
        lambda: client.get_subaccount("own00001"),
        lambda: client.transfer_balance("own00001", 1.0, "r"),
        lambda: client.list_balance_transfers(datetime.now(UTC)),
    ):
        with pytest.raises(errors.SubaccountsNotEnabledError) as refused:
            call()
        assert "not provisioned" in refused.value.reason


def test_the_listing_is_retried_but_a_create_is_not(family: Sim, client: AccountClient) -> None:
    family.fault("retrieveSubaccountsList", status=503, times=1)
    assert len(client.list_subaccounts().subaccounts) == 2
    assert len(family.requests("retrieveSubaccountsList")) == 2
    family.fault("createSubAccount", status=503, after=True, times=1)
    with pytest.raises(errors.ServerError):
        client.create_subaccount("Department C")
    assert len(family.requests("createSubAccount")) == 1


def test_bad_input_is_refused_before_sending(family: Sim, client: AccountClient) -> None:
    for call, field in (
        (lambda: client.transfer_balance("own00001", 0, "r"), "amount"),
        (lambda: client.transfer_balance("own00001", 1.234, "r"), "amount"),
        (lambda: client.transfer_balance("own00001", float("nan"), "r"), "amount"),
        (lambda: client.transfer_balance("../x", 1.0, "r"), "to"),
        (lambda: client.transfer_balance("own00001", 1.0, ""), "reference"),
        (lambda: client.get_subaccount("a/b"), "subaccount_key"),
        (lambda: client.modify_subaccount("own00001"), "body"),
        (lambda: client.create_subaccount(""), "name"),
        (lambda: client.create_subaccount("x", secret="weak"), "secret"),
    ):
        with pytest.raises(errors.InvalidInputError) as refused:
            call()
        assert refused.value.field == field
    with pytest.raises(ValueError, match="timezone"):
        client.list_balance_transfers(datetime(2026, 1, 1))
    assert family.requests("transferBalance") == []


def test_a_created_secret_never_appears_in_an_error(family: Sim, client: AccountClient) -> None:
    """An answer the client cannot read still carries the body: the secret we sent is redacted."""
    family.fault("createSubAccount", status=500, after=True, times=1)
    family.state.faults["createSubAccount"][0].problem = {"detail": "failed for Dept-C-Secret1", "title": "x"}
    with pytest.raises(errors.ServerError) as failed:
        client.create_subaccount("Department C", secret="Dept-C-Secret1")
    assert "Dept-C-Secret1" not in str(failed.value) + json.dumps(failed.value.body)


def test_a_primary_with_thousands_of_subaccounts_is_read_in_one_answer(sim: Sim, client: AccountClient) -> None:
    """About 250 bytes a subaccount: 2,000 of them are far past the Account API's 256 KiB cap."""
    with sim.state.lock:
        for i in range(2000):
            simmod.add_subaccount(sim.state, PRIMARY, f"s{i:07d}", "Sub-Secret-01", balance=float(i % 50))
    listing = client.list_subaccounts()
    assert len(listing.subaccounts) == 2000
