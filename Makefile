# Two commands: `make demo` (set up + run the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
export GAZENLQ_NO_PROGRESS ?= 0

.PHONY: setup setup-gpu demo test test-fast bench gpu-check lint clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build on this machine's disk; an unpinned torch would
# pull a multi-GB CUDA build. The package and its extras come after; the test tools (dev)
# only for the targets that need them, so that the demo starts sooner.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[engine,train]'
	touch $@

# The test tools resolve against constraints-dev.txt: the versions the suite last passed with.
$(VENV)/.dev-installed: $(VENV)/.installed constraints-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints-dev.txt \
		-e '.[engine,train,cluster,s3,ann,dev]'
	touch $@

# The demo's world is EgoSim's easy difficulty, 48 sessions, a 3-epoch schedule: what fits
# the demo's time budget on 2 cores (docs/synthetic-data.md, "The demo").
demo: setup
	@echo "== 1/6 EgoSim: 48 synthetic recording sessions (easy world) -> $(DEMO)/egosim"
	$(BIN)/gaze-synth $(DEMO)/egosim --sessions 48 --seed 0 --difficulty easy
	@echo "== 2/6 what is in one feature store"
	$(BIN)/gaze-store info $$(ls -d $(DEMO)/egosim/stores/*.zarr | head -n 1)
	@echo "== 3/6 train GazeNLQ (small preset, a short schedule for the demo)"
	$(BIN)/gaze-train $(DEMO)/egosim --out $(DEMO)/run --variants gaze --epochs 3 --stage1-epochs 1
	@echo "== 4/6 export a validated ONNX bundle and make it your default bundle"
	$(BIN)/gaze-export $(DEMO)/run/gaze-s0/stage2/best -o $(DEMO)/bundle --default
	@echo "== 5/6 search every demo video, without PyTorch (the default bundle)"
	$(BIN)/gaze-search $(DEMO)/egosim/stores "where did I put the bulb" --explain
	@echo "== 6/6 the test split's questions: answers beside the ground truth"
	$(BIN)/gaze-search $(DEMO)/egosim/stores --queries $(DEMO)/egosim/annotations/nlq_test.json \
		--submission $(DEMO)/submission.json --plot $(DEMO)/timeline.png --quiet
	$(BIN)/gaze-eval $(DEMO)/submission.json $(DEMO)/egosim/annotations/nlq_test.json --examples 10
	@echo "score timeline of the first test question, with its ground truth: $(DEMO)/timeline.png"

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -m "not slow"

# A GPU machine (README, "Running on a GPU"): onnxruntime-gpu instead of the CPU build (the
# two wheels conflict), TensorRT and cuda-python; PyPI's torch is the CUDA build there.
setup-gpu: $(VENV)/.gpu-installed

$(VENV)/.gpu-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip uninstall -y -q onnxruntime
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[gpu,trt,train]'
	touch $@

# Every GPU path against the CPU (cpu / cuda / tensorrt / trt-native, fp32 and fp16); on a
# machine without a GPU it says why each is skipped. Installs nothing: see setup-gpu.
gpu-check:
	$(BIN)/python -m benchmarks.gpu_check

# Every benchmark for this machine's devices -> benchmarks/RESULTS.md (CPU: about 15 min).
bench: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO) benchmarks/out
