# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: setup demo test clean-demo bench-venv bench-tokenizer bench-codec

# The stamp is remade whenever pyproject.toml changes, so a changed pin reinstalls.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# The main job: render -> verify -> pack -> train tokenizer -> tokenize -> train transformer -> train probe ->
# generate -> evaluate, ending with $(DEMO_DIR)/report/index.html. Rerunning resumes where it stopped.
demo: setup
	$(BIN)/magvit3d demo --out $(DEMO_DIR)

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
		einops safetensors 'scikit-image>=0.22,<0.26' tqdm click pillow imageio-ffmpeg
	touch $@

bench-venv: $(BENCH_VENV)/.installed

bench-tokenizer: bench-venv
	$(BENCH_VENV)/bin/python benchmarks/tokenizer.py --budget-s $(BUDGET)

# A video codec (x264/x265, from the bench venv's imageio-ffmpeg) at the demo token grid's bit budget: the reference
# for the tokenizer's PSNR. Needs the packed demo dataset (make demo).
bench-codec: setup bench-venv
	$(BIN)/python benchmarks/codec_bound.py --data $(DEMO_DIR)/dataset --write-md \
		--ffmpeg "$$($(BENCH_VENV)/bin/python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')"
