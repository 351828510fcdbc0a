"""Timing and statistics: the one timing function every measurement uses, and pure summaries.

:func:`time_call` reads CUDA events when the work runs on a CUDA device (synchronised before and
after) and ``time.perf_counter`` otherwise; :func:`run_interleaved` times several tasks A B A B
after warm-up rounds; :func:`summarize`, :func:`ratio` and :func:`spread` are exact arithmetic
on the collected numbers.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import SparseDeployError

__all__ = ["time_call", "clock_name", "interleaved_order", "run_interleaved", "summarize", "ratio", "spread"]


def _cuda_ready(device: str) -> bool:
    if device != "cuda":
        return False
    import torch

    return torch.cuda.is_available()


def time_call(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, float]:
    """Run ``fn()`` once and return ``(result, seconds)``.

    On ``device="cuda"`` (with a CUDA PyTorch) the time is read from CUDA events around the call,
    with the device synchronised before and after; otherwise ``time.perf_counter``.
    """
    if _cuda_ready(device):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize()
        return result, start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def clock_name(device: str) -> str:
    """The clock :func:`time_call` uses on ``device``, as recorded in results."""
    return "torch.cuda.Event (synchronised)" if _cuda_ready(device) else "time.perf_counter"


def interleaved_order(names: Sequence[str], rounds: int) -> list[str]:
    """``A B A B ...``: every name once per round, in the given order."""
    return [name for _ in range(rounds) for name in names]


def run_interleaved(
    tasks: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 0,
    devices: str | Mapping[str, str] = "cpu",
    progress: str | None = None,
) -> dict[str, list[float]]:
    """Time every task ``warmup + repeats`` times, interleaved A B A B; warm-up rounds are dropped.

    Returns:
        Seconds per timed call, by task name (``repeats`` values each, in round order, so
        ``times[A][i]`` and ``times[B][i]`` come from the same round).
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0:
        raise SparseDeployError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(tasks)
    order = interleaved_order(names, warmup + repeats)
    times: dict[str, list[float]] = {name: [] for name in names}
    skip = warmup * len(names)
    for i, name in enumerate(tqdm(order, desc=progress, unit="call", disable=progress is None, leave=False)):
        device = devices if isinstance(devices, str) else devices[name]
        _, seconds = time_call(tasks[name], device)
        if i >= skip:
            times[name].append(seconds)
    return times


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median and spread of a list of timings (seconds): IQR, p10-p90, mean, std, min, max."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise SparseDeployError("no timings to summarize")
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    return {
        "n": int(x.size),
        "median": float(p50),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        "p10": float(p10),
        "p25": float(p25),
        "p75": float(p75),
        "p90": float(p90),
        "iqr": float(p75 - p25),
    }


def ratio(reference: Sequence[float], candidate: Sequence[float]) -> dict[str, float]:
    """How many times slower ``reference`` is than ``candidate`` (> 1: the candidate is faster).

    ``median`` is the ratio of medians; ``paired_*`` summarise per-round ratios
    ``reference[i] / candidate[i]`` (the two were timed back to back in round ``i``).
    """
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.size == 0 or cand.size == 0:
        raise SparseDeployError("ratio needs timings on both sides")
    out = {"median": float(np.median(ref) / np.median(cand))}
    if ref.size == cand.size:
        paired = ref / cand
        p10, p50, p90 = np.percentile(paired, [10, 50, 90])
        out.update(paired_median=float(p50), paired_p10=float(p10), paired_p90=float(p90))
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, std (ddof 1), min, max and the values of a list of measurements; None entries are left out."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    if x.size == 0:
        return {"n": 0}
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        "values": x.tolist(),
    }
