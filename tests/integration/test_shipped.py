"""Shipped dense weights (pack, verify, back to a checkpoint, score), class-per-row grids, the demo summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_deploy import shipped
from sparse_deploy.checkpoint import load_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn import train as train_mod
from sparse_deploy.sampling import class_rows
from sparse_deploy.summary import format_summary

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, fmnist_data) -> Path:
    out = tmp_path_factory.mktemp("dense")
    return train_mod.train(
        train_mod.TrainConfig(
            preset="tiny-dit", out=str(out), steps=3, preview=0, data=fmnist_data, lr_schedule="cosine"
        )
    )


@pytest.fixture()
def packed(tmp_path, dense_ckpt) -> Path:
    return shipped.pack_weights(dense_ckpt, tmp_path / "weights" / "tiny-dit")


def test_pack_writes_a_diffusers_folder_with_its_manifest(packed, dense_ckpt):
    names = sorted(p.name for p in packed.iterdir())
    assert names == ["MANIFEST.json", "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"]
    manifest = json.loads((packed / "MANIFEST.json").read_text())
    assert manifest["preset"] == "tiny-dit" and manifest["steps"] == 3 and manifest["precision"] == "fp16"
    assert set(manifest["files"]) == {"config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"}
    assert manifest["training_command"].startswith("python -m sparse_deploy.train --model tiny-dit --steps 3")
    assert "--lr-schedule cosine" in manifest["training_command"]
    assert manifest["data"]["source"]  # the data it was trained on is named
    from diffusers import DDIMScheduler, DiTTransformer2DModel
    from safetensors.torch import load_file

    DiTTransformer2DModel.from_pretrained(str(packed))  # plain diffusers loads it, with its sampling schedule
    scheduler = DDIMScheduler.from_pretrained(str(packed))
    assert not scheduler.config.clip_sample and not scheduler.config.set_alpha_to_one
    stored = load_file(str(packed / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}


def test_checkpoint_from_shipped_weights_equals_the_rounded_model(tmp_path, packed, dense_ckpt):
    ckpt = shipped.weights_to_checkpoint(packed, tmp_path / "dense")
    got, manifest = load_checkpoint(ckpt)
    want, _ = load_checkpoint(dense_ckpt)
    assert manifest["complete"] and manifest["source_weights"]["files"]
    for (name, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items(), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.half().float(), rtol=0, atol=0, msg=name)


def test_tampered_or_missing_files_are_refused(tmp_path, packed):
    weights = packed / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(SparseDeployError, match="does not match MANIFEST.json"):
        shipped.weights_to_checkpoint(packed, tmp_path / "dense")
    with pytest.raises(SparseDeployError, match="no MANIFEST.json"):
        shipped.verify_weights(tmp_path)


def test_pack_refuses_sparse_or_unfinished_checkpoints(tmp_path, dense_ckpt, fmnist_data):
    from sparse_deploy.sparsify import SparsityConfig

    sparse = train_mod.train(
        train_mod.TrainConfig(
            preset="tiny-dit",
            out=str(tmp_path / "s"),
            steps=2,
            preview=0,
            data=fmnist_data,
            init=str(dense_ckpt),
            sparsity=SparsityConfig(mode="fixed"),
        )
    )
    with pytest.raises(SparseDeployError, match="sparse checkpoint"):
        shipped.pack_weights(sparse, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_score_records_fid_and_a_class_per_row_grid(monkeypatch, tmp_path, packed):
    from sparse_deploy import fid

    class Ref:
        num = 20
        mu = np.zeros(4)
        sigma = np.eye(4)

    monkeypatch.setattr(fid, "reference_stats", lambda *a, **k: Ref())
    monkeypatch.setattr(
        fid, "features_from_images", lambda images, **k: images.reshape(len(images), -1)[:, :4].astype(np.float64) / 255
    )
    grids = []
    real_save_grid = shipped.save_grid
    monkeypatch.setattr(
        shipped, "save_grid", lambda images, path, nrow=None: grids.append(nrow) or real_save_grid(images, path, nrow)
    )
    result = shipped.score_weights(packed, num=12, steps=2, batch=6)
    manifest = json.loads((packed / "MANIFEST.json").read_text())
    assert manifest["fid"]["value"] == pytest.approx(result["value"]) and manifest["fid"]["samples"] == 12
    assert grids == [10] and Image.open(packed / "samples.png").size == (546, 546)  # 10 classes, rows of 10
    shipped.verify_weights(packed)  # the manifest update kept the file hashes valid


def test_class_rows():
    order, nrow = class_rows([0, 1, 2, 0, 1, 2])
    assert order == [0, 3, 1, 4, 2, 5] and nrow == 2
    assert class_rows([0, 1, 1]) == ([0, 1, 2], None)
    assert class_rows(None) == ([], None)


def test_format_summary_fits_one_screen():
    text = format_summary(
        {
            "preset": "fmnist-dit",
            "dense_source": "runs/fmnist-dit/dense/checkpoint",
            "recipe": {
                "mode": "srste",
                "kd_weight": 0.1,
                "kd_features": 0.0,
                "pruned_decay": 0.0,
                "steps": 600,
                "lr": 3e-4,
            },
            "coverage": {
                "pattern": "2:4",
                "sparse_layers": ["a"] * 36,
                "sparse_share": 0.7,
                "model_macs": 20e6,
                "effective_macs": 13e6,
            },
            "engines": {
                "dense": {"path": "d.ort.onnx", "bytes": 8e6, "backend": "onnxruntime"},
                "sparse": {"path": "s.ort.onnx", "bytes": 8e6, "backend": "onnxruntime"},
            },
            "fid": {
                "num": 300,
                "reference": "fashion-mnist:test",
                "reference_num": 1000,
                "sampler": "ddim 25",
                "dense": 50.0,
                "sparse": 52.0,
                "gap": 0.04,
                "sparse_vs_dense_samples": 10.0,
            },
        }
    )
    lines = text.splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 140
    assert "+4.0%" in text and "no TensorRT engine was built" in text and "36 layers 2:4" in text


def test_the_shipped_default_weights_verify_and_load():
    from sparse_deploy.presets import DEFAULT_PRESET

    folder = REPO / "weights" / DEFAULT_PRESET
    if not (folder / "MANIFEST.json").is_file():
        pytest.skip(f"no shipped weights in {folder} (make pretrain writes them)")
    manifest = shipped.verify_weights(folder)
    assert manifest["preset"] == DEFAULT_PRESET
    assert all((folder / name).stat().st_size <= 8 * 2**20 for name in manifest["files"])
    assert manifest["fid"] is not None and manifest["fid"]["samples"] >= 1000


def test_the_shipped_fid_reference_is_used_without_running_inception(monkeypatch):
    """The demo summary's 1,000 test images come from weights/fid/ on a fresh clone, not a 3-minute Inception pass."""
    from sparse_deploy import fid

    files = sorted(fid.SHIPPED_REFERENCE_DIR.glob("fashion-mnist-test-n1000-*.npz"))
    if not files:
        pytest.skip(f"no shipped FID reference in {fid.SHIPPED_REFERENCE_DIR} (make fid-reference writes it)")
    assert all(f.stat().st_size <= 8 * 2**20 for f in files)
    index = json.loads((fid.SHIPPED_REFERENCE_DIR / "MANIFEST.json").read_text())["files"]
    from sparse_deploy.provenance import sha256_file

    assert all(index[f.name]["sha256"] == sha256_file(f) for f in files)  # the manifest describes the files shipped
    try:
        fid.source_identity("fashion-mnist:test", 1000)
    except SparseDeployError as exc:
        pytest.skip(f"no Fashion-MNIST test set here ({exc})")
    monkeypatch.setattr(
        fid, "features_from_images", lambda *a, **k: pytest.fail("ran Inception: the shipped key no longer matches")
    )
    stats = fid.reference_stats("fashion-mnist:test", 1000, cache_dir=None, progress=False)
    assert stats.num == 1000 and stats.features.dtype == np.float32 and np.isfinite(stats.sigma).all()


def test_a_refined_model_records_every_run_behind_it(tmp_path, dense_ckpt, fmnist_data):
    refined = train_mod.train(
        train_mod.TrainConfig(
            preset="tiny-dit",
            out=str(tmp_path / "refine"),
            init=str(dense_ckpt),
            steps=2,
            lr=4e-4,
            preview=0,
            data=fmnist_data,
            lr_schedule="cosine",
        )
    )
    manifest = json.loads((shipped.pack_weights(refined, tmp_path / "w") / "MANIFEST.json").read_text())
    first, second = manifest["training_commands"]
    assert "--steps 3" in first and "--init" not in first
    assert f"--init {dense_ckpt}" in second and "--steps 2" in second and "--lr 0.0004" in second
    assert manifest["training_command"] == second


def test_pretrain_chains_the_presets_refine_cycle():
    (first, run1), (second, run2) = shipped.pretrain_commands("fmnist-dit", "runs/fmnist-dit")
    assert first[:2] == ["--model", "fmnist-dit"] and "--init" not in first
    assert second[second.index("--init") + 1] == str(run1 / "checkpoint")
    assert second[second.index("--steps") + 1] == "18000" and run2.name == "pretrain2"
    assert len(shipped.pretrain_commands("tiny-dit", "runs/tiny-dit")) == 1  # no refine cycle
