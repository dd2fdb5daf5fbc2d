# slimserve developer commands. `make help` lists them.
PYTHON ?= python3
# apt-get needs root: use sudo unless we already are root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# The browser tests (tests/test_ui.py) drive Debian's chromium; Playwright's own download is not used.
CHROMIUM := /usr/bin/chromium

.PHONY: help data browser install install-dev demo test lint format

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

data: ## install Fashion-MNIST from Debian's dataset-fashion-mnist package (skipped if present)
	@test -f $(FASHION_MNIST) || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

install: data ## install slimserve (editable) and its pinned dependencies
	$(PYTHON) -m pip install -e .

browser: ## install Debian's chromium for the browser tests (skipped if present)
	@test -x $(CHROMIUM) || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

install-dev: data browser ## install slimserve with test and lint tools
	$(PYTHON) -m pip install -e ".[dev]"

demo: install ## the end-to-end job on Fashion-MNIST: train, evaluate, export, benchmark, serve
	slimserve demo

test: install-dev ## install, then run the whole test suite
	$(PYTHON) -m pytest

lint: ## formatting and lint checks
	ruff format --check . && ruff check .

format: ## apply formatting and safe lint fixes
	ruff format . && ruff check --fix .
