"""Create the stack's DynamoDB tables, SNS topic and Vonage secret in moto, from template.yaml itself,
so local runs and tests use the key schemas and TTL settings that a deployment gets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
SECRET_NAME = "account-ops/vonage"  # the template's ${ServiceName}/vonage with the default ServiceName


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, !GetAtt...) as {"Fn": value}."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - safe loader subclass
    return loaded


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


@dataclass
class LocalResources:
    tables: dict[str, str]  # logical id -> table name
    topic_arn: str
    secret_arn: str
    queues: dict[str, str] = field(default_factory=dict)  # logical id -> queue URL


def create_resources(session: Any, secret_string: str, template: dict[str, Any] | None = None) -> LocalResources:
    """Create every table and the topic the template declares, and the Vonage secret."""
    template = template or load_template()
    tables = create_tables(session, template)
    sns = session.client("sns")
    [topic_id] = resources_of_type(template, "AWS::SNS::Topic")
    topic_arn = sns.create_topic(Name=topic_id)["TopicArn"]
    resources_of_type(template, "AWS::SecretsManager::Secret")  # exactly one, named as the template names it
    secret_arn = session.client("secretsmanager").create_secret(Name=SECRET_NAME, SecretString=secret_string)["ARN"]
    queues = create_queues(session, template)
    return LocalResources(tables=tables, topic_arn=topic_arn, secret_arn=secret_arn, queues=queues)


def create_queues(
    session: Any, template: dict[str, Any] | None = None, *, visibility_timeout: int | None = None
) -> dict[str, str]:
    """Every SQS queue the template declares, dead-letter queues first, with its redrive policy:
    logical id -> URL. `visibility_timeout` shortens the template's for local runs and tests."""
    template = template or load_template()
    sqs = session.client("sqs")
    declared = resources_of_type(template, "AWS::SQS::Queue")
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    for logical_id in sorted(declared, key=lambda q: "RedrivePolicy" in declared[q].get("Properties", {})):
        props = declared[logical_id].get("Properties", {})
        attributes = {
            name: str(props[name]) for name in ("VisibilityTimeout", "MessageRetentionPeriod") if name in props
        }
        if visibility_timeout is not None:
            attributes["VisibilityTimeout"] = str(visibility_timeout)
        redrive = props.get("RedrivePolicy")
        if redrive:
            target = redrive["deadLetterTargetArn"]["GetAtt"].split(".")[0]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arns[target], "maxReceiveCount": str(redrive["maxReceiveCount"])}
            )
        urls[logical_id] = sqs.create_queue(QueueName=logical_id, Attributes=attributes)["QueueUrl"]
        arns[logical_id] = sqs.get_queue_attributes(QueueUrl=urls[logical_id], AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
    return urls


def create_tables(session: Any, template: dict[str, Any] | None = None) -> dict[str, str]:
    """Every DynamoDB table the template declares, with its key schema and TTL: logical id -> name."""
    template = template or load_template()
    ddb = session.client("dynamodb")
    tables = {}
    for logical_id, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        props = resource["Properties"]
        ddb.create_table(
            TableName=logical_id,
            AttributeDefinitions=props["AttributeDefinitions"],
            KeySchema=props["KeySchema"],
            BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
        )
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            ddb.update_time_to_live(TableName=logical_id, TimeToLiveSpecification=ttl)
        tables[logical_id] = logical_id
    return tables


def sqs_messages_of_topic(session: Any, topic_arn: str) -> Any:
    """Subscribe a queue to the topic, to read alerts back (tests, the demo)."""
    sqs = session.client("sqs")
    queue_url = sqs.create_queue(QueueName="alerts-" + topic_arn.rsplit(":", 1)[-1])["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    session.client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    def read() -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        while True:
            batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return messages
            for message in batch:
                body = json.loads(message["Body"])
                messages.append({"subject": body.get("Subject", ""), "message": body.get("Message", "")})
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    return read
