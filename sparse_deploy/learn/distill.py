"""Feature distillation's taps: every block's output of the student and of the frozen teacher."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import SparseDeployError
from ..models import short_name

_BLOCK_PREFIXES = ("transformer_blocks.", "down_blocks.", "mid_block", "up_blocks.")


class FeatureTaps:
    """Forward hooks that keep the output of every block (DiT transformer block, UNet down/mid/up block).

    Student and teacher get one each; :meth:`loss` is the mean over blocks of
    ``||f_S - f_T||^2 / ||f_T||^2`` (normalised so every block counts alike). Under torchrun the
    normaliser is the global batch's (``reduce`` averages it over ranks), so the gradient DDP averages
    equals one process's at the same global batch.
    """

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module):
        self.outputs: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
        self.handles = []
        for role, model in (("student", student), ("teacher", teacher)):
            for name, module in model.named_modules():
                short = short_name(name)
                depth = short.count(".")
                if any(short.startswith(p) for p in _BLOCK_PREFIXES) and depth == (0 if short == "mid_block" else 1):
                    self.handles.append(module.register_forward_hook(self._keep(role)))
        if not self.handles:
            raise SparseDeployError("--kd-features found no transformer/UNet blocks to distil in this model")

    def _keep(self, role: str):
        def hook(_module, _inputs, output):
            self.outputs[role].append(output[0] if isinstance(output, tuple) else output)

        return hook

    def clear(self) -> None:
        self.outputs = {"student": [], "teacher": []}

    def loss(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        pairs = list(zip(self.outputs["student"], self.outputs["teacher"], strict=True))
        scale = torch.stack([t.detach().float().pow(2).mean() for _, t in pairs])
        scale = (reduce(scale) if reduce is not None else scale).clamp_min(1e-8)
        terms = torch.stack([(s.float() - t.float()).pow(2).mean() for s, t in pairs])
        self.clear()
        return (terms / scale).mean()
