# Two entry points, both self-contained on a fresh machine:
#   make run   -> creates .venv, installs, runs the default `kedro run` on the embedded corpus
#   make test  -> creates .venv, installs, runs the test suite
#   make lint  -> ruff check + format check (CI runs it before the tests)
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install lock lint format run test viz mlflow-ui clean-data

PIP_VERSION := 26.3

# Installs exactly requirements.lock (the versions the suite passed with), then the project
# itself without resolving anything further.
$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	# CPU build of torch first (a bare `torch` requirement would pull GBs of CUDA wheels)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# Refresh the lock: resolve pyproject.toml's ranges afresh in a scratch venv, write
# requirements.lock from it (pip and setuptools included), then rebuild .venv from the new lock
# and run the suite.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	$(LOCK_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	{ sed -n '1,/^$$/p' requirements.lock | grep '^#'; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/'; \
	} > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock
	rm -rf $(LOCK_VENV) $(VENV)
	$(MAKE) test

run: $(STAMP)
	$(VENV)/bin/kedro run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(ARGS)

# ruff (configured in pyproject.toml): lint and formatting check; `make format` applies both fixes
LINT_PATHS := src tests benchmarks
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

viz: $(STAMP)
	$(VENV)/bin/kedro viz run

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean-data:
	find data -type f ! -name .gitkeep -delete
	find data -mindepth 2 -type d -empty -delete
