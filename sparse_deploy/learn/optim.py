"""Mixed precision, the EMA and the learning-rate schedule of a training run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixedPrecision:
    """The autocast dtype of the training forward pass: ``fp32`` (none), ``bf16`` or ``fp16``.

    fp16 gradients underflow without loss scaling, so ``fp16`` comes with a ``GradScaler``;
    bf16 has fp32's range and needs none.
    """

    dtype: str = "fp32"

    @property
    def scaled(self) -> bool:
        return self.dtype == "fp16"

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(device.type) if self.scaled else None


def choose_precision(device_type: str, bf16_supported: bool) -> MixedPrecision:
    """bf16 autocast on a CUDA GPU that supports it, fp16 (with loss scaling) on one that does not, fp32 on the CPU."""
    if device_type != "cuda":
        return MixedPrecision("fp32")
    return MixedPrecision("bf16" if bf16_supported else "fp16")


def _device_precision(device: torch.device) -> MixedPrecision:
    return choose_precision(device.type, device.type == "cuda" and torch.cuda.is_bf16_supported())


def ema_decay_at(decay: float, step: int, warmup: bool = True) -> float:
    """EMA decay at ``step``, with the usual from-scratch warm-up ``(1 + step) / (10 + step)`` when ``warmup``.

    Without the warm-up, a from-scratch run's EMA keeps ``decay ** steps`` of the random init
    (0.999 ** 2000 = 13%), which is enough to turn samples into noise. A fine-tuning run starts its
    EMA at the pretrained weights, which are worth keeping: there the warm-up would make the EMA
    follow the first, noisiest steps, and it is off (``TrainConfig.ema_warmup``).
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def _ema_update_(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)


LR_FLOOR = 0.01  # cosine decays to this share of the peak learning rate


def lr_factor(step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine decay to LR_FLOOR."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step + 1 - warmup) / (total - warmup))
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
