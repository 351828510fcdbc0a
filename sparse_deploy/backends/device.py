"""What hardware and GPU libraries this machine has: read at the edges, never at import time."""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from typing import Any

__all__ = [
    "torch_device",
    "cuda_device",
    "tensorrt_version",
    "tensorrt_unavailable_reason",
    "import_tensorrt",
    "TENSORRT_INSTALL",
]

log = logging.getLogger(__name__)

TENSORRT_INSTALL = "pip install tensorrt-cu12 (NVIDIA's wheels; needs a CUDA GPU and access to pypi.nvidia.com)"


@functools.lru_cache(maxsize=1)
def cuda_device() -> dict[str, Any] | None:
    """Name and compute capability of CUDA device 0, or None when no GPU is visible.

    Asks PyTorch first; a CPU-only PyTorch next to a GPU falls back to ``nvidia-smi``.
    """
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception as exc:  # a broken CUDA runtime is "no GPU" here
        log.debug("torch.cuda query failed: %s", exc)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = (
            subprocess.run(
                [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi failed: %s", exc)
        return None
    if not out or "," not in out[0]:
        return None
    name, cap = (part.strip() for part in out[0].rsplit(",", 1))
    return {"name": name, "compute_capability": cap}


def torch_device(request: str, local_rank: int = 0, world_size: int = 1, cuda_devices: int | None = None):
    """The one rule for a ``--device`` request: a ``torch.device`` (``cpu``, or ``cuda:<index>``).

    Args:
        request: ``auto`` (CUDA when visible, else CPU) | ``cpu`` | ``cuda`` (``cuda:<local_rank>``) |
            ``cuda:N`` (only in a single process: under torchrun each rank takes its LOCAL_RANK).
        local_rank / world_size: this process's place under torchrun (0 / 1 alone).
        cuda_devices: how many CUDA devices are visible (default: ask PyTorch).
    """
    import torch

    from ..errors import SparseDeployError
    from ..guards import check_device

    check_device(request)
    count = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if request == "cpu" or (request == "auto" and count == 0):
        return torch.device("cpu")
    if count == 0:
        raise SparseDeployError(
            f"--device {request} was asked for but no CUDA GPU is visible to PyTorch; use --device cpu"
        )
    if request.startswith("cuda:"):
        if world_size > 1:
            raise SparseDeployError(
                f"under torchrun each rank takes cuda:LOCAL_RANK; pass --device cuda (or auto), not {request}"
            )
        index = int(request[5:])
    else:
        index = local_rank
    if index >= count:
        why = "--device" if request.startswith("cuda:") else "LOCAL_RANK"
        raise SparseDeployError(
            f"{why} asks for cuda:{index} but only {count} CUDA device(s) are visible; "
            "run at most one process per GPU (--nproc_per_node)"
        )
    return torch.device("cuda", index)


def import_tensorrt():
    """``import tensorrt`` or raise one sentence saying how to get it."""
    from ..errors import require

    return require("tensorrt", "building or running a TensorRT engine", TENSORRT_INSTALL)


def tensorrt_version() -> str | None:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:
        return None


def tensorrt_unavailable_reason() -> str | None:
    """Why no TensorRT engine can be built or run here, or None if one can."""
    reasons = []
    if cuda_device() is None:
        reasons.append("no CUDA GPU is visible")
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        reasons.append(f"TensorRT is not installed ({detail}; {TENSORRT_INSTALL})")
    return " and ".join(reasons) or None
