# Every target bootstraps .venv itself, so a fresh machine needs only python3.11 and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Most tests wait on real relay processes, sockets and fsyncs, so two workers fit two cores; a
# module stays on one worker (its module-scoped relay is started once).
PYTEST_PARALLEL ?= -n 2 --dist loadfile

.PHONY: demo demo-offline test lint typecheck fmt clean thorough bench bench-quick

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m client.demo_e2e

demo-offline: $(STAMP)
	$(BIN)/python -m client.demo

test: $(STAMP)
	tools/ensure-servers
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

# The optional baselines (y-py, loro, pycrdt-websocket by pip; yjs by npm into bench-results/.node).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -c "from benchmarks.adapters.yjs_adapter import ensure_yjs; ensure_yjs()" || echo "yjs baseline unavailable (no node/npm): skipped"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks run --suite engine,domain,relay,client

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks run --suite engine,domain,relay,client --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check crdt_core
	$(BIN)/mypy crdt_core relay client benchmarks tests

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format crdt_core

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
