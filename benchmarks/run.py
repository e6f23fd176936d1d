"""make bench: cold start, warm cost, peak memory and package size, against honest baselines.

    python benchmarks/run.py            # full run, writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick    # few repetitions, prints only (what make test runs)

Cold starts are measured on what `sam build` produces (.aws-sam/build), in a Lambda-like layout
(local/lambda_runtime.py: the layer built by its Makefile for this machine, the runtime's boto3
beside it, PYTHONDONTWRITEBYTECODE=1 as on Lambda's read-only /opt), against the Vonage simulator
and moto's server on loopback. Every process is fresh. Each function is paired with its floor
(the least any design must do for that invocation: start Python, import boto3 and requests,
create the clients the invocation uses and make one call with each) and with the naive handler,
in interleaved runs (function, floor, naive, function, floor, naive, ...); ratios are taken pair
by pair and their median reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT)]

from local.lambda_runtime import BUILD, base_python, lambda_env, prepare  # noqa: E402

BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

FUNCTIONS = {
    "settings_api": "SettingsApiFunction",
    "balance_watcher": "BalanceWatcherFunction",
    "secret_rotation": "SecretRotationFunction",
}
# What each timed invocation calls, for its floor: AWS clients (service -> one call) and Vonage.
FLOOR_CALLS = {
    "settings_api": ["secretsmanager"],
    "balance_watcher": ["secretsmanager", "dynamodb"],
    "secret_rotation": ["secretsmanager"],
}
TARGETS = {
    "cold_vs_floor": 1.5,
    "warm_ratio": 1.5,
    "memory_mb": 90,
    "layer_zip_mb": 6,
    "function_zip_kb": 50,
    "checks_ms": 700,
}

FLOOR_CHILD = """
import sys
sys.path[:0] = {paths!r}
import boto3, requests
for service in {services!r}:
    client = boto3.client(service)
    if service == "secretsmanager":
        client.get_secret_value(SecretId={secret!r})
    else:
        client.get_item(TableName={table!r}, Key={{"pk": {{"S": "floor"}}}})
requests.get({sim!r} + "/account/get-balance", auth=({key!r}, {api_secret!r}), timeout=5).json()
print("PEAK_KB", next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""

COLD_CHILD = """
import json, sys
sys.path[:0] = {paths!r}
class Context:
    function_name = {name!r}; function_version = "$LATEST"; memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:eu-west-1:000000000000:function:" + {name!r}
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    def get_remaining_time_in_millis(self): return 30000
import app
result = app.lambda_handler(json.load(open({event!r})), Context())
assert result is None or "statusCode" not in result or result["statusCode"] == 200, result
# peak resident memory of this process image (VmHWM: not counting the parent it was forked from)
print("PEAK_KB", next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""

WARM_CHILD = """
import json, statistics, sys, time
sys.path[:0] = {paths!r}
import requests
class Context:
    function_name = "settings"; function_version = "$LATEST"; memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:eu-west-1:000000000000:function:settings"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    def get_remaining_time_in_millis(self): return 30000
import app
event = json.load(open({event!r}))
session = requests.Session()
url = {sim!r} + "/account/get-balance"
def bare_call():
    return session.get(url, auth=({key!r}, {secret!r}), headers={{"Accept": "application/json"}}, timeout=5).json()
for _ in range(20):
    assert app.lambda_handler(event, Context())["statusCode"] == 200
    bare_call()
handler, bare = [], []
for _ in range({n}):  # interleaved, so both see the same machine
    t = time.perf_counter(); app.lambda_handler(event, Context()); handler.append(time.perf_counter() - t)
    t = time.perf_counter(); bare_call(); bare.append(time.perf_counter() - t)
print(json.dumps({{"handler": statistics.median(handler), "bare": statistics.median(bare)}}))
"""


def run_timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds of one fresh process, and the peak memory (MB) it reports (0 if none)."""
    start = time.perf_counter()
    completed = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{argv[-1][:80]!r} failed: {completed.stderr[-2000:]}")
    peak = [line.split()[1] for line in completed.stdout.splitlines() if line.startswith("PEAK_KB ")]
    return elapsed, int(peak[0]) / 1024 if peak else 0.0


def zipped_size(directory: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "a.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for path in sorted(directory.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(directory))
        return target.stat().st_size


def events(tmp: Path, stack: Any, pending_token: str) -> dict[str, Path]:
    scheduled = tmp / "scheduled.json"
    scheduled.write_text(json.dumps({"scheduledTime": "2026-01-01T00:00:00Z", "executionId": "bench"}))
    rotation = tmp / "rotation.json"
    rotation.write_text(
        json.dumps({"Step": "testSecret", "SecretId": stack.resources.secret_arn, "ClientRequestToken": pending_token})
    )
    return {
        "settings_api": ROOT / "events" / "settings_get_balance.json",
        "balance_watcher": scheduled,
        "secret_rotation": rotation,
    }


def next_scheduled(path: Path, index: int) -> None:
    """Every watcher cold start serves a new scheduled run (else it is a duplicate delivery)."""
    when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=5 * index)
    path.write_text(json.dumps({"scheduledTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "executionId": f"bench-{index}"}))


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(repeat: int, quick: bool) -> dict[str, Any]:
    from local import rotation_trigger
    from local.stack import LocalStack, StackOptions

    layer, runtime = prepare(reuse=quick)
    results: dict[str, Any] = {"cold": {}, "floor": {}, "naive": {}, "vs_floor": {}, "vs_naive": {}, "memory": {}}
    options = StackOptions.on_free_ports(tick_seconds=86400)
    with LocalStack(options) as stack, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        import boto3

        token = rotation_trigger.stage_configuration_test(boto3.client("secretsmanager"), stack.resources.secret_arn)
        event_files = events(tmp, stack, token)
        handler_env = lambda_env(
            {
                **{k: v for k, v in stack.env.items() if not k.startswith("POWERTOOLS_SERVICE")},
                "POWERTOOLS_TRACE_DISABLED": "false",
            }
        )
        py = base_python()
        naive_env = lambda_env(
            {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "POWERTOOLS_TRACE_DISABLED": "false"}
        )
        naive_argv = [str(BENCH_PYTHON), "-c", "import naive_handler"]
        naive_cwd = ROOT / "benchmarks" / "alternatives"
        for function, logical_id in FUNCTIONS.items():
            code = BUILD / logical_id
            env = {**handler_env, "POWERTOOLS_SERVICE_NAME": function.replace("_", "-")}
            floor = FLOOR_CHILD.format(
                paths=[str(runtime), str(layer)],
                services=FLOOR_CALLS[function],
                secret=stack.resources.secret_arn,
                table=stack.resources.tables["WatcherStateTable"],
                sim=stack.sim.url,
                key="abcd1234",
                api_secret="Sim-Secret-0001",
            )
            own, base, naive, peaks = [], [], [], []
            for index in range(repeat):  # interleaved: the three see the same machine
                if function == "balance_watcher":
                    next_scheduled(event_files[function], index + 1000 * int(time.time()) % 100000)
                child = COLD_CHILD.format(
                    paths=[str(code), str(layer), str(runtime)], name=function, event=str(event_files[function])
                )
                elapsed, peak = run_timed([py, "-S", "-c", child], env, code)
                own.append(elapsed)
                peaks.append(peak)
                base.append(run_timed([py, "-S", "-c", floor], env, code)[0])
                naive.append(run_timed(naive_argv, naive_env, naive_cwd)[0])
            results["cold"][function] = median(own)
            results["floor"][function] = median(base)
            results["naive"][function] = median(naive)
            results["vs_floor"][function] = median([a / b for a, b in zip(own, base, strict=True)])
            results["vs_naive"][function] = median([a / b for a, b in zip(own, naive, strict=True)])
            results["memory"][function] = max(peaks)
        results["bare"] = median([run_timed([py, "-S", "-c", "pass"], handler_env, ROOT)[0] for _ in range(repeat)])
        warm = WARM_CHILD.format(
            paths=[str(BUILD / "SettingsApiFunction"), str(layer), str(runtime)],
            event=str(event_files["settings_api"]),
            n=50 if quick else 500,
            sim=stack.sim.url,
            key="abcd1234",
            secret="Sim-Secret-0001",
        )
        out = subprocess.run(
            [py, "-S", "-c", warm],
            env={**handler_env, "POWERTOOLS_SERVICE_NAME": "settings-api"},
            cwd=BUILD / "SettingsApiFunction",
            capture_output=True,
            text=True,
            check=True,
        )
        results["warm"] = json.loads(out.stdout.strip().splitlines()[-1])
        results["checks"] = median([_two_slow_checks(stack) for _ in range(repeat)])
    results["size"] = {
        "layer": zipped_size(BUILD / "AccountApiLayer"),
        **{f: zipped_size(BUILD / logical) for f, logical in FUNCTIONS.items()},
    }
    return results


def _two_slow_checks(stack: Any) -> float:
    """Our two checks only: the simulator's own fetch of the URLs (Vonage's check) is switched off."""
    stack.sim.state.fetch_callbacks = False
    url = f"{stack.hooks.url}/slow?ms=500"
    body = json.dumps({"moCallbackUrl": url, "drCallbackUrl": url + "&second=1"}).encode()
    request = urllib.request.Request(
        f"{stack.api_url}/settings", data=body, method="PUT", headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    return time.perf_counter() - start


def report(results: dict[str, Any], repeat: int) -> str:
    cold, mem, size = results["cold"], results["memory"], results["size"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}; {repeat} interleaved runs per figure "
        "(function, floor, naive, ...), medians. Reproduce with `make bench`. Not measured on Lambda or on arm64: "
        "these figures compare designs on one machine; absolute times on Lambda differ.",
        "",
        "## Cold start (fresh process: interpreter, imports, initialisation, first invocation served)",
        "",
        "The floor of an invocation: `python`, `import boto3, requests`, the boto3 clients the invocation uses "
        "and one call with each, and the one Vonage call, with no Powertools, pydantic or code of ours. "
        "The naive handler imports boto3, requests, pydantic and Powertools Logger, Metrics, Tracer, Event Handler, "
        "Idempotency and Parameters and creates three boto3 clients, at import only (it loads Tracer and "
        "Idempotency, which we do not use: it is the obvious design, not a floor).",
        "",
        "| function | ms | floor ms | vs floor (paired) | naive ms | vs naive (paired) | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for function in FUNCTIONS:
        ratio = results["vs_floor"][function]
        lines.append(
            f"| `{function}` | {cold[function] * 1000:.0f} | {results['floor'][function] * 1000:.0f} | {ratio:.2f}x | "
            f"{results['naive'][function] * 1000:.0f} | {results['vs_naive'][function]:.2f}x | "
            f"<= {TARGETS['cold_vs_floor']}x floor: {verdict(ratio <= TARGETS['cold_vs_floor'])} |"
        )
    lines += [
        "",
        f"Bare interpreter (`python -S -c pass`): {results['bare'] * 1000:.0f} ms.",
        "",
        "## Warm invocation (settings API `GET /balance`, simulator on loopback)",
        "",
        "A warm `GET /balance` makes one Vonage call; its credentials come from the 300 s cache, so no AWS call "
        "is made per request, and the honest baseline is the same `requests` call on a warm connection.",
        "",
        "| what | ms per call | ratio | target |",
        "| --- | ---: | ---: | --- |",
        f"| handler (event in, API Gateway answer out) | {results['warm']['handler'] * 1000:.2f} | "
        f"{results['warm']['handler'] / results['warm']['bare']:.2f}x | <= {TARGETS['warm_ratio']}x: "
        f"{verdict(results['warm']['handler'] <= TARGETS['warm_ratio'] * results['warm']['bare'])} |",
        f"| bare `requests` call, same request, same connection | {results['warm']['bare'] * 1000:.2f} | 1.00x | |",
        "",
        "## Peak memory (one process through its first invocation, VmHWM)",
        "",
        "| function | MB | target |",
        "| --- | ---: | --- |",
        *[
            f"| `{f}` | {mem[f]:.1f} | < {TARGETS['memory_mb']} MB: {verdict(mem[f] < TARGETS['memory_mb'])} |"
            for f in FUNCTIONS
        ],
        "",
        "## Package size (zipped, as `sam build` produced it; the layer for arm64, with bytecode, without boto3)",
        "",
        "| package | KB | target |",
        "| --- | ---: | --- |",
        f"| layer | {size['layer'] / 1024:.0f} | < 6 MB: {verdict(size['layer'] < TARGETS['layer_zip_mb'] * 1024 * 1024)} |",
        *[
            f"| `{f}` function | {size[f] / 1024:.1f} | < 50 KB: {verdict(size[f] < TARGETS['function_zip_kb'] * 1024)} |"
            for f in FUNCTIONS
        ],
        "",
        "## Callback check concurrency (`PUT /settings`, two good URLs answering after 500 ms each)",
        "",
        "| wall ms | sum of the two | target |",
        "| ---: | ---: | --- |",
        f"| {results['checks'] * 1000:.0f} | 1000 | < 700 ms: {verdict(results['checks'] * 1000 < TARGETS['checks_ms'])} |",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two repetitions, print only")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    repeat = 2 if args.quick else args.repeat
    if not BUILD.exists():
        print("run `make build` first (make bench does)", file=sys.stderr)
        return 2
    text = report(measure(repeat, args.quick), repeat)
    print(text)
    if not args.quick:
        RESULTS.write_text(text)
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
