"""Fine-tuning from a pretrained model: calibrated mask starts (--mask-init) and the fine-tuning defaults, on tiny-dit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparse_deploy import train as train_mod
from sparse_deploy.checkpoint import load_checkpoint, read_manifest
from sparse_deploy.masks import is_nm_sparse, nm_mask
from sparse_deploy.sparsify import SparsityConfig, masked_modules
from sparse_deploy.train_cli import build_parser, config_from_args

STEPS = 4


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, fmnist_data) -> Path:
    out = tmp_path_factory.mktemp("dense")
    return train_mod.train(
        train_mod.TrainConfig(preset="tiny-dit", out=str(out), steps=STEPS, preview=0, data=fmnist_data)
    )


def _run(tmp_path: Path, dense: Path, data: str, mode: str, init: str, steps: int = STEPS) -> Path:
    config = train_mod.TrainConfig(
        preset="tiny-dit",
        out=str(tmp_path / f"{mode}-{init}"),
        steps=steps,
        preview=0,
        data=data,
        init=str(dense),
        sparsity=SparsityConfig(mode=mode, mask_init=init, calib_samples=32),
        kd_weight=0.1,
    )
    return train_mod.train(config)


def test_sparsegpt_oneshot_records_its_start_and_beats_magnitude_on_the_layer_outputs(
    tmp_path, dense_ckpt, fmnist_data
):
    ckpt = _run(tmp_path, dense_ckpt, fmnist_data, "oneshot", "sparsegpt")
    manifest = read_manifest(ckpt)
    start = manifest["mask_start"]
    assert start["mask_init"] == "sparsegpt" and start["calib_samples"] == 32
    assert start["mean_output_error"] < start["mean_magnitude_output_error"]
    coverage = json.loads((ckpt.parent / "coverage.json").read_text())
    assert set(coverage["mask_start"]["layers"]) == set(coverage["sparse_layers"])
    model, _ = load_checkpoint(ckpt)
    dense, _ = load_checkpoint(dense_ckpt)
    layers = masked_modules(model)
    assert layers and all(is_nm_sparse(m.weight * m.weight_mask) for m in layers.values())
    # The kept weights were reconstructed: they are not the dense ones.
    dense_layers = dict(dense.named_modules())
    name = next(iter(layers))
    kept = layers[name].weight_mask
    assert not torch.equal(layers[name].weight[kept], dense_layers[f"net.{name}"].weight[kept])


def test_srste_from_a_calibrated_start_keeps_that_mask_at_its_first_refresh(
    tmp_path, dense_ckpt, fmnist_data, monkeypatch
):
    seen = {}
    real = train_mod.prepare_run

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        seen["masks"] = {n: m.weight_mask.clone() for n, m in masked_modules(run.model).items()}
        seen["magnitude"] = {n: nm_mask(m.weight) for n, m in masked_modules(run.model).items()}
        return run

    monkeypatch.setattr(train_mod, "prepare_run", spy)
    _run(tmp_path, dense_ckpt, fmnist_data, "srste", "wanda", steps=1)
    assert all(torch.equal(seen["masks"][n], seen["magnitude"][n]) for n in seen["masks"])


def test_fine_tuning_defaults_keep_the_start_and_pretraining_keeps_its_warm_up(dense_ckpt):
    tune = train_mod.TrainConfig(preset="tiny-dit", out="unused", init=str(dense_ckpt), steps=400).validate()
    scratch = train_mod.TrainConfig(preset="tiny-dit", out="unused", steps=400).validate()
    d = tune.model_preset().train
    assert tune.ema_warmup is False and scratch.ema_warmup is True
    assert tune.ema_decay == pytest.approx(min(d.ema_decay, 1 - 1 / 40)) and scratch.ema_decay == d.ema_decay
    assert tune.warmup_steps == min(d.warmup_steps, 20) and scratch.warmup_steps == d.warmup_steps
    assert tune.lr == (d.sparse_lr or d.lr)
    # Without the warm-up the EMA moves by (1 - decay) from the first step: the start is kept.
    assert train_mod.ema_decay_at(0.99, 0, warmup=False) == 0.99 and train_mod.ema_decay_at(0.99, 0) == pytest.approx(
        0.1
    )


def test_cli_flags_reach_the_config(dense_ckpt):
    args = build_parser().parse_args(
        [
            "--model",
            "tiny-dit",
            "--init",
            str(dense_ckpt),
            "--sparsity",
            "srste",
            "--mask-init",
            "sparsegpt",
            "--calib-samples",
            "64",
            "--decay-ramp",
            "0.25",
            "--ema-warmup",
            "--data-weight",
            "0.5",
        ]
    )
    config = config_from_args(args).validate()
    assert config.sparsity.mask_init == "sparsegpt" and config.sparsity.calib_samples == 64
    assert config.sparsity.decay_ramp == 0.25 and config.ema_warmup is True and config.data_weight == 0.5
    assert config.sparsity.decay_at(0, 100) == pytest.approx(config.sparsity.decay / 25)
    assert config.sparsity.decay_at(50, 100) == config.sparsity.decay
