# kobert-pretrain: every target sets itself up; `make test` and `make demo` work on a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

# Horovod is compiled against the MXNet in $(VENV); CPU builds use Gloo only.
HOROVOD_VERSION := 0.28.1
HOROVOD_CPU_ENV := HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 MAKEFLAGS=-j$$(nproc)

.PHONY: help install install-gpu gpu-check test test-all demo bench clean distclean

help:
	@echo "make demo      build the venv and run the pipeline on the bundled Korean corpus"
	@echo "make test      build the venv and run the default test suite"
	@echo "make test-all  also run the slow tests"
	@echo "make bench     run the benchmarks in benchmarks/"
	@echo "make install-gpu  switch .venv to mxnet-cu110/-cu112 and Horovod with NCCL (V100/A100 nodes, CUDA 11)"
	@echo "make gpu-check  on a fresh GPU node: install, float16 training on 1 and 2 GPUs, resume, speed (scripts/gpu_check.sh)"
	@echo "make clean     remove runs/ and caches (keeps .venv)"

# Python packages (the convert extra brings torch, transformers, onnx, onnxruntime), the package itself
# (editable), and the demo corpus (konlpy's bundled
# text files; --no-deps because its Java tagger, which needs JPype, is never used).
$(VENV)/.stamp-python: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install "pip>=23" "setuptools>=61,<70" wheel
	$(PIP) install -e ".[test,convert]" $(if $(wildcard $(VENV)/.stamp-gpu),--no-deps,)
	$(PIP) install --no-deps "konlpy==0.6.0"
	@touch $@

# Horovod from source, after MXNet (it links against libmxnet). Skipped when already built.
$(VENV)/.stamp-horovod: $(VENV)/.stamp-python
	@if ! $(BIN)/python -c "import horovod.mxnet" 2>/dev/null; then \
		echo "building horovod==$(HOROVOD_VERSION) against MXNet (takes a few minutes)"; \
		$(HOROVOD_CPU_ENV) $(PIP) install --no-build-isolation --no-cache-dir "horovod==$(HOROVOD_VERSION)"; \
	fi
	@$(BIN)/horovodrun --check-build > $(VENV)/horovod-check-build.txt
	@grep -q '\[X\] MXNet' $(VENV)/horovod-check-build.txt || { cat $(VENV)/horovod-check-build.txt; \
		echo "error: Horovod was built without MXNet support; run 'make distclean install'"; exit 1; }
	@grep -q '\[X\] Gloo' $(VENV)/horovod-check-build.txt || { cat $(VENV)/horovod-check-build.txt; \
		echo "error: Horovod was built without Gloo; run 'make distclean install'"; exit 1; }
	@touch $@

install: $(VENV)/.stamp-horovod

# GPU nodes: the CUDA build of MXNet that matches the CUDA 11 toolkit (mxnet-cu110 or -cu112, chosen by
# scripts/check_gpu_build.sh, which also checks g++, NCCL and the GPUs first and says what is missing),
# Horovod rebuilt with NCCL for this node's GPUs, then `doctor --gpu`: the libraries libmxnet.so needs,
# MXNet's CUDA/cuDNN/NCCL features and a float16 kernel on every visible GPU.
install-gpu: $(VENV)/.stamp-python
	settings=$$(bash scripts/check_gpu_build.sh) && eval "$$settings" && \
	$(PIP) uninstall -y mxnet mxnet-cu110 mxnet-cu112 && \
	$(PIP) install "$$MXNET_WHEEL==1.9.1" && \
	HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$$HOROVOD_CUDA_HOME" HOROVOD_NCCL_INCLUDE="$$HOROVOD_NCCL_INCLUDE" \
		HOROVOD_NCCL_LIB="$$HOROVOD_NCCL_LIB" HOROVOD_BUILD_CUDA_CC_LIST="$$HOROVOD_BUILD_CUDA_CC_LIST" \
		HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
		$(PIP) install --no-build-isolation --no-cache-dir --force-reinstall --no-deps "horovod==$(HOROVOD_VERSION)"
	$(BIN)/horovodrun --check-build | tee $(VENV)/horovod-check-build.txt
	@grep -q '\[X\] NCCL' $(VENV)/horovod-check-build.txt || { echo "error: Horovod built without NCCL"; exit 1; }
	$(BIN)/kobert-pretrain doctor --local --gpu
	@touch $(VENV)/.stamp-gpu $(VENV)/.stamp-horovod

gpu-check: install
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest --runslow $(PYTEST_ARGS)

demo: install
	KOBERT=$(BIN)/kobert-pretrain DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf runs .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
