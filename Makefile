# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: setup demo test clean-demo bench-venv bench-tokenizer

# The stamp is remade whenever pyproject.toml changes, so a changed pin reinstalls.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Until the training and evaluation stages land, the demo renders the demo dataset, checks it,
# packs it and writes a preview of one clip. Rerunning resumes: complete samples are skipped.
demo: setup
	$(BIN)/magvit3d render $(DEMO_DIR)/dataset --config demo
	$(BIN)/magvit3d verify $(DEMO_DIR)/dataset --no-progress
	$(BIN)/magvit3d pack $(DEMO_DIR)/dataset
	$(BIN)/magvit3d preview $(DEMO_DIR)/dataset --sample 0 --out $(DEMO_DIR)/preview_000000

test: setup
	$(BIN)/python -m pytest -q tests

clean-demo:
	rm -rf $(DEMO_DIR)

# Tokenizer benchmark against magvit2-pytorch, in its own venv: that package must stay out of .venv (the newest
# opencv-python it pulls wants numpy>=2, bpy needs numpy<2; with numpy<2 pinned pip picks opencv-python 4.x).
# Needs the packed demo dataset (make demo).
BENCH_VENV ?= .venv-bench
BUDGET ?= 240
$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 'numpy>=1.26,<2' magvit2-pytorch==0.5.1 \
		einops safetensors 'scikit-image>=0.22,<0.26' tqdm click pillow
	touch $@

bench-venv: $(BENCH_VENV)/.installed

bench-tokenizer: bench-venv
	$(BENCH_VENV)/bin/python benchmarks/tokenizer.py --budget-s $(BUDGET)
