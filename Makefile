# slimserve developer commands. `make help` lists them.
PYTHON ?= python3
# apt-get needs root: use sudo unless we already are root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# The browser tests (tests/test_ui.py) drive Debian's chromium; Playwright's own download is not used.
CHROMIUM := /usr/bin/chromium

.PHONY: help data browser install install-dev demo test test-fast image-tools test-image image soak lint format

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

test: install-dev ## install, then run the whole test suite, slowest 15 listed (the image build runs apart: make test-image)
	$(PYTHON) -m pytest -m "not image and not soak" --durations=15

test-fast: ## the fast tier, once installed: no training beyond seconds, no export, no server
	$(PYTHON) -m pytest -m "not slow and not http and not image and not soak"

image-tools: ## install buildah, podman, mmdebstrap and runc from Debian (skipped if present)
	@command -v buildah >/dev/null && command -v podman >/dev/null && command -v mmdebstrap >/dev/null \
		&& command -v runc >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y buildah podman mmdebstrap runc)

test-image: install-dev image-tools ## the OCI image test: build with buildah, run with podman (minutes)
	$(PYTHON) -m pytest -m image

image: image-tools ## build the OCI image with buildah (no Docker daemon), run it with podman, check an answer
	@$(PYTHON) deploy/image/image.py

soak: install-dev ## minutes of load on a real server: 0 failures, stable p99, flat memory (SLIMSERVE_SOAK_S=300)
	$(PYTHON) -m pytest -m soak -s tests/test_soak.py

lint: ## formatting and lint checks
	ruff format --check . && ruff check .

format: ## apply formatting and safe lint fixes
	ruff format . && ruff check --fix .
