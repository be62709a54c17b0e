# multirefine: `make demo` installs and runs the demo, `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch is enough for everything here; a CUDA machine may set TORCH=torch.
TORCH  ?= torch==2.13.0

.PHONY: install demo test bench clean

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
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/bench_fourier.py

clean:
	rm -rf $(VENV) demo build src/*.egg-info
