# dicom-gateway: `make run` (gateway in front of a local Orthanc with sample exams) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements.lock)

.PHONY: install deps run test lint lock clean image image-test
# The image `make image` builds and `make image-test` runs.
IMAGE ?= localhost/dicom-gateway:dev

## install: create .venv from the lock file (a no-op when nothing changed)
install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip sync -q --python $(BIN)/python --require-hashes --compile-bytecode requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	@touch $@

## deps: the Debian packages (Orthanc, its DICOMweb plugin, PostgreSQL, Chromium) and the OHIF viewer's static
## build (for the browser test), each installed only when missing
deps:
	@deploy/dev/install-deps.sh
	@deploy/dev/install-ohif.sh

## run: the gateway on http://127.0.0.1:8080 in front of a local Orthanc with sample exams; Ctrl-C stops both
run: deps install
	@deploy/dev/run.sh

## test: lint, type-check and the whole suite (starts and stops its own Orthanc and PostgreSQL)
test: deps install lint
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

## lock: recompile requirements.lock from pyproject.toml (names no package index)
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes \
		--no-emit-index-url --quiet -o requirements.lock

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache

## image: the container image (deploy/container/Dockerfile) built with podman; its base from a registry when one
## answers, else made from Debian's packages (deploy/container/build.sh has the settings)
image:
	@deploy/dev/install-deps.sh image
	deploy/container/build.sh $(IMAGE)

## image-test: the built image run as the Kubernetes manifests run it, in front of a test Orthanc (tests/image/)
image-test: deps install image
	$(BIN)/pytest tests/image --image $(IMAGE)

## bench: the gateway against direct Orthanc (QIDO, WADO, STOW, RSS); prints and writes bench/results.md (~5 min)
bench: deps install
	.venv/bin/python bench/run.py
