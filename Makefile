# Two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install system-deps demo test lint docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Chromium (scraper and report tests) and PostgreSQL (shared Optuna studies) from Debian.
system-deps:
	bash .ci/system-deps.sh

demo: install
	$(PY) scripts/demo.py

test: install system-deps
	$(PY) -m imgclf.hardware  # the CPU's features and the precision `auto` picks
	$(PY) -m pytest -n auto --dist loadfile --durations=20  # a process per core, each file's tests in one (module fixtures built once); the slowest tests, to keep CI under 20 minutes

lint: install
	$(PY) -m ruff check .

# The MkDocs site from docs/ (mkdocs.yml); --strict fails on a broken link between pages.
docs: install
	$(PY) -m mkdocs build --strict --site-dir build/site

bench: install system-deps
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
