"""The sparsification methods the benchmarks compare, and the training config of each.

The comparison: a dense reference, a one-shot baseline, three fine-tuning estimators, the full
SparseDM recipe (SR-STE + output distillation), and the recipes beyond it (learned masks,
block-output distillation, decoupled decay of pruned weights). ``fixed+kd+feat`` is the control of
``srste+kd+feat``: the same distillation on masks that never change, so the comparison can tell
what the learned masks add beyond the teacher's block outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SparseDeployError
from ..learn.config import TrainConfig
from ..modes import get_mode
from ..settings import DEFAULT_KD_FEATURES, DEFAULT_KD_WEIGHT
from ..sparsify import SparsityConfig

__all__ = ["METHOD_RECIPES", "METHODS", "METHOD_LABELS", "FIRST_METHODS", "TRAIN_COST_METHODS", "DEFAULT_PRUNED_DECAY",
           "START", "UNTRAINED", "trains", "method_train_config"]

DEFAULT_PRUNED_DECAY = 5.0
# method -> (sparsity mode, output distillation, block distillation weight, pruned-weight decay, mask start)
METHOD_RECIPES: dict[str, tuple[str | None, bool, float, float, str]] = {
    "start": (None, False, 0.0, 0.0, "magnitude"),  # the starting model itself: trains nothing
    "dense": (None, False, 0.0, 0.0, "magnitude"),
    "oneshot": ("oneshot", False, 0.0, 0.0, "magnitude"),
    "oneshot-wanda": ("oneshot", False, 0.0, 0.0, "wanda"),
    "oneshot-sparsegpt": ("oneshot", False, 0.0, 0.0, "sparsegpt"),
    "fixed": ("fixed", False, 0.0, 0.0, "magnitude"),
    "fixed-sparsegpt": ("fixed", False, 0.0, 0.0, "sparsegpt"),
    "fixed+kd+feat": ("fixed", True, DEFAULT_KD_FEATURES, 0.0, "magnitude"),
    "fixed+kd+feat-sparsegpt": ("fixed", True, DEFAULT_KD_FEATURES, 0.0, "sparsegpt"),
    "ste": ("ste", False, 0.0, 0.0, "magnitude"),
    "srste": ("srste", False, 0.0, 0.0, "magnitude"),
    "srste+kd": ("srste", True, 0.0, 0.0, "magnitude"),
    "srste+kd-sparsegpt": ("srste", True, 0.0, 0.0, "sparsegpt"),
    "srste+kd+feat": ("srste", True, DEFAULT_KD_FEATURES, 0.0, "magnitude"),
    "srste+kd+feat-sparsegpt": ("srste", True, DEFAULT_KD_FEATURES, 0.0, "sparsegpt"),
    "srste+kd+dd": ("srste", True, 0.0, DEFAULT_PRUNED_DECAY, "magnitude"),
    "maskllm+kd": ("maskllm", True, 0.0, 0.0, "magnitude"),
}
START = "start"  # the starting model itself, sampled as every method is


def trains(method: str) -> bool:
    """Whether ``method`` fine-tunes: its mode says (:mod:`sparse_deploy.modes`); the starting model does not."""
    recipe = METHOD_RECIPES.get(method)
    if recipe is None:  # a method of another version (a merged methods.json): it was trained
        return True
    return get_mode(recipe[0]).trains if recipe[0] is not None else method != START


UNTRAINED = tuple(m for m in METHOD_RECIPES if not trains(m))  # train nothing: one point at 0 steps
METHODS = tuple(METHOD_RECIPES)
METHOD_LABELS = {
    "start": "starting model (no fine-tuning)",
    "dense": "dense (continued training)",
    "oneshot": "one-shot magnitude 2:4 (no training)",
    "oneshot-wanda": "one-shot Wanda 2:4, calibrated (no training)",
    "oneshot-sparsegpt": "one-shot SparseGPT 2:4, calibrated and reconstructed (no training)",
    "fixed": "fixed masks, fine-tuned",
    "fixed-sparsegpt": "fixed masks from SparseGPT, fine-tuned",
    "fixed+kd+feat": "fixed masks + output and block distillation",
    "fixed+kd+feat-sparsegpt": "fixed masks from SparseGPT + output and block distillation",
    "srste+kd-sparsegpt": "SparseDM (SR-STE + distillation) from SparseGPT masks",
    "srste+kd+feat-sparsegpt": "SR-STE from SparseGPT masks + output and block distillation",
    "ste": "plain STE",
    "srste": "SR-STE",
    "srste+kd": "SR-STE + distillation (SparseDM)",
    "srste+kd+feat": "SR-STE + output and block distillation",
    "srste+kd+dd": "SR-STE + distillation + decoupled pruned-weight decay",
    "maskllm+kd": "learned masks (MaskLLM-style) + distillation",
}
FIRST_METHODS = ("dense", "oneshot", "fixed", "ste", "srste", "srste+kd")  # their stored run keys predate recipes
TRAIN_COST_METHODS = tuple(m for m in METHODS if trains(m))


def method_train_config(
    method: str, preset: str, out: str | Path, *, steps: int, init: str | Path | None, seed: int = 0,
    kd_weight: float = DEFAULT_KD_WEIGHT, macs_budget: float | None = None, **overrides: Any,
) -> TrainConfig:
    """The :class:`~sparse_deploy.learn.config.TrainConfig` of one method of :data:`METHODS`."""
    if method not in METHODS:
        raise SparseDeployError(f"unknown method '{method}'; choose from: {', '.join(METHODS)}")
    mode, kd, kd_features, pruned_decay, mask_init = METHOD_RECIPES[method]
    config = TrainConfig(
        preset=preset, out=str(out), steps=steps, init=None if init is None else str(init), seed=seed,
        sparsity=SparsityConfig(mode=mode, pruned_decay=pruned_decay, macs_budget=macs_budget, mask_init=mask_init) if mode else None,
        kd_weight=kd_weight if kd else 0.0,
        kd_features=kd_features, preview=0, **overrides,
    ).validate()  # dense from init: the fine-tuning settings (TrainConfig.validate), the fair reference
    return config
