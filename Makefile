# Two commands for a fresh machine (see README.md):
#   make run    install Livecore into .venv and serve it (embedded PostgreSQL and Redis)
#   make test   install what the tests need, then lint, type-check and run the whole suite
#               (on the machine's servers, then on the embedded ones)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

web/vendor/hls.min.js: package.json package-lock.json
	./scripts/web-deps

run: $(VENV)/.installed web/vendor/hls.min.js
	$(BIN)/livecore serve

# The suite runs twice: against the machine's PostgreSQL and Redis (or whatever
# tests/conftest.py finds), then every integration and end-to-end test again against the
# embedded servers that `make run` starts (PostgreSQL 16, Redis 6.2), so the
# zero-configuration run is tested as users run it. The unit tests touch no server.
test: $(VENV)/.installed-test web/vendor/hls.min.js
	./scripts/system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest
	LIVECORE_TEST_SERVERS=embedded $(BIN)/pytest --no-cov --ignore=tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage node_modules web/vendor
