"""Schema-driven fuzzing of the settings API: schemathesis generates requests from the committed
OpenAPI document (valid and invalid ones) and sends them over loopback to the local stack, where
the real handler answers. Every answer must be documented: no 5xx, a documented status, the
documented content type and schema. Bounded: a fixed seed (derandomised) and a few dozen cases
per operation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from local.stack import LocalStack, StackOptions
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SCHEMA = schemathesis.openapi.from_path(ROOT / "functions" / "settings_api" / "openapi.json")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CASES: Counter[str] = Counter()  # operation -> requests sent


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(StackOptions.on_free_ports(tick_seconds=86400)) as running:
        yield running


@SCHEMA.parametrize()
@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: schemathesis.Case, stack: LocalStack) -> None:
    CASES[f"{case.operation.method.upper()} {case.operation.path}"] += 1
    case.call_and_validate(base_url=stack.api_url, checks=CHECKS, timeout=15)


def test_the_fuzzing_ran_a_few_dozen_cases_per_operation() -> None:
    """Runs after the fuzzing above (pytest keeps file order): it must have tested every operation."""
    if not CASES:
        pytest.skip("selected without the fuzzing tests it counts")
    operations = {f"{method.upper()} {path}" for path, ops in SCHEMA.raw_schema["paths"].items() for method in ops}
    assert set(CASES) == operations
    assert min(CASES.values()) >= 20, CASES
