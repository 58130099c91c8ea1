# Two commands set everything up on a fresh machine (see README):
#   make demo   - create .venv if missing, install, run the main job (SST-2 distillation)
#   make test   - create .venv if missing, install, run the tests
#   make docs   - also install the docs extra, build the API reference into site/ (warnings are errors)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hfkd-installed

.PHONY: install install-docs docs demo demo-full test test-slow bench clean

$(STAMP): pyproject.toml requirements-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel: an unpinned torch pulls gigabytes of CUDA wheels.
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q -c requirements-cpu.txt -e ".[dev,examples,export]"
	touch $(STAMP)

install: $(STAMP)

DOCS_STAMP := $(VENV)/.hfkd-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -c requirements-cpu.txt -e ".[docs]"
	touch $(DOCS_STAMP)

install-docs: $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m mkdocs build --strict

demo: $(STAMP)
	$(PY) recipes/sst2_main_job.py $(ARGS)

demo-full: $(STAMP)
	$(PY) recipes/sst2_main_job.py --full $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache site
