"""The recipes beyond SparseDM: learnable 2:4 masks (maskllm), decoupled decay of pruned weights,
block-output distillation, the per-layer mask-flip log and the cosine learning-rate schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.testing import assert_close

from sparse_deploy import train as train_mod
from sparse_deploy.checkpoint import WEIGHTS, load_checkpoint
from sparse_deploy.masks import is_nm_sparse, nm_mask, nm_patterns, pattern_index
from sparse_deploy.sparsify import (
    SparsityConfig,
    bake_,
    decay_pruned_,
    mask_logit_parameters,
    masked_modules,
    refresh_masks_,
    set_mask_temperature_,
    sparsify_,
)

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


def test_patterns_are_the_six_2_4_choices_and_index_round_trips():
    patterns = nm_patterns(2, 4)
    assert patterns.shape == (6, 4) and torch.equal(patterns.sum(1), torch.full((6,), 2.0))
    assert len({tuple(r.tolist()) for r in patterns}) == 6
    for shape in ((16, 32), (8, 16, 3, 3)):
        w = torch.randn(shape)
        mask = nm_mask(w)
        index = pattern_index(mask)
        rebuilt = patterns[index.reshape(-1)].reshape(*index.shape, 4)
        from sparse_deploy.masks import from_groups

        assert torch.equal(from_groups(rebuilt.bool(), w.shape), mask)
    with pytest.raises(ValueError, match="not exact 2:4"):
        pattern_index(torch.ones(4, 16, dtype=torch.bool))


def test_maskllm_starts_from_the_magnitude_mask_and_learns_logits():
    model = _masked("maskllm", mask_prior=3.0)
    for module in masked_modules(model).values():
        assert module.mask_logits.shape == (module.weight.numel() // 4, 6)
        assert torch.equal(module.weight_mask, nm_mask(module.weight))
        # The hard mask at refresh is the argmax pattern: unchanged at the start.
    assert refresh_masks_(model) == 0.0
    assert len(mask_logit_parameters(model)) == 2

    model.train()
    set_mask_temperature_(model, 1.0, 1.0)
    torch.manual_seed(1)
    x = torch.randn(2, 32)
    model.fc(x).pow(2).sum().backward()
    assert model.fc.mask_logits.grad is not None and model.fc.mask_logits.grad.abs().sum() > 0
    assert model.fc.weight.grad.abs().sum() > 0  # weights learn together with the masks

    # Inference (eval or no_grad) uses the hard mask only, exactly.
    model.eval()
    with torch.no_grad():
        assert_close(model.fc(x), nn.functional.linear(x, model.fc.weight * model.fc.weight_mask, model.fc.bias))


def test_maskllm_soft_mask_hardens_as_the_temperature_falls():
    model = _masked("maskllm", mask_prior=3.0).train()
    spreads = []
    for tau, scale in ((4.0, 1.0), (0.05, 20.0)):
        set_mask_temperature_(model, tau, scale)
        torch.manual_seed(0)
        soft = model.fc.soft_mask()
        spreads.append(float((soft.detach() - model.fc.weight_mask.float()).abs().max()))
    assert spreads[0] > 0.3 and spreads[1] < 1e-6


def test_maskllm_refresh_takes_the_argmax_pattern():
    model = _masked("maskllm")
    with torch.no_grad():
        model.fc.mask_logits.zero_()
        model.fc.mask_logits[:, 5] = 1.0  # pattern (2, 3): keep the last two of every group
    flipped = refresh_masks_(model)
    assert flipped > 0
    want = torch.tensor([False, False, True, True]).repeat(16, 8)
    assert torch.equal(model.fc.weight_mask, want)


def test_bake_removes_mask_logits_and_leaves_exact_2_4():
    model = _masked("maskllm")
    bake_(model)
    assert not masked_modules(model)
    assert "mask_logits" not in dict(model.fc.named_parameters())
    assert is_nm_sparse(model.fc.weight) and is_nm_sparse(model.conv.weight)


def test_decoupled_decay_shrinks_only_pruned_weights():
    model = _masked("srste", pruned_decay=1.0)
    before = model.fc.weight.detach().clone()
    decay_pruned_(model, 0.5)
    mask = model.fc.weight_mask
    assert_close(model.fc.weight[mask], before[mask], rtol=0, atol=0)
    assert_close(model.fc.weight[~mask], before[~mask] * 0.5, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="fixed", pruned_decay=1.0), "pruned-decay"),
        (dict(mode="srste", pruned_decay=-1.0), "pruned-decay"),
        (dict(mode="maskllm", tau=(1.0, 0.0)), "tau"),
        (dict(mode="maskllm", mask_lr=0.0), "mask-lr"),
    ],
)
def test_new_settings_validate(kwargs, match):
    from sparse_deploy.errors import SparseDeployError

    with pytest.raises(SparseDeployError, match=match):
        SparsityConfig(**kwargs).validate()


def test_schedule_anneals_from_start_to_end():
    config = SparsityConfig(mode="maskllm", tau=(4.0, 0.1), logit_scale=(1.0, 10.0))
    assert config.schedule_at(0, 100) == pytest.approx((4.0, 1.0))
    assert config.schedule_at(99, 100) == pytest.approx((0.1, 10.0))
    mid_tau, mid_scale = config.schedule_at(50, 101)
    assert mid_tau == pytest.approx(math.sqrt(0.4)) and mid_scale == pytest.approx(5.5)


def test_cosine_lr_factor():
    f = train_mod.lr_factor
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
    taps = train_mod.FeatureTaps(student, teacher)
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


def test_choose_for_budget_takes_the_cheapest_loss_per_mac_first():
    from sparse_deploy.errors import SparseDeployError
    from sparse_deploy.sensitivity import choose_for_budget

    macs = {"a": 400, "b": 400, "c": 200}
    sens = {"a": 4.0, "b": 1.0, "c": 1.0}  # per MAC saved: c 0.01, b 0.005, a 0.02
    got = choose_for_budget(macs, 1000, sens, 0.8)  # need 200 saved: b alone (saves 200)
    assert got.selected == ["b"] and got.kept_dense == ["a", "c"] and got.effective_macs == 800
    assert choose_for_budget(macs, 1000, sens, 1.0).selected == []
    assert choose_for_budget(macs, 1000, sens, 0.5).selected == ["a", "b", "c"]
    with pytest.raises(SparseDeployError, match="out of reach"):
        choose_for_budget(macs, 1000, sens, 0.3)


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
