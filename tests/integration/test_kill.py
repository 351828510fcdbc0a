"""SIGKILL at a random point of training, export, build, sampling, checkpoint packing and the Triton
wrapper (tiny presets, real processes).

After each kill: nothing under a final name is half-written (every checkpoint, graph, engine and
PNG there opens, every manifest matches its file), and running the same command again finishes
the job; a resumed training run loses at most one checkpoint interval and redoes no step twice.
After the re-run, no temporary file or folder of the killed process remains (temporaries carry
their maker's pid: ``.<name>.<tmp|old|stage>-<pid>``, ``sparse-deploy-triton-<pid>-*``), and no
lock file either.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("SPARSE_DEPLOY_KILL_SEED", "0"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


def kill_at_random(
    args: list[str],
    started: Callable[[], bool],
    rng: random.Random,
    window: float,
    env: dict | None = None,
    poll: float = 0.02,
) -> int:
    """Start ``python -m args``; once ``started()`` holds, wait a random time in ``[0, window]`` and SIGKILL it; its
    pid.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], env=env or _env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        while proc.poll() is None and not started():
            time.sleep(poll)
        time.sleep(rng.uniform(0, window))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.pid


def finish(args: list[str], env: dict | None = None) -> None:
    done = subprocess.run([sys.executable, "-m", *args], env=env or _env(), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


def leftovers(root: Path, pid: int) -> list[Path]:
    """Temporaries of process ``pid`` and lock files anywhere under ``root``."""
    return [
        p for p in root.rglob("*") if p.name.endswith(f"-{pid}") or f"-{pid}-" in p.name or p.name.endswith(".lock")
    ]


def finals(root: Path) -> list[Path]:
    """Files under their final names (temporaries are ``.<name>.tmp-<pid>``)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


@pytest.mark.parametrize("round_", range(1))
def test_kill_during_training_then_resume(tmp_path, fmnist_data, round_):
    from sparse_deploy.checkpoint import load_checkpoint, load_training_state, read_manifest

    rng = random.Random(SEED * 100 + round_)
    out = tmp_path / "run"
    args = [
        "sparse_deploy.train",
        "--model",
        "tiny-dit",
        "--out",
        str(out),
        "--steps",
        "6",
        "--checkpoint-every",
        "2",
        "--batch-size",
        "4",
        "--preview",
        "0",
        "--data",
        fmnist_data,
        "--device",
        "cpu",
    ]
    kill_at_random(args, lambda: (out / "metrics.jsonl").exists(), rng, window=3.0)
    ckpt = out / "checkpoint"
    trained = 0
    if (out / "metrics.jsonl").exists():
        lines = (out / "metrics.jsonl").read_text().splitlines()
        steps = []
        for line in lines:
            try:
                steps.append(json.loads(line)["step"])
            except json.JSONDecodeError:
                assert line is lines[-1], "only the last line may be torn"
        trained = max(steps, default=0)
    if ckpt.exists():
        manifest = read_manifest(ckpt)  # sealed and complete
        load_checkpoint(ckpt)
        state = load_training_state(ckpt)
        assert state["step"] == manifest["step"]
        assert manifest["step"] >= trained - 2  # at most one checkpoint interval behind the rows on disk
    finish(args)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # no step lost from the log, none done twice
    assert read_manifest(ckpt)["complete"] is True


def test_kill_during_export_build_and_sampling(tmp_path):
    import onnx
    from PIL import Image

    from sparse_deploy.backends import load_runner

    rng = random.Random(SEED)
    export, engines, samples = tmp_path / "export", tmp_path / "tiny-dit", tmp_path / "samples"
    build = [
        "sparse_deploy.build",
        "--model",
        "tiny-dit",
        "--precision",
        "fp32",
        "--max-batch",
        "2",
        "--backend",
        "onnxruntime",
        "--export-dir",
        str(export),
        "--engine-dir",
        str(engines),
    ]
    kill_at_random(build, lambda: export.exists(), rng, window=6.0)
    for path in finals(tmp_path):
        if path.suffix == ".onnx":
            onnx.load(str(path), load_external_data=False)  # complete, or it would not be under this name
        if path.suffix == ".json":
            json.loads(path.read_text())
    for engine in engines.glob("*.ort.onnx") if engines.exists() else ():
        if engine.with_suffix(".json").exists():
            load_runner(engine).close()  # manifest sealed and matching the file
    finish(build)
    run = [
        "sparse_deploy.run",
        "--engine",
        str(engines / "sparse-fp32.ort.onnx"),
        "--out",
        str(samples),
        "--num",
        "8",
        "--batch",
        "2",
        "--steps",
        "4",
        "--device",
        "cpu",
    ]
    kill_at_random(run, lambda: samples.exists(), rng, window=2.0)
    for png in samples.glob("*.png") if samples.exists() else ():
        with Image.open(png) as im:
            im.verify()
    if (samples / "run.json").exists():
        listed = json.loads((samples / "run.json").read_text())["images"]
        assert all((samples / name).is_file() for name in listed)
    finish(run)
    assert len(json.loads((samples / "run.json").read_text())["images"]) == 8
    assert json.loads((samples / "run.json").read_text())["complete"] is True
    assert not [p for p in samples.iterdir() if p.name.startswith(".")]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".lock") or ".tmp-" in p.name or ".stage-" in p.name]


def test_kill_during_export_leaves_no_stage(tmp_path):
    """A killed export's staging folder (graph-sized: 2.5 GB for DiT-XL) is removed by the next export."""
    import onnx

    rng = random.Random(SEED + 1)
    export = tmp_path / "export"
    args = [
        "sparse_deploy.export",
        "--model",
        "tiny-dit",
        "--precision",
        "fp32",
        "--max-batch",
        "2",
        "--out",
        str(export),
    ]
    pid = kill_at_random(
        args, lambda: export.exists() and any(".stage-" in p.name for p in export.iterdir()), rng, window=1.0
    )
    finish(args)
    assert not leftovers(tmp_path, pid)
    for graph in export.glob("*.onnx"):
        onnx.load(str(graph), load_external_data=False)


@pytest.fixture(scope="module")
def shipped_weights(tmp_path_factory) -> Path:
    import torch

    from sparse_deploy.checkpoint import save_checkpoint
    from sparse_deploy.models import build_model
    from sparse_deploy.presets import get_preset
    from sparse_deploy.shipped import pack_weights

    tmp = tmp_path_factory.mktemp("kill-w")
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp / "ckpt",
        build_model(get_preset("tiny-dit"), announce_random=False),
        sparsity=None,
        info={"complete": True, "step": 1},
    )
    return pack_weights(ckpt, tmp / "tiny-dit")


@pytest.mark.parametrize("command", ["checkpoint", "pack"])
def test_kill_during_checkpoint_packing_leaves_no_temporary(tmp_path, shipped_weights, command):
    from sparse_deploy.checkpoint import load_checkpoint
    from sparse_deploy.shipped import verify_weights

    rng = random.Random(SEED + 2)
    out = tmp_path / "out"
    if command == "checkpoint":
        args = ["sparse_deploy.shipped", "checkpoint", str(shipped_weights), "--out", str(out)]
    else:
        args = [
            "sparse_deploy.shipped",
            "pack",
            "--checkpoint",
            str(shipped_weights.parent / "ckpt"),
            "--out",
            str(out),
        ]
    # Packing a tiny model takes milliseconds: poll fast and kill while its temporary folder is there.
    pid = kill_at_random(
        args, lambda: any(name.startswith(".out.tmp-") for name in os.listdir(tmp_path)), rng, window=0.002, poll=0.0005
    )
    if out.exists():  # whatever is under the final name is whole
        load_checkpoint(out) if command == "checkpoint" else verify_weights(out)
    finish(args)
    assert not leftovers(tmp_path, pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


PROBE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        zeros = [pb_utils.Tensor("y", np.zeros(1, np.float32))]
        return [pb_utils.InferenceResponse(output_tensors=zeros) for _ in requests]
"""
PROBE_CONFIG = """name: "probe"
backend: "python"
max_batch_size: 0
input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ count: 1 kind: KIND_CPU }]
"""


def test_kill_of_the_triton_wrapper_leaves_no_work_folder(tmp_path):
    """The wrapper's work folder (2.8 MB: the Python backend and its stub) and shared-memory regions of a killed
    wrapper are removed by the next one; its tritonserver dies with it."""
    from sparse_deploy.errors import SparseDeployError
    from sparse_deploy.triton.server import _processes_running_from, find_tritonserver

    try:
        find_tritonserver()
    except SparseDeployError as exc:
        pytest.skip(str(exc))
    repo = tmp_path / "repo"
    (repo / "probe" / "1").mkdir(parents=True)
    (repo / "probe" / "1" / "model.py").write_text(PROBE_MODEL)
    (repo / "probe" / "config.pbtxt").write_text(PROBE_CONFIG)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**_env(), "TMPDIR": str(tmp)}
    args = [
        "sparse_deploy.triton.server",
        "--repository",
        str(repo),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--startup-timeout",
        "120",
    ]
    rng = random.Random(SEED + 3)
    pid = kill_at_random(args, lambda: any(tmp.iterdir()), rng, window=1.0, env=env)
    assert [p.name for p in tmp.iterdir()] and all(
        p.name.startswith(f"sparse-deploy-triton-{pid}-") for p in tmp.iterdir()
    )
    stale = list(tmp.iterdir())
    finish([*args, "--duration", "0.5"], env=env)
    assert not list(tmp.iterdir())  # the killed wrapper's folder went, and the finished one removed its own
    # Its backend stubs, orphaned when its server died, were stopped before their folder went.
    assert not [p for w in stale for p in _processes_running_from(w)]
    shm = Path("/dev/shm")
    assert not [p for p in shm.glob(f"sdtriton{pid}*")] if shm.is_dir() else True
