"""Masked layers, the straight-through estimators, layer selection and the final bake.

A selected ``nn.Linear`` / ``nn.Conv2d`` keeps its dense ``weight`` (the parameter the
optimizer updates) and gains a bool buffer ``weight_mask``; its forward uses ``weight * mask``.
How gradients reach the dense weight depends on the mode:

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

:func:`bake_` writes the masks into the weights and removes all mask machinery, leaving
plain diffusers modules whose weights hold exact zeros.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .errors import SparseDeployError
from .macs import layer_macs, total_macs
from .models import short_name
from .masks import (
    PATTERN,
    PATTERN_M,
    PATTERN_N,
    eligibility,
    from_groups,
    is_nm_sparse,
    nm_mask,
    nm_patterns,
    pattern_index,
    to_groups,
)
from .presets import Preset

__all__ = [
    "MODES",
    "MASK_INITS",
    "SparsityConfig",
    "LayerChoice",
    "CoverageReport",
    "pruned_macs",
    "select_layers",
    "sparsify_",
    "refresh_masks_",
    "masked_modules",
    "bake_",
    "coverage_report",
    "SRSTE",
    "set_mask_temperature_",
    "set_grad_scale_",
    "set_decay_",
    "decay_pruned_",
    "mask_logit_parameters",
]

log = logging.getLogger(__name__)

MODES = ("srste", "ste", "fixed", "oneshot", "maskllm")
#: Where the masks start (``--mask-init``): magnitude, or calibrated on real inputs (``sparse_deploy.reconstruct``):
#: Wanda's ``|w| * ||x||`` mask, or SparseGPT's mask with the kept weights reconstructed.
MASK_INITS = ("magnitude", "wanda", "sparsegpt", "modelopt:sparse_magnitude", "modelopt:sparsegpt")
#: ``modelopt:<mode>``: the mask NVIDIA Model Optimizer's own ``mts.sparsify`` computes (``sparse_deploy.modelopt_masks``;
#: its sparsegpt mode keeps the mask and drops its weight update), on our layers or, with ``modelopt_default_rules``, on the
#: layers its default rules take.
LEARNED_MASK_MODES = ("srste", "ste", "maskllm")
_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}


@dataclass
class SparsityConfig:
    """How to sparsify a model.

    Attributes:
        mode: ``srste`` | ``ste`` | ``fixed`` | ``oneshot`` (see module docstring).
        pattern: always ``"2:4"`` (:data:`~sparse_deploy.masks.PATTERN`), the only pattern TensorRT and
            cuSPARSELt run; recorded so that every artifact says which pattern it holds, and any
            other value is refused by :meth:`validate`.
        decay: SR-STE's lambda on pruned weights (2e-4 in the SparseDM code); forced to 0 for ``ste``.
        mask_every: recompute masks from the dense weights every this many steps (srste/ste).
        include: module-name glob patterns to sparsify; empty means the preset's defaults.
        exclude: patterns removed from the selection.
        adaln: also sparsify DiT adaLN modulation layers.
        types: module types considered.
        pruned_decay: decoupled decay rate of pruned weights after each optimizer step
            (srste/ste/maskllm; 0 = off, the paper's recipe).
        mask_prior: ``maskllm``: initial logit of each group's magnitude pattern (others 0).
        mask_lr: ``maskllm``: AdamW learning rate of the mask logits (no weight decay).
        tau: ``maskllm``: Gumbel-softmax temperature at the first and last step (annealed geometrically).
        logit_scale: ``maskllm``: logit multiplier at the first and last step (annealed linearly).
        macs_budget: effective MACs as a share of the dense model's; only the least sensitive
            selected layers go 2:4 until it is met (``sparse_deploy.sensitivity``). None: all.
        latency_profile: a GEMM latency profile of the target GPU (``make gpu-check``'s
            ``reports/gpu/gemm.json``); selected Linear layers whose 2:4 kernel is not faster there
            at the deployment shape stay dense (``sparse_deploy.latency``). None: no such filter.
        latency_batch: the deployment batch the profile is read at (rows = rows per sample x batch).
        latency_dtype: the engines' precision the profile is read at: ``fp16`` or ``bf16``.
        mask_init: where the masks start (:data:`MASK_INITS`): ``magnitude``, or calibrated on
            ``calib_samples`` noised training inputs, layer by layer on the already pruned model
            (``wanda``; ``sparsegpt`` also reconstructs the kept weights). The one-shot criterion
            with ``oneshot``, the mask start of every other mode.
        calib_samples: calibration inputs of a calibrated ``mask_init``.
        decay_ramp: ``srste``: the share of training over which the SR-STE decay ramps linearly from 0 to
            ``decay`` (Adaptive Sparse Trainer's ramp; 0: the full decay from the first step, as SparseDM).
        modelopt_default_rules: with a ``modelopt:`` mask start, sparsify the layers Model Optimizer's
            default rules take (every Linear/Conv2d it can, adaLN, timestep and output layers included)
            instead of this selection: the model a Model Optimizer user gets.
    """

    mode: str = "srste"
    pattern: str = PATTERN
    decay: float = 2e-4
    mask_every: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    adaln: bool = False
    types: tuple[str, ...] = ("Linear", "Conv2d")
    pruned_decay: float = 0.0
    # Prior 1 at rate 0.05: about 20 steps of agreeing gradients move a group off its magnitude
    # pattern. The first setting (3, 0.02) flipped no mask in 600 steps on fmnist-dit; (0.5, 0.1)
    # re-drew almost half of the entries in 150 steps and raised the loss (docs/RESULTS.md).
    mask_prior: float = 1.0
    mask_lr: float = 0.05
    tau: tuple[float, float] = (1.0, 0.1)
    logit_scale: tuple[float, float] = (1.0, 10.0)
    macs_budget: float | None = None
    latency_profile: str | None = None
    latency_batch: int = 8
    latency_dtype: str = "fp16"
    mask_init: str = "magnitude"
    calib_samples: int = 512
    modelopt_default_rules: bool = False
    decay_ramp: float = 0.0

    def validate(self) -> "SparsityConfig":
        if self.mode not in MODES:
            raise SparseDeployError(f"unknown sparsity mode '{self.mode}'; choose one of: {', '.join(MODES)}")
        if self.pattern != PATTERN:
            raise SparseDeployError(
                f"sparsity pattern '{self.pattern}' is not supported: TensorRT's sparse weights and cuSPARSELt run {PATTERN} only"
            )
        if not 0 <= self.decay < float("inf"):  # also refuses nan
            raise SparseDeployError(f"--decay must be >= 0, got {self.decay}")
        if self.mask_every < 1:
            raise SparseDeployError(f"--mask-every must be >= 1, got {self.mask_every}")
        if self.pruned_decay < 0 or (self.pruned_decay and self.mode not in LEARNED_MASK_MODES):
            raise SparseDeployError(
                f"--pruned-decay must be >= 0 and needs a mode that learns masks ({', '.join(LEARNED_MASK_MODES)}); "
                f"got {self.pruned_decay} with mode {self.mode}"
            )
        if len(self.tau) != 2 or min(self.tau) <= 0 or len(self.logit_scale) != 2 or min(self.logit_scale) <= 0:
            raise SparseDeployError(
                f"--tau and --logit-scale take two positive numbers (start, end); got {self.tau}, {self.logit_scale}"
            )
        if self.mask_lr <= 0 or self.mask_prior < 0:
            raise SparseDeployError(
                f"--mask-lr must be > 0 and --mask-prior >= 0; got {self.mask_lr}, {self.mask_prior}"
            )
        if self.macs_budget is not None and not 0 < self.macs_budget <= 1:
            raise SparseDeployError(f"--macs-budget must be in (0, 1], got {self.macs_budget}")
        if self.latency_batch < 1 or self.latency_dtype not in ("fp16", "bf16"):
            raise SparseDeployError(
                f"--latency-batch must be >= 1 and --latency-dtype fp16 or bf16; got {self.latency_batch}, {self.latency_dtype!r}"
            )
        if self.mask_init not in MASK_INITS:
            raise SparseDeployError(f"unknown --mask-init '{self.mask_init}'; choose one of: {', '.join(MASK_INITS)}")
        if self.modelopt_default_rules and not self.mask_init.startswith("modelopt:"):
            raise SparseDeployError(
                "--modelopt-default-rules needs a Model Optimizer mask start (--mask-init modelopt:...)"
            )
        if not 0 <= self.decay_ramp <= 1:
            raise SparseDeployError(f"--decay-ramp is a share of training in [0, 1], got {self.decay_ramp}")
        if self.calib_samples < 1:
            raise SparseDeployError(f"--calib-samples must be >= 1, got {self.calib_samples}")
        unknown = [t for t in self.types if t not in _TYPES]
        if unknown:
            raise SparseDeployError(f"unknown layer types {unknown}; choose from {list(_TYPES)}")
        return self

    @property
    def effective_decay(self) -> float:
        return self.decay if self.mode == "srste" else 0.0

    @property
    def learns_masks(self) -> bool:
        """Whether masks are recomputed from the dense weights during training."""
        return self.mode in LEARNED_MASK_MODES

    def decay_at(self, step: int, total: int) -> float:
        """SR-STE's decay at ``step`` of ``total``: ramped over the first ``decay_ramp`` share of training."""
        ramp = self.decay_ramp * total
        return self.effective_decay * (min(1.0, (step + 1) / ramp) if ramp >= 1 else 1.0)

    def schedule_at(self, step: int, total: int) -> tuple[float, float]:
        """``maskllm``: the Gumbel temperature and logit scale at ``step`` of ``total``."""
        progress = min(1.0, step / max(total - 1, 1))
        tau = self.tau[0] * (self.tau[1] / self.tau[0]) ** progress
        scale = self.logit_scale[0] + (self.logit_scale[1] - self.logit_scale[0]) * progress
        return tau, scale

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SparsityConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        if "pattern" not in data and "n" in data and "m" in data:  # written before the pattern was one constant
            data = {**data, "pattern": f"{data['n']}:{data['m']}"}
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**data)


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


class _MaskedMixin:
    """Mixed into a Linear/Conv2d by class swap; keeps parameter names (and checkpoints) unchanged."""

    weight_mask: torch.Tensor
    sparsity_mode: str
    sparsity_decay: float

    def masked_weight(self) -> torch.Tensor:
        mask = self.weight_mask
        if self.sparsity_mode in ("srste", "ste") and torch.is_grad_enabled():
            # Under fp16 loss scaling the upstream gradient arrives multiplied by the scale: so must the decay.
            return SRSTE.apply(self.weight, mask, self.sparsity_decay * self.__dict__.get("grad_scale", 1.0))
        if self.sparsity_mode == "maskllm" and self.training and torch.is_grad_enabled():
            return self.weight * self.soft_mask()
        return self.weight * mask  # fixed/oneshot, and every mode at inference: the hard mask

    def soft_mask(self) -> torch.Tensor:
        """``maskllm``: a Gumbel-softmax mixture of the 2:4 patterns per group (differentiable in the logits)."""
        tau, scale = getattr(self, "mask_tau", 1.0), getattr(self, "mask_scale", 1.0)
        logits = self.mask_logits * scale
        uniform = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
        probs = torch.softmax((logits - torch.log(-torch.log(uniform))) / tau, dim=-1)
        groups = probs @ nm_patterns(PATTERN_N, PATTERN_M).to(probs)
        return from_groups(groups, self.weight.shape).to(self.weight.dtype)


class MaskedLinear(_MaskedMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.masked_weight(), self.bias)


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


_MASKED = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}
_DENSE = {v: k for k, v in _MASKED.items()}


@dataclass
class LayerChoice:
    """The outcome of layer selection."""

    selected: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why


def select_layers(model: nn.Module, config: SparsityConfig, preset: Preset | None = None) -> LayerChoice:
    """Pick the layers to sparsify: type filter, include/exclude globs, then shape eligibility."""
    config.validate()
    preset = preset or getattr(model, "preset", None)
    include = tuple(config.include) or (preset.include if preset else ("*",))
    if config.adaln and preset is not None:
        include = include + preset.adaln
    exclude = tuple(config.exclude) + (() if config.include or preset is None else preset.exclude)
    types = tuple(_TYPES[t] for t in config.types)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]

    unmatched = [p for p in include if not any(fnmatch.fnmatchcase(short_name(n), p) for n, _ in candidates)]
    if unmatched:
        raise SparseDeployError(
            f"layer pattern(s) {unmatched} match no {'/'.join(config.types)} module; module names look like "
            f"'{short_name(candidates[0][0]) if candidates else '?'}' (glob syntax, without the 'net.' prefix)"
        )
    choice = LayerChoice()
    for name, module in candidates:
        short = short_name(name)
        if not any(fnmatch.fnmatchcase(short, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(short, p) for p in exclude):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            choice.skipped[short] = "grouped convolution"
            continue
        reason = eligibility(module.weight.shape, PATTERN_N, PATTERN_M)
        if reason:
            choice.skipped[short] = reason
        else:
            choice.selected.append(short)
    if not choice.selected:
        raise SparseDeployError(
            f"no layer is eligible for {PATTERN} sparsity with patterns {list(include)} "
            f"(skipped: {dict(list(choice.skipped.items())[:3])}); widen --include"
        )
    return choice


def sparsify_(model: nn.Module, config: SparsityConfig, layers: Sequence[str] | None = None) -> list[str]:
    """Put 2:4 magnitude masks on the selected layers of ``model``, in place.

    Args:
        model: usually a :class:`sparse_deploy.models.Denoiser`.
        config: the sparsity settings.
        layers: exact (diffusers) module names to mask, e.g. from a checkpoint manifest;
            None selects by ``config``'s patterns.

    Returns:
        The names of the masked layers.
    """
    config.validate()
    if layers is None:
        layers = select_layers(model, config).selected
    by_name = {short_name(n): m for n, m in model.named_modules()}
    for name in layers:
        module = by_name.get(name)
        if module is None or type(module) not in _MASKED:
            raise SparseDeployError(
                f"layer '{name}' is not a Linear/Conv2d of this model; the checkpoint does not fit this preset"
            )
        module.__class__ = _MASKED[type(module)]
        module.register_buffer("weight_mask", nm_mask(module.weight, PATTERN_N, PATTERN_M))
        module.sparsity_mode = config.mode
        module.sparsity_decay = config.effective_decay
        if config.mode == "maskllm":
            prior = (
                nn.functional.one_hot(pattern_index(module.weight_mask), 6).to(module.weight.dtype) * config.mask_prior
            )
            module.mask_logits = nn.Parameter(prior.reshape(-1, 6).to(module.weight.device))
    log.info("masked %d layers with %s %s masks", len(layers), PATTERN, config.mode)
    return list(layers)


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The masked layers of ``model`` by (diffusers) name."""
    return {short_name(n): m for n, m in model.named_modules() if isinstance(m, _MaskedMixin)}


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


def set_mask_temperature_(model: nn.Module, tau: float, scale: float) -> None:
    """``maskllm``: set the Gumbel temperature and logit scale every masked layer samples with."""
    for module in masked_modules(model).values():
        module.mask_tau, module.mask_scale = tau, scale


def set_decay_(model: nn.Module, decay: float) -> None:
    """Set the SR-STE decay every masked layer applies to its pruned weights (``SparsityConfig.decay_at``)."""
    for module in masked_modules(model).values():
        module.sparsity_decay = float(decay)


def set_grad_scale_(model: nn.Module, scale: float) -> None:
    """Tell the SR-STE layers the current loss scale (fp16 ``GradScaler``; 1 otherwise).

    SR-STE adds ``decay * (1 - M) * W`` to the gradient inside backward; with a scaled loss the rest
    of that gradient is ``scale`` times too large until the optimizer unscales it, so the decay term
    is scaled alike and comes out exact.
    """
    for module in masked_modules(model).values():
        module.grad_scale = float(scale)


def mask_logit_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable mask logits of ``maskllm`` layers (their own optimizer group: no weight decay)."""
    return [module.mask_logits for module in masked_modules(model).values() if hasattr(module, "mask_logits")]


@torch.no_grad()
def decay_pruned_(model: nn.Module, factor: float) -> None:
    """Multiply the currently pruned weights of every masked layer by ``factor`` (decoupled decay)."""
    for module in masked_modules(model).values():
        module.weight.mul_(torch.where(module.weight_mask, 1.0, factor).to(module.weight.dtype))


@torch.no_grad()
def bake_(model: nn.Module) -> list[str]:
    """Write masks into the weights and turn masked layers back into plain modules.

    Returns:
        The names of the baked layers; each now holds exact 2:4 zeros.
    """
    baked = []
    for name, module in masked_modules(model).items():
        module.weight.mul_(module.weight_mask.to(module.weight.dtype))
        del module.weight_mask
        if "mask_logits" in module._parameters:
            del module.mask_logits
        for attr in ("sparsity_mode", "sparsity_decay", "mask_tau", "mask_scale", "grad_scale"):
            module.__dict__.pop(attr, None)
        module.__class__ = _DENSE[type(module)]
        if not is_nm_sparse(module.weight, PATTERN_N, PATTERN_M):  # a saved mask that is not 2:4 (edited or damaged)
            raise SparseDeployError(
                f"layer {name} is not {PATTERN} sparse after applying its mask (the checkpoint's masks are damaged); re-create the checkpoint"
            )
        baked.append(name)
    return baked


def pruned_macs(sparse_layer_macs: int) -> int:
    """The MACs 2:4 layers skip out of their dense count (half of them)."""
    return sparse_layer_macs * (PATTERN_M - PATTERN_N) // PATTERN_M


@dataclass
class CoverageReport:
    """Which layers are sparse and what share of the model's MACs they carry."""

    sparse_layers: list[str]
    skipped: dict[str, str]
    layer_macs: dict[str, int]
    model_macs: int

    @property
    def sparse_macs(self) -> int:
        return sum(self.layer_macs[name] for name in self.sparse_layers)

    @property
    def sparse_share(self) -> float:
        """Share of all model MACs (attention matmuls included) that run on N:M weights."""
        return self.sparse_macs / max(self.model_macs, 1)

    @property
    def effective_macs(self) -> int:
        """Model MACs once the sparse layers skip their pruned weights."""
        return self.model_macs - pruned_macs(self.sparse_macs)

    def summary(self) -> str:
        linear_conv = sum(self.layer_macs.values())
        return (
            f"{len(self.sparse_layers)} layers {PATTERN}-sparse ({len(self.skipped)} selected layers skipped); "
            f"they carry {self.sparse_share:.1%} of the model's {self.model_macs / 1e6:.1f} M MACs per sample "
            f"({self.sparse_macs / max(linear_conv, 1):.1%} of Linear/Conv MACs); "
            f"effective MACs {self.effective_macs / 1e6:.1f} M ({self.effective_macs / max(self.model_macs, 1):.1%} of dense)"
        )

    def to_dict(self) -> dict:
        return {
            "pattern": PATTERN,
            "sparse_layers": self.sparse_layers,
            "skipped": self.skipped,
            "model_macs": self.model_macs,
            "sparse_macs": self.sparse_macs,
            "sparse_share": self.sparse_share,
            "effective_macs": self.effective_macs,
            "layer_macs": self.layer_macs,
        }


def coverage_report(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    sparse_layers: Sequence[str],
    skipped: dict[str, str] | None = None,
) -> CoverageReport:
    """Count MACs on ``inputs`` (batch 1 gives per-sample figures) and report sparse coverage."""
    per_layer = {short_name(k): v for k, v in layer_macs(model, inputs).items()}
    return CoverageReport(
        sparse_layers=list(sparse_layers),
        skipped=dict(skipped or {}),
        layer_macs=per_layer,
        model_macs=total_macs(model, inputs),
    )
