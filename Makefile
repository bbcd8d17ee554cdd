# Two commands: `make demo` (set up + run the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
export GAZENLQ_NO_PROGRESS ?= 0

.PHONY: setup demo test test-fast bench lint clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build on this machine's disk; an unpinned torch would
# pull a multi-GB CUDA build. The package and its extras come after.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[engine,train,dev]'
	touch $@

demo: setup
	@echo "== 1/3 EgoSim: 24 synthetic recording sessions -> $(DEMO)/egosim"
	$(BIN)/gaze-synth $(DEMO)/egosim --sessions 24 --seed 0
	@echo "== 2/3 what is in one feature store"
	$(BIN)/gaze-store info $$($(BIN)/python -c "import json; m = json.load(open('$(DEMO)/egosim/egosim.json')); print('$(DEMO)/egosim/' + next(s['store'] for s in m['sessions'] if s['has_gaze']))")
	@echo "== 3/3 validate every store (metadata and every chunk)"
	$(BIN)/gaze-store validate $(DEMO)/egosim/stores/*.zarr | tail -n 3
	@echo "demo done: train -> export -> search join this demo as issues 5-7 land"

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.bench_store
	$(BIN)/python -m benchmarks.bench_kernels

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO) benchmarks/out
