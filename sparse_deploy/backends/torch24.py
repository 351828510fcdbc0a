"""PyTorch 2:4 runner: a sparse checkpoint on CUDA with Linear weights as semi-structured sparse tensors.

``torch.sparse.to_sparse_semi_structured`` (CUTLASS / cuSPARSELt kernels) needs a CUDA GPU of
compute capability 8.0 or newer and fp16/bf16 weights; convolutions stay dense. This is the path
SparseDM measured its speedup on (very wide layers); narrow layers are often no faster.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.sparse import to_sparse_semi_structured

from ..contract import contract_for
from ..errors import SparseDeployError
from ..inputs import open_model
from ..models import short_name
from ..sparsify import bake_
from .base import Runner
from .pytorch import TORCH_PROFILE

__all__ = ["Torch24Runner", "to_semi_structured_"]

log = logging.getLogger(__name__)


def to_semi_structured_(model: nn.Module, layers: list[str]) -> tuple[list[str], dict[str, str]]:
    """Swap the weight of each named Linear (baked 2:4, fp16/bf16, on CUDA) for a semi-structured 2:4 tensor.

    Returns:
        ``(converted, skipped)``: the layers now on 2:4 kernels, and the others with the reason
        (not a Linear, or a shape/dtype the kernels refuse).
    """
    modules = {short_name(name): m for name, m in model.named_modules()}
    converted: list[str] = []
    skipped: dict[str, str] = {}
    for name in layers:
        module = modules[name]
        if not isinstance(module, nn.Linear):
            skipped[name] = "not a Linear (semi-structured kernels are linear-only)"
            continue
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        except (RuntimeError, ValueError) as exc:  # shape below the kernel's minimum tile, ...
            skipped[name] = str(exc).splitlines()[0]
            continue
        converted.append(name)
    return converted, skipped


class Torch24Runner(Runner):
    """The masked Linear layers of a sparse checkpoint, run with PyTorch's 2:4 kernels in fp16."""

    backend = "torch24"

    def __init__(self, path: str | Path, device: str = "auto"):
        if device == "cpu" or not torch.cuda.is_available():
            raise SparseDeployError(
                "the torch24 backend runs PyTorch's semi-structured 2:4 kernels "
                "(torch.sparse.to_sparse_semi_structured), "
                "which need a CUDA GPU of compute capability 8.0+; "
                + ("--device cpu was asked for" if device == "cpu" else "this PyTorch sees no CUDA GPU")
                + "; use the torch or onnxruntime backend instead"
            )
        major, minor = torch.cuda.get_device_capability(0)
        if major < 8:
            raise SparseDeployError(
                f"the torch24 backend needs compute capability 8.0+ (sparse tensor cores); this GPU has {major}.{minor}"
            )
        model, manifest = open_model(path)  # a sparse checkpoint, or diffusers weights that are already 2:4
        masked = sorted(manifest.get("masked_layers") or [])
        if not masked:
            raise SparseDeployError(
                f"checkpoint '{path}' has no masked layers: there is nothing to run with 2:4 kernels; "
                "use the torch backend"
            )
        bake_(model)
        model = model.half().cuda().eval()
        self.converted, self.skipped = to_semi_structured_(model, masked)
        if not self.converted:
            raise SparseDeployError(
                f"no masked Linear of '{path}' could be converted to a semi-structured tensor: "
                f"{dict(list(self.skipped.items())[:2])}"
            )
        log.info("torch24: %d Linear layers on 2:4 kernels, %d left dense", len(self.converted), len(self.skipped))
        self.model = model
        super().__init__(Path(path), manifest, contract_for(model.preset, "fp16", TORCH_PROFILE), model.preset)

    @property
    def device_type(self) -> str:
        return "cuda"

    @property
    def details(self) -> dict[str, Any]:
        return {"converted_layers": len(self.converted)}

    @torch.no_grad()
    def _infer(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        labels = None if class_labels is None else class_labels.cuda()
        return self.model(sample.cuda().half(), timestep.cuda(), labels)
