# transferjob — the two set-up commands are `make demo` and `make test`; everything else is a step of them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install the project with its dev extras.

.PHONY: lint
lint: install ## ruff on everything; mypy on the packages; import-linter on the layering (pyproject.toml).
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

.PHONY: crd
crd: install ## Regenerate manifests/crd/ from the pydantic models.
	$(PY) -m transferjob.crd --write

.PHONY: test-unit
test-unit: install ## Unit tests only (no control plane, no TensorFlow training).
	$(PY) -m pytest -m "not cluster and not trainer and not e2e and not node" tests

include $(wildcard mk/*.mk)

.PHONY: versitygw
versitygw: install images ## Build (or reuse) the pinned versitygw S3 server the storage tests start; cached outside the repo.
	@$(PY) -m transferjob_testing.s3server build >/dev/null

# Everything the suite needs, in two chains that `make -j2` runs side by side: the Kubernetes Go builds
# (control plane, then node; CPU-bound, 10 + 7 minutes on a fresh 2-core machine, with the module
# downloads) and the venv, Debian packages, images (6.5 minutes cold) and versitygw (mostly network and
# disk; done before the Go builds in the last cold run).
# One after the other they took 6 minutes more.
# Lint rides on the second chain too: it needs only the venv, and fails in minutes instead of after
# the Go builds.
.PHONY: test-prereqs
test-prereqs: install cluster-binaries node-prereqs images versitygw lint

# Two pytest-xdist workers: one runs every test of the real node, in order (tests/conftest.py groups them:
# the node is host-wide), the other every other module meanwhile. TEST_WORKERS=0 runs it all in one process.
TEST_WORKERS ?= 2

.PHONY: test
test: ## The whole suite: lint, CRD drift, unit, trainer, control-plane, real-node and end-to-end tests.
	$(MAKE) -j2 test-prereqs
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=25

.PHONY: demo
demo: node-prereqs images ## A real node + the operator from manifests/ + digits feature extraction then fine-tuning.
	$(PY) hack/demo.py
