# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel

# Core install: the simulator and planner need no torch.
$(VENV)/.core: $(PY) pyproject.toml
	$(PIP) -e . --config-settings editable_mode=compat
	touch $@

# Test install: torch first, pinned to the local CPU build, then the rest.
$(VENV)/.dev: $(VENV)/.core
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]' --config-settings editable_mode=compat
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/specmoe whatif --report whatif-report

test: $(VENV)/.dev
	TRITON_INTERPRET=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
