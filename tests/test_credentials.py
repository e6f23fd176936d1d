"""Credentials from Secrets Manager (moto): cached, validated, refreshed once on a 401."""

from __future__ import annotations

import boto3
import pytest

from account_api import CredentialsUnavailableError, VonageAccount, errors
from account_api.credentials import CredentialStore
from local import simulator as simmod
from tests.conftest import Sim, vonage_secret_value


def _account(arn: str, sim: Sim) -> VonageAccount:
    return VonageAccount(CredentialStore(arn), rest_base_url=sim.url, api_base_url=sim.url)


def test_reads_and_caches_the_secret(vonage_secret: str, sim: Sim) -> None:
    account = _account(vonage_secret, sim)
    assert account.call(lambda c: c.get_account_balance()).value == simmod.DEFAULT_BALANCE
    boto3.client("secretsmanager").put_secret_value(
        SecretId=vonage_secret, SecretString=vonage_secret_value(api_key="other")
    )
    assert account.credentials().api_key == simmod.DEFAULT_API_KEY  # cached
    assert account.credentials(force=True).api_key == "other"


def test_a_401_refreshes_once_and_retries_once(vonage_secret: str, sim: Sim) -> None:
    account = _account(vonage_secret, sim)
    account.call(lambda c: c.get_account_balance())  # caches the current value
    # The secret is rotated behind the cache: Vonage gets a new secret, Secrets Manager too.
    new_id = sim.control("POST", "/_sim/secrets", {"secret": "Rotated-Secret-9"})["id"]
    boto3.client("secretsmanager").put_secret_value(
        SecretId=vonage_secret, SecretString=vonage_secret_value(api_secret="Rotated-Secret-9")
    )
    old_id = next(i for i in sim.account()["secret_ids"] if i != new_id)
    sim.state.accounts[simmod.DEFAULT_API_KEY].secrets = [
        s for s in sim.state.accounts[simmod.DEFAULT_API_KEY].secrets if s.id != old_id
    ]
    sim.control("DELETE", "/_sim/requests")
    assert account.call(lambda c: c.get_account_balance()).value == simmod.DEFAULT_BALANCE
    assert len(sim.requests("getAccountBalance")) == 2  # one 401, one success


def test_bad_credentials_fail_clearly_after_one_refresh(vonage_secret: str, sim: Sim) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=vonage_secret, SecretString=vonage_secret_value(api_secret="Wrong-Secret-1")
    )
    account = _account(vonage_secret, sim)
    with pytest.raises(errors.AuthenticationError) as failed:
        account.call(lambda c: c.get_account_balance())
    assert len(sim.requests("getAccountBalance")) == 2
    assert "Wrong-Secret-1" not in str(failed.value)


@pytest.mark.parametrize(
    ("secret_string", "message"),
    [("not json", "not JSON"), ("[1]", "not a JSON object"), ('{"api_secret": "Abc-12345"}', "api_key")],
)
def test_unusable_secret_is_a_clear_error(aws: None, secret_string: str, message: str) -> None:
    arn = boto3.client("secretsmanager").create_secret(Name="broken", SecretString=secret_string)["ARN"]
    with pytest.raises(CredentialsUnavailableError) as failed:
        CredentialStore(arn).get()
    assert message in str(failed.value)
    assert "Abc-12345" not in str(failed.value)


def test_missing_secret_is_a_clear_error(aws: None) -> None:
    with pytest.raises(CredentialsUnavailableError, match="could not read the Vonage secret"):
        CredentialStore("arn:aws:secretsmanager:eu-west-1:123456789012:secret:nope").get()


def test_credentials_never_show_their_secret(vonage_secret: str) -> None:
    creds = CredentialStore(vonage_secret).get()
    assert simmod.DEFAULT_API_SECRET not in repr(creds) + str(creds)
    assert simmod.DEFAULT_TRX not in repr(creds) + str(creds)
    assert simmod.DEFAULT_API_SECRET in creds.to_secret_string()
