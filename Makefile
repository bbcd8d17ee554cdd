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
	@echo "== 1/5 EgoSim: 24 synthetic recording sessions -> $(DEMO)/egosim"
	$(BIN)/gaze-synth $(DEMO)/egosim --sessions 24 --seed 0
	@echo "== 2/5 what is in one feature store"
	$(BIN)/gaze-store info $$(ls -d $(DEMO)/egosim/stores/*.zarr | head -n 1)
	@echo "== 3/5 train GazeNLQ (small preset, a short schedule for the demo)"
	$(BIN)/gaze-train $(DEMO)/egosim --out $(DEMO)/run --variants gaze --epochs 2 --stage1-epochs 1
	@echo "== 4/5 export a validated ONNX bundle"
	$(BIN)/gaze-export $(DEMO)/run/gaze-s0/stage2/best -o $(DEMO)/bundle
	@echo "== 5/5 search every demo video, without PyTorch"
	$(BIN)/gaze-search $(DEMO)/egosim/stores "where did I put the bulb" --bundle $(DEMO)/bundle --explain

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Every benchmark for this machine's devices -> benchmarks/RESULTS.md (CPU: about 15 min).
bench: setup
	$(BIN)/python -m benchmarks

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO) benchmarks/out
