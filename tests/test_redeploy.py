"""Deploy, delete, deploy again: modelled with moto's CloudFormation, as far as it goes.

moto's CloudFormation creates and deletes DynamoDB tables and honours `DeletionPolicy: Retain`, but
has no AWS::SecretsManager::Secret and treats `RetainExceptOnCreate` as Delete. So this runs the
template's own history table (its definition, condition and adoption parameter, from the
transformed template; the fleet's registry the same way) with the policy a stack delete applies to it (`Retain`): the table outlives
the stack, a plain re-deploy fails on the name, and a re-deploy naming the kept table adopts it,
with its rows. The secret follows the same pattern (ExistingVonageSecretArn); that, and a failed
first create deleting what `RetainExceptOnCreate` protects, only a real deploy shows.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from tests.cfn import transformed

pytestmark = pytest.mark.slow
STACK = "account-ops"
# each kept table, its adoption parameter and condition, and a row to find again
KEPT = {
    "TopUpHistoryTable": (
        "ExistingHistoryTableName",
        "CreatesHistoryTable",
        {"account": {"S": "abcd1234"}, "at": {"S": "2026-12-01T08:00:00Z"}},
    ),
    "AccountsTable": ("ExistingAccountsTableName", "CreatesAccountsTable", {"api_key": {"S": "abcd1234"}}),
}


def kept_table_only_stack(logical: str, table_name: str) -> dict[str, Any]:
    template = transformed()
    parameter, condition, _ = KEPT[logical]
    table = json.loads(json.dumps(template["Resources"][logical]))
    assert table["DeletionPolicy"] == "RetainExceptOnCreate"  # what AWS applies on delete: Retain
    table["DeletionPolicy"] = "Retain"
    table["Properties"]["TableName"] = table_name  # a fixed name, so that a second create collides
    return {
        "Parameters": {parameter: template["Parameters"][parameter]},
        "Conditions": {condition: template["Conditions"][condition]},
        "Resources": {
            logical: table,
            # a stack needs one resource whatever the condition says
            "Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "marker"}},
        },
    }


def status(cfn: Any) -> str:
    return str(cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"])


@pytest.mark.parametrize("logical", list(KEPT))
def test_delete_keeps_the_table_and_a_new_stack_adopts_it(aws: None, logical: str) -> None:
    """The history (the record of money moved) and the fleet's registry (which secrets are whose)."""
    cfn, ddb = boto3.client("cloudformation"), boto3.client("dynamodb")
    parameter, _, row = KEPT[logical]
    table = f"account-ops-{logical}"
    body = json.dumps(kept_table_only_stack(logical, table))
    cfn.create_stack(StackName=STACK, TemplateBody=body)
    assert status(cfn) == "CREATE_COMPLETE"
    ddb.put_item(TableName=table, Item=row)

    cfn.delete_stack(StackName=STACK)
    assert table in ddb.list_tables()["TableNames"]  # kept

    # A plain re-deploy collides with the kept table: the failure issue 18 describes.
    with pytest.raises(Exception):  # noqa: B017 - moto fails the create in its own ways
        cfn.create_stack(StackName=STACK, TemplateBody=body)
        assert status(cfn) == "CREATE_COMPLETE"
    cfn.delete_stack(StackName=STACK)

    # Naming the kept table adopts it: no new table, the old rows still there.
    cfn.create_stack(
        StackName=STACK, TemplateBody=body, Parameters=[{"ParameterKey": parameter, "ParameterValue": table}]
    )
    assert status(cfn) == "CREATE_COMPLETE"
    kinds = {r.get("ResourceType") for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
    assert "AWS::DynamoDB::Table" not in kinds and "AWS::SQS::Queue" in kinds
    assert ddb.scan(TableName=table)["Count"] == 1
