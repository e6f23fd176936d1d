"""make bench: cold start, warm cost, peak memory and package size, against the alternatives.

    python benchmarks/run.py            # full run, writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick    # few repetitions, prints only (what make test runs)

Cold starts are measured on what `sam build` produces (.aws-sam/build), with the layer built by
the same Makefile for this machine's platform (the arm64 wheels cannot load here), the runtime's
boto3 beside it as /var/runtime would hold it, PYTHONDONTWRITEBYTECODE=1 as on Lambda's read-only
/opt, against the Vonage simulator and moto's server on loopback. Each figure is the median of
repeated runs; every process is fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
WORK = ROOT / "benchmarks" / ".work"
BUILD = ROOT / ".aws-sam" / "build"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT)]

FUNCTIONS = {
    "settings_api": "SettingsApiFunction",
    "balance_watcher": "BalanceWatcherFunction",
    "secret_rotation": "SecretRotationFunction",
}
TARGETS = {
    "cold_vs_a": 0.6,
    "cold_vs_b": 0.8,
    "warm_ratio": 1.5,
    "memory_mb": 80,
    "layer_zip_mb": 6,
    "function_zip_kb": 50,
    "checks_ms": 700,
}

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


def base_python() -> str:
    """The interpreter behind the venv: a Lambda process has no venv site-packages."""
    return str(getattr(sys, "_base_executable", sys.executable))


def run_timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds of one fresh process, and the peak memory (MB) it reports (0 if none)."""
    start = time.perf_counter()
    completed = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{argv[-1][:80]!r} failed: {completed.stderr[-2000:]}")
    peak = [line.split()[1] for line in completed.stdout.splitlines() if line.startswith("PEAK_KB ")]
    return elapsed, int(peak[0]) / 1024 if peak else 0.0


def lambda_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "POWERTOOLS_TRACE_DISABLED": "false",
        "POWERTOOLS_METRICS_NAMESPACE": "AccountOps",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def prepare(quick: bool) -> tuple[Path, Path]:
    """The layer for this machine's platform, and the runtime's boto3 (as /var/runtime holds it)."""
    WORK.mkdir(parents=True, exist_ok=True)
    layer, runtime = WORK / "layer-host", WORK / "runtime"
    stamp = max(p.stat().st_mtime for p in (ROOT / "layers" / "shared").rglob("*") if p.is_file())
    if not (quick and layer.exists() and layer.stat().st_mtime > stamp):
        shutil.rmtree(layer, ignore_errors=True)
        subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(ROOT / "layers" / "shared"),
                "build-AccountApiLayer",
                f"ARTIFACTS_DIR={layer}",
                f"PLATFORM=manylinux2014_{platform.machine()}",
                f"PYTHON={base_python()}",
            ],
            check=True,
        )
    if not runtime.exists():
        pin = next(
            line for line in (ROOT / "requirements-dev.txt").read_text().splitlines() if line.startswith("boto3==")
        )
        subprocess.run(
            [base_python(), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(runtime), pin],
            check=True,
        )
        subprocess.run(
            [base_python(), "-m", "compileall", "-q", "-j", "0", str(runtime)], check=True, stdout=subprocess.DEVNULL
        )
    return layer / "python", runtime


def zipped_size(directory: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "a.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for path in sorted(directory.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(directory))
        return target.stat().st_size


def vonage_sdk_closure_size() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                base_python(),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                tmp,
                "vonage-account==1.1.2",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return zipped_size(Path(tmp))


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

    layer, runtime = prepare(quick)
    results: dict[str, Any] = {"cold": {}, "memory": {}}
    options = StackOptions.on_free_ports(tick_seconds=86400)
    with LocalStack(options) as stack, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        import boto3

        token = rotation_trigger.pending_token(boto3.client("secretsmanager"), stack.resources.secret_arn)
        assert token, "the local stack stages a configuration-test version"
        event_files = events(tmp, stack, token)
        handler_env = lambda_env({k: v for k, v in stack.env.items() if not k.startswith("POWERTOOLS_SERVICE")})
        py = base_python()
        results["bare"] = median([run_timed([py, "-c", "pass"], handler_env, ROOT)[0] for _ in range(repeat)])
        for function, logical_id in FUNCTIONS.items():
            code = BUILD / logical_id
            env = {**handler_env, "POWERTOOLS_SERVICE_NAME": function.replace("_", "-")}
            times, peaks = [], []
            for index in range(repeat):
                if function == "balance_watcher":
                    next_scheduled(event_files[function], index + 1000 * int(time.time()) % 100000)
                child = COLD_CHILD.format(
                    paths=[str(code), str(layer), str(runtime)], name=function, event=str(event_files[function])
                )
                elapsed, peak = run_timed([py, "-c", child], env, code)
                times.append(elapsed)
                peaks.append(peak)
            results["cold"][function] = median(times)
            results["memory"][function] = max(peaks)
        alt_env = lambda_env({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
        for name, module in (("a", "naive_handler"), ("b", "vonage_sdk_handler")):
            cwd = ROOT / "benchmarks" / "alternatives"
            results["cold"][name] = median(
                [run_timed([str(BENCH_PYTHON), "-c", f"import {module}"], alt_env, cwd)[0] for _ in range(repeat)]
            )
        warm = WARM_CHILD.format(
            paths=[str(BUILD / "SettingsApiFunction"), str(layer), str(runtime)],
            event=str(event_files["settings_api"]),
            n=50 if quick else 500,
            sim=stack.sim.url,
            key="abcd1234",
            secret="Sim-Secret-0001",
        )
        out = subprocess.run(
            [py, "-c", warm],
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
        "vonage_sdk": vonage_sdk_closure_size(),
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
    a, b = cold["a"], cold["b"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}; median of {repeat} fresh processes per figure. "
        "Reproduce with `make bench`.",
        "",
        "## Cold start (fresh process: interpreter, imports, initialisation, first invocation)",
        "",
        "| what | ms | vs (a) | vs (b) | target |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| bare interpreter (`python -c pass`) | {results['bare'] * 1000:.0f} | | | |",
    ]
    for function in FUNCTIONS:
        t = cold[function]
        ok = t <= TARGETS["cold_vs_a"] * a and t <= TARGETS["cold_vs_b"] * b
        lines.append(
            f"| `{function}` (first invocation served) | {t * 1000:.0f} | {t / a:.2f}x | {t / b:.2f}x | "
            f"<= 0.6x (a), <= 0.8x (b): {verdict(ok)} |"
        )
    lines += [
        f"| (a) boto3, requests, pydantic, Powertools Logger/Metrics/Tracer/Event Handler/Idempotency/Parameters, 3 boto3 clients (import and init only) | {a * 1000:.0f} | 1.00x | {a / b:.2f}x | |",
        f"| (b) Vonage SDK (`vonage-account`) with its client, Powertools Logger/Metrics/Tracer, a boto3 Secrets Manager client (import and init only) | {b * 1000:.0f} | {b / a:.2f}x | 1.00x | |",
        "",
        "## Warm invocation (settings API `GET /balance`, simulator on loopback)",
        "",
        "| what | ms per call | ratio | target |",
        "| --- | ---: | ---: | --- |",
        f"| handler (event in, API Gateway answer out) | {results['warm']['handler'] * 1000:.2f} | "
        f"{results['warm']['handler'] / results['warm']['bare']:.2f}x | <= 1.5x: "
        f"{verdict(results['warm']['handler'] <= TARGETS['warm_ratio'] * results['warm']['bare'])} |",
        f"| bare `requests` call, same request, same connection | {results['warm']['bare'] * 1000:.2f} | 1.00x | |",
        "",
        "## Peak memory (one process through its first invocation)",
        "",
        "| function | MB | target |",
        "| --- | ---: | --- |",
        *[f"| `{f}` | {mem[f]:.1f} | < 80 MB: {verdict(mem[f] < TARGETS['memory_mb'])} |" for f in FUNCTIONS],
        "",
        "## Package size (zipped, as `sam build` produced it; the layer for arm64, with bytecode)",
        "",
        "| package | KB | target |",
        "| --- | ---: | --- |",
        f"| layer | {size['layer'] / 1024:.0f} | < 6 MB: {verdict(size['layer'] < TARGETS['layer_zip_mb'] * 1024 * 1024)} |",
        *[
            f"| `{f}` function | {size[f] / 1024:.1f} | < 50 KB: {verdict(size[f] < TARGETS['function_zip_kb'] * 1024)} |"
            for f in FUNCTIONS
        ],
        f"| Vonage SDK dependency closure (`vonage-account`) | {size['vonage_sdk'] / 1024:.0f} | |",
        "",
        "## Callback check concurrency (`PUT /settings`, two good URLs answering after 500 ms each)",
        "",
        "| wall ms | sum of the two | target |",
        "| ---: | ---: | --- |",
        f"| {results['checks'] * 1000:.0f} | 1000 | < 700 ms: {verdict(results['checks'] * 1000 < TARGETS['checks_ms'])} |",
        "",
    ]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    """The README shows the latest table, between its bench markers."""
    readme = ROOT / "README.md"
    content = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    body = text.split("\n", 2)[2].replace("\n## ", "\n#### ")  # drop the H1; nest the sections
    head, rest = content.split(start, 1)
    readme.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")


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
        update_readme(text)
        print(f"written to {RESULTS.relative_to(ROOT)} and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
