# inferd: two commands on a fresh machine.
#   make serve   create .venv, install inferd with every runtime, build the example models,
#                and serve them on http://127.0.0.1:8000
#   make test    the whole test suite (installs what it needs first)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve test check examples clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

examples: $(STAMP)
	$(BIN)/python examples/build_models.py

serve: examples
	$(BIN)/inferd serve --model-repository examples/models --host $(HOST) --http-port $(PORT)

test: examples
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/ruff check src tests examples bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
