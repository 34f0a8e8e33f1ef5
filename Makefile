# Every target bootstraps .venv itself, so a fresh machine needs only python3.11 and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Most tests wait on real relay processes, sockets and fsyncs (two workers kept 1.2 cores busy),
# so four workers fit two cores (the whole suite also passed at -n 4 on a machine at load average
# 10); a module stays on one worker (its module-scoped relay starts once), and the heaviest modules
# start first (tests/conftest.py).
PYTEST_PARALLEL ?= -n 4 --dist loadfile

.PHONY: demo demo-offline app bench-web test test-web lint typecheck fmt clean thorough bench bench-quick load soak fuzz chaos schemathesis

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m demos.e2e

demo-offline: $(STAMP)
	$(BIN)/python -m demos.offline

# Lint first (a prerequisite, so CI, which runs `make test`, goes red on a lint error), then the
# suite with branch coverage of crdt_core; the floor is [tool.coverage.report] in pyproject.toml.
COVERAGE ?= --cov --cov-report=term:skip-covered

test: $(STAMP) lint test-web
	tools/ensure-servers
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -q $(PYTEST_PARALLEL) $(COVERAGE)

# The JavaScript SDK (web/sdk): dependencies from its lockfile (npm ci, again only when
# package-lock.json changed), its JSDoc type check and its node tests. The crdt_core cross-check
# (tests/web/test_sdk_agrees.py) then runs inside the pytest suite with these dependencies.
SDK := web/sdk
SDK_STAMP := $(SDK)/node_modules/.installed
$(SDK_STAMP): $(SDK)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "need node 20+ and npm on PATH for web/sdk"; exit 1; }
	cd $(SDK) && npm ci --no-audit --no-fund --loglevel=error
	touch $(SDK_STAMP)

# The web app bundles the SDK with esbuild (web/app/package-lock.json) after the same JSDoc type
# check as the SDK's (its TypeScript); dist/ is what the relay serves at /app/ and what
# tests/web/test_app_browser.py drives in Chromium.
APP := web/app
APP_STAMP := $(APP)/node_modules/.installed
$(APP_STAMP): $(APP)/package-lock.json $(SDK_STAMP)
	cd $(APP) && npm ci --no-audit --no-fund --loglevel=error
	touch $(APP_STAMP)

test-web: $(SDK_STAMP) $(APP_STAMP)
	cd $(SDK) && npm run --silent typecheck && node --test --test-reporter=dot test/
	cd $(APP) && npm run --silent typecheck && npm run --silent build

# The web app (web/app): a relay with demo shops on a free loopback port; prints the app's URL.
app: $(STAMP) $(APP_STAMP)
	$(BIN)/python -m demos.app

# The web app in Chromium: gzipped size, first paint from cache, booking click to screen (docs/web.md).
bench-web: $(STAMP) $(APP_STAMP)
	$(BIN)/python -m benchmarks.web_app

thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

# The optional baselines (y-py, loro, pycrdt-websocket by pip; yjs and Hocuspocus by npm into
# bench-results/.node).
BENCH_STAMP := $(VENV)/.bench-installed
# The same-work Hocuspocus lane (SQLite, JWT, Ed25519 per record) needs its locked packages
# (benchmarks/baselines/hocuspocus/package-lock.json, npm ci) and the SDK's, whose parsers it reuses.
$(BENCH_STAMP): $(STAMP) benchmarks/baselines/hocuspocus/package-lock.json
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -c "from benchmarks.adapters.yjs_adapter import ensure_yjs; ensure_yjs()" || echo "yjs baseline unavailable (no node/npm): skipped"
	$(MAKE) $(SDK_STAMP) || echo "web/sdk packages unavailable: the same-work Hocuspocus lane is skipped"
	$(BIN)/python -c "from benchmarks.relay_bench.node import ensure_hocuspocus_locked as e; from benchmarks.relay_bench.servers import NODE_CACHE; e(NODE_CACHE)" || echo "same-work Hocuspocus unavailable: skipped"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks run --suite engine,domain,relay,client

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks run --suite engine,domain,relay,client --quick

# Sustained load: 1,000 authenticated connections on one relay process for 120 s;
# figures in docs/reliability.md. LOAD_ARGS adds or overrides options of benchmarks.load.
load: $(STAMP)
	$(BIN)/python -m benchmarks.load --connections 1000 --duration 120 --docs 200 --rate 100 \
		--out bench-results/load-$$(date -u +%Y%m%d-%H%M%S) $(LOAD_ARGS)

# Memory over hours: one relay process for 2 hours under a steady few updates per second, with day
# documents rolling over every 2 minutes; RSS slope after warm-up and a plot (docs/benchmarks.md).
# SOAK_ARGS adds or overrides options of benchmarks.relay_bench.soak (e.g. --hours 8).
soak: $(STAMP)
	$(BIN)/python -m benchmarks.relay_bench.soak --hours 2 \
		--out bench-results/soak-$$(date -u +%Y%m%d-%H%M%S) $(SOAK_ARGS)

# Long frame fuzzing against a live relay: 20,000+ generated and mutated frames,
# figures in docs/reliability.md. FUZZ_ARGS adds or overrides options of tests.fuzz.
fuzz: $(STAMP)
	$(BIN)/python -W ignore -m tests.fuzz --cases 20000 --minutes 30 $(FUZZ_ARGS)

# Long chaos run: 300 relay SIGKILLs (and client SIGKILLs, partitions, frame faults),
# progress on stdout, summary in bench-results/chaos-summary.json; figures in docs/reliability.md.
# CHAOS_ARGS adds or overrides options of tests.chaos.run (e.g. --seed 7 --duration 1500).
chaos: $(STAMP)
	@mkdir -p bench-results
	$(BIN)/python -m tests.chaos.run --seed 1 --relay-kills 300 --summary bench-results/chaos-summary.json $(CHAOS_ARGS)

# Long schemathesis run against a real relay, from its own OpenAPI (the test suite runs a short
# one): 0 server errors and 0 schema violations. SCHEMATHESIS_ARGS adds or overrides options of
# tests.relay.schemathesis_run (e.g. --max-examples 2000 --seed 7).
schemathesis: $(STAMP)
	$(BIN)/python -m tests.relay.schemathesis_run --max-examples 500 $(SCHEMATHESIS_ARGS)

# The whole tree: ruff's rules and formatting, mypy (strict on crdt_core, see pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy crdt_core relay client demos benchmarks tests

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .coverage.*
