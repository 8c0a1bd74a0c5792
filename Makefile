# Sidecar Lab: `make serve` to read the site, `make test` to run every test,
# `make bench` to measure the reference systems on this machine (`make bench QUICK=1`: ~1 min).
# Each sets everything up first; set-up is skipped when nothing changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MERMAID := docs/assets/vendor/mermaid/VERSION
HOST ?= 127.0.0.1
PORT ?= 8000
# The project pins MkDocs 1.x; Material's notice about MkDocs 2 would only add noise.
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup serve build test bench clean

setup: $(STAMP) $(MERMAID)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[docs,test]"
	touch $@

# Re-fetches when the pinned version in the script changes.
$(MERMAID): tools/vendor_mermaid.py | $(BIN)/python
	$(BIN)/python tools/vendor_mermaid.py
	touch $@

serve: setup
	@echo "Serving Sidecar Lab at http://$(HOST):$(PORT)/ (Ctrl-C stops it)"
	$(BIN)/mkdocs serve --dev-addr $(HOST):$(PORT)

build: setup
	$(BIN)/mkdocs build --strict --site-dir site

test: setup
	$(BIN)/python -m pytest

# Needs nginx and wrk (Debian: apt-get install nginx wrk). Writes docs/lab/results/.
bench: setup
	$(BIN)/python -m bench $(if $(QUICK),--quick)

clean:
	rm -rf site test-artifacts .pytest_cache
