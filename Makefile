# The two commands a newcomer needs: `make serve` and `make test`. Each creates .venv and installs what it
# needs; serving installs no torch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Torch goes in first and pinned, CPU build: an unpinned torch pulls gigabytes of CUDA wheels. On a machine
# without a local CPU wheel, set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# `make test CONSTRAINTS=constraints.txt` installs exactly the versions the development machine resolved
# (some, like onnxruntime 1.32, come from its local wheel index and may be newer than a public index has).
CONSTRAINTS ?=
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

BUNDLE ?= model_repository/mnist-rse-apudae/1
EVAL_ARGS ?=
CIFAR10_DATA ?= ../shared/data
# the shipped cifar10-rse-apudae/4 (2 CPU cores, about 42 min; README "The CIFAR-10 bundles" has version 1's);
# CIFAR10_VERSION=7 CIFAR10_ARGS='--device cuda' trains the recipe's full-size residual defaults (widths
# 32-64-128, 60 + 20 epochs, all 10,000 test images) on a GPU, checkpoints in runs/cifar10-v7
CIFAR10_VERSION ?= 4
CIFAR10_ARGS ?= --device cpu --architecture rse-vgg --bf16 --epochs 20 --dae-epochs 5 --test-images 2000
# the shipped cifar10-rse-hgd/8, in the three runs that made it: version 1 (the same classifier and denoiser,
# then the denoiser trained with HGD's loss on PGD examples of 16,000 training images; its parts, timed in
# separate runs, add up to about 67 min; copy $(CIFAR10_CHECKPOINTS)/{classifier,dae}.pt into runs/cifar10-hgd/
# first to reuse version 4's trainings), version 7 (that guided DAE 6 epochs more, annealed, on PGD examples of
# all 49,000 training images: 26 min of crafting, 18 of training) and version 8 (version 7 repackaged with
# mirrored passes, about 2 min); each run resumes from its checkpoints, and a later option wins over an earlier one
HGD_ARGS ?= $(CIFAR10_ARGS) --purify-steps 0
CIFAR10_CHECKPOINTS ?= runs/cifar10-v$(CIFAR10_VERSION)

.PHONY: serve test check-deploy models defenses examples bench soak eval cifar10 cifar10-hgd lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve-deps: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[cpu]'
	touch $@

$(VENV)/.dev-deps: pyproject.toml | $(BIN)/python
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH_SPEC)'
	$(PIP) -e '.[cpu,train,dev,deploy]'
	touch $@ $(VENV)/.serve-deps $(VENV)/.deploy-deps

$(VENV)/.deploy-deps: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[cpu,dev,deploy]'
	touch $@ $(VENV)/.serve-deps

serve: $(VENV)/.serve-deps  ## start the service on the shipped default bundle
	DEFENDED_HOST=$(HOST) DEFENDED_PORT=$(PORT) $(BIN)/python -m service

test: $(VENV)/.dev-deps  ## run the whole test suite
	$(BIN)/python -m pytest

# Part of `make test` too; this runs only the deployment checks, without installing torch. Tools missing here
# (Prometheus from apt, checkov in its own venv) are installed by the tests or skipped with the reason.
check-deploy: $(VENV)/.deploy-deps  ## lint, render, validate and scan the Dockerfile, Helm chart, dashboard and alerts
	$(BIN)/python -m pytest tests/deploy

models: $(VENV)/.dev-deps  ## retrain and re-export the shipped bundle(s)
	$(BIN)/python -m export.mnist_rse --out model_repository --name mnist-rse-apudae --purifier --examples examples
	$(BIN)/python -m export.fp16 model_repository/mnist-rse-apudae/1

defenses: $(VENV)/.dev-deps  ## retrain and re-export the AMC, Deep Defense and Seiler MNIST bundles
	$(BIN)/python -m export.mnist_defenses --defense seiler --out model_repository
	$(BIN)/python -m export.mnist_defenses --defense deep-defense --defense-epochs 1 --out model_repository
	$(BIN)/python -m export.mnist_defenses --defense amc --defense-epochs 1 --finetune-images 640 --out model_repository

bench: $(VENV)/.dev-deps  ## speed vs the naive way: engine, HTTP under locust, FLOP/s (reports/bench/)
	$(PIP) -e '.[cpu,train,dev,bench]'
	$(BIN)/python -m bench --out reports/bench

soak: $(VENV)/.dev-deps  ## above-capacity load for 3 minutes: nothing accepted is lost or wrong (reports/soak/)
	$(PIP) -e '.[cpu,train,dev,bench]'
	$(BIN)/python -m bench.soak --out reports/soak

eval: $(VENV)/.dev-deps  ## robustness and detection evaluation of a bundle (reports/<bundle>/); EVAL_ARGS=--quick etc.
	$(BIN)/python -m evaluation --bundle $(BUNDLE) $(EVAL_ARGS)

cifar10: $(VENV)/.dev-deps  ## train and export the CIFAR-10 bundle (resumes from $(CIFAR10_CHECKPOINTS); CIFAR10_ARGS above)
	$(BIN)/python -m export.cifar10_rse --data $(CIFAR10_DATA) --out model_repository \
		--version $(CIFAR10_VERSION) --checkpoints $(CIFAR10_CHECKPOINTS) $(CIFAR10_ARGS)
	@# a refusal (float16 answers beyond the tolerance, as for version 1) leaves the bundle float32-only
	-$(BIN)/python -m export.fp16 model_repository/cifar10-rse-apudae/$(CIFAR10_VERSION) --data $(CIFAR10_DATA)

cifar10-hgd: $(VENV)/.dev-deps  ## train and export the classifier-guided CIFAR-10 bundle (resumes from runs/cifar10-hgd*)
	$(BIN)/python -m export.cifar10_rse --data $(CIFAR10_DATA) --out runs/bundles --name cifar10-rse-hgd \
		--version 1 --checkpoints runs/cifar10-hgd $(HGD_ARGS) --dae-guided-epochs 20 --dae-guided-images 16000
	$(BIN)/python -m export.cifar10_rse --data $(CIFAR10_DATA) --out runs/bundles --name cifar10-rse-hgd \
		--version 7 --checkpoints runs/cifar10-hgd7 --warm-start runs/cifar10-hgd $(HGD_ARGS) --epochs 0 \
		--dae-guided-epochs 6 --dae-guided-cosine --dae-guided-images 49000
	$(BIN)/python -m export.cifar10_rse --data $(CIFAR10_DATA) --out model_repository --name cifar10-rse-hgd \
		--version 8 --checkpoints runs/cifar10-hgd8 --warm-start runs/cifar10-hgd7 $(HGD_ARGS) --epochs 0 \
		--dae-guided-epochs 0 --mirror-passes

examples: $(VENV)/.dev-deps  ## rewrite the example images under examples/ (CIFAR-10 ones from $(CIFAR10_DATA))
	$(BIN)/python -m export.examples --out examples --cifar10-data $(CIFAR10_DATA)

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-deps
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
