# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test processes at once: most tests wait on sockets and child processes, so more than cores.
TEST_WORKERS ?= 4

.PHONY: install demo test test-real lint clean bench

# uv (from PyPI, into the venv) installs the project in half the time pip takes: its
# downloads and its byte-compiling run in parallel. The bytecode is compiled at install, as
# pip does, so that no process compiles Prefect again (PYTHONDONTWRITEBYTECODE set).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flows.demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Tests and lint at once (lint is one process beside the test workers); the tests' output
# first, then lint's, so their counts are always printed; either failing fails the target.
# Each worker has its own Prefect test API, temporary folders and ports (tests/conftest.py).
# Our own modules compiled once, before the test processes: with PYTHONDONTWRITEBYTECODE
# set, each batch or CLI process a test starts compiled them again (~0.7 s of CPU each).
test: $(STAMP)
	$(BIN)/python -m compileall -q storyboard flows tasks
	status=0; lint_log=$$(mktemp); \
	$(MAKE) --no-print-directory lint > "$$lint_log" 2>&1 & lint=$$!; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal -m "not real" \
	  --cov --cov-report=term-missing --durations=15 || status=$$?; \
	wait $$lint || status=$$((status ? status : 1)); \
	cat "$$lint_log"; rm -f "$$lint_log"; \
	exit $$status

# The real-server tier: a real ComfyUI from COMFYUI_DIR (a checkout, only read) in a venv of
# its own with tiny random-weight FLUX.2 files (scripts/real_comfyui.py), then tests/real.
# Without COMFYUI_DIR it says so in one line and installs nothing.
test-real:
	@if [ -z "$$COMFYUI_DIR" ]; then \
	  echo "test-real: skipped: set COMFYUI_DIR to a checkout of ComfyUI (0.25.0 tested) to run it"; \
	else \
	  $(MAKE) --no-print-directory install && \
	  $(BIN)/python scripts/real_comfyui.py setup && \
	  $(BIN)/pytest -m real tests/real -v -p no:cacheprovider --durations=0; \
	fi

# Performance benchmark (not part of `test`); see benchmarks/README.md and docs/PERFORMANCE.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
