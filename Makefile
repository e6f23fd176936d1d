# account-ops: every entry point of the project. `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_VERSION := 3.13
comma := ,
# The first Python 3.13 that really runs (a pyenv shim may exist without the version behind it).
PYTHON := $(shell for p in python$(PYTHON_VERSION) python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(PYTHON_VERSION))))' 2>/dev/null \
	&& command -v $$p && break; done)

VENV := .venv
VENV_SAM := .venv-sam
PY := $(VENV)/bin/python
SAM := $(VENV_SAM)/bin/sam
STAMP := $(VENV)/.installed
STAMP_SAM := $(VENV_SAM)/.installed
VENV_BENCH := .venv-bench
STAMP_BENCH := $(VENV_BENCH)/.installed
export AWS_DEFAULT_REGION ?= eu-west-1
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help python venv cli-schema test lint typecheck unit validate build local demo bench bench-quick bench-fleet bench-subaccounts clean openapi

help:
	@echo "make demo   - the whole system on the local stack (simulator + moto), scripted tour"
	@echo "make local  - start the local stack and keep it running (Ctrl-C stops it); other ports: ARGS='--port 3100 --simulator-port 8800 --moto-port 5101 --webhook-port 8801'"
	@echo "make test   - ruff, mypy, sam validate --lint, pytest (what CI runs)"
	@echo "make build  - sam build (arm64, Python 3.13, no Docker)"
	@echo "make bench  - cold start, warm cost, memory and size benchmarks"
	@echo "make bench-fleet - whole fleet ticks for 10, 100 and 1,000 accounts (benchmarks/FLEET.md, a plot)"
	@echo "make bench-subaccounts - a primary's tick with 1,000 subaccounts (benchmarks/SUBACCOUNTS.md)"
	@echo "make venv   - create .venv (project, tests, CLI) and .venv-sam (SAM CLI); again only after a requirements file changes"

python:
	@if [ -z "$(PYTHON)" ]; then echo "error: Python $(PYTHON_VERSION) is required (the Lambda runtime's version); install it (e.g. 'pyenv install $(PYTHON_VERSION)') and run make again" >&2; exit 1; fi

$(STAMP): requirements-dev.txt layers/shared/requirements.txt pyproject.toml | python
	@echo "make: creating .venv (project, test tools and the account-ops CLI) from requirements-dev.txt; about a minute on a new machine"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install --quiet -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install --quiet --no-deps -e . >/dev/null 2>&1 || $(PY) -m pip install --no-deps -e .
	@$(PY) -c "import account_ops, moto, schemathesis, xdist" 2>/dev/null || $(PY) -m pip install -r requirements-dev.txt
	@touch $@

$(STAMP_SAM): requirements-sam.txt | python
	@echo "make: creating .venv-sam (the SAM CLI, apart: it pins its own boto3 and pydantic); about a minute on a new machine"
	@test -x $(VENV_SAM)/bin/python || $(PYTHON) -m venv $(VENV_SAM)
	@$(VENV_SAM)/bin/python -m pip install --quiet -r requirements-sam.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(VENV_SAM)/bin/sam --version >/dev/null 2>&1 || $(VENV_SAM)/bin/python -m pip install -r requirements-sam.txt
	@touch $@

# The naive handler the benchmark compares against (Tracer, X-Ray SDK, Idempotency): never in the layer.
$(STAMP_BENCH): requirements-bench.txt | python
	@echo "make: creating .venv-bench (only the naive handler the benchmark compares against)"
	@test -x $(VENV_BENCH)/bin/python || $(PYTHON) -m venv $(VENV_BENCH)
	@$(VENV_BENCH)/bin/python -m pip install --quiet -r requirements-bench.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(VENV_BENCH)/bin/python -c "import aws_lambda_powertools, boto3" 2>/dev/null || $(VENV_BENCH)/bin/python -m pip install -r requirements-bench.txt
	@touch $@

venv: $(STAMP) $(STAMP_SAM)

lint: $(STAMP)
	@echo "make: ruff (lint and format)"
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	@echo "make: mypy (strict on the layer; each handler; the local stack; the CLI)"
	@$(VENV)/bin/mypy --strict layers/shared/account_api
	@# each handler on its own: Lambda imports every one of them as the top-level module "app"
	@for f in $(wildcard functions/*/app.py); do $(VENV)/bin/mypy $$f >/dev/null || { $(VENV)/bin/mypy $$f; exit 1; }; done
	@$(VENV)/bin/mypy local account_ops

validate: $(STAMP_SAM)
	@echo "make: sam validate --lint (cfn-lint)"
	@$(SAM) validate --lint --template template.yaml

# The suite on both cores (a file's tests stay on one worker: their module-scoped stacks hold);
# the schema fuzzing apart, in one process: schemathesis's generated tests need one collection.
FUZZ_TESTS := tests/test_api_fuzz.py tests/test_api_fuzz_aws_failing.py
unit: $(STAMP) build  # the built layer is tested too (tests/test_built_layer.py)
	@echo "make: pytest on 2 workers (client, functions, watcher fault matrix, local stack, deploy rules, least privilege, CLI)"
	@$(PY) -m pytest -n 2 --dist loadfile $(addprefix --ignore=,$(FUZZ_TESTS))
	@echo "make: pytest, the API fuzzing (schemathesis, with AWS working and failing)"
	@$(PY) -m pytest $(FUZZ_TESTS)

# bench-quick: make bench runs (few repetitions, prints only); performance is never a pass/fail test here.
test: lint typecheck validate unit bench-quick

# sam build runs the layer's Makefile in a temporary folder, where a pyenv shim cannot see
# .python-version: hand it the real interpreter, first on the PATH and as PYTHON.
PYTHON_EXE = $(shell $(PYTHON) -c 'import sys; print(sys.executable)')

build: $(STAMP_SAM) | python
	@echo "make: sam build (arm64, Python 3.13, no Docker) into .aws-sam/build"
	@mkdir -p .aws-sam
	@PATH="$(dir $(PYTHON_EXE)):$$PATH" PYTHON="$(PYTHON_EXE)" $(SAM) build --template template.yaml > .aws-sam/build.log 2>&1 \
		|| { cat .aws-sam/build.log; exit 1; }

local: $(STAMP)
	$(PY) -m local up $(ARGS)

demo: $(STAMP)
	$(PY) -m local demo

# The JSON contract of `account-ops --output json` (tests/test_cli.py fails until it is regenerated).
cli-schema: $(STAMP)
	$(PY) -c "from account_ops.output import schema; print(schema(), end='')" > docs/cli-output.schema.json

bench: build $(STAMP) $(STAMP_BENCH)
	@echo "make: benchmarks (cold start against its floor, warm cost, memory, size), written to benchmarks/RESULTS.md"
	@$(PY) benchmarks/run.py

bench-quick: build $(STAMP) $(STAMP_BENCH)
	@echo "make: benchmarks, quick (two repetitions, printed, never pass/fail on a timing)"
	@$(PY) benchmarks/run.py --quick
	@echo "make: the fleet tick, quick (10 accounts, printed; fails only if an account is not decided exactly once)"
	@$(PY) benchmarks/fleet.py --quick
	@echo "make: a primary's tick, quick (100 subaccounts, printed; fails only if a low one is not funded exactly once)"
	@$(PY) benchmarks/subaccounts.py --quick

bench-fleet: $(STAMP)
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet -r requirements-plot.txt
	@echo "make: fleet ticks for 10, 100 and 1,000 accounts (a few minutes), written to benchmarks/FLEET.md"
	@$(PY) benchmarks/fleet.py

bench-subaccounts: $(STAMP)
	@echo "make: a primary's ticks with 1,000 subaccounts (none, 1 % and 10 % low), written to benchmarks/SUBACCOUNTS.md"
	@$(PY) benchmarks/subaccounts.py

clean:
	rm -rf $(VENV) $(VENV_SAM) $(VENV_BENCH) .aws-sam .mypy_cache .ruff_cache .hypothesis benchmarks/.work *.egg-info

openapi: $(STAMP)
	VONAGE_SECRET_ARN=unused STATE_TABLE=unused HISTORY_TABLE=unused ACCOUNTS_TABLE=unused ACCOUNT_SECRET_PREFIX=unused/ $(PY) -c "import sys; sys.path[:0] = ['layers/shared', 'functions/settings_api']; import app; print(app.openapi_document())" > functions/settings_api/openapi.json
