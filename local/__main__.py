"""python -m local up | demo | invoke FUNCTION -e EVENT"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from local.simulator import DEFAULT_SECRET_ID
from local.stack import FUNCTIONS, ROOT, STATE_FILE, LocalStack, StackOptions

INVOKE_SNIPPET = """
import json, sys
sys.path[:0] = [{layer!r}, {root!r}]
from local.stack import LambdaContext, load_function
event = json.load(open({event!r}))
result = load_function({function!r}).lambda_handler(event, LambdaContext({function!r}))
print("RESULT " + json.dumps(result))
"""


PORT_FLAGS = "ARGS='--port 3100 --simulator-port 8800 --moto-port 5101 --webhook-port 8801'"


def _already_running(state_file: Path) -> str | None:
    """The API URL of a local stack that still answers, per its state file; None when none does
    (no file, or a stale one left by a stack that was killed)."""
    import urllib.error
    import urllib.request

    try:
        api_url = json.loads(state_file.read_text())["api_url"]
        urllib.request.urlopen(f"{api_url}/version", timeout=2).close()
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None
    return str(api_url)


def _taken_ports(options: StackOptions) -> list[str]:
    import socket

    taken = []
    for what, port in (
        ("--port, the local API Gateway", options.api_port),
        ("--simulator-port, the Vonage simulator", options.simulator_port),
        ("--moto-port, moto's AWS endpoint", options.moto_port),
        ("--webhook-port, the webhook receivers", options.webhook_port),
    ):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"{port} ({what})")
    return taken


def up(args: argparse.Namespace) -> int:
    options = StackOptions(
        api_port=args.port,
        simulator_port=args.simulator_port,
        moto_port=args.moto_port,
        webhook_port=args.webhook_port,
        tick_seconds=args.tick,
        topup_lag=args.topup_lag,
        accounts=args.accounts,
        subaccounts=args.subaccounts,
        fleet_concurrency=args.fleet_concurrency,
    )
    running = _already_running(STATE_FILE)
    if running:
        print(
            f"a local stack is already running (its API: {running}; state file {STATE_FILE}): use it, or stop it"
            f" with Ctrl-C in its terminal. A second one needs its own ports and state file:"
            f" ACCOUNT_OPS_LOCAL_STATE=/tmp/second.json make local {PORT_FLAGS}",
            file=sys.stderr,
        )
        return 3
    taken = _taken_ports(options)
    if taken:
        print(
            f"port(s) taken: {', '.join(taken)}. Free them, or pick other ports for every server,"
            f" for example: make local {PORT_FLAGS}",
            file=sys.stderr,
        )
        return 3
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
        signal.signal(signum, lambda *_: stop.set())
    with LocalStack(options) as stack:
        print(stack.banner(), flush=True)
        stop.wait()
        print("\nstopping the local stack", flush=True)
    return 0


def demo(args: argparse.Namespace) -> int:
    from local import demo as tour

    log = ROOT / "local-demo.log"
    started = time.monotonic()
    print(f"account-ops demo on the local stack (handler logs: {log.name})", flush=True)
    with open(log, "w") as sink:
        real_stdout = sys.stdout
        sys.stdout = sink  # the handlers' JSON logs go to the log file
        try:
            stack = LocalStack(StackOptions.on_free_ports(tick_seconds=1.0, topup_lag=3.0, quiet=False))
            with stack:
                checks = tour.run(stack, say=lambda line: print(line, file=real_stdout, flush=True))
        finally:
            sys.stdout = real_stdout
    passed = sum(ok for _, ok, _ in checks)
    print(f"\nsummary: {passed} of {len(checks)} checks passed in {time.monotonic() - started:.1f} s")
    for name, ok, _ in checks:
        print(f"  [{'x' if ok else ' '}] {name}")
    return 0 if passed == len(checks) else 1


def invoke(args: argparse.Namespace) -> int:
    if not Path(args.event).is_file():
        print(
            f"no event file {args.event!r}: the samples are in events/ (docs/local-stack.md lists them)",
            file=sys.stderr,
        )
        return 2
    if _already_running(STATE_FILE) is None:
        print("no local stack is running: start it with `make local` (in another terminal) first", file=sys.stderr)
        return 3
    state = json.loads(STATE_FILE.read_text())
    env = {**os.environ, **state["env"]}
    event_file = prepare_event(Path(args.event), args.function, state)
    code = INVOKE_SNIPPET.format(
        layer=str(ROOT / "layers" / "shared"),
        root=str(ROOT),
        event=str(event_file),
        function=args.function,
    )
    try:
        completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(event_file.parent, ignore_errors=True)
    logs = [line for line in completed.stdout.splitlines() if not line.startswith("RESULT ")]
    result = [line[7:] for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    for line in logs:
        print(line, file=sys.stderr)
    if completed.returncode != 0 or not result:
        print(completed.stderr, file=sys.stderr)
        return 1
    print(json.dumps(json.loads(result[0]), indent=2))
    return 0


SAMPLE_WEBHOOKS = "http://localhost:8701"  # `make local`'s webhook receivers, as events/ name them
SAMPLE_SECRET_ID = DEFAULT_SECRET_ID  # the simulator's first secret, as events/settings_get_secret.json names it


def prepare_event(path: Path, function: str, state: dict[str, Any]) -> Path:
    """Give a sample event what it needs on this running stack: its webhook URLs point at this
    stack's receivers, the sample secret id is the current secret's (it is revoked by the second
    rotation), and a rotation event's token is a version of the secret staged AWSPENDING (as
    Secrets Manager stages it before it invokes the function)."""
    import boto3

    env = state["env"]
    sm = boto3.client(
        "secretsmanager",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    text = path.read_text().replace(SAMPLE_WEBHOOKS, state.get("webhook_url") or SAMPLE_WEBHOOKS)
    if SAMPLE_SECRET_ID in text:  # the sample names the first secret; after a rotation, the current one
        current = json.loads(sm.get_secret_value(SecretId=env["VONAGE_SECRET_ARN"])["SecretString"])
        text = text.replace(SAMPLE_SECRET_ID, current.get("secret_id") or SAMPLE_SECRET_ID)
    event = json.loads(text)
    if function == "secret_rotation":
        versions = sm.describe_secret(SecretId=event["SecretId"]).get("VersionIdsToStages", {})
        if event["ClientRequestToken"] not in versions:
            current = sm.get_secret_value(SecretId=event["SecretId"], VersionStage="AWSCURRENT")["SecretString"]
            sm.put_secret_value(
                SecretId=event["SecretId"],
                ClientRequestToken=event["ClientRequestToken"],
                SecretString=current,
                VersionStages=["AWSPENDING"],
            )
    prepared = Path(tempfile.mkdtemp(prefix="account-ops-event-")) / path.name
    prepared.write_text(json.dumps(event))
    return prepared


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be 0 to 1000")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description="account-ops on one machine")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the local stack until Ctrl-C")
    p_up.add_argument("--port", type=int, default=3000, help="local API Gateway port (default 3000)")
    p_up.add_argument("--simulator-port", type=int, default=8700, help="Vonage simulator port (default 8700)")
    p_up.add_argument("--moto-port", type=int, default=5001, help="moto's AWS endpoint port (default 5001)")
    p_up.add_argument("--webhook-port", type=int, default=8701, help="webhook receivers' port (default 8701)")
    p_up.add_argument("--tick", type=float, default=10.0, help="seconds between balance watcher runs")
    p_up.add_argument("--topup-lag", type=float, default=5.0, help="seconds before a top-up shows in the balance")
    p_up.add_argument(
        "--accounts", type=_count, default=0, help="fleet accounts to add besides the stack's own (default 0)"
    )
    p_up.add_argument(
        "--subaccounts",
        type=_count,
        default=0,
        help="start a primary (prim0001) with this many subaccounts that it watches and funds (default 0)",
    )
    p_up.add_argument(
        "--fleet-concurrency", type=_count, default=5, help="fleet batches decided at once (default 5, as deployed)"
    )
    p_up.set_defaults(run=up)
    p_demo = sub.add_parser("demo", help="run the scripted tour and exit 0 only if every step behaved")
    p_demo.set_defaults(run=demo)
    p_invoke = sub.add_parser(
        "invoke", help="run one handler in a fresh process with an event file, against the running local stack"
    )
    p_invoke.add_argument("function", choices=FUNCTIONS)
    p_invoke.add_argument("-e", "--event", required=True, help="event file, e.g. events/balance_watcher_scheduled.json")
    p_invoke.set_defaults(run=invoke)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
