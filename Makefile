# The two commands a user needs: `make demo` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUF_VERSION := 1.75.0
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
PORT ?= 8001
METRICS_PORT ?= 8002

.PHONY: all install test demo lint protos bench clean serve default-model

all: test

# Virtual environment with the package (editable) and every extra the tests and demo need.
# server/install.sh is the install step the Docker image runs too, so CI proves it.
$(VENV)/.installed: pyproject.toml constraints.txt server/install.sh
	$(PYTHON) -m venv $(VENV)
	server/install.sh --python $(PY) --editable --extras dev,export,demo
	touch $@

install: $(VENV)/.installed

# Debian's Chromium, for the browser test of the HTML report (tests/test_report_browser.py).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

# buf (protobuf linter) from the npm registry, kept out of the tree's history.
$(BUF):
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

protos: install
	$(PY) proto/generate.py

lint: install $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) proto/generate.py --check
	cd proto && ../$(BUF) lint

test: install $(BUF) $(CHROMIUM)
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(VENV)/bin/pytest -q

# Runs the service with the embedded default model (Ctrl-C to stop).
serve: install
	$(VENV)/bin/hardscore-server --port $(PORT) --metrics-port $(METRICS_PORT)

# Starts the server, runs the digits demo against it, stops the server.
demo: install
	$(PY) examples/demo.py --start-server

bench: install
	$(PY) bench/logits_throughput.py
	$(PY) bench/image_throughput.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache

# Retrains the embedded default model (deterministic; about a minute on 2 cores).
default-model: install
	$(PY) server/train_default_model.py
