# Two commands for a fresh machine (see README.md):
#   make run    install Livecore into .venv and serve it (embedded PostgreSQL and Redis)
#   make test   install what the tests need, then lint, type-check and run the whole suite
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

test: $(VENV)/.installed-test web/vendor/hls.min.js
	./scripts/system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage node_modules web/vendor
