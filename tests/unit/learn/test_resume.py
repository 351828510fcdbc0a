"""Resuming without mixing runs: a run's identity, the refusal that names what differs, and the metrics log."""

from __future__ import annotations

import json

import pytest
import torch

from sparse_deploy.checkpoint import LEGACY_TRAINING_STATE, save_checkpoint
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.config import TrainConfig
from sparse_deploy.learn.resume import NOT_IDENTITY, check_resumable, differing_settings, read_metrics, rewrite_metrics
from sparse_deploy.models import build_model
from sparse_deploy.presets import get_preset
from sparse_deploy.sparsify import SparsityConfig


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"preset": "tiny-dit", "out": "runs/a", "steps": 4, "sparsity": SparsityConfig(), **kw})


def test_settings_that_do_not_change_weights_are_not_part_of_the_identity():
    prior = _config().to_dict()
    assert NOT_IDENTITY == {"out", "device", "preview", "preview_steps", "checkpoint_every"}
    assert (
        differing_settings(
            prior, _config(out="elsewhere", device="cpu", preview=0, preview_steps=3, checkpoint_every=1)
        )
        == []
    )


def test_every_other_setting_is_named_with_old_and_new_values():
    prior = _config().to_dict()
    assert differing_settings(prior, _config(steps=5)) == ["steps (4 -> 5)"]
    assert differing_settings(prior, _config(sparsity=SparsityConfig(mode="ste"))) == [
        "sparsity.mode ('srste' -> 'ste')"
    ]


def test_fields_a_newer_config_added_take_their_defaults_in_an_old_manifest():
    prior = _config().to_dict()
    prior["sparsity"].pop("mask_init")  # written before the field existed
    prior.pop("ema_warmup")
    assert differing_settings(prior, _config()) == []


def test_paths_compare_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prior = _config(data=str(tmp_path / "images"), init=str(tmp_path / "dense")).to_dict()
    assert differing_settings(prior, _config(data="images", init="dense")) == []
    assert (
        differing_settings(_config(data="fashion-mnist:d").to_dict(), _config(data=f"fashion-mnist:{tmp_path / 'd'}"))
        == []
    )


def _run_with_checkpoint(tmp_path, config: TrainConfig, training_state: bool = True):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-dit"), announce_random=False)
    ckpt = tmp_path / "run" / "checkpoint"
    save_checkpoint(
        ckpt,
        model,
        sparsity=None,
        info={"train_config": config.to_dict()},
        training_state={"step": 2} if training_state else None,
    )
    return tmp_path / "run", ckpt


def test_check_resumable(tmp_path):
    config = _config(sparsity=None)
    out, ckpt = _run_with_checkpoint(tmp_path, config)
    assert check_resumable(tmp_path / "fresh", tmp_path / "fresh" / "checkpoint", config) is None
    assert check_resumable(out, ckpt, config)["train_config"]["steps"] == 4
    with pytest.raises(
        SparseDeployError, match=r"holds a different run \(differs in steps \(4 -> 9\)\); pass another --out"
    ):
        check_resumable(out, ckpt, _config(sparsity=None, steps=9))


def test_check_resumable_refuses_exports_and_pickles(tmp_path):
    config = _config(sparsity=None)
    out, ckpt = _run_with_checkpoint(tmp_path, config, training_state=False)
    with pytest.raises(SparseDeployError, match="without training state"):
        check_resumable(out, ckpt, config)
    (ckpt / LEGACY_TRAINING_STATE).write_bytes(b"pickle")
    with pytest.raises(SparseDeployError, match="pickled training state .* never loaded"):
        check_resumable(out, ckpt, config)


def test_metrics_after_the_checkpoint_are_dropped_and_torn_lines_too(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(rows[:3]) + '\n{"step": 4, "lo\n' + "not json\n\n")
    with caplog.at_level("WARNING"):
        assert read_metrics(path, 2) == rows[:2]
    assert "torn or not a metrics row" in caplog.text
    rewrite_metrics(path, 2)
    assert path.read_text() == rows[0] + "\n" + rows[1] + "\n"
    assert read_metrics(tmp_path / "missing.jsonl", 5) == []
    rewrite_metrics(tmp_path / "missing.jsonl", 5)
    assert not (tmp_path / "missing.jsonl").exists()
