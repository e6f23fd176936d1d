"""Every way the CLI can fail, as one line and one exit code (docs/cli.md, "Exit codes").

Operators script this tool: the code says what kind of failure it was, the line says what to do.
"""

from __future__ import annotations

import re
from enum import IntEnum

import requests
from botocore import exceptions as boto


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the command ran, and the answer was no (refused, a check failed, a part unknown)
    USAGE = 2  # a wrong option or value: nothing was sent
    NOT_FOUND = 3  # the stack, or the local stack, is not there
    CREDENTIALS = 4  # no credentials, an unknown profile, or AWS refused them
    UNREACHABLE = 5  # AWS or the settings API could not be reached in time
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)
    BROKEN_PIPE = 141  # the reader went away (`| head`): 128 + SIGPIPE, without a message


EXIT_CODES_HELP = """exit codes:
  0    done
  1    the command ran and the answer was no (refused, a check failed, a part unknown)
  2    a wrong option or value: nothing was sent
  3    the stack (or the local stack) is not there
  4    no AWS credentials, an unknown profile, or AWS refused the credentials
  5    AWS or the settings API could not be reached in time
  130  interrupted (Ctrl-C)"""


class CliError(Exception):
    """A failure with its exit code; the message is the whole line the operator sees."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


_CREDENTIAL_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
}
_SPACE = re.compile(r"\s+")


def one_line(text: object, limit: int = 300) -> str:
    line = _SPACE.sub(" ", str(text)).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def aws_failure(exc: Exception, doing: str) -> CliError:
    """A botocore failure while `doing` ("reading the stack 'x' in eu-west-1"), as a CliError."""
    if isinstance(exc, boto.NoCredentialsError):
        return CliError(Exit.CREDENTIALS, no_credentials())
    if isinstance(exc, boto.TokenRetrievalError | boto.SSOError | boto.UnauthorizedSSOTokenError):
        return CliError(Exit.CREDENTIALS, f"{doing}: the SSO session has expired: run `aws sso login` and try again")
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), one_line(error.get("Message", ""))
        if code in _CREDENTIAL_CODES:
            return CliError(Exit.CREDENTIALS, f"{doing}: AWS refused the request ({code}): {message}")
        return CliError(Exit.FAILED, f"{doing}: {code}: {message}")
    if isinstance(exc, boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ReadTimeoutError):
        return CliError(
            Exit.UNREACHABLE, f"{doing}: AWS did not answer ({type(exc).__name__}): check the network, proxy and region"
        )
    if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
        return CliError(Exit.UNREACHABLE, f"{doing}: the connection to AWS failed ({type(exc).__name__})")
    return CliError(Exit.FAILED, f"{doing}: {type(exc).__name__}: {one_line(exc)}")


def api_failure(exc: requests.RequestException, url: str) -> CliError:
    if isinstance(exc, requests.Timeout):
        return CliError(Exit.UNREACHABLE, f"the settings API at {url} did not answer in time: try again")
    return CliError(
        Exit.UNREACHABLE, f"cannot reach the settings API at {url} ({type(exc).__name__}): check the network"
    )


def no_credentials() -> str:
    return (
        "no AWS credentials found: run `aws configure` or `aws sso login`, or pass --profile NAME, "
        "or set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    )
