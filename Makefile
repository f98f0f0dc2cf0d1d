# tokenlat: `make demo` runs the end-to-end verify on the local profile; `make test` runs every test.
# The Collector release (and so the ocb version) is pinned once, in collector/VERSION; collector/build.sh reads it
# and checks collector/builder-config.yaml against it.
OCB_VERSION := $(shell cat collector/VERSION)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COLLECTOR := collector/_build/tokenlat-otelcol
# Read from where it is pinned (tokenlat_cli/verify/thanos.py), so that the build and find_thanos() agree.
THANOS_VERSION := $(shell sed -n 's/^THANOS_VERSION = "\(.*\)"$$/\1/p' tokenlat_cli/verify/thanos.py)
# The same for Prometheus 3 (a module version: v0.316.0 is Prometheus 3.16.0), pinned in tokenlat_cli/verify/prometheus.py.
PROMETHEUS3_VERSION := $(shell sed -n 's/^PROMETHEUS3_VERSION = "\(.*\)"$$/\1/p' tokenlat_cli/verify/prometheus.py)

.PHONY: demo test stress-stops lint collector prometheus prometheus3 victoria-metrics chromium nginx alertmanager systemd-analyze thanos telemetrygen venv configs clean help bench bench-gateway image soak fuzz scale-out

help:
	@echo "make demo        build everything and run 'tokenlat verify --profile local'"
	@echo "make scale-out   verify the thanos profile scaled out (agents, gateways, Receive hashring) while nodes fail"
	@echo "make test        lint, config drift check, unit and end-to-end tests (what CI runs)"
	@echo "make stress-stops the stop tests N times in a row (N=20)"
	@echo "make collector   build the ocb distribution (Collector $(OCB_VERSION)) into $(COLLECTOR)"
	@echo "make thanos      build Thanos $(THANOS_VERSION) (Receive + Query for the thanos profile) into ~/.cache/tokenlat"
	@echo "make prometheus3 build Prometheus 3 (module $(PROMETHEUS3_VERSION)), verify's default receiver, into ~/.cache/tokenlat"
	@echo "make soak        the sidecar and the library under steady load for 30 minutes (DURATION=S); rewrites docs/benchmarks.md"
	@echo "make fuzz        the fuzz tests with thousands of cases each (make test runs a few hundred)"
	@echo "make image       build the Collector image from collector/Dockerfile (needs a Docker engine)"
	@echo "make configs     re-render collector/configs/ and deploy/ from the built-in profiles"
	@echo "make bench       hot-path, sidecar and accuracy benchmarks; rewrites docs/benchmarks.md and docs/accuracy.md"
	@echo "make bench-gateway the gateway Collector's throughput and memory under telemetrygen; rewrites its figures"
	@echo "make telemetrygen install contrib's telemetrygen at the pinned release into ~/.cache/tokenlat"

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $@

# The venv's Python checks the manifest against collector/VERSION (PyYAML) before the build.
collector: venv
	PYTHON=$(BIN)/python collector/build.sh

# Builds the pinned Thanos from its module source (go install refuses it: replace directives); skips when built.
thanos:
	scripts/install-thanos.sh $(THANOS_VERSION)

# contrib's load generator at the Collector release of collector/VERSION (the script reads it there), for the gateway
# bench and its test; `go install`, about 20 s the first time, then skipped.
telemetrygen:
	scripts/install-telemetrygen.sh

# Builds the pinned Prometheus 3 from its module source (without the React UI: not in the module zip); skips when
# built. verify prefers it to Debian's 2.42; the tests run against both.
prometheus3:
	scripts/install-prometheus.sh $(PROMETHEUS3_VERSION)

# The receivers verify runs, from Debian's packages when missing and we are root; otherwise says what to do.
prometheus:
	@scripts/ensure-package.sh prometheus prometheus PROMETHEUS_BIN

victoria-metrics:
	@scripts/ensure-package.sh victoria-metrics victoria-metrics VICTORIA_METRICS_BIN

# Headless Chromium renders verify's HTML report in its test.
chromium:
	@scripts/ensure-package.sh chromium chromium TOKENLAT_CHROMIUM_BIN

# nginx, the reference proxy the sidecar bench compares the sidecar with (CPU per chunk, added latency).
nginx:
	@scripts/ensure-package.sh nginx nginx NGINX_BIN

# The fuzz tests with thousands of cases each (make test runs them with a few hundred): profile loader, stream
# parsers, the sidecar's HTTP layer, the Collector's OTLP receiver. About 8 minutes on 2 cores.
fuzz: venv collector
	TOKENLAT_FUZZ_PROFILE=fuzz $(BIN)/python -m pytest tests/unit/test_fuzz_*.py tests/e2e/test_fuzz_*.py -v -p no:cacheprovider

# The sidecar and a process using the library under steady load for DURATION seconds (30 minutes), RSS and open
# descriptors sampled and judged flat after warm-up; rewrites the soak figures in docs/benchmarks.md. Its sink is
# the built Collector. CI runs it for 3 minutes (tests/e2e/test_soak.py).
DURATION ?= 1800
soak: venv collector
	$(BIN)/python -m bench.soak --duration $(DURATION) --markdown docs/benchmarks.md

# Alertmanager and amtool for the alert relay's end-to-end test (tests/e2e/test_alert_relay.py).
alertmanager:
	@scripts/ensure-package.sh prometheus-alertmanager prometheus-alertmanager ALERTMANAGER_BIN

# systemd-analyze checks the rendered systemd unit (tests/e2e/test_deploy_tools.py).
systemd-analyze:
	@scripts/ensure-package.sh systemd-analyze systemd SYSTEMD_ANALYZE_BIN

# The Collector image (collector/Dockerfile; docs/deploy.md). Needs a Docker engine, which CI does not have.
image:
	docker build -f collector/Dockerfile -t tokenlat-otelcol .

demo: venv collector prometheus
	$(BIN)/tokenlat verify --profile local --json verify-report.json

# The thanos profile scaled out (docs/scale-out.md): 4 services on 2 nodes, an agent a node, 3 gateways, a Thanos
# Receive hashring of 3 ingestors behind a router, read through Query; an ingestor, a gateway and an agent fail
# while the load runs. About 45 s on 2 cores. The report goes where demo's does.
scale-out: venv collector thanos
	$(BIN)/tokenlat verify --profile thanos --topology scale-out --json verify-report.json

configs: venv
	$(BIN)/python -m tokenlat_cli.configs .

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv collector prometheus prometheus3 victoria-metrics chromium nginx alertmanager systemd-analyze thanos telemetrygen lint
	$(BIN)/python -m pytest -v

# The stop tests (SIGTERM, Ctrl-C, SIGKILL of verify and the sidecar) N times in a row: a stop that fails now and
# then is the bug they are there for. `make test` runs them once; N=100 for a longer soak.
N ?= 20
stress-stops: venv collector prometheus3
	@for i in $$(seq $(N)); do echo "stress-stops: run $$i of $(N)"; \
		$(BIN)/python -m pytest tests/e2e/test_stops.py -q -p no:cacheprovider || exit 1; done

# CPU per streamed token: naive OTel vs prometheus_client vs tokenlat in one run (well under a minute on 2 cores);
# then the sidecar: latency and CPU it adds per chunk at 100 concurrent streams, against nginx in the same run, and
# its accuracy (about 2 min 45 s).
bench: venv nginx
	$(BIN)/python -m bench.hot_path --markdown docs/benchmarks.md
	$(BIN)/python -m bench.sidecar --markdown docs/benchmarks.md
	$(BIN)/python -m bench.accuracy --markdown docs/accuracy.md

# The gateway tier's throughput and memory: telemetrygen at rising rates into one tokenlat Collector (the gateway
# render) that remote-writes to VictoriaMetrics, until its memory_limiter refuses; then RSS per 100k series. About
# 15 minutes on 2 cores; run it on a quiet machine. Rewrites its figures in docs/benchmarks.md and
# docs/gateway-bench.json (docs/scaling.md draws on them). Not part of `make test`, which runs two short steps.
bench-gateway: venv collector victoria-metrics telemetrygen
	$(BIN)/python -m bench.gateway --json docs/gateway-bench.json --markdown docs/benchmarks.md

clean:
	rm -rf collector/_build verify-report.json
