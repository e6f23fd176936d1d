"""Alternative (a): a handler built the obvious way. Everything imported at module level and the
boto3 clients created at start. Timed for import and initialisation only."""

import boto3
import pydantic  # noqa: F401
import requests  # noqa: F401
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.utilities import parameters  # noqa: F401
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, idempotent  # noqa: F401

logger = Logger()
metrics = Metrics()
tracer = Tracer()
app = APIGatewayRestResolver(enable_validation=True)
secretsmanager = boto3.client("secretsmanager")
dynamodb = boto3.client("dynamodb")
sns = boto3.client("sns")
persistence = DynamoDBPersistenceLayer(table_name="idempotency")
