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
from ..settings import DEFAULT_KD_FEATURES, DEFAULT_KD_WEIGHT

__all__ = ["METHOD_RECIPES", "METHODS", "METHOD_LABELS", "FIRST_METHODS", "TRAIN_COST_METHODS", "DEFAULT_PRUNED_DECAY",
           "method_train_config"]

DEFAULT_PRUNED_DECAY = 5.0
# method -> (sparsity mode, output distillation, block distillation weight, pruned-weight decay)
METHOD_RECIPES: dict[str, tuple[str | None, bool, float, float]] = {
    "dense": (None, False, 0.0, 0.0),
    "oneshot": ("oneshot", False, 0.0, 0.0),
    "fixed": ("fixed", False, 0.0, 0.0),
    "fixed+kd+feat": ("fixed", True, DEFAULT_KD_FEATURES, 0.0),
    "ste": ("ste", False, 0.0, 0.0),
    "srste": ("srste", False, 0.0, 0.0),
    "srste+kd": ("srste", True, 0.0, 0.0),
    "srste+kd+feat": ("srste", True, DEFAULT_KD_FEATURES, 0.0),
    "srste+kd+dd": ("srste", True, 0.0, DEFAULT_PRUNED_DECAY),
    "maskllm+kd": ("maskllm", True, 0.0, 0.0),
}
METHODS = tuple(METHOD_RECIPES)
METHOD_LABELS = {
    "dense": "dense (continued training)",
    "oneshot": "one-shot magnitude 2:4 (no training)",
    "fixed": "fixed masks, fine-tuned",
    "fixed+kd+feat": "fixed masks + output and block distillation",
    "ste": "plain STE",
    "srste": "SR-STE",
    "srste+kd": "SR-STE + distillation (SparseDM)",
    "srste+kd+feat": "SR-STE + output and block distillation",
    "srste+kd+dd": "SR-STE + distillation + decoupled pruned-weight decay",
    "maskllm+kd": "learned masks (MaskLLM-style) + distillation",
}
FIRST_METHODS = ("dense", "oneshot", "fixed", "ste", "srste", "srste+kd")  # their stored run keys predate recipes
TRAIN_COST_METHODS = tuple(m for m in METHODS if m != "oneshot")


def method_train_config(
    method: str, preset: str, out: str | Path, *, steps: int, init: str | Path | None, seed: int = 0,
    kd_weight: float = DEFAULT_KD_WEIGHT, macs_budget: float | None = None, **overrides: Any,
):
    """The :class:`~sparse_deploy.train.TrainConfig` of one method of :data:`METHODS`."""
    from ..sparsify import SparsityConfig
    from ..train import TrainConfig

    if method not in METHODS:
        raise SparseDeployError(f"unknown method '{method}'; choose from: {', '.join(METHODS)}")
    mode, kd, kd_features, pruned_decay = METHOD_RECIPES[method]
    config = TrainConfig(
        preset=preset, out=str(out), steps=steps, init=None if init is None else str(init), seed=seed,
        sparsity=SparsityConfig(mode=mode, pruned_decay=pruned_decay, macs_budget=macs_budget) if mode else None,
        kd_weight=kd_weight if kd else 0.0,
        kd_features=kd_features, preview=0, **overrides,
    ).validate()
    if mode is None and init is not None and "lr" not in overrides:
        # Continued dense training at the sparse methods' fine-tuning rate: the fair reference. At the
        # from-scratch rate it first moves a converged model away from its optimum (docs/RESULTS.md).
        d = config.model_preset().train
        config.lr = d.sparse_lr or d.lr
    return config
