"""The GEMM latency profile: Linear rows per sample, the profile file read back (the kit writes real ones on a GPU)."""

from __future__ import annotations

import json

import pytest

from sparse_deploy import latency
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.models import build_model, example_inputs
from sparse_deploy.presets import get_preset


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
