"""How masked layers train: the straight-through estimators, learned pattern logits, mask updates.

A masked layer (:mod:`sparse_deploy.sparsify`) computes with ``weight * mask``. While a run trains,
:func:`train_masks_` gives each one a :class:`MaskTraining`, whose ``weight`` is what the forward
pass uses when gradients are on; the mode (:mod:`sparse_deploy.modes`) decides which:

* ``srste`` - SparseDM's improved STE (SR-STE): dL/dW = dL/d(W*M) + decay * (1 - M) * W,
  masks recomputed from the dense weights every ``mask_every`` steps.
* ``ste`` - plain STE: the same with decay 0.
* ``fixed`` - masks computed once; pruned weights get no gradient (NVIDIA ASP / Model
  Optimizer style).
* ``oneshot`` - masks computed once, no training at all (magnitude pruning baseline).
* ``maskllm`` - learnable masks in the manner of MaskLLM (NeurIPS 2024): every group of 4 holds
  logits over its six 2:4 patterns, initialised to favour the magnitude pattern; training
  multiplies the weight by a Gumbel-softmax mixture of patterns (temperature annealed down,
  logit scale annealed up, so the sampled mask hardens), and the deployed mask is the argmax
  pattern. Weights and logits are learned together.

Independently of the mode, ``pruned_decay`` applies a decoupled decay to the currently pruned
weights after every optimizer step (``w <- w * (1 - lr * pruned_decay)``, as AdamW decays, so
Adam's normalisation cannot swallow it as it does SR-STE's gradient term): pruned weights
shrink steadily unless their gradient keeps them alive, which lets masks settle (CAST-style).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..masks import PATTERN_M, PATTERN_N, from_groups, nm_mask, nm_patterns, to_groups
from ..modes import get_mode
from ..sparsify import SparsityConfig, masked_modules, sparsify_

__all__ = [
    "SRSTE",
    "MaskTraining",
    "train_masks_",
    "sparsify_for_training_",
    "soft_mask",
    "mask_schedule",
    "decay_schedule",
    "set_decay_",
    "refresh_masks_",
    "set_mask_temperature_",
    "set_grad_scale_",
    "decay_pruned_",
    "mask_logit_parameters",
]


class SRSTE(torch.autograd.Function):
    """Forward ``W * M``; backward ``g + decay * (1 - M) * W`` to the dense weight (decay 0: plain STE)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        weight, mask = ctx.saved_tensors
        grad = grad_output
        if ctx.decay:
            grad = grad + ctx.decay * (~mask).to(weight.dtype) * weight
        return grad, None, None


@dataclass
class MaskTraining:
    """How one masked layer trains: its training weight and the state the loop sets.

    Attributes:
        weight: the weight the forward pass uses while gradients are on (``module -> tensor``).
        decay: SR-STE's decay on pruned weights (0: plain STE, or a mode without it).
        tau / scale: ``maskllm``: the Gumbel temperature and logit scale it samples with.
        grad_scale: the current loss scale (fp16 ``GradScaler``; 1 otherwise).
    """

    weight: Callable[[nn.Module], torch.Tensor]
    decay: float = 0.0
    tau: float = 1.0
    scale: float = 1.0
    grad_scale: float = 1.0


def _straight_through(module: nn.Module) -> torch.Tensor:
    training: MaskTraining = module.mask_training
    # Under fp16 loss scaling the upstream gradient arrives multiplied by the scale: so must the decay.
    return SRSTE.apply(module.weight, module.weight_mask, training.decay * training.grad_scale)


def _through_mask(module: nn.Module) -> torch.Tensor:
    return module.weight * module.weight_mask


def _gumbel(module: nn.Module) -> torch.Tensor:
    if module.training:
        return module.weight * soft_mask(module)
    return module.weight * module.weight_mask


#: The training weight of each kind of gradient (:data:`sparse_deploy.modes.GRADIENTS`).
TRAINING_WEIGHTS: dict[str, Callable[[nn.Module], torch.Tensor]] = {
    "srste": _straight_through,
    "ste": _straight_through,
    "masked": _through_mask,
    "gumbel": _gumbel,
}


def train_masks_(model: nn.Module, config: SparsityConfig) -> None:
    """Give every masked layer of ``model`` the training weight of ``config``'s mode."""
    weight = TRAINING_WEIGHTS[get_mode(config.mode).gradient]
    for module in masked_modules(model).values():
        module.mask_training = MaskTraining(weight, decay=config.effective_decay)


def sparsify_for_training_(model: nn.Module, config: SparsityConfig, layers: Sequence[str] | None = None) -> list[str]:
    """:func:`sparse_deploy.sparsify.sparsify_`, then :func:`train_masks_`: masked layers ready to train."""
    names = sparsify_(model, config, layers)
    train_masks_(model, config)
    return names


def soft_mask(module: nn.Module) -> torch.Tensor:
    """``maskllm``: a Gumbel-softmax mixture of the 2:4 patterns per group (differentiable in the logits)."""
    training = module.__dict__.get("mask_training")
    tau, scale = (training.tau, training.scale) if training is not None else (1.0, 1.0)
    logits = module.mask_logits * scale
    uniform = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
    probs = torch.softmax((logits - torch.log(-torch.log(uniform))) / tau, dim=-1)
    groups = probs @ nm_patterns(PATTERN_N, PATTERN_M).to(probs)
    return from_groups(groups, module.weight.shape).to(module.weight.dtype)


def mask_schedule(config: SparsityConfig, step: int, total: int) -> tuple[float, float]:
    """``maskllm``: the Gumbel temperature (annealed geometrically) and logit scale (linearly) at ``step``."""
    progress = min(1.0, step / max(total - 1, 1))
    tau = config.tau[0] * (config.tau[1] / config.tau[0]) ** progress
    scale = config.logit_scale[0] + (config.logit_scale[1] - config.logit_scale[0]) * progress
    return tau, scale


def decay_schedule(config: SparsityConfig, step: int, total: int) -> float:
    """SR-STE's decay at ``step`` of ``total``: ramped over the first ``decay_ramp`` share of training."""
    ramp = config.decay_ramp * total
    return config.effective_decay * (min(1.0, (step + 1) / ramp) if ramp >= 1 else 1.0)


def _hard_mask(module: nn.Module) -> torch.Tensor:
    logits = getattr(module, "mask_logits", None)
    if logits is None:
        return nm_mask(module.weight, PATTERN_N, PATTERN_M)  # SR-STE / STE: magnitude of the dense weight
    chosen = (
        nm_patterns(PATTERN_N, PATTERN_M).to(logits.device)[logits.argmax(dim=-1)].bool()
    )  # maskllm: argmax pattern
    shape = module.weight.shape
    return from_groups(chosen.reshape(to_groups(module.weight, PATTERN_M).shape), shape)


@torch.no_grad()
def refresh_masks_(model: nn.Module, layer_flips: dict[str, float] | None = None) -> float:
    """Recompute every mask (magnitude of the dense weight, or the argmax pattern of learned logits).

    Returns the share of all mask entries that flipped; ``layer_flips``, when given, receives each
    layer's own share.
    """
    flipped = total = 0
    for name, module in masked_modules(model).items():
        new = _hard_mask(module)
        changed = int((new != module.weight_mask).sum())
        flipped += changed
        total += new.numel()
        if layer_flips is not None:
            layer_flips[name] = changed / new.numel()
        module.weight_mask.copy_(new)
    return flipped / max(total, 1)


def _trainings(model: nn.Module) -> list[MaskTraining]:
    return [m.mask_training for m in masked_modules(model).values() if "mask_training" in m.__dict__]


def set_mask_temperature_(model: nn.Module, tau: float, scale: float) -> None:
    """``maskllm``: set the Gumbel temperature and logit scale every masked layer samples with."""
    for training in _trainings(model):
        training.tau, training.scale = tau, scale


def set_decay_(model: nn.Module, decay: float) -> None:
    """Set the SR-STE decay every masked layer applies to its pruned weights (:func:`decay_schedule`)."""
    for training in _trainings(model):
        training.decay = float(decay)


def set_grad_scale_(model: nn.Module, scale: float) -> None:
    """Tell the SR-STE layers the current loss scale (fp16 ``GradScaler``; 1 otherwise).

    SR-STE adds ``decay * (1 - M) * W`` to the gradient inside backward; with a scaled loss the rest
    of that gradient is ``scale`` times too large until the optimizer unscales it, so the decay term
    is scaled alike and comes out exact.
    """
    for training in _trainings(model):
        training.grad_scale = float(scale)


def mask_logit_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable mask logits of ``maskllm`` layers (their own optimizer group: no weight decay)."""
    return [module.mask_logits for module in masked_modules(model).values() if hasattr(module, "mask_logits")]


@torch.no_grad()
def decay_pruned_(model: nn.Module, factor: float) -> None:
    """Multiply the currently pruned weights of every masked layer by ``factor`` (decoupled decay)."""
    for module in masked_modules(model).values():
        module.weight.mul_(torch.where(module.weight_mask, 1.0, factor).to(module.weight.dtype))
