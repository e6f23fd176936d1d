"""Timeouts of every outbound call, read from the environment once and validated.

Defaults are the production values; operators and tests may shorten them (never past the bounds
below, so a typo cannot make a call wait for minutes). A bad value fails at start with the
variable's name, before any call is made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENVIRONMENT_NAMES = {
    "aws_connect_timeout": "AWS_CONNECT_TIMEOUT_SECONDS",
    "aws_read_timeout": "AWS_READ_TIMEOUT_SECONDS",
    "aws_max_attempts": "AWS_MAX_ATTEMPTS",
    "vonage_connect_timeout": "VONAGE_CONNECT_TIMEOUT_SECONDS",
    "vonage_read_timeout": "VONAGE_READ_TIMEOUT_SECONDS",
    "vonage_deadline": "VONAGE_DEADLINE_SECONDS",
    "callback_check_timeout": "CALLBACK_CHECK_TIMEOUT_SECONDS",
}


class ConfigurationError(ValueError):
    """A setting from the environment is missing or invalid; raised at start, before any call."""


class Timeouts(BaseModel):
    model_config = ConfigDict(frozen=True)

    aws_connect_timeout: float = Field(default=2.0, ge=0.05, le=10)
    aws_read_timeout: float = Field(default=5.0, ge=0.05, le=30)
    # botocore's own variable name; the standard retry mode counts the first attempt too.
    aws_max_attempts: int = Field(default=3, ge=1, le=5)
    vonage_connect_timeout: float = Field(default=3.05, ge=0.05, le=10)
    vonage_read_timeout: float = Field(default=5.0, ge=0.05, le=30)
    vonage_deadline: float = Field(default=20.0, ge=0.1, le=60)
    callback_check_timeout: float = Field(default=5.0, ge=0.1, le=20)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Timeouts:
        return model_from_environment(cls, ENVIRONMENT_NAMES, env, "timeout settings")


def model_from_environment[SettingsT: BaseModel](
    model: type[SettingsT], names: Mapping[str, str], env: Mapping[str, str] | None, what: str
) -> SettingsT:
    """Validate the variables `names` maps (field -> variable) into `model`; an unset or empty one
    takes the field's default. The error names each variable at fault, never its value."""
    env = os.environ if env is None else env
    raw = {field: env[name] for field, name in names.items() if env.get(name)}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{names.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else what}: {e['msg']}"
            for e in exc.errors(include_input=False)
        )
        raise ConfigurationError(f"invalid {what}: {problems}") from None


@cache
def timeouts() -> Timeouts:
    """The process's timeouts (read once)."""
    return Timeouts.from_environment()
