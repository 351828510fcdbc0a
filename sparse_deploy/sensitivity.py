"""Per-layer sensitivity to 2:4 masking, and the layer choice that meets a MACs budget.

The sensitivity of a layer is the increase of the denoising loss when that layer alone takes its
magnitude 2:4 mask (every other layer dense), measured on fixed noised training batches. For a
budget ``b`` (effective MACs as a share of the dense model's), :func:`choose_for_budget` makes
2:4 the layers that cost the least loss per MAC saved until the effective MACs reach ``b``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import SparseDeployError
from .masks import nm_mask
from .models import short_name

__all__ = ["layer_sensitivity", "choose_for_budget", "BudgetChoice"]

log = logging.getLogger(__name__)


def _modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {short_name(n): m for n, m in model.named_modules()}


@torch.no_grad()
def layer_sensitivity(
    model: torch.nn.Module,
    layers: Sequence[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    alphas: torch.Tensor,
    *,
    batches: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    conditional: bool = True,
) -> dict[str, float]:
    """Loss increase of the dense ``model`` when each layer alone is 2:4-masked (same batches for all)."""
    from tqdm.auto import tqdm

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batches):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x0, y = images[idx], labels[idx]
        t = torch.randint(0, len(alphas), (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        inputs.append((a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y if conditional else None, noise))

    def loss() -> float:
        total = 0.0
        for x_t, t, y, noise in inputs:
            pred = model(x_t, t, y)[:, : noise.shape[1]]
            total += float(torch.nn.functional.mse_loss(pred, noise))
        return total / len(inputs)

    base = loss()
    modules = _modules(model)
    out = {}
    for name in tqdm(layers, desc="layer sensitivity", leave=False):
        weight = modules[name].weight
        saved = weight.detach().clone()
        weight.mul_(nm_mask(weight))
        out[name] = loss() - base
        weight.copy_(saved)
    return out


@dataclass
class BudgetChoice:
    """Which layers a MACs budget makes 2:4, and the effective MACs it reaches."""

    selected: list[str]
    kept_dense: list[str]
    effective_macs: int
    model_macs: int


def choose_for_budget(
    layer_macs: dict[str, int],
    model_macs: int,
    sensitivity: dict[str, float],
    budget: float,
    n: int = 2,
    m: int = 4,
) -> BudgetChoice:
    """Make 2:4 the cheapest layers (loss increase per MAC saved) until effective MACs <= ``budget`` x dense.

    Raises:
        SparseDeployError: the budget is outside (0, 1] or below what every eligible layer together reaches.
    """
    if not 0 < budget <= 1:
        raise SparseDeployError(f"--macs-budget must be in (0, 1], got {budget}")
    saving = {name: layer_macs[name] * (m - n) // m for name in sensitivity}
    floor = model_macs - sum(saving.values())
    if floor > budget * model_macs:
        raise SparseDeployError(
            f"--macs-budget {budget} is out of reach: with every eligible layer 2:4 the model keeps {floor / model_macs:.1%} "
            f"of its MACs; ask for at least {floor / model_macs:.3f} or widen --include"
        )
    order = sorted(sensitivity, key=lambda k: (sensitivity[k] / max(saving[k], 1), k))
    selected, effective = [], model_macs
    for name in order:
        if effective <= budget * model_macs:
            break
        selected.append(name)
        effective -= saving[name]
    kept = [name for name in sensitivity if name not in selected]
    log.info(
        "MACs budget %.2f: %d layers 2:4, %d kept dense, effective MACs %.1f%%",
        budget,
        len(selected),
        len(kept),
        100 * effective / model_macs,
    )
    return BudgetChoice(sorted(selected), sorted(kept), effective, model_macs)
