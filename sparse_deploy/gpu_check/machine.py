"""What the GPU machine has (PyTorch, a CUDA GPU, its facts) and the pure-Python wheels it lacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["REPO", "GPU_WHEELS", "WHEEL_LIMIT_BYTES", "no_gpu_reason", "gpu_facts", "download_wheels", "install_wheels"]

REPO = Path(__file__).resolve().parents[2]
#: Pure-Python wheels a bare GPU machine (PyTorch, numpy, onnx, onnxruntime, pytest present) lacks.
GPU_WHEELS = ("diffusers==0.42.1", "polygraphy==0.53.6", "importlib-metadata==10.2.0")
WHEEL_LIMIT_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------------
# What the machine has
# --------------------------------------------------------------------------------------------


def no_gpu_reason() -> str | None:
    """Why there is nothing to check here (no PyTorch, or no CUDA GPU visible to it), or None."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means the same here
        return f"this Python ({sys.executable}) cannot import PyTorch ({exc.__class__.__name__}: {exc})"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"PyTorch {torch.__version__} ({build}) sees no CUDA GPU"
    return None


def gpu_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
        )
        facts["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    except Exception as exc:  # noqa: BLE001 - facts are best effort; the parts say what failed
        facts["error"] = str(exc)
    return facts


# --------------------------------------------------------------------------------------------
# Wheels
# --------------------------------------------------------------------------------------------


def download_wheels(dest: Path) -> list[Path]:
    """``pip download`` :data:`GPU_WHEELS` (no dependencies, pure Python) into ``dest``; checks the size limit."""
    from ..errors import SparseDeployError

    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "manylinux2014_x86_64",
        "-d",
        str(dest),
        *GPU_WHEELS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SparseDeployError(
            f"pip download failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})"
        )
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    if total > WHEEL_LIMIT_BYTES:
        raise SparseDeployError(
            f"{dest} holds {total / 2**20:.1f} MiB of wheels, over the {WHEEL_LIMIT_BYTES // 2**20} MiB that travel; remove old ones"
        )
    return wheels


def install_wheels(wheels: Path, site: Path) -> dict[str, Any]:
    """Unpack the carried wheels into ``site`` with pip, offline (``--no-index --no-deps``)."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return {"wheels": [], "note": f"no wheels in {wheels}: using what this Python has"}
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(site),
        *map(str, found),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return {
        "wheels": [w.name for w in found],
        "site": str(site),
        "returncode": proc.returncode,
        "error": proc.stderr.strip()[-2000:] if proc.returncode else None,
    }
