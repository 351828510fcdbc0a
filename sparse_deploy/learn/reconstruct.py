"""Calibrated one-shot 2:4: choose each layer's mask (and update its kept weights) on real inputs.

Magnitude pruning keeps the two largest ``|w|`` of every group of four and ignores what the layer
computes. The criteria here look at the layer's inputs ``X`` on calibration data:

* ``wanda`` - score ``|w_ij| * ||x_j||`` (Wanda): the weight's magnitude scaled by the norm of the
  input channel it multiplies; no update.
* ``sparsegpt`` - the optimal-brain-surgeon step of SparseGPT: columns are visited in order; every
  four columns the 2:4 pattern is chosen by ``w^2 / [H^-1]_jj^2``, and each pruned weight's error is
  spread onto the not yet visited kept weights through the inverse Hessian ``H = X^T X``, so the
  layer's output ``W X`` changes as little as the mask allows. Model Optimizer's ``sparsegpt`` mode
  computes this update and keeps only the mask; here the updated weights are the result.

Calibration inputs are what the denoiser sees in training: real images noised at timesteps spread
evenly over the whole schedule, every class in turn, the null label of classifier-free guidance for
a share of them (:func:`calibration_batches`). Layers are calibrated **in forward order on the
already pruned model** (:func:`reconstruct_`): a layer's inputs come from the earlier layers'
sparse weights, so their errors are compensated rather than compounded. Layers that read the same
input tensor (a block's q/k/v) share one pass.

Pure tensor math (:func:`sparsegpt_prune`, :func:`wanda_mask`, :func:`output_error`) is separate
from the model walk, and everything is deterministic for a given calibration set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import SparseDeployError
from ..masks import PATTERN_M, PATTERN_N, nm_mask, pattern_index
from ..sparsify import MASK_INITS, masked_modules, sparsify_
from .modelopt_masks import modelopt_masks

__all__ = [
    "CRITERIA",
    "CalibrationConfig",
    "calibration_batches",
    "layer_columns",
    "sparsegpt_prune",
    "wanda_mask",
    "output_error",
    "refit_kept",
    "reconstruct_",
    "init_masks_",
    "prior_logits_",
    "calibration_summary",
]

log = logging.getLogger(__name__)

#: Mask-start criteria: ``magnitude`` (no calibration), ``wanda`` (calibrated mask, no update),
#: ``sparsegpt`` (calibrated mask and reconstructed kept weights).
CRITERIA = MASK_INITS


@dataclass(frozen=True)
class CalibrationConfig:
    """The calibration set: ``samples`` noised training images in batches of ``batch``.

    Attributes:
        samples: calibration inputs (each a real image at its own timestep and label).
        batch: inputs per forward pass.
        null_share: share of inputs carrying the null (unconditional) label, as guidance trains.
        damp: SparseGPT's dampening, a share of the mean Hessian diagonal added to the diagonal.
        block: SparseGPT's column block (a multiple of 4): the lazy-update width.
    """

    samples: int = 512
    batch: int = 64
    null_share: float = 0.1
    damp: float = 0.01
    block: int = 128

    def validate(self) -> CalibrationConfig:
        if self.samples < 1 or self.batch < 1:
            raise SparseDeployError(
                f"--calib-samples and the calibration batch must be >= 1, got {self.samples}, {self.batch}"
            )
        if not 0 <= self.null_share <= 1 or not 0 < self.damp < 1 or self.block % PATTERN_M or self.block < PATTERN_M:
            raise SparseDeployError(
                "calibration: null_share in [0, 1], damp in (0, 1) and a block that is a multiple of 4 are needed"
            )
        return self


def calibration_batches(
    preset,
    images: torch.Tensor,
    labels: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    config: CalibrationConfig,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Denoiser inputs ``(x_t, t, y)`` for calibration, drawn from the training data.

    Timesteps are stratified over ``[0, T)`` (one per equal-width bin, in shuffled order), labels
    cycle over the classes (each input a random training image of its class) and ``null_share`` of
    them are replaced by the null label. The draw depends on ``seed`` alone.
    """
    config.validate()
    gen = torch.Generator().manual_seed((seed * 7919 + 104_729) % 2**64)
    n, steps = config.samples, len(alphas_cumprod)
    t = (
        ((torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=gen, dtype=torch.float64)) * steps / n)
        .long()
        .clamp_(0, steps - 1)
    )
    t = t[torch.randperm(n, generator=gen)]
    if preset.num_classes:
        wanted = torch.arange(n) % preset.num_classes
        idx = torch.empty(n, dtype=torch.long)
        for c in range(preset.num_classes):
            pool = torch.nonzero(labels == c).flatten()
            if len(pool) == 0:  # a class the data lacks: any image stands in
                pool = torch.arange(len(labels))
            slots = torch.nonzero(wanted == c).flatten()
            idx[slots] = pool[torch.randint(0, len(pool), (len(slots),), generator=gen)]
        y = labels[idx].clone()
        drop = torch.rand(n, generator=gen) < config.null_share
        y[drop] = preset.null_class
    else:
        idx = torch.randint(0, len(images), (n,), generator=gen)
        y = None
    x0 = images[idx].float()
    noise = torch.randn(x0.shape, generator=gen)
    a = alphas_cumprod[t].float().view(-1, *([1] * (x0.dim() - 1)))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return [
        (x_t[i : i + config.batch], t[i : i + config.batch], None if y is None else y[i : i + config.batch])
        for i in range(0, n, config.batch)
    ]


# -- pure math: columns, Hessians, masks ---------------------------------------------------------


def layer_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``[N, cols]`` a Linear/Conv2d multiplies its 2-D weight (:func:`weight_2d`) with.

    A Conv2d's input is unfolded (im2col) and its columns ordered ``(r, s, c)``, matching
    :func:`weight_2d`, so every group of 4 consecutive columns is 4 input channels of one tap.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise SparseDeployError(
                f"cannot calibrate a Conv2d with padding {module.padding!r} / mode "
                f"{module.padding_mode!r}; use --mask-init magnitude"
            )
        k = module.kernel_size
        cols = nn.functional.unfold(x, k, dilation=module.dilation, padding=module.padding, stride=module.stride)
        b, _, positions = cols.shape
        c = module.in_channels
        return cols.view(b, c, k[0] * k[1], positions).permute(0, 3, 2, 1).reshape(b * positions, k[0] * k[1] * c)
    raise SparseDeployError(f"cannot calibrate a {type(module).__name__}; only Linear and Conv2d layers")


def weight_2d(weight: torch.Tensor) -> torch.Tensor:
    """A Linear ``[out, in]`` weight as is; a Conv2d ``[K, C, R, S]`` one as ``[K, R*S*C]`` (columns ``(r, s, c)``)."""
    if weight.dim() == 2:
        return weight
    k, c, r, s = weight.shape
    return weight.permute(0, 2, 3, 1).reshape(k, r * s * c)


def weight_from_2d(w2: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`weight_2d`."""
    if len(shape) == 2:
        return w2.reshape(shape)
    k, c, r, s = shape
    return w2.reshape(k, r, s, c).permute(0, 3, 1, 2).contiguous()


def wanda_mask(weight: torch.Tensor, column_sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's 2:4 mask: keep the two largest ``|w_ij| * ||x_j||`` of every group (bool, ``weight``'s shape)."""
    w2 = weight_2d(weight.detach().float())
    score = w2.abs() * column_sq_norms.float().clamp_min(0).sqrt().view(1, -1)
    return nm_mask(weight_from_2d(score, weight.shape), PATTERN_N, PATTERN_M)


def output_error(w_new: torch.Tensor, w_old: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||(W_new - W_old) X||^2 / ||W_old X||^2`` from ``H = X^T X`` (2-D weights): the relative output error."""
    d = (weight_2d(w_new) - weight_2d(w_old)).double()
    w = weight_2d(w_old).double()
    h = hessian.double()
    num = torch.einsum("ij,jk,ik->", d, h, d)
    den = torch.einsum("ij,jk,ik->", w, h, w)
    return float(num / den.clamp_min(1e-30))


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01, block: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's 2:4 mask selection with the optimal-brain-surgeon update of the kept weights.

    Args:
        weight: Linear ``[out, in]`` or Conv2d ``[K, C, R, S]`` weight.
        hessian: ``X^T X`` over calibration rows, ``[cols, cols]`` in :func:`weight_2d`'s column order
            (any positive scale: it is normalised by its mean diagonal).
        damp: added to the diagonal as a share of its mean (numerical stability).
        block: columns updated together before the lazy update of the rest (a multiple of 4).

    Returns:
        ``(new_weight, mask)``: the updated weight with exact zeros where pruned, and the bool
        keep-mask, both of ``weight``'s shape and dtype/bool.
    """
    shape, dtype = weight.shape, weight.dtype
    w = weight_2d(weight.detach()).double().clone()
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise SparseDeployError(f"Hessian of shape {tuple(hessian.shape)} does not fit a weight with {cols} columns")
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(cols, dtype=h.dtype) * damp * torch.diagonal(h).mean()
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as exc:  # pragma: no cover - only on degenerate inputs
        raise SparseDeployError(
            f"the calibration Hessian is not positive definite ({exc}); raise the dampening or the calibration set"
        ) from exc
    keep = torch.ones(rows, cols, dtype=torch.bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1 = w[:, start:end].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[start:end, start:end]
        diag1 = torch.diagonal(hinv1)
        for i in range(end - start):
            if i % PATTERN_M == 0:
                score = w1[:, i : i + PATTERN_M] ** 2 / diag1[i : i + PATTERN_M].view(1, -1) ** 2
                # Keep the N highest-scoring of each group; a stable sort breaks ties towards the lower index.
                order = torch.sort(-score, dim=1, stable=True).indices
                group = torch.zeros_like(score, dtype=torch.bool)
                group.scatter_(1, order[:, :PATTERN_N], True)
                keep[:, start + i : start + i + PATTERN_M] = group
            col = w1[:, i]
            q = torch.where(keep[:, start + i], col, torch.zeros_like(col))
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        w[:, start:end] = w1
        w[:, end:] -= err1 @ hinv[start:end, end:]
    w = torch.where(keep, w, torch.zeros_like(w))
    return weight_from_2d(w, shape).to(dtype), weight_from_2d(keep, shape)


def refit_kept(
    weight: torch.Tensor, mask: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01, chunk: int = 64
) -> torch.Tensor:
    """The kept weights that minimise the layer's output error for a fixed mask (per row, least squares).

    Row ``r`` keeps the columns ``S`` of its mask; ``w'_S = (H_SS + damp I)^-1 (H w_r)_S`` is the exact
    minimiser of ``||X (w' - w_r)||^2`` over weights supported on ``S`` (with ``H = X^T X`` dampened as
    in :func:`sparsegpt_prune`). SparseGPT's pass only moves a pruned weight's error onto the columns
    after it; this solves for all kept columns at once.
    """
    shape, dtype = weight.shape, weight.dtype
    w = weight_2d(weight.detach()).double()
    keep = weight_2d(mask)
    rows, cols = w.shape
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    h += torch.eye(cols, dtype=h.dtype) * damp * torch.diagonal(h).mean()
    target = w @ h  # row r: (H w_r)^T, since H is symmetric
    kept = keep.sum(dim=1)
    if not bool((kept == kept[0]).all()):
        raise SparseDeployError("refit_kept needs the same number of kept weights in every row (an exact N:M mask)")
    idx = torch.sort(torch.nonzero(keep)[:, 1].view(rows, -1), dim=1).values  # [rows, k] kept columns
    out = torch.zeros_like(w)
    for start in range(0, rows, chunk):
        sel = idx[start : start + chunk]
        h_ss = h[sel.unsqueeze(-1), sel.unsqueeze(-2)]  # [c, k, k]
        rhs = torch.gather(target[start : start + chunk], 1, sel).unsqueeze(-1)
        out[start : start + chunk].scatter_(1, sel, torch.linalg.solve(h_ss, rhs).squeeze(-1))
    return weight_from_2d(out, shape).to(dtype)


# -- the model walk ---------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook once the last layer of the group has its inputs: the rest of the forward is not needed."""


def _groups_in_forward_order(model: nn.Module, layers: dict[str, nn.Module], batch) -> list[list[str]]:
    """The masked layers in the order the forward pass reaches them, grouped when they read the same input tensor."""
    seen: list[tuple[str, torch.Tensor]] = []  # the input tensors themselves: held, so no two can share an id
    handles = []
    for name, module in layers.items():

        def hook(_m, inputs, name=name):
            seen.append((name, inputs[0]))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        model(*(v[:2] if v is not None else None for v in batch))
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    last_input = None
    done: set[str] = set()
    for name, tensor in seen:
        if name in done:  # a layer called twice in one pass: its group is where the pass first reaches it
            continue
        done.add(name)
        if groups and tensor is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = tensor
    missing = [n for n in layers if n not in done]
    if missing:
        raise SparseDeployError(
            f"masked layers {missing[:3]} are never called by the model's forward pass; they cannot be calibrated"
        )
    return groups


@torch.no_grad()
def _input_hessians(
    model: nn.Module, layers: dict[str, nn.Module], group: list[str], batches
) -> tuple[dict[str, torch.Tensor], int]:
    """``X^T X`` of every layer of ``group`` over the calibration batches (the forward stops after the group)."""
    hessians: dict[str, torch.Tensor] = {}
    rows = 0
    last = group[-1]
    handles = []
    for name in group:
        module = layers[name]

        def hook(m, inputs, name=name):
            nonlocal rows
            cols = layer_columns(m, inputs[0].detach()).double()
            hessians[name] = hessians.get(name, 0) + cols.T @ cols
            if name == last:
                rows += cols.shape[0]
                raise _Stop

        handles.append(module.register_forward_pre_hook(hook))
    try:
        for x, t, y in batches:
            try:
                model(x, t, y)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return hessians, rows


@torch.no_grad()
def reconstruct_(
    model: nn.Module, criterion: str, batches, calibration: CalibrationConfig | None = None, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Choose every masked layer's 2:4 mask by ``criterion`` on calibration inputs, in forward order, in place.

    ``model`` carries masked layers (:func:`sparse_deploy.sparsify.sparsify_`); each gets a new
    ``weight_mask`` and, for ``sparsegpt``, updated weights. Pruned entries of the dense weight are
    set to zero, so a mode that recomputes masks from weight magnitudes (SR-STE) starts from this
    mask rather than falling back to the magnitude one.

    Returns:
        Per layer: ``error`` (relative output error on its calibration inputs, :func:`output_error`)
        and ``magnitude_error`` (the magnitude mask's, on the same inputs).
    """
    if criterion not in CRITERIA:
        raise SparseDeployError(f"unknown mask criterion '{criterion}'; choose one of: {', '.join(CRITERIA)}")
    calibration = (calibration or CalibrationConfig()).validate()
    layers = masked_modules(model)
    if not layers:
        raise SparseDeployError("the model has no masked layers to calibrate; sparsify it first")
    was_training = model.training
    model.eval()
    errors: dict[str, dict[str, float]] = {}
    try:
        groups = _groups_in_forward_order(model, layers, batches[0])
        for group in tqdm(groups, desc=f"calibrate {criterion}", disable=not progress):
            hessians, rows = _input_hessians(model, layers, group, batches)
            for name in group:
                module, h = layers[name], hessians[name] / max(rows, 1)
                dense = module.weight.detach().clone()
                if criterion == "sparsegpt":
                    _, mask = sparsegpt_prune(dense, h, calibration.damp, calibration.block)
                    weight = refit_kept(dense, mask, h, calibration.damp)
                elif criterion == "wanda":
                    mask = wanda_mask(dense, torch.diagonal(h))
                    weight = dense * mask
                else:
                    mask = nm_mask(dense, PATTERN_N, PATTERN_M)
                    weight = dense * mask
                magnitude = dense * nm_mask(dense, PATTERN_N, PATTERN_M)
                module.weight.copy_(weight)
                module.weight_mask.copy_(mask)
                errors[name] = {
                    "error": output_error(weight, dense, h),
                    "magnitude_error": output_error(magnitude, dense, h),
                }
    finally:
        model.train(was_training)
    mean = sum(e["error"] for e in errors.values()) / len(errors)
    mean_mag = sum(e["magnitude_error"] for e in errors.values()) / len(errors)
    log.info(
        "calibrated %d layers (%s, %d inputs): mean relative output error %.4f (magnitude on the same inputs %.4f)",
        len(errors),
        criterion,
        calibration.samples,
        mean,
        mean_mag,
    )
    return errors


def init_masks_(
    model: nn.Module,
    sparsity,
    layers: list[str],
    preset,
    images: torch.Tensor,
    labels: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[str], dict[str, dict[str, float]] | None]:
    """Mask ``model``'s ``layers`` and start the masks where ``sparsity.mask_init`` says, in place.

    ``magnitude``: :func:`~sparse_deploy.sparsify.sparsify_` alone. ``wanda`` / ``sparsegpt``:
    calibrated on ``sparsity.calib_samples`` inputs (:func:`calibration_batches`, seeded by ``seed``)
    by :func:`reconstruct_`. ``modelopt:<mode>``: the masks NVIDIA Model Optimizer computes on the
    same calibration inputs (on ``layers``, or on its default rules' layers with
    ``sparsity.modelopt_default_rules``). Pruned entries of the dense weights are zeroed for every
    calibrated start, so SR-STE's magnitude refresh starts from this mask; MaskLLM logits are
    re-initialised towards it.

    Returns:
        The masked layers and, for our calibrated criteria, per-layer output errors (else None).
    """
    init = sparsity.mask_init
    if init == "magnitude":
        return sparsify_(model, sparsity, layers), None
    batches = calibration_batches(
        preset, images, labels, alphas_cumprod, CalibrationConfig(samples=sparsity.calib_samples), seed
    )
    errors = None
    if init.startswith("modelopt:"):
        masks = modelopt_masks(
            model, init.split(":", 1)[1], batches, None if sparsity.modelopt_default_rules else list(layers)
        )
        layers = sparsify_(model, sparsity, list(masks))
        with torch.no_grad():
            for name, module in masked_modules(model).items():
                module.weight_mask.copy_(masks[name].to(module.weight_mask.device))
                module.weight.mul_(module.weight_mask.to(module.weight.dtype))
    else:
        layers = sparsify_(model, sparsity, layers)
        errors = reconstruct_(model, init, batches, progress=progress)
    prior_logits_(model, sparsity)
    return layers, errors


@torch.no_grad()
def prior_logits_(model: nn.Module, sparsity) -> None:
    """MaskLLM: point every masked layer's pattern logits at its current mask (``sparsity.mask_prior``); in place."""
    for module in masked_modules(model).values():
        logits = getattr(module, "mask_logits", None)
        if logits is not None:
            prior = (
                nn.functional.one_hot(pattern_index(module.weight_mask), logits.shape[-1]).to(logits.dtype)
                * sparsity.mask_prior
            )
            logits.data.copy_(prior.reshape(logits.shape))


def calibration_summary(errors: dict[str, dict[str, float]] | None, sparsity) -> dict | None:
    """A checkpoint's record of its mask start: criterion, calibration size, mean output errors (magnitude: None)."""
    if sparsity.mask_init == "magnitude":
        return None
    if errors is None:  # Model Optimizer's masks: no output errors of ours
        return {
            "mask_init": sparsity.mask_init,
            "calib_samples": sparsity.calib_samples,
            "modelopt_default_rules": sparsity.modelopt_default_rules,
        }
    return {
        "mask_init": sparsity.mask_init,
        "calib_samples": sparsity.calib_samples,
        "mean_output_error": sum(e["error"] for e in errors.values()) / len(errors),
        "mean_magnitude_output_error": sum(e["magnitude_error"] for e in errors.values()) / len(errors),
        "layers": errors,
    }
