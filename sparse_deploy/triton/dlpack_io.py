"""Tensor I/O for the Python-backend models, through DLPack.

The nvidia-pytriton stub is built for NumPy 1: with NumPy 2, ``pb_utils.Tensor(name, ndarray)``
sent 0-byte or zero-filled tensors and ``as_numpy()`` read multi-element int64 inputs with a
zero stride. DLPack does not depend on numpy's ABI. BYTES tensors have no DLPack form (and crash
that stub), so the models declare none.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

__all__ = ["to_triton", "from_triton"]


def to_triton(pb_utils, name: str, array: np.ndarray):
    """A ``pb_utils.Tensor`` named ``name`` holding ``array`` (copied, C order)."""
    return pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(np.array(array, copy=True, order="C"))))


def from_triton(tensor) -> np.ndarray:
    """A request or response tensor as a numpy copy."""
    try:
        capsule = tensor.to_dlpack()
    except Exception:
        return tensor.as_numpy()
    return from_dlpack(capsule).numpy().copy()
