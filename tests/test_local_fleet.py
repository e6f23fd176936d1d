"""`python -m local up --accounts N`: a local stack that starts with a fleet. Its own module: moto's
backends live in the process, so a second local stack must not run beside another module's."""

from __future__ import annotations

import json
import urllib.request

from local.stack import LocalStack, StackOptions


def test_a_local_fleet_starts_with_its_accounts_and_decides_them_on_each_tick() -> None:
    options = StackOptions.on_free_ports(tick_seconds=3600, accounts=3, fleet_concurrency=2)
    with LocalStack(options) as fleet:
        with urllib.request.urlopen(f"{fleet.api_url}/accounts", timeout=10) as answer:
            listed = json.loads(answer.read())
        assert [a["api_key"] for a in listed["accounts"]] == ["fleet001", "fleet002", "fleet003"]
        result = fleet.tick()
        assert result["outcome"] == "ok" and result["fleet_dispatched"] == 3 and result["fleet_failed"] == 0
        assert "3 accounts besides the stack's own" in fleet.banner()
