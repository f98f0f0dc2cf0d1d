# tokenlat: `make demo` runs the end-to-end verify on the local profile; `make test` runs every test.
OCB_VERSION := v0.161.0
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COLLECTOR := collector/_build/tokenlat-otelcol
PROFILES := $(basename $(notdir $(wildcard tokenlat_cli/profiles/*.yaml)))

.PHONY: demo test lint unit e2e collector prometheus venv configs clean help bench

help:
	@echo "make demo        build everything and run 'tokenlat verify --profile local'"
	@echo "make test        lint, config drift check, unit and end-to-end tests (what CI runs)"
	@echo "make collector   build the ocb distribution into $(COLLECTOR)"
	@echo "make configs     re-render collector/configs/ from the built-in profiles"
	@echo "make bench       hot-path benchmark (CPU per streamed token); rewrites the figures in docs/benchmarks.md"

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

collector:
	collector/build.sh $(OCB_VERSION)

# Installs Debian's prometheus when it is missing and we are root; otherwise says what to do.
prometheus:
	@if [ -n "$$PROMETHEUS_BIN" ] || command -v prometheus >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing prometheus (apt-get install prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else echo "prometheus is missing: install it (apt-get install prometheus) or set PROMETHEUS_BIN" >&2; exit 1; fi

demo: venv collector prometheus
	$(BIN)/tokenlat verify --profile local --json verify-report.json

configs: venv
	@for p in $(PROFILES); do $(BIN)/tokenlat render --profile $$p -o collector/configs/$$p.yaml; done

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv collector prometheus lint
	$(BIN)/python -m pytest -v

# CPU per streamed token: naive OTel vs prometheus_client vs tokenlat in one run (well under a minute on 2 cores).
bench: venv
	$(BIN)/python -m bench.hot_path --markdown docs/benchmarks.md

clean:
	rm -rf collector/_build verify-report.json
