# inferd: two commands on a fresh machine.
#   make serve   create .venv, install inferd with every runtime, build the example models and
#                the web console (when npm is there), and serve them on http://127.0.0.1:8000
#   make test    the whole test suite (installs what it needs first)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
# The web console (console/, docs/console.md): built into the package when its sources change.
NPM         := $(shell command -v npm 2>/dev/null)
CONSOLE_OUT := src/inferd/api/admin/console_dist
CONSOLE_SRC := $(shell find console/src console/public -type f 2>/dev/null) console/index.html \
               console/package.json console/package-lock.json console/vite.config.ts \
               console/tsconfig.json console/openapi.json

.PHONY: install serve test check examples clean console console-api browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP) console

ifeq ($(NPM),)
console:
	@echo "warning: npm not found: the web console is not built; inferd serves its APIs without it (install Node.js 20+ and run make again)"
else
console: $(CONSOLE_OUT)/index.html

$(CONSOLE_OUT)/index.html: $(CONSOLE_SRC) console/node_modules/.package-lock.json
	cd console && npm run build

console/node_modules/.package-lock.json: console/package.json console/package-lock.json
	cd console && npm ci --no-audit --no-fund
	touch $@
endif

# after an API change: the saved OpenAPI document the console's client types come from
console-api: $(STAMP)
	$(BIN)/python -m tests.unit.test_console_files --write-openapi

# Debian's chromium for the console's browser tests (no browser build is downloaded): installed
# when missing and running as root; elsewhere those tests skip, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: chromium could not be installed: the console's browser tests cannot run"; \
	  else echo "warning: chromium not found: the console's browser tests skip (apt-get install chromium)"; fi; }

examples: $(STAMP)
	$(BIN)/python examples/build_models.py

serve: examples console
	$(BIN)/inferd serve --model-repository examples/models --host $(HOST) --http-port $(PORT)

test: examples console browser
ifneq ($(NPM),)
	cd console && npm test
endif
	$(BIN)/python -m pytest -q

check: $(STAMP) console
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/ruff check src tests examples bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache console/node_modules $(CONSOLE_OUT)
