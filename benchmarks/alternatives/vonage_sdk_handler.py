"""Alternative (b): the official Vonage SDK for the Account API with its client created, plus
Powertools' Logger, Metrics and Tracer and a boto3 Secrets Manager client. Timed for import and
initialisation only."""

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from vonage_account import Account
from vonage_http_client import Auth, HttpClient

logger = Logger()
metrics = Metrics()
tracer = Tracer()
secretsmanager = boto3.client("secretsmanager")
account = Account(HttpClient(Auth(api_key="abcd1234", api_secret="Sim-Secret-0001")))
