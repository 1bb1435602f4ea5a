# The README's two commands: `make train` (main job) and `make test` (whole suite). Each creates or reuses
# .venv in the checkout and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest bench train models clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev,train]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check birder_exp hydra_plugins tests benchmarks examples
	$(VENV)/bin/ruff format --check birder_exp hydra_plugins tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --explicit-package-bases birder_exp hydra_plugins

pytest: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup

test: lint typecheck pytest

bench: $(STAMP)
	@for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

# The README's main command: write the digits image folder (no network) and train the default config on it.
train: $(STAMP)
	$(PY) -m birder_exp.train

models: $(STAMP)
	$(VENV)/bin/birder-exp models

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
