# HCCTwin - the two commands: `make demo` and `make test`.
# Each sets itself up on a fresh machine (creates .venv if missing, installs torch==2.13.0 first, then the package)
# and is idempotent: the install step re-runs only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hcctwin-installed
TORCH_PIN ?= torch==2.13.0
PIP := $(PY) -m pip --disable-pip-version-check
DEMO_OUT ?= out/demo

.PHONY: demo test setup lint unit benchmarks clean view

demo: setup
	$(VENV)/bin/hcctwin demo --out $(DEMO_OUT)

# the browser viewer of the demo result (runs the demo first when there is none); open the printed address
view: setup
	test -f $(DEMO_OUT)/pre/portal.nii.gz || $(VENV)/bin/hcctwin demo --out $(DEMO_OUT)
	$(VENV)/bin/hcctwin view $(DEMO_OUT) --port $${PORT:-8080}

test: setup lint unit

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[headless,dev,dicom,report,cluster]"
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

unit: setup
	$(PY) -m pytest

benchmarks: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf out .pytest_cache .ruff_cache
