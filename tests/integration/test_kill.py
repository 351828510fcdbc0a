"""SIGKILL at a random point of training, export, build and sampling (tiny presets, real processes).

After each kill: nothing under a final name is half-written (every checkpoint, graph, engine and
PNG there opens, every manifest matches its file), and running the same command again finishes
the job; a resumed training run loses at most one checkpoint interval and redoes no step twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("SPARSE_DEPLOY_KILL_SEED", "0"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


def kill_at_random(args: list[str], started: Callable[[], bool], rng: random.Random, window: float) -> None:
    """Start ``python -m args``; once ``started()`` holds, wait a random time in ``[0, window]`` and SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        while proc.poll() is None and not started():
            time.sleep(0.02)
        time.sleep(rng.uniform(0, window))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def finish(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *args], env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


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
    assert not [p for p in samples.iterdir() if p.name.startswith(".")]
