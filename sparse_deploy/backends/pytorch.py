"""PyTorch runner: a checkpoint folder or diffusers weights run eagerly (CPU, or CUDA when asked and available)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..contract import BatchProfile, contract_for
from ..inputs import open_model
from ..settings import DEFAULT_OPT_BATCH
from ..sparsify import bake_
from .base import Runner
from .device import torch_device

__all__ = ["TorchRunner", "TORCH_PROFILE"]

log = logging.getLogger(__name__)

# Eager PyTorch has no build-time batch limit; this bound only guards against typos.
TORCH_PROFILE = BatchProfile(min=1, opt=DEFAULT_OPT_BATCH, max=1024)


class TorchRunner(Runner):
    """A checkpoint's model in fp32; sparse checkpoints run with their masks baked into the weights.

    A diffusers pipeline or model folder (or ``.safetensors``) runs too (``inputs.open_weights``): weights that
    are already exact 2:4 make a ``sparse`` runner, as they are.
    """

    backend = "torch"

    def __init__(self, path: str | Path, device: str = "auto"):
        model, manifest = open_model(path)
        bake_(model)  # masks -> exact zeros in plain Linear/Conv2d (same numbers, no mask multiply)
        self.device = torch_device(device)
        self.model = model.to(self.device).eval()
        super().__init__(Path(path), manifest, contract_for(model.preset, "fp32", TORCH_PROFILE), model.preset)

    @property
    def device_type(self) -> str:
        return self.device.type

    @torch.no_grad()
    def _infer(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        d = self.device
        return self.model(
            sample.to(d, torch.float32), timestep.to(d), None if class_labels is None else class_labels.to(d)
        )
