"""TensorRT on a real GPU: dense + sparse plans, parity with ONNX Runtime, picked sparse layers.

Skipped, with the reason, wherever there is no CUDA GPU or no TensorRT (``pytest -m gpu`` on a GPU
machine runs them). DiT-S is used because TensorRT only races sparse kernels for wide layers
(384/1536 channels here); random weights are fine for kernels and parity.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from sparse_deploy.backends import load_runner
from sparse_deploy.backends.device import tensorrt_unavailable_reason
from sparse_deploy.build import BuildConfig, build_engines
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export import PARITY_TOLERANCE, ExportConfig
from sparse_deploy.provenance import seal

REASON = tensorrt_unavailable_reason()
pytestmark = pytest.mark.gpu
needs_trt = pytest.mark.skipif(REASON is not None, reason=f"needs a CUDA GPU and TensorRT: {REASON}")


@pytest.fixture(scope="module")
def trt_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trt")
    config = BuildConfig(
        export=ExportConfig(model="dit-s", out=tmp / "export", precisions=("fp16",), max_batch=64, opt_batch=32),
        backend="tensorrt",
        engine_dir=tmp / "engines",
    )
    return config, build_engines(config)


@needs_trt
def test_plans_and_manifests(trt_build):
    _, report = trt_build
    assert report.backend == "tensorrt" and report.fallback_reason is None
    assert sorted(e.path.name for e in report.engines) == ["dense-fp16.trt.plan", "sparse-fp16.trt.plan"]
    for engine in report.engines:
        m = json.loads(engine.manifest_path.read_text())
        assert m["backend"] == "tensorrt" and m["engine"] == engine.path.name
        assert m["gpu"] and m["compute_capability"] and m["tensorrt_version"]
        assert ("SPARSE_WEIGHTS" in m["builder_flags"]) == (engine.kind == "sparse")
        # TF32 is chosen explicitly (None only where this TensorRT has no such flag) and recorded
        assert m["builder_config"]["tf32"] in (True, None) and (
            m["builder_config"]["tf32"] is None or "TF32" in m["builder_flags"]
        )
        assert m["engine_check"]["passed"], m[
            "engine_check"
        ]  # the plan was run against ONNX Runtime before it was kept
        assert m["pattern"] == ("2:4" if engine.kind == "sparse" else None)
        assert m["contract"]["profile"] == {"min": 1, "opt": 32, "max": 64}


@needs_trt
def test_sparse_engine_lists_picked_sparse_layers(trt_build):
    _, report = trt_build
    sparse = next(e for e in report.engines if e.kind == "sparse").manifest
    assert sparse["sparse_eligible_layers"], "TensorRT reported no layer eligible for sparse math"
    assert sparse["sparse_picked_layers"], (
        "TensorRT picked no sparse kernel for any layer of DiT-S at opt batch 32 "
        f"(eligible: {len(sparse['sparse_eligible_layers'])}); see the manifest's inspector entry"
    )
    assert set(sparse["sparse_picked_modules"]) <= set(sparse["sparse_layers"])
    dense = next(e for e in report.engines if e.kind == "dense").manifest
    assert dense["sparse_picked_layers"] == []


@needs_trt
def test_tensorrt_matches_onnx_runtime(trt_build):
    _, report = trt_build
    tol = PARITY_TOLERANCE["fp16"]
    for engine in report.engines:
        source = next(g for g in report.exports if g.kind == engine.kind)
        with load_runner(engine.path) as trt_runner, load_runner(source.path, device="cpu") as ort_runner:
            feeds = {k: torch.from_numpy(v) for k, v in trt_runner.contract.sample_inputs(4, seed=3).items()}
            got, want = trt_runner(*feeds.values()), ort_runner(*feeds.values())
        err, scale = float((got - want).abs().max()), float(want.abs().max())
        assert err <= 2 * (tol["atol"] + tol["rtol"] * scale), (
            f"{engine.path.name}: TensorRT vs ONNX Runtime max err {err:.3g}"
        )


@needs_trt
def test_rerun_reuses_and_foreign_gpu_is_refused(trt_build, tmp_path):
    config, _ = trt_build
    assert all(e.reused for e in build_engines(config).engines)
    folder = tmp_path / "dit-s"
    shutil.copytree(config.engine_dir, folder)
    manifest_path = folder / "dense-fp16.trt.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["compute_capability"] = "0.0"
    manifest_path.write_text(json.dumps(seal(manifest)))  # a consistent manifest of another GPU
    with pytest.raises(SparseDeployError, match="rebuild it here with make engine MODEL=dit-s"):
        load_runner(folder / "dense-fp16.trt.plan")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the torch24 backend needs a CUDA build of PyTorch")
def test_torch24_runner_matches_masked_dense(tmp_path):
    from sparse_deploy.checkpoint import save_checkpoint
    from sparse_deploy.models import build_model
    from sparse_deploy.presets import get_preset
    from sparse_deploy.sparsify import SparsityConfig, sparsify_

    model = build_model(get_preset("fmnist-dit"))  # 128/512-wide Linears: above the kernels' minimum tile
    config = SparsityConfig(mode="oneshot")
    sparsify_(model, config)
    folder = save_checkpoint(tmp_path / "ckpt", model, sparsity=config)
    x, t, y = torch.randn(8, 1, 28, 28), torch.randint(0, 1000, (8,)), torch.randint(0, 10, (8,))
    with load_runner(folder, backend="torch24") as fast, load_runner(folder, device="cpu") as ref:
        assert fast.converted
        np.testing.assert_allclose(fast(x, t, y).numpy(), ref(x, t, y).numpy(), atol=5e-2, rtol=5e-2)
