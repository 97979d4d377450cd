# Two commands from a fresh clone:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test check pytest venv clean bench docs config-docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install only when the package metadata changed.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[demo]"
	touch $@

# constraints-dev.txt pins the CPU build of PyTorch (a plain `torch` is a multi-GB CUDA build)
$(VENV)/.test-installed: pyproject.toml constraints-dev.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints-dev.txt -e ".[test]"
	touch $@ $(VENV)/.demo-installed

venv: $(VENV)/.demo-installed

## make demo: create the virtualenv, install, and run the four-hospital heart-disease demo
demo: $(VENV)/.demo-installed
	$(BIN)/consortium demo

## make test: create/update the virtualenv with test extras, then lint, type-check and test
test: $(VENV)/.test-installed check pytest

check: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# two workers (one per core on CI): most tests wait on sockets and child processes, so
# the suite takes about half the time; a module's tests stay on one worker (loadscope)
PYTEST_WORKERS ?= 2
pytest: $(VENV)/.test-installed
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadscope

## make docs: the guides and the API reference (from the docstrings) into build/site;
## fails on a broken link or cross-reference
docs: $(VENV)/.test-installed
	$(BIN)/mkdocs build --strict

## make config-docs: rewrite the key reference of docs/configuration.md from the CLI's
## options (tests/cli/test_config_file_docs.py fails until it is done after a change)
config-docs: $(VENV)/.demo-installed
	$(BIN)/consortium config docs --write docs/configuration.md

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/heart_disease.py
	$(BIN)/python benchmarks/simulation.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
