"""Which selected layers go 2:4 in a training run: ``--latency-profile`` and ``--macs-budget``.

Layer selection (:func:`sparse_deploy.sparsify.select_layers`) picks every eligible layer the
globs name; a run may then keep some of them dense:

* ``--latency-profile``: a layer stays dense where its 2:4 kernel is not faster than the dense one
  on the profiled GPU at the deployment shape (:func:`apply_latency_profile`; the profile is
  :mod:`sparse_deploy.latency`'s, written by ``make gpu-check``);
* ``--macs-budget``: the most loss-sensitive layers stay dense until the effective MACs meet the
  budget (:mod:`.sensitivity`).

Each kept-dense layer moves to ``LayerChoice.skipped`` with the reason, which ``coverage.json`` shows.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import SparseDeployError
from ..latency import LatencyProfile, layer_rows, load_latency_profile
from ..macs import layer_macs, total_macs
from ..models import example_inputs, short_name
from ..presets import Preset
from ..sparsify import LayerChoice, SparsityConfig
from .sensitivity import choose_for_budget, layer_sensitivity

__all__ = ["apply_latency_profile", "choose_by_latency_", "choose_by_macs_budget_"]

log = logging.getLogger(__name__)


def apply_latency_profile(
    choice: LayerChoice,
    rows_per_sample: dict[str, int],
    shapes: dict[str, tuple[int, int]],
    profile: LatencyProfile,
    *,
    batch: int,
    dtype: str,
) -> list[str]:
    """Move from ``choice.selected`` to ``choice.skipped`` every layer whose 2:4 kernel is not faster.

    Args:
        choice: a :class:`sparsify.LayerChoice`, changed in place.
        rows_per_sample: rows each layer multiplies per sample (:func:`layer_rows` at batch 1).
        shapes: ``(out, in)`` of each layer.
        profile: the target GPU's timings.
        batch: the deployment batch; a layer's GEMM has ``rows_per_sample * batch`` rows.
        dtype: ``fp16`` or ``bf16``, the engines' precision.

    Returns:
        The selected layers the profile has no timing for (they stay 2:4; logged).
    """
    kept, unprofiled = [], []
    for name in choice.selected:
        if name not in shapes:  # a Conv2d: the profile times Linear layers only
            kept.append(name)
            unprofiled.append(name)
            continue
        rows = rows_per_sample.get(name, 1) * batch
        found = profile.lookup(*shapes[name], rows, dtype)
        if found is None:
            kept.append(name)
            unprofiled.append(name)
            continue
        measured_rows, entry = found
        speedup = float(entry["speedup"]["median"])
        if speedup > 1.0:
            kept.append(name)
        else:
            choice.skipped[name] = (
                f"kept dense by --latency-profile: on {profile.gpu} the 2:4 {dtype} GEMM is not faster at "
                f"{shapes[name][0]}x{shapes[name][1]}, {measured_rows} rows (dense/2:4 time {speedup:.2f})"
            )
    choice.selected[:] = kept
    if unprofiled:
        log.warning(
            "--latency-profile has no timing for %d selected layer(s) at this shape (kept 2:4): %s",
            len(unprofiled),
            unprofiled[:4],
        )
    return unprofiled


def choose_by_latency_(model: nn.Module, preset: Preset, choice: LayerChoice, sparsity: SparsityConfig) -> None:
    """Keep dense the selected layers whose 2:4 kernel is not faster on the profiled GPU (``--latency-profile``)."""
    profile = load_latency_profile(sparsity.latency_profile)
    rows = layer_rows(model, example_inputs(preset, 1))
    shapes = {
        short_name(n): (m.out_features, m.in_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    apply_latency_profile(choice, rows, shapes, profile, batch=sparsity.latency_batch, dtype=sparsity.latency_dtype)
    if not choice.selected:
        raise SparseDeployError(
            f"--latency-profile {sparsity.latency_profile}: no selected layer has a 2:4 kernel "
            f"faster than dense on {profile.gpu} "
            f"at batch {sparsity.latency_batch} ({sparsity.latency_dtype}); nothing would be sparse"
        )
    log.info(
        "--latency-profile (%s, batch %d, %s): %d layers stay 2:4",
        profile.gpu,
        sparsity.latency_batch,
        sparsity.latency_dtype,
        len(choice.selected),
    )


def choose_by_macs_budget_(
    model: nn.Module,
    preset: Preset,
    choice: LayerChoice,
    images: torch.Tensor,
    labels: torch.Tensor,
    alphas: torch.Tensor,
    budget: float,
    *,
    seed: int = 0,
) -> None:
    """Keep dense the most loss-sensitive selected layers so that effective MACs meet ``--macs-budget``."""
    inputs = example_inputs(preset, 1)
    per_layer = {short_name(k): v for k, v in layer_macs(model, inputs).items()}
    sens = layer_sensitivity(
        model, choice.selected, images, labels, alphas, seed=seed, conditional=bool(preset.num_classes)
    )
    chosen = choose_for_budget(per_layer, total_macs(model, inputs), sens, budget)
    for name in chosen.kept_dense:
        choice.skipped[name] = f"kept dense by --macs-budget {budget} (sensitivity {sens[name]:.2e})"
    choice.selected[:] = chosen.selected
    model.train()
