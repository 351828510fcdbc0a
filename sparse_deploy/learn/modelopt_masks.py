"""NVIDIA Model Optimizer's 2:4 masks on our models, computed by its own code, and its outputs imported.

Model Optimizer (PyPI ``nvidia-modelopt``, the optional extra ``sparse-deploy[modelopt]``) is what a
user would pick instead of this project. This module runs it as its users do, so that the two can be
compared side by side and its results brought in:

* :func:`modelopt_masks` runs ``mts.sparsify(net, "sparse_magnitude" | "sparsegpt", config={...})``
  on a deep copy of a :class:`~sparse_deploy.models.Denoiser`'s diffusers model and reads back the
  mask each of its ``SparseModule`` layers holds (the ``_weight_mask`` buffer). Its ``sparsegpt``
  mode computes SparseGPT's weight update on a copy of each weight and keeps only the mask
  (``weight != 0`` of the updated copy): the kept weights stay the dense ones, here as in
  Model Optimizer.
* :func:`modelopt_rules` writes a layer selection (ours) as a Model Optimizer rules dict, so its
  users can keep their tool and get our coverage; :func:`modelopt_default_layers` lists what its
  default rules take (on a DiT also the adaLN, timestep-embedder and output layers).
* :func:`masks_from_modelopt_state` (an ``mto.save`` checkpoint, or ``mto.modelopt_state`` plus the
  model's state dict), :func:`masks_from_zeros` (a plain model whose weights already hold 2:4
  zeros, e.g. ``mts.export`` + ``save_pretrained``) and :func:`masks_from_asp_state_dict` (apex
  ASP's ``__weight_mma_mask`` buffers) import masks made elsewhere.

Every mask returned is a bool tensor of the weight's shape, keyed by our layer names (diffusers
names, without the Denoiser's ``net.`` prefix), exact 2:4 along the reduction axis in the layout
TensorRT runs (:mod:`sparse_deploy.masks`); a mask TensorRT cannot run raises
:class:`~sparse_deploy.errors.SparseDeployError` naming the layer.

Model Optimizer is imported inside the functions that need it; :func:`modelopt_rules`,
:func:`masks_from_zeros` and :func:`masks_from_asp_state_dict` work without it.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import SparseDeployError
from ..lazy import MissingDependency, lazy_import, load
from ..masks import PATTERN, PATTERN_M, PATTERN_N, nm_mask, nm_violations, to_groups
from ..models import NET_PREFIX, short_name
from ..sparsify import zero_masks

__all__ = [
    "MODELOPT_MODES",
    "INSTALL_HINT",
    "modelopt_masks",
    "modelopt_rules",
    "modelopt_default_layers",
    "masks_from_modelopt_state",
    "masks_from_zeros",
    "masks_from_asp_state_dict",
    "masks_from_file",
]

log = logging.getLogger(__name__)

#: Model Optimizer's two weight-sparsity modes.
MODELOPT_MODES = ("sparse_magnitude", "sparsegpt")
INSTALL_HINT = "pip install 'sparse-deploy[modelopt]'"
#: The buffer apex ASP registers for a sparsified ``weight`` (``'__%s_mma_mask' % 'weight'``).
ASP_MASK_SUFFIX = ".__weight_mma_mask"
_TYPE_KEYS = {nn.Linear: "nn.Linear", nn.Conv2d: "nn.Conv2d"}


_mto = lazy_import("modelopt.torch.opt", "NVIDIA Model Optimizer's masks", INSTALL_HINT)
_mts = lazy_import("modelopt.torch.sparsity", "NVIDIA Model Optimizer's masks", INSTALL_HINT)


def _import_modelopt():
    """``(mto, mts)``, or one sentence saying how to install Model Optimizer."""
    try:
        return load(_mto), load(_mts)
    except MissingDependency as missing:  # ImportError, or a broken dependency behind it
        exc = missing.__cause__ or missing
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise SparseDeployError(
            f"NVIDIA Model Optimizer is not installed ({exc.__class__.__name__}: {detail}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc


def _check_mode(mode: str) -> None:
    if mode not in MODELOPT_MODES:
        raise SparseDeployError(
            f"unknown Model Optimizer sparsity mode '{mode}'; choose one of: {', '.join(MODELOPT_MODES)}"
        )


def _diffusers_net(model: nn.Module) -> nn.Module:
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Module):
        raise SparseDeployError(
            "expected a sparse_deploy Denoiser (a diffusers model in .net), got "
            f"{type(model).__name__}; "
            "build it with sparse_deploy.models.build_model"
        )
    return net


# --- rules ------------------------------------------------------------------------------------------


def modelopt_rules(
    layers: Sequence[str], model: nn.Module | None = None, *, prefix: str = ""
) -> dict[str, dict[str, dict | None]]:
    """A layer selection written as a Model Optimizer rules dict: those layers sparse, every other one dense.

    Pass it as the mode's config: ``mts.sparsify(model, [("sparsegpt", rules)], config={...})``.
    Both ``nn.Linear`` and ``nn.Conv2d`` are written out with ``"*": None`` first: a type left out
    of the dict would fall back to Model Optimizer's default rule for it (``"*": {}``, every layer).
    Rules are ``fnmatch`` patterns on the module names of the model handed to ``mts.sparsify``;
    names are escaped, so each rule matches its layer alone.

    Args:
        layers: our layer names (diffusers names, without the Denoiser's ``net.`` prefix), e.g.
            ``select_layers(model, SparsityConfig()).selected``.
        model: optional; a Denoiser or diffusers model whose layers are checked to exist and are
            placed under their own type. Without it every name goes under both types (harmless: a
            rule only applies to modules of its type).
        prefix: put before every name: ``""`` for ``mts.sparsify`` on the diffusers model (what its
            users run), ``"net."`` on a Denoiser.
    """
    if isinstance(layers, str):
        raise SparseDeployError("modelopt_rules takes a list of layer names, not one string")
    types: dict[str, tuple[str, ...]] = {}
    if model is not None:
        modules = {short_name(n): m for n, m in model.named_modules()}
        for name in layers:
            module = modules.get(name)
            key = next((k for cls, k in _TYPE_KEYS.items() if isinstance(module, cls)), None)
            if key is None:
                raise SparseDeployError(
                    f"layer '{name}' is not a Linear/Conv2d of this model (names look like "
                    f"'{next(iter(n for n, m in modules.items() if isinstance(m, nn.Linear)), '?')}')"
                )
            types[name] = (key,)
    rules: dict[str, dict[str, dict | None]] = {"nn.Linear": {"*": None}, "nn.Conv2d": {"*": None}}
    for name in layers:
        for key in types.get(name, ("nn.Linear", "nn.Conv2d")):
            rules[key][glob.escape(prefix + name)] = {}
    return rules


def _named_sparse_modules(mts, net: nn.Module):
    sparse_module = mts.module.SparseModule
    for name, module in net.named_modules():
        if isinstance(module, sparse_module) and module.is_sparse:
            yield name, module


def modelopt_default_layers(model: nn.Module, mode: str = "sparse_magnitude") -> list[str]:
    """The layers Model Optimizer's default rules sparsify on ``model``, as our short names.

    Computed with its own code: its default config converts a deep copy and its searcher's
    size check (``sparse_magnitude``: out % 8 and in % 16, as ASP; ``sparsegpt``: out % 4 and
    in % 4) drops what it would skip. Every Linear/Conv2d except ``*lm_head*``: on a DiT that
    includes the adaLN modulation, timestep-embedder and output layers we leave dense.
    """
    _check_mode(mode)
    mto, mts = _import_modelopt()
    net = copy.deepcopy(_diffusers_net(model))
    registry = mts.mode.SparsityModeRegistry
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mto.apply_mode(net, mode, registry=registry)
        searcher = registry[mode].search_algorithm()
        searcher.config = searcher.default_search_config
        return [
            name for name, module in _named_sparse_modules(mts, net) if searcher._check_weight_size(module.weight, name)
        ]


# --- masks from Model Optimizer ------------------------------------------------------------------------


def _tensorrt_mask(name: str, mask: torch.Tensor, weight: torch.Tensor | None, source: str) -> tuple[torch.Tensor, int]:
    """Check ``mask`` keeps at most 2 of every 4 along the reduction axis; return it exact 2:4 and the groups filled.

    A group keeping fewer than 2 (SparseGPT drops input channels its calibration never excited:
    their updated weight is exactly 0) is filled up to 2 with the largest dense weights it pruned
    (ties to the lower index), so every mask is exact 2:4 as :func:`~sparse_deploy.masks.pattern_index` needs.
    """
    mask = mask.detach().to("cpu", torch.bool)
    if mask.dim() not in (2, 4) or mask.shape[1] % PATTERN_M:
        raise SparseDeployError(
            f"the {source} mask for layer '{name}' has shape {tuple(mask.shape)}, with no groups "
            f"of {PATTERN_M} along its "
            f"reduction axis; TensorRT cannot run it {PATTERN}-sparse: leave this layer out"
        )
    violations = nm_violations(mask, PATTERN_N, PATTERN_M)
    if violations:
        where = "input channels of a kernel tap" if mask.dim() == 4 else "input features"
        hint = (
            " (Model Optimizer's sparsegpt groups a Conv2d's flattened C*R*S columns, i.e. "
            "across kernel taps: "
            "use sparse_magnitude for this layer or leave it out of the selection)"
            if mask.dim() == 4 and mask.shape[2] * mask.shape[3] > 1
            else ""
        )
        raise SparseDeployError(
            f"the {source} mask for layer '{name}' keeps more than {PATTERN_N} of {PATTERN_M} in "
            f"{violations} groups of "
            f"{PATTERN_M} consecutive {where}, which TensorRT's {PATTERN} kernels cannot run{hint}"
        )
    score = torch.zeros(mask.shape) if weight is None else weight.detach().to("cpu", torch.float32).abs()
    exact = nm_mask(torch.where(mask, torch.full_like(score, float("inf")), score), PATTERN_N, PATTERN_M)
    filled = int(to_groups(exact != mask, PATTERN_M).any(dim=-1).sum())
    return exact, filled


def _read_masks(mts, net: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """The mask of every sparsified SparseModule (an all-ones mask: one its searcher skipped for its size)."""
    masks: dict[str, torch.Tensor] = {}
    filled_total = 0
    for name, module in _named_sparse_modules(mts, net):
        mask = module._weight_mask
        if mask is None or bool(mask.all()):
            continue
        masks[short_name(name)], filled = _tensorrt_mask(short_name(name), mask, module.weight, source)
        filled_total += filled
    if filled_total:
        log.info(
            "%s: %d groups kept fewer than %d weights and were filled up to exact %s",
            source,
            filled_total,
            PATTERN_N,
            PATTERN,
        )
    return masks


def _batches(calibration: Iterable | None) -> list[tuple]:
    if calibration is None:
        return []
    batches = []
    for i, batch in enumerate(calibration):
        if (
            not isinstance(batch, (tuple, list))
            or len(batch) not in (2, 3)
            or not all(isinstance(t, torch.Tensor) for t in batch[:2])
            or (len(batch) == 3 and batch[2] is not None and not isinstance(batch[2], torch.Tensor))
        ):
            raise SparseDeployError(
                f"calibration batch {i} is not a (sample, timestep, class_labels) tuple of tensors "
                f"(class_labels may be None); got {type(batch).__name__}"
            )
        batches.append(tuple(batch) if len(batch) == 3 else (*batch, None))
    return batches


def _collect(batch: tuple) -> tuple:
    """A calibration batch as Model Optimizer's ``collect_func`` returns it: positional sample, keyword rest."""
    sample, timestep, class_labels = batch
    return sample, {"timestep": timestep, "class_labels": class_labels, "return_dict": False}


def modelopt_masks(
    model: nn.Module,
    mode: str,
    calibration: Iterable | None,
    layers: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """2:4 masks computed by NVIDIA Model Optimizer's own ``mts.sparsify``, as users run it.

    Runs on a deep copy (``model`` is never changed): ``mts.sparsify(copy.net, mode, config=
    {"data_loader": batches, "collect_func": ...})``, the collect function handing each batch to the
    diffusers model as ``(sample, timestep=..., class_labels=..., return_dict=False)``.

    Args:
        model: a :class:`~sparse_deploy.models.Denoiser`.
        mode: ``"sparse_magnitude"`` (ASP's magnitude 2:4; ignores ``calibration``) or ``"sparsegpt"``
            (SparseGPT's mask from the Hessian of each layer's inputs over ``calibration``; its weight
            update is thrown away, by Model Optimizer itself).
        calibration: an iterable of ``(sample, timestep, class_labels)`` tensor batches
            (``class_labels`` may be None); one pass is made over it. Needed for ``sparsegpt``.
        layers: None: Model Optimizer's default rules (every Linear/Conv2d but ``*lm_head*`` that
            its size check accepts). A list of our layer names: only those (:func:`modelopt_rules`);
            every one must come back sparse.

    Returns:
        ``{layer: bool mask of the weight's shape}``, exact 2:4 along the reduction axis (Linear:
        input features; Conv2d: input channels of each kernel tap), in module order.

    Raises:
        SparseDeployError: Model Optimizer missing, a bad mode or calibration batch, a requested
            layer it did not sparsify, or a mask TensorRT cannot run (named).
    """
    _check_mode(mode)
    mto, mts = _import_modelopt()
    net = copy.deepcopy(_diffusers_net(model)).eval()
    batches = _batches(calibration)
    if mode == "sparsegpt" and not batches:
        raise SparseDeployError(
            "Model Optimizer's sparsegpt needs calibration batches (sample, timestep, class_labels); got none"
        )
    mode_arg: Any = mode if layers is None else [(mode, modelopt_rules(layers, net))]
    config = {"data_loader": batches or None, "collect_func": _collect, "verbose": False}
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mts.sparsify(net, mode_arg, config=config)
    except SparseDeployError:
        raise
    except Exception as exc:
        raise SparseDeployError(
            f"Model Optimizer's {mode} failed on this model ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    for warning in caught:
        log.debug("modelopt: %s", warning.message)
    masks = _read_masks(mts, net, f"Model Optimizer {mode}")
    if layers is not None:
        missing = [name for name in layers if name not in masks]
        if missing:
            raise SparseDeployError(
                f"Model Optimizer's {mode} left {len(missing)} requested layer(s) dense (e.g. "
                f"{missing[:3]}): its size "
                "check skips them; leave them out of the selection"
            )
        unexpected = sorted(set(masks) - set(layers))
        if unexpected:  # the rules dict should make this impossible
            raise SparseDeployError(
                f"Model Optimizer's {mode} sparsified layers outside the selection: {unexpected[:3]}"
            )
    log.info("Model Optimizer %s: %d layers %s-sparse", mode, len(masks), PATTERN)
    return masks


# --- importing Model Optimizer's outputs ------------------------------------------------------------


def _load_checkpoint(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SparseDeployError(f"Model Optimizer checkpoint '{path}' does not exist; pass the file mto.save wrote")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SparseDeployError(
            f"'{path}' is not a readable torch checkpoint ({exc.__class__.__name__}); pass the file mto.save wrote"
        ) from exc


def masks_from_modelopt_state(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    modelopt_state: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The 2:4 masks of a Model Optimizer sparsified model saved with ``mto.save`` (or its parts).

    ``mto.save`` writes ``{"modelopt_state": mto.modelopt_state(m), "model_state_dict": m.state_dict()}``:
    the modes and their rules in the first, the masks as ``<layer>._weight_mask`` buffers in the
    second. This replays Model Optimizer's own ``mto.restore_from_modelopt_state`` on a deep copy of
    ``model`` (of its diffusers ``net`` when the saved names carry no ``net.`` prefix, i.e. when the
    user sparsified the diffusers model), loads the state dict, and reads each layer's mask. A state
    saved after ``mts.export`` holds no masks: the layers its metadata lists as sparse are read from
    their zeros (:func:`masks_from_zeros`).

    Args:
        model: a Denoiser of the same architecture.
        checkpoint: a path to an ``mto.save`` file, or the dict it holds.
        modelopt_state: instead of ``checkpoint``: ``mto.modelopt_state(m)`` (or the file
            ``torch.save`` wrote of it) ...
        state_dict: ... and ``m.state_dict()``.

    The state dict's weights are loaded into the copy only; fine-tuned weights saved with the masks
    must be loaded into the model separately.
    """
    if checkpoint is not None:
        if modelopt_state is not None or state_dict is not None:
            raise SparseDeployError("pass either an mto.save checkpoint or modelopt_state and state_dict, not both")
        ckpt = _load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        if not isinstance(ckpt, Mapping) or "modelopt_state" not in ckpt or "model_state_dict" not in ckpt:
            raise SparseDeployError(
                "the checkpoint is not one mto.save wrote (no 'modelopt_state' and 'model_state_dict'); "
                "pass modelopt_state= and state_dict= for states saved separately"
            )
        modelopt_state, state_dict = ckpt["modelopt_state"], ckpt["model_state_dict"]
    if isinstance(modelopt_state, (str, os.PathLike)):
        modelopt_state = _load_checkpoint(modelopt_state)
    if modelopt_state is None or state_dict is None:
        raise SparseDeployError(
            "Model Optimizer's masks need its modelopt_state and the model's state_dict (or one mto.save checkpoint)"
        )
    if not isinstance(modelopt_state, Mapping) or "modelopt_state_dict" not in modelopt_state:
        raise SparseDeployError(
            "modelopt_state is not what mto.modelopt_state(model) returns (no 'modelopt_state_dict')"
        )
    modes = [entry[0] for entry in modelopt_state["modelopt_state_dict"]]
    if not any(m in MODELOPT_MODES for m in modes):
        raise SparseDeployError(f"this Model Optimizer state applied no weight sparsity (modes: {modes or 'none'})")

    mto, mts = _import_modelopt()
    net = _diffusers_net(model)
    prefixed = any(k.startswith(NET_PREFIX) for k in state_dict)
    target = copy.deepcopy(model if prefixed else net)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restored = mto.restore_from_modelopt_state(target, dict(modelopt_state))
            restored.load_state_dict(dict(state_dict))
    except Exception as exc:
        raise SparseDeployError(
            f"the Model Optimizer state does not fit this model ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass the model it was made from"
        ) from exc

    masks = _read_masks(mts, restored, "saved Model Optimizer")
    if not masks and modes[-1] == "export_sparse":
        subnet = modelopt_state["modelopt_state_dict"][-1][1].get("metadata", {}).get("subnet_config", {})
        sparse = [short_name(k[: -len(".is_sparse")]) for k, v in subnet.items() if k.endswith(".is_sparse") and v]
        masks = masks_from_zeros(restored, layers=sparse)
    if not masks:
        raise SparseDeployError("the Model Optimizer state holds no 2:4 layer (no mask other than all-ones)")
    return masks


def masks_from_zeros(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Masks of the layers whose weights are already exact 2:4 (e.g. ``mts.export`` then ``save_pretrained``).

    A Linear/Conv2d (not grouped, reduction axis a multiple of 4, not all zeros) whose every group
    of 4 along the reduction axis holds at most 2 non-zeros gets the mask ``weight != 0``; a group
    with more than 2 zeros keeps its non-zeros and then the lowest-indexed zeros, so the mask is
    exact 2:4 and the same for the same weights.

    Args:
        model: any module (a Denoiser, its diffusers model, an exported Model Optimizer model).
        layers: only consider these (our names); None: every layer.
    """
    return zero_masks(model, layers)


def masks_from_asp_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """apex ASP's masks from a state dict: its ``<layer>.__weight_mma_mask`` buffers, by our layer names.

    ``ASP.init_model_for_pruning`` registers the buffer (all ones until ``compute_sparse_masks``;
    such layers are left out with a warning). DDP's ``module.`` and the Denoiser's ``net.`` prefixes
    are dropped. ASP's channel permutation (``allow_permutation=True``, its default) permutes the
    weights before computing masks: those masks fit the weights of the same state dict, not the
    unpermuted model, which is why a state dict's weights, when present, must be zero wherever their
    mask prunes.

    Args:
        state_dict: a model's state dict saved after ``ASP.compute_sparse_masks()``.
        model: optional; every layer must exist in it with the mask's shape.
    """
    modules = None if model is None else {short_name(n): m for n, m in model.named_modules()}
    masks: dict[str, torch.Tensor] = {}
    never_computed = []
    for key, value in state_dict.items():
        if not key.endswith(ASP_MASK_SUFFIX):
            if key.endswith("_mma_mask"):
                log.warning("ASP mask '%s' is not a weight's; left out", key)
            continue
        layer = key[: -len(ASP_MASK_SUFFIX)]
        if layer.startswith("module."):
            layer = layer[len("module.") :]
        name = short_name(layer)
        mask = value.detach().to("cpu", torch.bool)
        if bool(mask.all()):
            never_computed.append(name)
            continue
        weight = state_dict.get(f"{key[: -len(ASP_MASK_SUFFIX)]}.weight")
        if weight is not None and bool((weight.detach().cpu()[~mask] != 0).any()):
            raise SparseDeployError(
                f"layer '{name}': the state dict's weights are non-zero where its ASP mask prunes; "
                "the mask does not "
                "belong to these weights (saved before compute_sparse_masks, or after an edit)"
            )
        if modules is not None:
            module = modules.get(name)
            if not isinstance(module, (nn.Linear, nn.Conv2d)) or tuple(module.weight.shape) != tuple(mask.shape):
                raise SparseDeployError(
                    f"ASP mask for layer '{name}' (shape {tuple(mask.shape)}) fits no Linear/Conv2d of "
                    "this model; "
                    "pass the model the state dict was saved from"
                )
        masks[name], _ = _tensorrt_mask(name, mask, weight, "apex ASP")
    if never_computed:
        log.warning(
            "ASP masks of %d layers are all ones (compute_sparse_masks never ran), left out: %s",
            len(never_computed),
            never_computed[:3],
        )
    if not masks:
        raise SparseDeployError(
            f"the state dict holds no computed ASP mask (no '*{ASP_MASK_SUFFIX}' buffer other "
            "than all-ones); "
            "save it after ASP.compute_sparse_masks()"
        )
    return masks


def masks_from_file(path: str | os.PathLike, model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks a file made elsewhere holds, by what it is (``train --masks FILE``).

    * an ``mto.save`` file (``{"modelopt_state", "model_state_dict"}``): :func:`masks_from_modelopt_state`;
    * an apex ASP state dict (``<layer>.__weight_mma_mask`` buffers; ``.safetensors``, or a torch file
      holding the state dict itself or under ``"state_dict"`` / ``"model"``): :func:`masks_from_asp_state_dict`.

    Torch files are read with ``weights_only=True`` (tensors and plain containers; nothing is unpickled
    that could run code).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from_safetensors = True
        try:
            data: Any = load_file(str(path))
        except Exception as exc:
            raise SparseDeployError(f"'{path}' is not a readable .safetensors file ({exc.__class__.__name__})") from exc
    else:
        from_safetensors = False
        data = _load_checkpoint(path)
    if isinstance(data, Mapping) and "modelopt_state" in data and not from_safetensors:
        masks = masks_from_modelopt_state(model, data)
        log.info("--masks %s: Model Optimizer's masks of %d layers", path, len(masks))
        return masks
    for candidate in (data, *(data.get(k) for k in ("state_dict", "model") if isinstance(data, Mapping))):
        if isinstance(candidate, Mapping) and any(str(k).endswith(ASP_MASK_SUFFIX) for k in candidate):
            masks = masks_from_asp_state_dict(candidate, model)
            log.info("--masks %s: apex ASP's masks of %d layers", path, len(masks))
            return masks
    raise SparseDeployError(
        f"'{path}' holds neither an mto.save checkpoint ('modelopt_state' + 'model_state_dict') nor an apex ASP "
        f"state dict ('<layer>{ASP_MASK_SUFFIX}' buffers)"
    )
