"""Masked layers, layer selection, coverage and the final bake: what every stage needs of a 2:4 model.

A selected ``nn.Linear`` / ``nn.Conv2d`` keeps its dense ``weight`` and gains a bool buffer
``weight_mask``; its forward uses ``weight * mask``. That is all a checkpoint, an export or a
runner needs; :func:`bake_` writes the masks into the weights and removes all mask machinery,
leaving plain diffusers modules whose weights hold exact zeros.

What the modes do (:mod:`sparse_deploy.modes`) while they train - SR-STE and STE gradients,
learned MaskLLM-style pattern logits, mask refresh, decoupled decay of pruned weights - lives in
:mod:`sparse_deploy.learn.masking`, which gives a masked layer its training weight
(``mask_training``); without one a masked layer always uses the hard mask. The one piece of a
mode kept here is the storage it adds to a layer: ``maskllm``'s pattern logits, which its
checkpoints hold.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import SparseDeployError
from .macs import layer_macs, total_macs
from .masks import (
    PATTERN,
    PATTERN_M,
    PATTERN_N,
    eligibility,
    is_nm_sparse,
    nm_mask,
    pattern_index,
)
from .models import short_name
from .modes import MODES, get_mode
from .presets import Preset

__all__ = [
    "MASK_INITS",
    "SparsityConfig",
    "LayerChoice",
    "CoverageReport",
    "pruned_macs",
    "select_layers",
    "sparsify_",
    "masked_modules",
    "bake_",
    "coverage_report",
    "zero_masks",
    "adopt_masks_",
]

log = logging.getLogger(__name__)

#: Where the masks start (``--mask-init``): magnitude, or calibrated on real inputs (:mod:`.learn.reconstruct`):
#: Wanda's ``|w| * ||x||`` mask, or SparseGPT's mask with the kept weights reconstructed.
MASK_INITS = ("magnitude", "wanda", "sparsegpt", "modelopt:sparse_magnitude", "modelopt:sparsegpt")
#: ``modelopt:<mode>``: the mask NVIDIA Model Optimizer's own ``mts.sparsify`` computes
#: (:mod:`sparse_deploy.learn.modelopt_masks`; its sparsegpt mode keeps the mask and drops its weight update), on our
#: layers or, with ``modelopt_default_rules``, on the layers its default rules take.
_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}


@dataclass
class SparsityConfig:
    """How to sparsify a model.

    Attributes:
        mode: a name in :data:`sparse_deploy.modes.MODES` (``srste`` | ``ste`` | ``fixed`` | ``oneshot`` | ``maskllm``).
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
            selected layers go 2:4 until it is met (``sparse_deploy.learn.sensitivity``). None: all.
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

    def validate(self) -> SparsityConfig:
        mode = get_mode(self.mode)
        if self.pattern != PATTERN:
            raise SparseDeployError(
                f"sparsity pattern '{self.pattern}' is not supported: TensorRT's sparse weights and "
                f"cuSPARSELt run {PATTERN} only"
            )
        if not 0 <= self.decay < float("inf"):  # also refuses nan
            raise SparseDeployError(f"--decay must be >= 0, got {self.decay}")
        if self.mask_every < 1:
            raise SparseDeployError(f"--mask-every must be >= 1, got {self.mask_every}")
        if self.pruned_decay < 0 or (self.pruned_decay and not mode.learns_masks):
            learned = ", ".join(name for name, m in MODES.items() if m.learns_masks)
            raise SparseDeployError(
                f"--pruned-decay must be >= 0 and needs a mode that learns masks ({learned}); "
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
                "--latency-batch must be >= 1 and --latency-dtype fp16 or bf16; got "
                f"{self.latency_batch}, {self.latency_dtype!r}"
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
        """SR-STE's decay as this mode applies it (0 for a mode without the decay term)."""
        return self.decay if get_mode(self.mode).decays_pruned else 0.0

    @property
    def learns_masks(self) -> bool:
        """Whether masks are recomputed during training (:attr:`~sparse_deploy.modes.SparsityMode.learns_masks`)."""
        return get_mode(self.mode).learns_masks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SparsityConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        if "pattern" not in data and "n" in data and "m" in data:  # written before the pattern was one constant
            data = {**data, "pattern": f"{data['n']}:{data['m']}"}
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**data)


class _MaskedMixin:
    """Mixed into a Linear/Conv2d by class swap; keeps parameter names (and checkpoints) unchanged."""

    weight_mask: torch.Tensor
    sparsity_mode: str

    def masked_weight(self) -> torch.Tensor:
        training = self.__dict__.get("mask_training")  # set by sparse_deploy.learn.masking while a run trains
        if training is not None and torch.is_grad_enabled():
            return training.weight(self)
        return self.weight * self.weight_mask  # every mode at inference: the hard mask


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
            f"layer pattern(s) {unmatched} match no {'/'.join(config.types)} module; module names "
            "look like "
            f"'{short_name(candidates[0][0]) if candidates else '?'}' (glob syntax, without the "
            "'net.' prefix)"
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
        if get_mode(config.mode).mask_logits:
            prior = (
                nn.functional.one_hot(pattern_index(module.weight_mask), 6).to(module.weight.dtype) * config.mask_prior
            )
            module.mask_logits = nn.Parameter(prior.reshape(-1, 6).to(module.weight.device))
    log.info("masked %d layers with %s %s masks", len(layers), PATTERN, config.mode)
    return list(layers)


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The masked layers of ``model`` by (diffusers) name."""
    return {short_name(n): m for n, m in model.named_modules() if isinstance(m, _MaskedMixin)}


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
        for attr in ("sparsity_mode", "mask_training"):
            module.__dict__.pop(attr, None)
        module.__class__ = _DENSE[type(module)]
        if not is_nm_sparse(module.weight, PATTERN_N, PATTERN_M):  # a saved mask that is not 2:4 (edited or damaged)
            raise SparseDeployError(
                f"layer {name} is not {PATTERN} sparse after applying its mask (the checkpoint's "
                "masks are damaged); re-create the checkpoint"
            )
        baked.append(name)
    return baked


@torch.no_grad()
def zero_masks(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The masks of the layers whose weights already hold exact 2:4 zeros: a model that is sparse as it comes.

    A model baked by this toolchain, Model Optimizer's ``mts.export`` + ``save_pretrained``, or any other
    2:4 model keeps its masks only as zeros. A Linear/Conv2d (not grouped, reduction axis a multiple
    of 4, not all zeros) whose every group of 4 along the reduction axis holds at most 2 non-zeros
    gets the mask ``weight != 0``; a group with more than 2 zeros keeps its non-zeros and then the
    lowest-indexed zeros, so the mask is exact 2:4 and the same for the same weights. A dense model
    has none (trained weights are not exactly zero).

    Args:
        model: any module (a Denoiser, its diffusers model).
        layers: only consider these (diffusers names); None: every layer.
    """
    wanted = None if layers is None else set(layers)
    masks: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(module, _MaskedMixin):
            continue
        short = short_name(name)
        if wanted is not None and short not in wanted:
            continue
        weight = module.weight.detach()
        if weight.dim() not in (2, 4) or weight.shape[1] % PATTERN_M or getattr(module, "groups", 1) != 1:
            continue
        if not bool((weight != 0).any()) or not is_nm_sparse(weight, PATTERN_N, PATTERN_M):
            continue
        masks[short] = nm_mask(weight.to("cpu", torch.float32), PATTERN_N, PATTERN_M)
    return masks


@torch.no_grad()
def adopt_masks_(model: nn.Module, masks: dict[str, torch.Tensor], config: SparsityConfig) -> list[str]:
    """Mask exactly the layers of ``masks`` with those masks (not recomputed), zeroing what they prune; in place.

    Returns:
        The masked layers, in ``masks``' order.
    """
    layers = sparsify_(model, config, list(masks))
    modules = masked_modules(model)
    for name in layers:
        module = modules[name]
        mask = masks[name].to(module.weight_mask.device, torch.bool)
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise SparseDeployError(
                f"the mask of layer '{name}' has shape {tuple(mask.shape)}, its weight {tuple(module.weight.shape)}"
            )
        module.weight_mask.copy_(mask)
        module.weight.mul_(mask.to(module.weight.dtype))
    return layers


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
            f"{len(self.sparse_layers)} layers {PATTERN}-sparse ({len(self.skipped)} selected "
            "layers skipped); "
            f"they carry {self.sparse_share:.1%} of the model's {self.model_macs / 1e6:.1f} M "
            "MACs per sample "
            f"({self.sparse_macs / max(linear_conv, 1):.1%} of Linear/Conv MACs); "
            f"effective MACs {self.effective_macs / 1e6:.1f} M "
            f"({self.effective_macs / max(self.model_macs, 1):.1%} of dense)"
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
