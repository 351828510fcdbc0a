"""The sparsification methods the benchmarks compare, and the training config of each.

The comparison: a dense reference, a one-shot baseline, three fine-tuning estimators, the full
SparseDM recipe (SR-STE + output distillation), and the recipes beyond it (learned masks,
block-output distillation, decoupled decay of pruned weights). ``fixed+kd+feat`` is the control of
``srste+kd+feat``: the same distillation on masks that never change, so the comparison can tell
what the learned masks add beyond the teacher's block outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from ..errors import SparseDeployError
from ..learn.config import TrainConfig
from ..modes import get_mode
from ..settings import DEFAULT_KD_FEATURES, DEFAULT_KD_WEIGHT
from ..sparsify import SparsityConfig

__all__ = [
    "Recipe",
    "METHOD_RECIPES",
    "METHODS",
    "METHOD_LABELS",
    "FIRST_METHODS",
    "TRAIN_COST_METHODS",
    "MODELOPT_METHODS",
    "DEFAULT_METHODS",
    "DEFAULT_PRUNED_DECAY",
    "START",
    "UNTRAINED",
    "trains",
    "is_dense_method",
    "recipe_key",
    "method_train_config",
]

DEFAULT_PRUNED_DECAY = 5.0


class Recipe(NamedTuple):
    """How one compared method fine-tunes: sparsity mode (None: dense), output distillation, block distillation
    weight, pruned-weight decay, mask start (``SparsityConfig.mask_init``), and whether a Model Optimizer mask
    start takes the layers of its default rules."""

    mode: str | None
    kd: bool = False
    kd_features: float = 0.0
    pruned_decay: float = 0.0
    mask_init: str = "magnitude"
    modelopt_default_rules: bool = False
    decay_ramp: float = 0.0  # SR-STE decay ramped over this share of training (AST)
    data_weight: float = 1.0  # 0: regress on the teacher alone (SparseDM's code)


_FEAT = DEFAULT_KD_FEATURES
METHOD_RECIPES: dict[str, Recipe] = {
    "start": Recipe(None),  # the starting model itself: trains nothing
    "dense": Recipe(None),
    "oneshot": Recipe("oneshot"),
    "oneshot-wanda": Recipe("oneshot", mask_init="wanda"),
    "oneshot-sparsegpt": Recipe("oneshot", mask_init="sparsegpt"),
    "fixed": Recipe("fixed"),
    "fixed-sparsegpt": Recipe("fixed", mask_init="sparsegpt"),
    "fixed+kd+feat": Recipe("fixed", True, _FEAT),
    "fixed+kd+feat-sparsegpt": Recipe("fixed", True, _FEAT, mask_init="sparsegpt"),
    "ste": Recipe("ste"),
    "srste": Recipe("srste"),
    "srste+kd": Recipe("srste", True),
    "srste+kd-sparsegpt": Recipe("srste", True, mask_init="sparsegpt"),
    "srste+kd+feat": Recipe("srste", True, _FEAT),
    "srste+kd+feat-sparsegpt": Recipe("srste", True, _FEAT, mask_init="sparsegpt"),
    "srste+kd+feat+ramp-sparsegpt": Recipe("srste", True, _FEAT, mask_init="sparsegpt", decay_ramp=0.25),
    "fixed+teacher+feat-sparsegpt": Recipe("fixed", True, _FEAT, mask_init="sparsegpt", data_weight=0.0),
    "srste+kd+dd": Recipe("srste", True, pruned_decay=DEFAULT_PRUNED_DECAY),
    "maskllm+kd": Recipe("maskllm", True),
    # NVIDIA Model Optimizer as its users run it: its own masks (mts.sparsify), with its default rules or on our
    # layers, one-shot and with its sparsity-aware training (the mask held fixed, plain loss, no distillation).
    "modelopt-magnitude": Recipe("oneshot", mask_init="modelopt:sparse_magnitude", modelopt_default_rules=True),
    "modelopt-sparsegpt": Recipe("oneshot", mask_init="modelopt:sparsegpt", modelopt_default_rules=True),
    "modelopt-sparsegpt-ours": Recipe("oneshot", mask_init="modelopt:sparsegpt"),
    "modelopt-sat-magnitude": Recipe("fixed", mask_init="modelopt:sparse_magnitude", modelopt_default_rules=True),
    "modelopt-sat-sparsegpt": Recipe("fixed", mask_init="modelopt:sparsegpt", modelopt_default_rules=True),
    "modelopt-sat-sparsegpt-ours": Recipe("fixed", mask_init="modelopt:sparsegpt"),
}
METHODS = tuple(METHOD_RECIPES)
_KEYED_FIELDS = 5  # the recipe fields stored results have always been keyed by; later fields are keyed only when set
START = "start"  # the starting model itself, sampled as every method is


def recipe_key(method: str) -> list:
    """The recipe as a stored run's key holds it: the first five fields, then later ones up to the last non-default."""
    recipe = METHOD_RECIPES[method]
    values = list(recipe)
    defaults = [Recipe._field_defaults.get(f) for f in Recipe._fields]
    while len(values) > _KEYED_FIELDS and values[-1] == defaults[len(values) - 1]:
        values.pop()
    return values


def is_dense_method(method: str) -> bool:
    """Whether ``method`` leaves the model dense (the starting model, dense training continued)."""
    return METHOD_RECIPES[method].mode is None


def trains(method: str) -> bool:
    """Whether ``method`` fine-tunes: its mode says (:mod:`sparse_deploy.modes`); the starting model does not."""
    recipe = METHOD_RECIPES.get(method)
    if recipe is None:  # a method of another version (a merged methods.json): it was trained
        return True
    return get_mode(recipe.mode).trains if recipe.mode is not None else method != START


UNTRAINED = tuple(m for m in METHOD_RECIPES if not trains(m))  # train nothing: one point at 0 steps


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
    "srste+kd+feat+ramp-sparsegpt": "SR-STE from SparseGPT masks + both distillations, decay ramped over 25% (AST)",
    "fixed+teacher+feat-sparsegpt": "fixed masks from SparseGPT, teacher alone (no data term) + block distillation",
    "modelopt-magnitude": "Model Optimizer sparse_magnitude, default rules, one-shot",
    "modelopt-sparsegpt": "Model Optimizer sparsegpt, default rules, one-shot",
    "modelopt-sparsegpt-ours": "Model Optimizer sparsegpt on our layers, one-shot",
    "modelopt-sat-magnitude": "Model Optimizer sparse_magnitude, default rules, its sparsity-aware training",
    "modelopt-sat-sparsegpt": "Model Optimizer sparsegpt, default rules, its sparsity-aware training",
    "modelopt-sat-sparsegpt-ours": "Model Optimizer sparsegpt on our layers, its sparsity-aware training",
    "ste": "plain STE",
    "srste": "SR-STE",
    "srste+kd": "SR-STE + distillation (SparseDM)",
    "srste+kd+feat": "SR-STE + output and block distillation",
    "srste+kd+dd": "SR-STE + distillation + decoupled pruned-weight decay",
    "maskllm+kd": "learned masks (MaskLLM-style) + distillation",
}
FIRST_METHODS = ("dense", "oneshot", "fixed", "ste", "srste", "srste+kd")  # their stored run keys predate recipes
# A step costs the same whatever the mask start: the training-cost benchmark times the magnitude-start recipes.
TRAIN_COST_METHODS = tuple(m for m in METHODS if trains(m) and METHOD_RECIPES[m].mask_init == "magnitude")
#: Model Optimizer's rows need the optional extra (``pip install 'sparse-deploy[modelopt]'``): asked for by name.
MODELOPT_METHODS = tuple(m for m in METHODS if METHOD_RECIPES[m].mask_init.startswith("modelopt:"))
#: What ``bench methods`` compares when not told: the starting model, dense continued, one-shot magnitude and
#: SparseGPT, fixed masks and SparseDM from each start, and the distilled recipes from the SparseGPT start.
DEFAULT_METHODS = (
    "start",
    "dense",
    "oneshot",
    "oneshot-sparsegpt",
    "fixed",
    "fixed-sparsegpt",
    "srste+kd",
    "srste+kd-sparsegpt",
    "fixed+kd+feat-sparsegpt",
    "srste+kd+feat-sparsegpt",
)


def method_train_config(
    method: str,
    preset: str,
    out: str | Path,
    *,
    steps: int,
    init: str | Path | None,
    seed: int = 0,
    kd_weight: float = DEFAULT_KD_WEIGHT,
    macs_budget: float | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The :class:`~sparse_deploy.learn.config.TrainConfig` of one method of :data:`METHODS`."""
    if method not in METHODS:
        raise SparseDeployError(f"unknown method '{method}'; choose from: {', '.join(METHODS)}")
    r = METHOD_RECIPES[method]
    config = TrainConfig(
        preset=preset,
        out=str(out),
        steps=steps,
        init=None if init is None else str(init),
        seed=seed,
        sparsity=SparsityConfig(
            mode=r.mode,
            pruned_decay=r.pruned_decay,
            macs_budget=macs_budget,
            mask_init=r.mask_init,
            modelopt_default_rules=r.modelopt_default_rules,
            decay_ramp=r.decay_ramp,
        )
        if r.mode
        else None,
        kd_weight=(1.0 if r.data_weight == 0 else kd_weight) if r.kd else 0.0,
        data_weight=r.data_weight,
        kd_features=r.kd_features,
        preview=0,
        **overrides,
    ).validate()  # dense from init: the fine-tuning settings (TrainConfig.validate), the fair reference
    return config
