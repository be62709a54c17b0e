# multirefine: `make demo` installs and runs the demo, `make test` installs and runs the tests
# (all but those marked slow), `make test-slow` the slow ones (end-to-end runs of 20 s or more).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch is enough for everything here; a CUDA machine may set TORCH=torch.
TORCH  ?= torch==2.13.0
# pytest-xdist workers (one per core of the 2-core CI machine); JOBS=0 runs in this process.
JOBS   ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

.PHONY: install demo test test-slow test-all bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,demo]"
	touch $@

demo: install
	$(BIN)/multirefine demo demo

test: install
	$(PYTEST) -m "not slow"

test-slow: install
	$(PYTEST) -m slow

test-all: test test-slow

bench: install
	$(BIN)/python bench/bench_fourier.py

clean:
	rm -rf $(VENV) demo build src/*.egg-info
