# Two commands for users: `make demo` and `make test` (and `make lint`). Each builds .venv first
# when it is missing or older than the requirements: the exact stack of
# requirements/constraints.txt (the package itself declares ranges only).
# Python 3.11 where there is one (the machine's torch wheel is built for it), else python3;
# PYTHON=/path/to/python overrides. Checked before anything is installed.
PYTHON ?= $(or $(shell command -v python3.11),$(shell command -v python3),python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PINS := requirements/constraints.txt
REQS := requirements/runtime.txt requirements/tests.txt $(PINS) setup.cfg pyproject.toml

# The lowest mmengine requirements/runtime.txt declares (pure Python), beside the pinned one:
# tests/test_mmengine_range.py runs the hooks' tests against it, first on PYTHONPATH.
LOWEST := $(VENV)/lowest
LOWEST_STAMP := $(LOWEST)/.installed

.PHONY: install test demo lint clean-venv check-python

install: $(STAMP) $(LOWEST_STAMP)

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null || { \
		echo "error: '$(PYTHON)' is not a Python >= 3.9; install one, or run make with PYTHON=/path/to/python3.X" >&2; \
		exit 1; }

$(STAMP): $(REQS)
	test -x $(BIN)/python || $(MAKE) --no-print-directory check-python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# mmcv's setup.py needs torch, numpy and pkg_resources at build time, and must see torch
	# (--no-build-isolation) or it silently builds without ops.
	$(BIN)/pip install --upgrade pip wheel ninja \
		$$(grep -E '^(torch|setuptools|numpy)\b' $(PINS))
	MMCV_WITH_OPS=1 $(BIN)/pip install --no-build-isolation $$(grep -E '^mmcv\b' $(PINS))
	$(BIN)/pip install -c $(PINS) -r requirements/runtime.txt -r requirements/tests.txt
	$(BIN)/pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

$(LOWEST_STAMP): requirements/runtime.txt $(STAMP)
	rm -rf $(LOWEST)
	$(BIN)/pip install --no-deps --target $(LOWEST) \
		"$$(sed -n 's/^mmengine>=\([0-9.]*\).*/mmengine==\1/p' requirements/runtime.txt)"
	touch $(LOWEST_STAMP)

test: $(STAMP) $(LOWEST_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/python tools/demo.py

clean-venv:
	rm -rf $(VENV)
