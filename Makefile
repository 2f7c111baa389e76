# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: setup demo test clean-demo

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
