"""A diffusers model out: the fine-tuned (baked, exact 2:4) model written with ``save_pretrained``.

Every training run writes ``<run>/diffusers/`` (atomically)::

    <component>/             the model: plain diffusers modules, masks multiplied into the weights
                             (``transformer/`` for a DiT, ``unet/`` for a UNet2DModel)
    scheduler/               the model's schedule (when the input was not a pipeline)
    model_index.json, vae/   when the input was a pipeline: the whole pipeline, the sparse model
                             in place of its denoiser, so ``DiTPipeline.from_pretrained(...)`` or
                             ``DDPMPipeline.from_pretrained(...)`` samples from it with no code of ours
    sparse_deploy.json       where it came from (checkpoint, masked layers, weights sha256)

A UNet2DModel always gets a ``model_index.json`` for ``DDPMPipeline`` (it needs no VAE).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .errors import SparseDeployError
from .models import Denoiser
from .provenance import atomic_dir, sha256_file, timestamp, write_json_atomic

__all__ = ["DIFFUSERS_DIR", "write_diffusers", "write_run_diffusers"]

log = logging.getLogger(__name__)

DIFFUSERS_DIR = "diffusers"


def write_diffusers(
    model: Denoiser, out: str | Path, *, weights: str | Path | None = None, info: dict | None = None
) -> Path:
    """Save ``model`` (masks already baked) as a diffusers model, inside its source pipeline when it had one.

    Args:
        model: a baked :class:`~sparse_deploy.models.Denoiser` (plain Linear/Conv2d modules).
        out: the folder to write (replaced atomically).
        weights: the pipeline folder, model folder or file the run started from.
        info: extra provenance for ``sparse_deploy.json``.
    """
    from .schedule import DEFAULT_SCHEDULE
    from .sources import resolve_source

    if any(hasattr(m, "weight_mask") for m in model.modules()):
        raise SparseDeployError(
            "write_diffusers needs a baked model (sparsify.bake_): diffusers cannot load mask buffers"
        )
    source = resolve_source(weights) if weights is not None else None
    preset = model.preset
    component = (source.component if source is not None and source.component else None) or (
        "transformer" if preset.family == "dit" else "unet"
    )
    out = Path(out)
    with atomic_dir(out) as tmp:
        if source is not None and source.pipeline_root is not None:
            for entry in source.pipeline_root.iterdir():
                if entry.name == component or entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, tmp / entry.name)
                else:
                    shutil.copy2(entry, tmp / entry.name)
        model.net.save_pretrained(str(tmp / component), safe_serialization=True)
        if not (tmp / "scheduler").exists():
            from .schedule import training_scheduler

            training_scheduler(preset.schedule or DEFAULT_SCHEDULE).save_pretrained(str(tmp / "scheduler"))
        if not (tmp / "model_index.json").exists() and preset.family == "unet":
            import diffusers

            write_json_atomic(
                tmp / "model_index.json",
                {
                    "_class_name": "DDPMPipeline",
                    "_diffusers_version": diffusers.__version__,
                    "unet": ["diffusers", "UNet2DModel"],
                    "scheduler": ["diffusers", (preset.schedule or DEFAULT_SCHEDULE)["_class_name"]],
                },
            )
        weights_file = tmp / component / "diffusion_pytorch_model.safetensors"
        write_json_atomic(
            tmp / "sparse_deploy.json",
            {
                "component": component,
                "preset": preset.name,
                "source": str(Path(weights).resolve()) if weights is not None else None,
                "weights_sha256": sha256_file(weights_file) if weights_file.is_file() else None,
                "created": timestamp(),
                **(info or {}),
            },
        )
    return out


def write_run_diffusers(run_dir: str | Path, checkpoint: str | Path, weights: str | Path | None = None) -> Path:
    """``<run>/diffusers/`` from a run's checkpoint: its inference (EMA) model, masks baked."""
    from .checkpoint import load_checkpoint
    from .sparsify import bake_

    model, manifest = load_checkpoint(checkpoint)
    layers = sorted(bake_(model))
    return write_diffusers(
        model,
        Path(run_dir) / DIFFUSERS_DIR,
        weights=weights,
        info={
            "checkpoint": str(Path(checkpoint).resolve()),
            "step": manifest.get("step"),
            "masked_layers": layers,
            "sparsity": manifest.get("sparsity"),
        },
    )
