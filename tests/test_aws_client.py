"""The layer's small AWS client: signatures identical to botocore's, and real calls to moto's server."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from account_api.aws import DynamoDBClient, SecretsManagerClient, SnsClient, sign_v4
from local import aws_resources

NOW = datetime(2026, 11, 26, 12, 34, 56, tzinfo=UTC)


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLETOKEN"])
@pytest.mark.parametrize(
    ("service", "url", "headers", "body"),
    [
        (
            "secretsmanager",
            "https://secretsmanager.eu-west-1.amazonaws.com/",
            {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.GetSecretValue"},
            b'{"SecretId": "account-ops/vonage"}',
        ),
        (
            "dynamodb",
            "https://dynamodb.eu-west-1.amazonaws.com/",
            {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.PutItem"},
            b"{}",
        ),
        (
            "sns",
            "https://sns.eu-west-1.amazonaws.com/?b=2&a=1%202",
            {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            b"Action=Publish&Message=hi",
        ),
    ],
)
def test_signature_matches_botocore(
    service: str, url: str, headers: dict[str, str], body: bytes, token: str | None
) -> None:
    ours = sign_v4(
        "POST",
        url,
        headers,
        body,
        service=service,
        region="eu-west-1",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token=token,
        now=NOW,
    )
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    request.context["timestamp"] = NOW.strftime("%Y%m%dT%H%M%SZ")
    auth = SigV4Auth(
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token), service, "eu-west-1"
    )
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    if token:
        request.headers["X-Amz-Security-Token"] = token
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    assert ours["Authorization"].endswith(f"Signature={signature}")
    assert f"Credential=AKIDEXAMPLE/20261126/eu-west-1/{service}/aws4_request" in ours["Authorization"]


def test_secrets_manager_calls_against_moto(aws: None) -> None:
    sm = SecretsManagerClient()
    arn = sm.create_secret(Name="s1", SecretString='{"a": 1}')["ARN"]
    assert json.loads(sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["SecretString"]) == {"a": 1}
    sm.put_secret_value(SecretId=arn, ClientRequestToken="0" * 32, SecretString="{}", VersionStages=["AWSPENDING"])
    versions = sm.describe_secret(SecretId=arn)["VersionIdsToStages"]
    assert versions["0" * 32] == ["AWSPENDING"]
    with pytest.raises(sm.exceptions.ResourceNotFoundException) as missing:
        sm.get_secret_value(SecretId="nope")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # boto3 sees what we wrote, and the other way round
    assert boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"] == '{"a": 1}'


def test_dynamodb_conditional_write_raises_the_named_exception(aws: None) -> None:
    resources = aws_resources.create_resources(boto3.Session(), "{}")
    table = resources.tables["WatcherStateTable"]
    ddb = DynamoDBClient()
    ddb.put_item(TableName=table, Item={"pk": {"S": "x"}}, ConditionExpression="attribute_not_exists(pk)")
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as failed:
        ddb.put_item(TableName=table, Item={"pk": {"S": "x"}}, ConditionExpression="attribute_not_exists(pk)")
    assert failed.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert ddb.get_item(TableName=table, Key={"pk": {"S": "x"}})["Item"] == {"pk": {"S": "x"}}


def test_sns_publish_reaches_subscribers(aws: None) -> None:
    session = boto3.Session()
    topic = session.client("sns").create_topic(Name="alerts")["TopicArn"]
    read = aws_resources.sqs_messages_of_topic(session, topic)
    assert SnsClient().publish(TopicArn=topic, Subject="Hello", Message="world ü")["MessageId"]
    assert read() == [{"subject": "Hello", "message": "world ü"}]
    with pytest.raises(SnsClient().exceptions.NotFound):
        SnsClient().publish(TopicArn=topic + "-missing", Message="x")


class Flaky(http.server.BaseHTTPRequestHandler):
    answers: list[tuple[int, bytes]] = []
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        Flaky.seen.append({"target": self.headers.get("X-Amz-Target"), "body": self.rfile.read(length)})
        status, body = Flaky.answers.pop(0) if Flaky.answers else (200, b"{}")
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def flaky() -> Iterator[str]:
    Flaky.answers, Flaky.seen = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_reads_are_retried_writes_are_not(flaky: str) -> None:
    sm = SecretsManagerClient(endpoint=flaky, region="eu-west-1")
    Flaky.answers = [(500, b"{}"), (500, b"{}"), (200, b'{"SecretString": "x"}')]
    assert sm.get_secret_value(SecretId="s")["SecretString"] == "x"
    assert len(Flaky.seen) == 3
    Flaky.seen.clear()
    Flaky.answers = [(500, b'{"__type": "InternalServiceError", "message": "boom"}')]
    with pytest.raises(sm.exceptions.InternalServiceError):
        sm.put_secret_value(SecretId="s", SecretString="y")
    assert len(Flaky.seen) == 1
    Flaky.answers = [(400, b'{"__type": "com.amazonaws.secretsmanager#ThrottlingException", "message": "slow"}')]
    assert sm.describe_secret(SecretId="s") == {}
    assert Flaky.seen[-1]["target"] == "secretsmanager.DescribeSecret"


def test_no_secret_string_in_debug_logs(aws: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sm = SecretsManagerClient()
    arn = sm.create_secret(Name="s2", SecretString="Very-Secret-Value-1")["ARN"]
    sm.get_secret_value(SecretId=arn)
    assert caplog.records and "Very-Secret-Value-1" not in caplog.text
