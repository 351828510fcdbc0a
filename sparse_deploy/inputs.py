"""What a stage's model flags name: the preset of ``--model`` / ``--weights`` / ``--init``, and its VAE.

Every stage that takes those flags (training, export, the benchmarks) asks here, so they agree on
one rule: a dense checkpoint's recorded preset first, else the weights' own config
(:mod:`sparse_deploy.sources`), else the named preset.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import read_manifest
from .errors import SparseDeployError
from .presets import DEFAULT_PRESET, PRESETS, Preset, get_preset, preset_from_manifest
from .sources import is_path, resolve_source, resolve_vae, source_preset

__all__ = ["run_preset", "run_vae"]


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
