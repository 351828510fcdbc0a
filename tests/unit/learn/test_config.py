"""TrainConfig: the preset's defaults (from scratch and when fine-tuning), and one sentence per bad setting."""

from __future__ import annotations

import math

import pytest
import torch

from sparse_deploy.checkpoint import save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.config import EMA_HORIZON_SHARE, TrainConfig, budget_warnings, finetune_ema_decay
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import SparsityConfig


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return str(
        save_checkpoint(
            tmp_path_factory.mktemp("dense") / "checkpoint",
            build_model(get_preset("tiny-dit"), announce_random=False),
            sparsity=None,
        )
    )


def test_from_scratch_takes_the_presets_pretraining_defaults():
    d = get_preset("tiny-dit").train
    config = TrainConfig(preset="tiny-dit", out="o").validate()
    assert (config.steps, config.batch_size, config.lr, config.warmup_steps) == (
        d.dense_steps,
        d.batch_size,
        d.lr,
        d.warmup_steps,
    )
    assert (config.ema_decay, config.ema_warmup, config.checkpoint_every, config.lr_schedule) == (
        d.ema_decay,
        True,
        d.checkpoint_every,
        d.lr_schedule,
    )
    assert not config.fine_tunes


def test_fine_tuning_takes_the_fine_tuning_defaults(dense_ckpt):
    d = get_preset("tiny-dit").train
    config = TrainConfig(preset=None, out="o", init=dense_ckpt, sparsity=SparsityConfig(), steps=200).validate()
    assert config.preset == "tiny-dit" and config.fine_tunes  # the preset comes from the checkpoint
    assert config.lr == (d.sparse_lr or d.lr) and config.warmup_steps == min(d.warmup_steps, 200 // 20)
    assert config.ema_decay == finetune_ema_decay(d.ema_decay, 200) and config.ema_warmup is False


def test_the_fine_tuning_ema_averages_over_a_tenth_of_the_run():
    assert finetune_ema_decay(0.9999, 1000) == pytest.approx(1 - 1 / (EMA_HORIZON_SHARE * 1000))
    assert finetune_ema_decay(0.9, 10_000) == 0.9  # never above the pretraining decay
    assert finetune_ema_decay(0.9999, 3) == 0.0  # a horizon under one step: the EMA is the weights


def test_given_values_are_kept():
    config = TrainConfig(
        preset="tiny-dit",
        out="o",
        steps=7,
        batch_size=3,
        lr=0.5,
        warmup_steps=0,
        ema_decay=0.5,
        ema_warmup=False,
        lr_schedule="cosine",
    ).validate()
    assert (
        config.steps,
        config.batch_size,
        config.lr,
        config.warmup_steps,
        config.ema_decay,
        config.ema_warmup,
        config.lr_schedule,
    ) == (7, 3, 0.5, 0, 0.5, False, "cosine")


def test_only_a_mode_that_trains_nothing_accepts_zero_steps():
    assert (
        TrainConfig(preset="tiny-dit", out="o", steps=0, sparsity=SparsityConfig(mode="oneshot")).validate().steps == 0
    )
    with pytest.raises(SparseDeployError, match="--steps must be at least 1, got 0"):
        TrainConfig(preset="tiny-dit", out="o", steps=0, sparsity=SparsityConfig(mode="srste")).validate()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "--lr must be a finite number > 0"),
        (dict(lr=math.nan), "--lr must be a finite number"),
        (dict(weight_decay=-1.0), "--weight-decay"),
        (dict(batch_size=0), "--batch-size must be between 1 and 65536"),
        (dict(ema_decay=1.0), r"--ema must be in \[0, 1\)"),
        (dict(lr_schedule="linear"), "--lr-schedule must be one of constant, cosine"),
        (dict(device="gpu"), "unknown --device 'gpu'"),
        (dict(kd_weight=1.0), "needs a dense teacher: pass --init"),
        (dict(kd_features=1.0), "feature distillation .* needs a dense teacher"),
        (dict(sparsity=SparsityConfig(mode="magic")), "unknown sparsity mode 'magic'"),
        (dict(teacher="t"), "--teacher is the dense model a sparse run distils from; add --sparsity"),
        (dict(teacher="t", sparsity=SparsityConfig()), "--teacher needs a model to fine-tune"),
        (dict(masks="m.pt"), "--masks sets where a sparse run's masks start; add --sparsity"),
        (dict(masks="m.pt", sparsity=SparsityConfig(mask_init="wanda")), "--masks and --mask-init wanda"),
        (dict(preset="no-such-preset"), "no-such-preset"),
    ],
)
def test_bad_settings_are_one_sentence(kwargs, match):
    with pytest.raises(SparseDeployError, match=match):
        TrainConfig(**{"preset": "tiny-dit", "out": "o", **kwargs}).validate()


def test_to_dict_carries_the_sparsity_config():
    config = TrainConfig(preset="tiny-dit", out="o", sparsity=SparsityConfig(mode="ste")).validate()
    data = config.to_dict()
    assert (
        data["sparsity"]["mode"] == "ste"
        and data["out"] == "o"
        and data["steps"] == get_preset("tiny-dit").train.sparse_steps
    )
    assert TrainConfig(preset="tiny-dit", out="o").to_dict()["sparsity"] is None


def test_budget_warnings_name_the_better_setting(dense_ckpt, caplog):
    # From scratch: the preset's 200-step warm-up in a 20-step run peaks at 10% of the rate.
    short = TrainConfig(preset="fmnist-dit", out="o", steps=20).validate()
    (warning,) = budget_warnings(short)
    assert "--warmup-steps 200 is 1000% of the 20-step run" in warning and "peaks at 10% of --lr" in warning
    assert "--warmup-steps 1 " in warning
    # Fine-tuning with block distillation below the budget where it pays off.
    sparse = TrainConfig(
        preset=None, out="o", init=dense_ckpt, steps=150, kd_weight=0.1, kd_features=0.5, sparsity=SparsityConfig()
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        sparse.validate()
    assert caplog.text.count("WARNING") == 1 and "for 150 steps --kd-features 0 is the better setting" in caplog.text
    # The defaults at the demo's budget, and a short run without block distillation, are not warned about.
    assert budget_warnings(TrainConfig(preset="fmnist-dit", out="o").validate()) == []
    calm = TrainConfig(preset=None, out="o", init=dense_ckpt, steps=150, sparsity=SparsityConfig(), kd_weight=0.1)
    assert budget_warnings(calm.validate()) == []
