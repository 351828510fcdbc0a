"""Latency-aware layer selection from a synthetic GEMM profile (the kit writes real ones on a GPU)."""

from __future__ import annotations

import json

import pytest
import torch

from sparse_deploy import latency
from sparse_deploy import train as train_mod
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.models import build_model, example_inputs
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import LayerChoice, SparsityConfig


def _profile(path, speedups: dict[tuple[int, int], float], rows=(16, 128), gpu="Synthetic GPU") -> str:
    """A profile in the kit's format: every (out, in) at every row count, with the given dense/2:4 ratio."""
    entries = [
        {"out": o, "in": i, "rows": r, "dtype": "fp16", "speedup": {"median": s}}
        for (o, i), s in speedups.items()
        for r in rows
    ]
    path.write_text(json.dumps({"format": latency.PROFILE_FORMAT, "gpu": gpu, "entries": entries}))
    return str(path)


def test_rows_per_sample_of_each_linear():
    preset = get_preset("tiny-dit")
    model = build_model(preset, announce_random=False)
    rows = latency.layer_rows(model, example_inputs(preset, 1))
    tokens = (preset.sample_size // 4) ** 2  # patch 4 on 16x16: 16 tokens
    assert rows["transformer_blocks.0.attn1.to_q"] == rows["transformer_blocks.1.ff.net.2"] == tokens
    assert rows["transformer_blocks.0.norm1.linear"] == 1  # adaLN: one row per sample


def test_profile_lookup_and_errors(tmp_path):
    profile = latency.load_latency_profile(_profile(tmp_path / "p.json", {(32, 32): 1.5}, rows=(16, 1024)))
    assert (
        profile.lookup(32, 32, 20, "fp16")[0] == 16 and profile.lookup(32, 32, 600, "fp16")[0] == 1024
    )  # nearest in log rows
    assert profile.lookup(32, 32, 16, "bf16") is None and profile.lookup(64, 32, 16, "fp16") is None
    with pytest.raises(SparseDeployError, match="does not exist; make one with make gpu-check"):
        latency.load_latency_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SparseDeployError, match="not a GEMM latency profile"):
        latency.load_latency_profile(tmp_path / "bad.json")


def test_layers_whose_2_4_kernel_is_not_faster_stay_dense(tmp_path):
    choice = LayerChoice(selected=["a", "b", "c"])
    profile = latency.load_latency_profile(_profile(tmp_path / "p.json", {(32, 32): 0.95, (128, 32): 1.2}))
    unprofiled = latency.apply_latency_profile(
        choice,
        {"a": 16, "b": 16, "c": 16},
        {"a": (32, 32), "b": (128, 32), "c": (64, 64)},
        profile,
        batch=8,
        dtype="fp16",
    )
    assert choice.selected == ["b", "c"] and unprofiled == ["c"]
    assert (
        "kept dense by --latency-profile" in choice.skipped["a"]
        and "Synthetic GPU" in choice.skipped["a"]
        and "128 rows" in choice.skipped["a"]
    )


def test_training_with_a_latency_profile_records_which_and_why(tmp_path, fmnist_data):
    # On the "GPU" of this profile the MLP GEMMs are faster 2:4 and the attention ones are not.
    path = _profile(tmp_path / "gemm.json", {(32, 32): 0.9, (128, 32): 1.3, (32, 128): 1.1})
    sparsity = SparsityConfig(mode="srste", latency_profile=path, latency_batch=8)
    config = train_mod.TrainConfig(
        preset="tiny-dit", out=str(tmp_path / "run"), steps=1, preview=0, data=fmnist_data, sparsity=sparsity
    ).validate()
    torch.manual_seed(0)
    run = train_mod.prepare_run(config, torch.device("cpu"))
    coverage = run.coverage.to_dict()
    assert sorted(coverage["sparse_layers"]) == sorted(
        f"transformer_blocks.{b}.ff.net.{i}" for b in (0, 1) for i in ("0.proj", "2")
    )
    attention = [n for n in coverage["skipped"] if ".attn1." in n]
    assert len(attention) == 8 and all("kept dense by --latency-profile" in coverage["skipped"][n] for n in attention)
    slow = _profile(tmp_path / "slow.json", {(32, 32): 0.9, (128, 32): 0.8, (32, 128): 0.7})
    config.sparsity = SparsityConfig(mode="srste", latency_profile=slow)
    with pytest.raises(
        SparseDeployError, match="no selected layer has a 2:4 kernel faster than dense on Synthetic GPU"
    ):
        train_mod.prepare_run(config, torch.device("cpu"))
    with pytest.raises(SparseDeployError, match="--latency-batch"):
        SparsityConfig(latency_batch=0).validate()
