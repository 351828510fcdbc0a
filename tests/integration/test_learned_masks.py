"""The recipes beyond SparseDM in training runs: learnable 2:4 masks (maskllm), decoupled decay of pruned
weights, block-output distillation, the per-layer mask-flip log, the cosine learning-rate schedule and the
MACs budget (the layer math itself: tests/unit/learn/test_masking.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.testing import assert_close

from sparse_deploy.checkpoint import WEIGHTS, load_checkpoint
from sparse_deploy.learn import distill, optim
from sparse_deploy.learn import train as train_mod
from sparse_deploy.masks import is_nm_sparse
from sparse_deploy.sparsify import SparsityConfig, bake_, masked_modules, sparsify_

STEPS = 4


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.conv = nn.Conv2d(16, 8, 3)


def _masked(mode: str, **kw) -> _Two:
    torch.manual_seed(0)
    model = _Two()
    sparsify_(model, SparsityConfig(mode=mode, include=("fc", "conv"), **kw), layers=["fc", "conv"])
    return model


def test_bake_removes_mask_logits_and_leaves_exact_2_4():
    model = _masked("maskllm")
    bake_(model)
    assert not masked_modules(model)
    assert "mask_logits" not in dict(model.fc.named_parameters())
    assert is_nm_sparse(model.fc.weight) and is_nm_sparse(model.conv.weight)


def test_cosine_lr_factor():
    f = optim.lr_factor
    assert f(0, 10, 110, "cosine") == pytest.approx(0.1)
    assert f(9, 10, 110, "cosine") == pytest.approx(1.0)
    assert f(109, 10, 110, "cosine") == pytest.approx(train_mod.LR_FLOOR)
    assert f(59, 10, 110, "cosine") == pytest.approx(train_mod.LR_FLOOR + (1 - train_mod.LR_FLOOR) / 2)
    assert f(109, 10, 110, "constant") == 1.0


# ----------------------------------------------------------------------------- in the training loop


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, fmnist_data) -> Path:
    out = tmp_path_factory.mktemp("dense")
    return train_mod.train(
        train_mod.TrainConfig(preset="tiny-dit", out=str(out), steps=STEPS, preview=0, data=fmnist_data)
    )


def _config(out: Path, dense: Path, data: str) -> train_mod.TrainConfig:
    return train_mod.TrainConfig(
        preset="tiny-dit",
        out=str(out),
        steps=STEPS,
        checkpoint_every=2,
        preview=0,
        data=data,
        init=str(dense),
        sparsity=SparsityConfig(mode="maskllm", pruned_decay=1.0),
        kd_weight=0.1,
        kd_features=0.5,
        lr_schedule="cosine",
    )


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, dense_ckpt, fmnist_data):
    out = tmp_path_factory.mktemp("maskllm")
    return {"out": out, "ckpt": train_mod.train(_config(out, dense_ckpt, fmnist_data))}


def test_maskllm_run_checkpoint_loads_and_bakes_to_exact_2_4(learned_run):
    model, manifest = load_checkpoint(learned_run["ckpt"])
    assert manifest["sparsity"]["mode"] == "maskllm" and manifest["complete"]
    assert manifest["train_config"]["kd_features"] == 0.5
    baked = bake_(model)
    assert len(baked) == 12
    for name, module in model.named_modules():
        if name.removeprefix("net.") in baked:
            assert is_nm_sparse(module.weight)


def test_run_logs_feature_loss_and_per_layer_flips(learned_run):
    rows = [json.loads(line) for line in (learned_run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss_feat"] > 0 for r in rows)
    flips = [json.loads(line) for line in (learned_run["out"] / "mask_flips.jsonl").read_text().splitlines()]
    assert [f["step"] for f in flips] == [2, 4]
    assert len(flips[0]["layers"]) == 12 and all(0.0 <= v <= 1.0 for v in flips[0]["layers"].values())


@torch.no_grad()
def test_feature_distillation_is_zero_for_an_identical_student(dense_ckpt):
    teacher, _ = load_checkpoint(dense_ckpt)
    student, _ = load_checkpoint(dense_ckpt)
    taps = distill.FeatureTaps(student, teacher)
    assert len(taps.handles) == 4  # two transformer blocks, in each model
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 500])
    y = torch.tensor([1, 2])
    student(x, t, y)
    teacher(x, t, y)
    assert float(taps.loss()) == 0.0
    next(student.parameters()).add_(0.1)
    student(x, t, y)
    teacher(x, t, y)
    assert float(taps.loss()) > 0.0


def test_maskllm_resume_after_kill_matches_uninterrupted_run(
    tmp_path, killed_at_step, learned_run, dense_ckpt, fmnist_data
):
    out = tmp_path / "killed"
    with killed_at_step(3), pytest.raises(KeyboardInterrupt):  # step 3, after the step-2 checkpoint was written
        train_mod.train(_config(out, dense_ckpt, fmnist_data))
    # A kill between a flip row and its checkpoint leaves a row the resumed run writes again.
    with (out / "mask_flips.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 4, "refreshes": 2, "layers": {}}) + "\n")
    resumed = train_mod.train(_config(out, dense_ckpt, fmnist_data))
    got, want = load_file(str(resumed / WEIGHTS)), load_file(str(learned_run["ckpt"] / WEIGHTS))
    assert got.keys() == want.keys() and any(k.endswith("mask_logits") for k in got)
    for name, value in want.items():
        assert_close(got[name], value, rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (learned_run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], abs=1e-6)
    flips = [json.loads(line) for line in (out / "mask_flips.jsonl").read_text().splitlines()]
    ref_flips = [json.loads(line) for line in (learned_run["out"] / "mask_flips.jsonl").read_text().splitlines()]
    assert [f["step"] for f in flips] == [2, 4]
    assert [f["layers"] for f in flips] == [pytest.approx(f["layers"], abs=1e-6) for f in ref_flips]


# ----------------------------------------------------------------------------- MACs budget


def test_macs_budget_run_keeps_the_most_sensitive_layers_dense(tmp_path, dense_ckpt, fmnist_data):
    config = train_mod.TrainConfig(
        preset="tiny-dit",
        out=str(tmp_path / "b"),
        steps=2,
        preview=0,
        data=fmnist_data,
        init=str(dense_ckpt),
        sparsity=SparsityConfig(mode="srste", macs_budget=0.9),
    )
    ckpt = train_mod.train(config)
    coverage = json.loads((tmp_path / "b" / "coverage.json").read_text())
    kept = [k for k, why in coverage["skipped"].items() if "macs-budget" in why]
    assert kept and 0 < len(coverage["sparse_layers"]) < 12
    assert coverage["effective_macs"] <= 0.9 * coverage["model_macs"]
    model, manifest = load_checkpoint(ckpt)
    assert sorted(manifest["masked_layers"]) == sorted(coverage["sparse_layers"])
