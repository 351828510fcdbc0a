"""The sparsity-mode registry: one entry per mode, and every place that must know what a mode does reads it."""

from __future__ import annotations

import pytest

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.cli import build_parser
from sparse_deploy.learn.masking import TRAINING_WEIGHTS
from sparse_deploy.measure.recipes import METHOD_RECIPES, START, TRAIN_COST_METHODS, UNTRAINED, trains
from sparse_deploy.modes import GRADIENTS, MODE_NAMES, MODES, ONESHOT, SparsityMode, get_mode
from sparse_deploy.sparsify import SparsityConfig


def test_the_registry_says_what_each_mode_does():
    assert MODE_NAMES == ("srste", "ste", "fixed", "oneshot", "maskllm")
    assert [m for m in MODES if not MODES[m].trains] == [ONESHOT] and MODES[ONESHOT].min_steps == 0
    assert [m for m in MODES if MODES[m].learns_masks] == ["srste", "ste", "maskllm"]
    assert [m for m in MODES if MODES[m].decays_pruned] == ["srste"] and [m for m in MODES if MODES[m].mask_logits] == [
        "maskllm"
    ]
    assert len({m.label for m in MODES.values()}) == len(MODES)
    assert set(GRADIENTS) == set(TRAINING_WEIGHTS)  # every kind of gradient has its training weight


def test_unknown_modes_and_gradients_are_refused():
    with pytest.raises(
        SparseDeployError, match="unknown sparsity mode 'magic'; choose one of: srste, ste, fixed, oneshot, maskllm"
    ):
        get_mode("magic")
    with pytest.raises(ValueError, match="gradient must be one of"):
        SparsityMode("new", "new", "", gradient="sideways")


def test_the_config_reads_the_registry():
    assert SparsityConfig(mode="srste", decay=0.5).effective_decay == 0.5
    assert SparsityConfig(mode="ste", decay=0.5).effective_decay == 0.0
    assert [SparsityConfig(mode=m).learns_masks for m in MODES] == [MODES[m].learns_masks for m in MODES]
    with pytest.raises(SparseDeployError, match=r"needs a mode that learns masks \(srste, ste, maskllm\)"):
        SparsityConfig(mode="fixed", pruned_decay=1.0).validate()


def test_the_train_command_offers_every_mode_with_its_help():
    action = next(a for a in build_parser()._actions if a.dest == "sparsity")
    assert action.choices == ("none", *MODES)
    assert action.help == (
        "none: dense training; srste (SparseDM improved STE), ste, fixed (ASP-style), "
        "oneshot (no training), "
        "maskllm (learnable Gumbel-softmax masks over the six 2:4 patterns)"
    )


def test_bench_methods_train_as_their_mode_says():
    for method, (mode, *_rest) in METHOD_RECIPES.items():
        expected = MODES[mode].trains if mode is not None else method != START
        assert trains(method) == expected, method
    assert "oneshot" in UNTRAINED and START in UNTRAINED and not set(UNTRAINED) & set(TRAIN_COST_METHODS)
    assert trains("a-method-of-another-version")  # read from a merged methods.json: it was trained
