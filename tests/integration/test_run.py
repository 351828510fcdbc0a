"""Runners and the sampling CLI: PNGs + grid, same seed across backends, and every bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_deploy import run as rn
from sparse_deploy.backends import load_runner
from sparse_deploy.backends.device import tensorrt_unavailable_reason
from sparse_deploy.build import BuildConfig, build_engines
from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export import ExportConfig
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.provenance import seal, sha256_file
from sparse_deploy.sampling import SEEDING, sample


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A dense tiny-dit checkpoint and its fp32 ONNX Runtime engines (batch profile 1..4)."""
    tmp = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp / "ckpt", build_model(get_preset("tiny-dit")), sparsity=None)
    config = BuildConfig(
        export=ExportConfig(checkpoint=checkpoint, out=tmp / "export", precisions=("fp32",), max_batch=4),
        backend="onnxruntime",
        engine_dir=tmp / "engines",
    )
    engines = {e.kind: e.path for e in build_engines(config).engines}
    return {"tmp": tmp, "checkpoint": checkpoint, **engines}


def test_run_writes_n_pngs_a_grid_and_a_record(artifacts, tmp_path, capsys):
    out = tmp_path / "samples"
    argv = [
        "--engine",
        str(artifacts["sparse"]),
        "--out",
        str(out),
        "--num",
        "5",
        "--batch",
        "2",
        "--steps",
        "3",
        "--labels",
        "1,7",
    ]
    assert rn.main(argv) == 0
    assert sorted(p.name for p in out.glob("sample-*.png")) == [f"sample-{i:04d}.png" for i in range(5)]
    assert Image.open(out / "sample-0000.png").size == (16, 16)
    assert (out / "grid.png").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["backend"] == "onnxruntime" and record["kind"] == "sparse" and record["num"] == 5
    assert record["labels"] == [1, 7, 1, 7, 1] and record["seeding"] == SEEDING and record["decode"] == "pixels"
    assert record["complete"] is True and record["command"].startswith("python -m sparse_deploy.run --engine")
    assert "wrote 5 images" in capsys.readouterr().out


def test_same_seed_same_images_on_torch_and_ort(artifacts, tmp_path):
    preset = get_preset("tiny-dit")
    draws = {}
    for name in ("checkpoint", "dense"):
        with load_runner(artifacts[name], device="cpu") as runner:
            draws[name] = sample(
                runner, preset, batch=2, steps=5, seed=11, labels=[2, 4], guidance=1.5
            )  # 2x2 = 4 <= max
    (x_torch, y_torch), (x_ort, y_ort) = draws["checkpoint"], draws["dense"]
    assert torch.equal(y_torch, y_ort)
    torch.testing.assert_close(x_ort, x_torch, atol=1e-3, rtol=1e-3)
    for name in ("checkpoint", "dense"):
        rn.run(rn.RunConfig(engine=artifacts[name], out=tmp_path / name, num=2, batch=2, steps=4, seed=3, device="cpu"))
    a, b = (np.asarray(Image.open(tmp_path / n / "sample-0001.png"), dtype=int) for n in ("checkpoint", "dense"))
    assert np.abs(a - b).max() <= 1


def test_runner_interface(artifacts):
    with load_runner(artifacts["dense"]) as runner:
        assert runner.backend == "onnxruntime" and runner.preset.name == "tiny-dit"
        assert runner.contract.input_names == ["sample", "timestep", "class_labels"]
        assert runner.manifest["engine"] == "dense-fp32.ort.onnx"
        out = runner(torch.randn(2, 1, 16, 16), torch.tensor([1, 999]), torch.tensor([0, 9]))
        assert out.shape == (2, 1, 16, 16) and out.dtype == torch.float32
        with pytest.raises(SparseDeployError, match="class-conditional"):
            runner(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), None)
        with pytest.raises(SparseDeployError, match="does not fit"):
            runner(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))
    # The manifest itself and an exported graph open too.
    assert load_runner(artifacts["dense"].with_suffix(".json")).backend == "onnxruntime"
    assert load_runner(artifacts["tmp"] / "export" / "dense-fp32.onnx").kind == "dense"


def test_batch_outside_the_profile_is_refused(artifacts, tmp_path):
    with load_runner(artifacts["dense"]) as runner:
        with pytest.raises(SparseDeployError, match=r"batch 5 is outside .* profile \[1, 4\]"):
            runner(torch.randn(5, 1, 16, 16), torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    # Guidance doubles the batch: 3 images -> 6 > 4.
    argv = [
        "--engine",
        str(artifacts["dense"]),
        "--out",
        str(tmp_path),
        "--num",
        "3",
        "--batch",
        "3",
        "--steps",
        "2",
        "--guidance",
        "2",
    ]
    assert rn.main(argv) == 2


def test_missing_engine(tmp_path, capsys):
    with pytest.raises(SparseDeployError, match="does not exist; build it with make engine MODEL=tiny-dit"):
        load_runner(tmp_path / "tiny-dit" / "dense-fp32.ort.onnx")
    # A folder that is not a preset (a Triton version folder) is never offered as MODEL=.
    with pytest.raises(SparseDeployError, match=r"make engine MODEL=<preset> .*presets: fmnist-dit"):
        load_runner(tmp_path / "1" / "model.onnx")
    assert rn.main(["--engine", str(tmp_path / "nope.trt.plan"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_foreign_files_are_refused(artifacts, tmp_path):
    foreign = tmp_path / "model.ort.onnx"
    foreign.write_bytes(b"\x08\x07not an engine")
    with pytest.raises(SparseDeployError, match="no manifest 'model.ort.json'"):
        load_runner(foreign)
    foreign.with_suffix(".json").write_text("{not json")
    with pytest.raises(SparseDeployError, match="corrupt"):
        load_runner(foreign)
    foreign.with_suffix(".json").write_text(json.dumps({"format": "something-else/1"}))
    with pytest.raises(SparseDeployError, match="foreign file"):
        load_runner(foreign)
    # A manifest copied next to another file still names the engine it describes.
    shutil.copy(artifacts["dense"].with_suffix(".json"), foreign.with_suffix(".json"))
    with pytest.raises(SparseDeployError, match="describes 'dense-fp32.ort.onnx'"):
        load_runner(foreign)
    with pytest.raises(SparseDeployError, match="neither an engine nor a checkpoint"):
        load_runner(tmp_path)


def test_tampered_engine_or_manifest_is_refused(artifacts, tmp_path):
    folder = tmp_path / "tiny-dit"
    shutil.copytree(artifacts["dense"].parent, folder)
    engine = folder / "dense-fp32.ort.onnx"
    data = bytearray(engine.read_bytes())
    data[-10] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(
        SparseDeployError, match="does not match the sha256 in its manifest.*make engine MODEL=tiny-dit"
    ):
        load_runner(engine)
    sparse = folder / "sparse-fp32.ort.onnx"
    manifest = json.loads(sparse.with_suffix(".json").read_text())
    manifest["engine_sha256"] = "0" * 64
    sparse.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(SparseDeployError, match="does not match its own hash.*MODEL=tiny-dit"):
        load_runner(sparse)
    sparse.with_suffix(".json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(SparseDeployError, match="does not match the sha256"):
        load_runner(sparse)
    # A valid-looking manifest over a file that is not a model: ONNX Runtime refuses it, clearly.
    junk = folder / "junk-fp32.ort.onnx"
    junk.write_bytes(b"garbage")
    manifest.update(engine=junk.name, engine_sha256=sha256_file(junk))
    junk.with_suffix(".json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(SparseDeployError, match="ONNX Runtime cannot load"):
        load_runner(junk)


def test_unknown_scheduler_and_bad_flags(artifacts, tmp_path, capsys):
    base = ["--engine", str(artifacts["dense"]), "--out", str(tmp_path)]
    assert rn.main(base + ["--scheduler", "euler"]) == 2
    assert "unknown scheduler 'euler'" in capsys.readouterr().err
    assert rn.main(base + ["--labels", "a,b"]) == 2
    assert rn.main(base + ["--labels", "42", "--steps", "1"]) == 2
    assert "outside 0..9" in capsys.readouterr().err
    assert rn.main(base + ["--vae", str(tmp_path)]) == 2
    assert rn.main(base + ["--num", "0"]) == 2
    assert not list(tmp_path.glob("*.png"))


def test_checkpoint_backends(artifacts):
    with load_runner(artifacts["checkpoint"], device="cpu") as runner:
        assert runner.backend == "torch" and runner.kind == "dense"
    with pytest.raises(SparseDeployError, match="torch24 backend .* CUDA GPU"):
        load_runner(artifacts["checkpoint"], device="cpu", backend="torch24")
    with pytest.raises(SparseDeployError, match="cannot run on the tensorrt backend"):
        load_runner(artifacts["dense"], backend="trt")


@pytest.mark.skipif(
    tensorrt_unavailable_reason() is None, reason="TensorRT is usable here; tests/gpu covers real plans"
)
def test_tensorrt_engine_without_tensorrt_is_refused_clearly(artifacts, tmp_path):
    plan = tmp_path / "tiny-dit" / "dense-fp32.trt.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"plan bytes")
    manifest = json.loads(artifacts["dense"].with_suffix(".json").read_text())
    manifest.update(
        backend="tensorrt",
        engine=plan.name,
        engine_sha256=sha256_file(plan),
        tensorrt_version="11.1.0",
        compute_capability="9.0",
    )
    plan.with_suffix(".json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(SparseDeployError, match="TensorRT|CUDA GPU"):
        load_runner(plan)
    with pytest.raises(SparseDeployError, match="runs on a CUDA GPU only"):
        load_runner(plan, device="cpu")


def test_trt_compatibility_check_names_the_fix(tmp_path):
    from sparse_deploy.backends.trt import check_engine_compatible

    plan = tmp_path / "dit-s" / "sparse-fp16.trt.plan"
    manifest = {"tensorrt_version": "11.1.0", "compute_capability": "8.0", "gpu": "NVIDIA A100"}
    check_engine_compatible(plan, manifest, "11.1.0", {"name": "NVIDIA A100", "compute_capability": "8.0"})
    with pytest.raises(
        SparseDeployError, match=r"compute capability 8.0 .*rebuild it here with make engine MODEL=dit-s"
    ):
        check_engine_compatible(plan, manifest, "11.1.0", {"name": "NVIDIA H100", "compute_capability": "9.0"})
    with pytest.raises(SparseDeployError, match=r"TensorRT 11.1.0 \(this machine has 11.4.0\)"):
        check_engine_compatible(plan, manifest, "11.4.0", {"name": "NVIDIA A100", "compute_capability": "8.0"})


def test_latent_without_vae_writes_normalised_channels():
    images, how = rn.decode(torch.randn(2, 4, 8, 8) * 5, get_preset("dit-s"))
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255 and "no --vae" in how
    pixels, how = rn.decode(torch.zeros(1, 1, 4, 4), get_preset("tiny-dit"))
    assert pixels.shape == (1, 4, 4, 1) and how == "pixels"


def test_make_run_without_an_engine_is_one_line():
    import shutil as sh
    import subprocess
    from pathlib import Path

    if sh.which("make") is None:
        pytest.skip("make is not installed")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["make", "-s", "run"], cwd=repo, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "ENGINE is not set: make run ENGINE=" in lines[0] and "usage:" not in proc.stderr
