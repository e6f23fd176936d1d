"""A Lambda-like process layout on this machine: the layer built by its own Makefile for this
machine's platform (the arm64 wheels cannot load here), the runtime's boto3 beside it as
/var/runtime holds it, and an environment like Lambda's. The benchmarks time cold starts in it;
a test runs every function in it to prove the built layer holds every module the code imports."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
BUILD = ROOT / ".aws-sam" / "build"
LAYER_SOURCES = ROOT / "layers" / "shared"


def base_python() -> str:
    """The interpreter behind the venv: a Lambda process has no venv site-packages."""
    return str(getattr(sys, "_base_executable", sys.executable))


def runtime_boto3_pin() -> str:
    return next(line for line in (ROOT / "requirements-dev.txt").read_text().splitlines() if line.startswith("boto3=="))


def prepare(reuse: bool = True) -> tuple[Path, Path]:
    """(layer python/ folder for this platform, runtime folder with boto3), built when missing or stale."""
    WORK.mkdir(parents=True, exist_ok=True)
    layer, runtime = WORK / "layer-host", WORK / "runtime"
    stamp = max(p.stat().st_mtime for p in LAYER_SOURCES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if not (reuse and layer.exists() and layer.stat().st_mtime > stamp):
        shutil.rmtree(layer, ignore_errors=True)
        subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(LAYER_SOURCES),
                "build-AccountApiLayer",
                f"ARTIFACTS_DIR={layer}",
                f"PLATFORM=manylinux2014_{platform.machine()}",
                f"PYTHON={base_python()}",
            ],
            check=True,
        )
    if not (runtime / ".pin").exists() or (runtime / ".pin").read_text() != runtime_boto3_pin():
        shutil.rmtree(runtime, ignore_errors=True)
        subprocess.run(
            [
                base_python(),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                str(runtime),
                runtime_boto3_pin(),
            ],
            check=True,
        )
        subprocess.run(
            [base_python(), "-m", "compileall", "-q", "-j", "0", str(runtime)], check=True, stdout=subprocess.DEVNULL
        )
        (runtime / ".pin").write_text(runtime_boto3_pin())
    return layer / "python", runtime


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
        "POWERTOOLS_METRICS_NAMESPACE": "AccountOps",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env
