# storeplane — every target works on a fresh machine with only Python 3.11+ and make:
# it fetches uv if missing, creates the environment from uv.lock and generates the protobuf code.

SHELL := /bin/bash
PYTHON ?= python3
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen --all-packages
PROTOS := $(shell find protos -name '*.proto' 2>/dev/null)
PYPROJECTS := pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml cli/pyproject.toml)

.PHONY: run up test lint proto openapi bench ci seed demo health clean fmt bytecode dev-issuer fuzz

run: bytecode  ## the embedded stack: all five processes in one, SQLite, in-process bus
	$(RUN) storeplane run

# Distributed: the local PostgreSQL and RabbitMQ unless the environment names others.
up: export POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
up: export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2F
up: bytecode  ## each service its own process, PostgreSQL and RabbitMQ
	$(RUN) storeplane up

test: bytecode  ## every test (PostgreSQL and RabbitMQ must answer on 127.0.0.1)
	$(RUN) pytest -q $(PYTEST_ARGS)

lint: .venv/.synced libs/contracts/.generated  ## ruff, mypy, buf lint
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs/runtime/src services/*/src cli/src
	cd protos && $(RUN) buf lint

fmt: .venv/.synced
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

proto: .venv/.synced  ## regenerate libs/contracts from protos/
	$(RUN) python scripts/gen_protos.py

openapi: .venv/.synced libs/contracts/.generated  ## regenerate docs/openapi.json from the protos' HTTP annotations
	$(RUN) python -m gateway.openapi --out docs/openapi.json

bench: bytecode  ## benchmarks: figures and ratios against a floor measured in the same run
	$(RUN) python -m benchmarks $(BENCH_ARGS)

fuzz: bytecode  ## schemathesis over every REST operation of /openapi.json, 500 examples each (CI runs 50)
	SCHEMATHESIS_EXAMPLES=500 $(RUN) pytest -q tests/e2e/test_openapi_fuzz.py

ci: lint test

seed demo health: .venv/.synced libs/contracts/.generated
	$(RUN) storeplane $@

# The development issuer of the Tilt cluster (the Tiltfile runs this first): its key pair under
# k8s/overlays/dev/issuer/auth (git-ignored), made once; the dev overlay ships only its public jwks.json, and
# checkout's own token for its calls to peers (auth/peer-tokens/checkout, minted again on every run).
dev-issuer: .venv/.synced libs/contracts/.generated  ## keys for `tilt up`; tokens: storeplane token --data-dir k8s/overlays/dev/issuer
	@$(RUN) storeplane keys --data-dir k8s/overlays/dev/issuer --peer-tokens > /dev/null

libs/contracts/.generated: $(PROTOS) scripts/gen_protos.py .venv/.synced
	$(RUN) python scripts/gen_protos.py

# Bytecode for our own sources: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile every
# module at every start (seconds per process). Cheap when nothing changed.
bytecode: .venv/.synced libs/contracts/.generated
	@$(RUN) python -m compileall -q libs/runtime/src libs/contracts/src services/*/src cli/src benchmarks > /dev/null

.venv/.synced: uv.lock $(PYPROJECTS) | $(UV)
	$(UV) sync --frozen --all-packages --compile-bytecode
	@touch $@

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

clean:
	rm -rf .venv .tools var libs/contracts/.generated
	find libs/contracts/src/pos -name '*_pb2*' -delete
