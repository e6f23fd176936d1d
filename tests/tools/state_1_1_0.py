"""Write tests/data/state-1.1.0.json: the AWS state a stack on release 1.1.0 leaves, written by
1.1.0's own code (the layer at commit eaf7381, from git), not by today's.

The upgrade test (tests/test_upgrade.py) loads it into moto and runs today's code on it. Run again
only to change what the fixture holds: `.venv/bin/python -m tests.tools.state_1_1_0`.

What 1.1.0 did here: the watcher topped up a low balance once (a lease, a run claim, a history
row), an operator paused top-ups (the switch item), the balance fell again and the next run was
decided paused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import boto3
import yaml

ROOT = Path(__file__).resolve().parents[2]
RELEASE_1_1_0 = "eaf7381"  # the last commit of 1.1.0 (CHANGELOG: 2026-11-27)
OUT = ROOT / "tests" / "data" / "state-1.1.0.json"

# Runs inside a process whose account_api is 1.1.0's.
OLD_CODE = r"""
import os, sys
from account_api.balance import BalanceWatcher, ScheduledRun
from account_api.switch import TopUpSwitchChange, change_topup_switch

watcher = BalanceWatcher.from_environment()
first = watcher.run(ScheduledRun.from_event({"scheduledTime": "2026-11-30T09:00:00Z"}))
change_topup_switch(os.environ["STATE_TABLE"], TopUpSwitchChange(paused=True, reason="card replaced"),
                    "arn:aws:iam::123456789012:user/operator")
import urllib.request
urllib.request.urlopen(urllib.request.Request(os.environ["VONAGE_REST_BASE_URL"] + "/_sim/state",
                                              data=b'{"balance": 2.0}', method="POST")).close()
second = watcher.run(ScheduledRun.from_event({"scheduledTime": "2026-11-30T09:05:00Z"}))
print(first.outcome, second.outcome)
"""


def old_layer(into: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", RELEASE_1_1_0, "layers/shared/account_api", "template.yaml"],  # noqa: S607 - git on PATH
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    from moto.server import ThreadedMotoServer

    from local import aws_resources
    from local import simulator as simmod

    sim = simmod.start(simmod.new_state(balance=3.0, topup_lag=0.0))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "eu-west-1"}
    aws |= {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    os.environ.update(aws)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            old = old_layer(Path(tmp))
            template = yaml.load((old / "template.yaml").read_text(), Loader=aws_resources._CfnLoader)  # noqa: S506
            session = boto3.Session()
            tables = aws_resources.create_tables(session, template)  # 1.1.0's tables, as it declared them
            secret = json.dumps(
                {
                    "api_key": simmod.DEFAULT_API_KEY,
                    "api_secret": simmod.DEFAULT_API_SECRET,
                    "topup_trx": simmod.DEFAULT_TRX,
                }
            )
            arn = session.client("secretsmanager").create_secret(Name="account-ops/vonage", SecretString=secret)["ARN"]
            topic = session.client("sns").create_topic(Name="AlertTopic")["TopicArn"]
            env = {
                **os.environ,
                "PYTHONPATH": str(old / "layers" / "shared"),
                "VONAGE_SECRET_ARN": arn,
                "VONAGE_REST_BASE_URL": sim.url,
                "VONAGE_API_BASE_URL": sim.url,
                "BALANCE_THRESHOLD_EUR": "10",
                "STATE_TABLE": tables["WatcherStateTable"],
                "HISTORY_TABLE": tables["TopUpHistoryTable"],
                "ALERT_TOPIC_ARN": topic,
                "DRY_RUN": "false",
                "POWERTOOLS_METRICS_NAMESPACE": "AccountOps",
                "POWERTOOLS_SERVICE_NAME": "balance-watcher",
            }
            done = subprocess.run(
                [sys.executable, "-c", OLD_CODE], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            outcomes = done.stdout.strip().splitlines()[-1]
            ddb = session.client("dynamodb")
            state = {
                "written_by": f"account-ops 1.1.0 (commit {RELEASE_1_1_0}), tests/tools/state_1_1_0.py",
                "outcomes": outcomes.split(),
                "secret": {"name": "account-ops/vonage", "value": json.loads(secret)},
                "tables": {
                    logical: sorted(ddb.scan(TableName=name)["Items"], key=lambda i: json.dumps(i, sort_keys=True))
                    for logical, name in tables.items()
                },
            }
            OUT.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
            print(f"wrote {OUT.relative_to(ROOT)}: {outcomes}")
    finally:
        moto.stop()
        sim.shutdown()


if __name__ == "__main__":
    main()
