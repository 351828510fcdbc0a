"""What a stage's model flags name: the preset of ``--model`` / ``--weights`` / ``--init``, and its VAE.

Every stage that takes those flags (training, export, the benchmarks) asks here, so they agree on
one rule: a dense checkpoint's recorded preset first, else the weights' own config
(:mod:`sparse_deploy.sources`), else the named preset.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .checkpoint import MANIFEST, load_checkpoint, read_manifest
from .errors import SparseDeployError
from .masks import PATTERN, PATTERN_M, PATTERN_N, is_nm_sparse
from .models import Denoiser, build_model
from .presets import DEFAULT_PRESET, PRESET_SPEC, PRESETS, Preset, get_preset, preset_from_manifest
from .provenance import sha256_file
from .sources import is_path, resolve_source, resolve_vae, source_preset
from .sparsify import zero_masks

__all__ = [
    "run_preset",
    "run_vae",
    "open_weights",
    "open_model",
    "is_checkpoint",
    "weights_sha256",
    "weights_are_sparse",
]

log = logging.getLogger(__name__)


def run_preset(model: str | None, weights: str | Path | None = None, init: str | Path | None = None) -> Preset:
    """The preset of a stage's inputs: a dense checkpoint's, else the weights' config, else ``--model``.

    ``model`` may itself be a pipeline folder, model folder or file (then it is the weights).
    """
    if is_path(model):
        if weights is not None:
            raise SparseDeployError(f"--model '{model}' is a path and --weights '{weights}' too; pass the model once")
        model, weights = None, model
    if init is not None and model in PRESETS:
        return get_preset(model)  # the init checkpoint's preset is checked where it is loaded
    if init is not None:
        preset = preset_from_manifest(read_manifest(init))
        if model is not None and preset.name != model:
            raise SparseDeployError(f"--init checkpoint is preset '{preset.name}', not '{model}'; drop --model")
        return preset
    if weights is not None:
        return source_preset(resolve_source(weights), model)
    return get_preset(model or DEFAULT_PRESET)


def run_vae(vae: str | Path | None, weights: str | Path | None = None) -> str | None:
    """The VAE folder of a stage: ``--vae`` resolved, else the ``--weights`` pipeline's own VAE."""
    if vae is not None:
        return str(resolve_vae(vae))
    if weights is not None:
        source = resolve_source(weights)
        if source.vae_dir is not None:
            return str(source.vae_dir)
    return None


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint folder (holds ``manifest.json``) rather than diffusers weights."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, or of the sorted file hashes of a diffusers model folder."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
    for p in files:
        digest.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return digest.hexdigest()


def weights_are_sparse(path: str | Path) -> bool:
    """Whether diffusers weights already hold a layer with exact 2:4 zeros, read tensor by tensor (no model built).

    Any 2-D or 4-D ``*.weight`` whose reduction axis is a multiple of 4, not all zeros, keeping at most
    two of every four: what :func:`~sparse_deploy.sparsify.zero_masks` finds once the model is built.
    """
    weights = resolve_source(path).weights
    files = sorted(weights.glob("*.safetensors")) if weights.is_dir() else [weights]
    try:
        for file in files:
            with safe_open(str(file), "pt") as fh:
                for key in fh.keys():
                    if not key.endswith(".weight"):
                        continue
                    shape = fh.get_slice(key).get_shape()
                    if len(shape) not in (2, 4) or shape[1] % PATTERN_M:
                        continue
                    tensor = fh.get_tensor(key).float()
                    if bool((tensor != 0).any()) and is_nm_sparse(tensor, PATTERN_N, PATTERN_M):
                        return True
    except (SafetensorError, OSError, ValueError) as exc:
        raise SparseDeployError(f"could not read the weights in '{path}' ({exc})") from exc
    return False


def open_weights(path: str | Path, model: str | None = None) -> tuple[Denoiser, dict[str, Any]]:
    """Diffusers weights (pipeline/model folder, ``.safetensors``) as an fp32 model and a checkpoint-like record.

    The record holds the preset (name and spec), the weights' hash and ``masked_layers``: the layers
    whose weights already hold exact 2:4 zeros (:func:`~sparse_deploy.sparsify.zero_masks`; a model
    this toolchain or Model Optimizer's ``mts.export`` wrote), which are kept as they are, never
    pruned again. The model has no mask buffers: its zeros are its masks.
    """
    preset = run_preset(model, path)
    net = build_model(preset, path).float().eval()
    sparse = sorted(zero_masks(net))
    if sparse:
        log.info(
            "'%s' is already %s-sparse on %d layers: their zeros are kept as the masks (no re-pruning)",
            path,
            PATTERN,
            len(sparse),
        )
    return net, {
        "format": "diffusers",
        "preset": preset.name,
        PRESET_SPEC: preset.to_dict(),
        "source": str(path),
        "masked_layers": sparse,
        "pattern": PATTERN if sparse else None,
        "weights_sha256": weights_sha256(resolve_source(path).weights),
    }


def open_model(path: str | Path) -> tuple[Denoiser, dict[str, Any]]:
    """A checkpoint folder (``checkpoint.load_checkpoint``) or diffusers weights (:func:`open_weights`).

    Returns ``(model, manifest)``; a checkpoint's model keeps its mask buffers, weights' model has none.
    """
    path = Path(path)
    if is_checkpoint(path):
        return load_checkpoint(path)
    if path.is_dir() and not ((path / "model_index.json").is_file() or (path / "config.json").is_file()):
        raise SparseDeployError(
            f"'{path}' is a folder without manifest.json, model_index.json or config.json: neither an engine nor a "
            "checkpoint nor a diffusers model"
        )
    return open_weights(path)
