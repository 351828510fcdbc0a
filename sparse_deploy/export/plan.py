"""Where the dense and sparse graphs come from (:func:`plan_sources`); no model is built here.

* a **sparse checkpoint** (its manifest lists ``masked_layers``): the sparse graph is that model
  with its masks baked into the weights; the dense graph comes from the dense checkpoint its
  manifest names (``dense_checkpoint``), from ``--dense-checkpoint``, or from the diffusers
  weights it was fine-tuned from (``dense_weights``).
* **diffusers weights that are already 2:4** (``--weights`` of a folder this toolchain wrote, or of
  Model Optimizer's ``mts.export`` + ``save_pretrained``): the sparse graph is those weights as they
  are (their zeros are the masks; nothing is pruned again); the dense graph comes from
  ``--dense-checkpoint`` (a checkpoint or a dense diffusers folder), else from the dense model the
  folder's ``sparse_deploy.json`` names.
* a **dense checkpoint**, dense ``--weights`` or random init: the dense graph is that model, the sparse
  graph a one-shot magnitude 2:4 prune of it with **no fine-tuning** (a baseline, said loudly), or
  an error with ``--require-masks``.

Each :class:`GraphSource` carries an ``identity`` (what the manifest records and what decides
whether an existing export is current) and a lazy ``load``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from .. import models
from ..errors import SparseDeployError
from ..inputs import is_checkpoint, open_weights, run_preset, weights_are_sparse, weights_sha256
from ..masks import PATTERN
from ..models import Denoiser
from ..modes import MODES, ONESHOT
from ..presets import Preset, get_preset, preset_from_manifest
from ..provenance import sha256_file
from ..sources import resolve_source
from ..sparsify import SparsityConfig, bake_, select_layers, sparsify_
from .config import ExportConfig

__all__ = ["GraphSource", "plan_sources"]

log = logging.getLogger(__name__)

Loader = Callable[[], "tuple[Denoiser, list[str]]"]


@dataclass
class GraphSource:
    """Where one kind of graph (dense or sparse) comes from, and how to build its model.

    ``identity`` is what the manifest records and what decides whether an existing export is
    still current; ``load`` builds the fp32 model (baked, eval mode) only when it is needed.
    """

    kind: str
    identity: dict[str, Any]
    load: Loader
    notes: list[str] = field(default_factory=list)


class _Once:
    """Memoise a zero-argument loader (the dense and sparse graphs may share one base model)."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn = fn
        self._value: Any = None
        self._done = False

    def __call__(self) -> Any:
        if not self._done:
            self._value = self._fn()
            self._done = True
        return self._value


@dataclass
class _Base:
    """The one dense model a maskless source gives: the dense graph, and the one-shot sparse one."""

    identity: dict[str, Any]
    load: Loader
    note: str


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _resolve_relative(value: str, base: Path) -> Path:
    """A path from a manifest: as given, else relative to the folder holding the manifest's folder."""
    p = Path(value)
    if p.is_absolute() or p.exists():
        return p
    for root in (base.parent, base):
        if (root / p).exists():
            return root / p
    return p


def _checkpoint_identity(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    weights = path / ckpt.WEIGHTS
    if not weights.is_file():
        raise SparseDeployError(f"checkpoint '{path}' has no {ckpt.WEIGHTS}; re-create the checkpoint")
    return {
        "type": "checkpoint",
        "path": str(path.resolve()),
        "weights_sha256": sha256_file(weights),
        "step": manifest.get("step"),
        "sparsity_mode": (manifest.get("sparsity") or {}).get("mode") if manifest.get("masked_layers") else None,
    }


def _weights_base(preset: Preset, weights: Path) -> _Base:
    identity = {
        "type": "weights",
        "path": str(weights.resolve()),
        "weights_sha256": weights_sha256(resolve_source(weights).weights),
    }
    return _Base(identity, _Once(lambda: (models.build_model(preset, weights).eval(), [])), f"weights {weights}")


def _load_dense_checkpoint(path: Path) -> tuple[Denoiser, list[str]]:
    model, manifest = ckpt.load_checkpoint(path)
    if manifest.get("masked_layers"):
        raise SparseDeployError(
            f"'{path}' is a sparse checkpoint ({len(manifest['masked_layers'])} masked layers) "
            "but was given as the "
            "dense checkpoint; point --dense-checkpoint at the dense model the sparse one was "
            "fine-tuned from"
        )
    return model, []


def _oneshot(base: Loader) -> Loader:
    def load() -> tuple[Denoiser, list[str]]:
        model = copy.deepcopy(base()[0])
        config = SparsityConfig(mode=ONESHOT)
        choice = select_layers(model, config)
        sparsify_(model, config, layers=choice.selected)
        layers = bake_(model)
        log.warning(
            "sparse graph = ONE-SHOT magnitude 2:4 pruning of %d layers with NO FINE-TUNING: a "
            "baseline, expect "
            "worse samples than a fine-tuned sparse checkpoint",
            len(layers),
        )
        return model.eval(), sorted(layers)

    return load


def _dense_parent(config: ExportConfig, path: Path, manifest: dict[str, Any], preset: Preset) -> GraphSource:
    """The dense graph of a sparse checkpoint: its dense parent checkpoint, or the weights it was tuned from."""
    dense_path, named, dense_weights = (
        config.dense_checkpoint,
        manifest.get("dense_checkpoint"),
        manifest.get("dense_weights"),
    )
    if dense_path is None and not named and dense_weights:
        # Fine-tuned from diffusers weights: the dense graph is those weights.
        weights = Path(dense_weights)
        if not weights.exists():
            raise SparseDeployError(
                f"checkpoint '{path}' was fine-tuned from '{weights}', which no longer exists; pass "
                "--dense-checkpoint or --kinds sparse"
            )
        base = _weights_base(preset, weights)
        return GraphSource("dense", base.identity, base.load, [f"dense graph: {base.note}"])
    if dense_path is None and named:
        dense_path = _resolve_relative(str(named), path)
    elif (
        dense_path is not None and named and Path(dense_path).resolve() != _resolve_relative(str(named), path).resolve()
    ):
        log.warning("--dense-checkpoint %s overrides the dense checkpoint %s named in %s", dense_path, named, path)
    if dense_path is None:
        raise SparseDeployError(
            f"checkpoint '{path}' is sparse and its manifest names no dense_checkpoint, so there "
            "is no dense "
            "model to export; pass --dense-checkpoint DIR (the model it was fine-tuned from) or "
            "--kinds sparse"
        )
    dense_path = Path(dense_path)
    if not is_checkpoint(dense_path) and dense_path.exists():  # dense diffusers weights given as the dense model
        return _dense_weights_source(preset, dense_path)
    dense_manifest = ckpt.read_manifest(dense_path)
    if dense_manifest.get("preset") != preset.name:
        raise SparseDeployError(
            f"dense checkpoint '{dense_path}' holds preset '{dense_manifest.get('preset')}', but "
            "the sparse "
            f"checkpoint is '{preset.name}'; pass the dense checkpoint of the same model"
        )
    return GraphSource(
        "dense",
        _checkpoint_identity(dense_path, dense_manifest),
        _Once(lambda: _load_dense_checkpoint(dense_path)),
        [f"dense graph: checkpoint {dense_path}"],
    )


def _dense_weights_source(preset: Preset, weights: Path) -> GraphSource:
    """The dense graph from dense diffusers weights; weights that are 2:4 are refused as the dense model."""
    if weights_are_sparse(weights):
        raise SparseDeployError(
            f"'{weights}' is 2:4-sparse, but was given as the dense model; pass the dense model the sparse one "
            "was made from, or --kinds sparse"
        )
    if run_preset(None, weights).model_kwargs != preset.model_kwargs:
        raise SparseDeployError(f"dense weights '{weights}' are not the layout of the sparse model ('{preset.name}')")
    base = _weights_base(preset, weights)
    return GraphSource("dense", base.identity, base.load, [f"dense graph: {base.note}"])


def _sparse_weights_sources(config: ExportConfig, weights: Path, preset: Preset) -> dict[str, GraphSource]:
    """Diffusers weights that are already 2:4: the sparse graph as they are, the dense graph from their dense parent."""
    identity = {
        "type": "weights",
        "path": str(weights.resolve()),
        "weights_sha256": weights_sha256(resolve_source(weights).weights),
    }

    def load_sparse() -> tuple[Denoiser, list[str]]:
        model, record = open_weights(weights)
        return model.eval(), list(record["masked_layers"])

    sources: dict[str, GraphSource] = {}
    if "sparse" in config.kinds:
        sources["sparse"] = GraphSource(
            "sparse",
            {**identity, "masks": "weights (already 2:4: kept as they are)", "fine_tuned": None},
            _Once(load_sparse),
            [f"sparse graph: the weights {weights} as they are (already {PATTERN}: their zeros are the masks)"],
        )
    if "dense" in config.kinds:
        record = _record(weights)
        named = config.dense_checkpoint or record.get("dense_checkpoint") or record.get("dense_weights")
        if named is None:
            raise SparseDeployError(
                f"'{weights}' is already {PATTERN}-sparse and names no dense model it was made from, so there is no "
                "dense graph to export; pass --dense-checkpoint DENSE (a checkpoint or a dense diffusers folder), "
                "or --kinds sparse"
            )
        dense = Path(named)
        if not dense.exists():
            raise SparseDeployError(
                f"'{weights}' was made from '{dense}', which no longer exists; pass --dense-checkpoint DENSE or "
                "--kinds sparse"
            )
        if is_checkpoint(dense):
            manifest = ckpt.read_manifest(dense)
            sources["dense"] = GraphSource(
                "dense",
                _checkpoint_identity(dense, manifest),
                _Once(lambda: _load_dense_checkpoint(dense)),
                [f"dense graph: checkpoint {dense}"],
            )
        else:
            sources["dense"] = _dense_weights_source(preset, dense)
    return sources


def _record(weights: Path) -> dict[str, Any]:
    """The ``sparse_deploy.json`` of a diffusers folder this toolchain wrote (the folder, or its pipeline root)."""
    for folder in (weights, weights.parent):
        path = folder / "sparse_deploy.json"
        if weights.is_dir() and path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                return {}
            return record if isinstance(record, dict) else {}
    return {}


def _fine_tuned(mode: str | None) -> bool:
    """Whether a checkpoint of ``mode`` trained after its masks were set (a mode unknown here: assumed so)."""
    known = MODES.get(mode) if mode is not None else None
    return known.trains if known is not None else True


def _sparse_checkpoint_sources(
    config: ExportConfig, path: Path, manifest: dict[str, Any], preset: Preset
) -> dict[str, GraphSource]:
    """A checkpoint with masks: its own baked masks for the sparse graph, its dense parent for the dense one."""
    identity = _checkpoint_identity(path, manifest)
    masked, mode = list(manifest["masked_layers"]), identity["sparsity_mode"]

    def load_sparse() -> tuple[Denoiser, list[str]]:
        model, _ = ckpt.load_checkpoint(path)
        return model.eval(), sorted(bake_(model))

    sources: dict[str, GraphSource] = {}
    if "sparse" in config.kinds:
        sources["sparse"] = GraphSource(
            "sparse",
            {**identity, "masks": "checkpoint", "fine_tuned": _fine_tuned(mode)},
            _Once(load_sparse),
            [
                f"sparse graph: {len(masked)} masked layers of checkpoint {path} (mode {mode}), masks "
                "baked into the weights"
            ],
        )
    if "dense" in config.kinds:
        sources["dense"] = _dense_parent(config, path, manifest, preset)
    return sources


def _random_base(preset: Preset, seed: int) -> _Base:
    log.warning(
        "no --checkpoint or --weights: exporting preset '%s' with RANDOM weights (seed %d); "
        "the graphs are "
        "fine for latency work and MEANINGLESS for image quality",
        preset.name,
        seed,
    )

    def random_model() -> tuple[Denoiser, list[str]]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with _quiet(models.log):  # announced above, once
                return models.build_model(preset, None, announce_random=True).eval(), []

    return _Base(
        {"type": "random", "seed": seed, "quality": "meaningless (random init)"},
        _Once(random_model),
        f"RANDOM init (seed {seed})",
    )


def _base_sources(config: ExportConfig, base: _Base) -> dict[str, GraphSource]:
    """A maskless model: it is the dense graph; the sparse graph is its one-shot prune (unless refused)."""
    sources: dict[str, GraphSource] = {}
    if "dense" in config.kinds:
        sources["dense"] = GraphSource("dense", dict(base.identity), base.load, [f"dense graph: {base.note}"])
    if "sparse" in config.kinds:
        where = f"checkpoint '{config.checkpoint}'" if config.checkpoint is not None else base.note
        if config.require_masks:
            raise SparseDeployError(
                f"a sparse export of a model with no masks: {where} has no masked layers and "
                "--require-masks forbids "
                "one-shot pruning; export a sparse (fine-tuned) checkpoint, or drop --require-masks "
                "for a one-shot "
                "magnitude 2:4 baseline with no fine-tuning"
            )
        oneshot = SparsityConfig(mode=ONESHOT)
        sources["sparse"] = GraphSource(
            "sparse",
            {**base.identity, "masks": "oneshot-magnitude", "fine_tuned": False, "sparsity": oneshot.to_dict()},
            _Once(_oneshot(base.load)),
            [f"sparse graph: ONE-SHOT magnitude 2:4 of {base.note}, NO FINE-TUNING"],
        )
    return sources


def plan_sources(config: ExportConfig) -> tuple[Preset, dict[str, GraphSource]]:
    """Work out the preset and where each requested kind of graph comes from (no model is built)."""
    config.validate()
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        manifest = ckpt.read_manifest(path)
        if config.model is not None and manifest.get("preset") != config.model:
            raise SparseDeployError(
                f"checkpoint '{path}' holds preset '{manifest.get('preset')}', not '{config.model}'; "
                "drop --model or pick the matching one"
            )
        preset = preset_from_manifest(manifest)
        if manifest.get("masked_layers"):
            return preset, _sparse_checkpoint_sources(config, path, manifest, preset)
        base = _Base(
            _checkpoint_identity(path, manifest),
            _Once(lambda: _load_dense_checkpoint(path)),
            f"checkpoint {path} (dense: no masks)",
        )
    elif config.weights is not None:
        weights = Path(config.weights)
        if not weights.exists():
            raise SparseDeployError(f"weights '{weights}' do not exist; check the path")
        preset = run_preset(config.model, weights)
        if weights_are_sparse(weights):
            return preset, _sparse_weights_sources(config, weights, preset)
        base = _weights_base(preset, weights)
    else:
        preset = get_preset(config.model)
        base = _random_base(preset, config.seed)
    return preset, _base_sources(config, base)
