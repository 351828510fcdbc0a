"""Latency of two engines of one model (usually dense and sparse), per denoiser call and end to end.

Not to be confused with :mod:`sparse_deploy.latency`, the per-layer GEMM latency profile training
uses to choose layers: this module times whole engines through their runners.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import SparseDeployError
from .machine import artifact_size, engine_memory_isolated, record
from .timing import clock_name, ratio, run_interleaved, summarize

__all__ = ["LatencyConfig", "engine_info", "engine_names", "run_latency", "latency_filename"]

log = logging.getLogger(__name__)


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
            raise SparseDeployError(
                f"--engines names '{self.engines[0]}' twice; compare two different engines (dense and sparse)"
            )
        return self


def engine_info(runner) -> dict[str, Any]:
    """What a result records about one engine: file, kind, backend, precision, size, hash, profile, device, backend details."""
    manifest = runner.manifest
    return {
        "path": str(runner.path),
        "kind": runner.kind,
        "backend": runner.backend,
        "precision": runner.contract.precision,
        "preset": runner.preset.name,
        "size_bytes": artifact_size(runner.path),
        "sha256": runner.sha256,
        "profile": asdict(runner.contract.profile),
        "sparse_layers": len(manifest.get("sparse_layers") or manifest.get("masked_layers") or []),
        "device": runner.device_type,
        **runner.details,
    }


def engine_names(runners: Sequence[Any]) -> list[str]:
    """One name per runner: its kind (``dense``, ``sparse``), or ``kind:file`` when kinds repeat."""
    kinds = [r.kind for r in runners]
    if len(set(kinds)) == len(kinds):
        return kinds
    return [f"{r.kind}:{Path(r.path).name}" for r in runners]


def latency_filename(result: dict[str, Any]) -> str:
    """``latency-<backends>-<precisions>.json`` for a :func:`run_latency` result."""
    precisions = sorted({e["precision"] for e in result["engines"].values()})
    backends = sorted({e["backend"] for e in result["engines"].values()})
    return f"latency-{'-'.join(backends)}-{'-vs-'.join(precisions)}.json"


def _check_pair(config: LatencyConfig, runners: Sequence[Any]) -> None:
    presets = {r.preset.name for r in runners}
    if len(presets) != 1:
        raise SparseDeployError(
            f"--engines are of different models {sorted(presets)}; compare two engines of one model"
        )
    hashes = [r.sha256 for r in runners]
    if hashes[0] is not None and hashes[0] == hashes[1]:
        raise SparseDeployError(
            f"--engines '{config.engines[0]}' and '{config.engines[1]}' are the same engine (same hash); compare dense against sparse"
        )


def _profile_problem(by_name: Mapping[str, Any], batch: int) -> str | None:
    for name, r in by_name.items():
        try:
            r.contract.profile.check(batch, where=name)
        except SparseDeployError as exc:
            return str(exc)
    return None


def _time_batch(config: LatencyConfig, by_name: Mapping[str, Any], batch: int, pair: tuple[str, str]) -> dict[str, Any]:
    """Per-call (and end-to-end) timings of every engine at ``batch``, interleaved."""
    import torch

    from ..sampling import sample

    reference, candidate = pair
    devices = {n: r.device_type for n, r in by_name.items()}
    first = next(iter(by_name.values()))
    preset = first.preset
    feeds = [torch.from_numpy(v) for v in first.contract.sample_inputs(batch, seed=0).values()]
    calls = {n: (lambda r=r: r(*feeds)) for n, r in by_name.items()}
    call_times = run_interleaved(calls, config.repeats, config.warmup, devices, progress=f"latency b{batch} per call")
    entry: dict[str, Any] = {
        "batch": batch,
        "per_call": {n: {**summarize(t), "samples": t} for n, t in call_times.items()},
        "per_call_ratio": ratio(call_times[reference], call_times[candidate]),
    }
    if config.e2e_repeats:
        labels = list(range(preset.num_classes)) if preset.num_classes else None
        runs = {
            n: (
                lambda r=r: sample(
                    r, preset, batch=batch, steps=config.steps, scheduler=config.scheduler, seed=0, labels=labels
                )
            )
            for n, r in by_name.items()
        }
        e2e = run_interleaved(
            runs, config.e2e_repeats, config.e2e_warmup, devices, progress=f"latency b{batch} end to end"
        )
        entry["end_to_end"] = {n: {**summarize(t), "samples": t} for n, t in e2e.items()}
        entry["end_to_end_ratio"] = ratio(e2e[reference], e2e[candidate])
        entry["images_per_second"] = {n: batch / s["median"] for n, s in entry["end_to_end"].items()}
    log.info(
        "batch %d: %s %.2f ms, %s %.2f ms per call (ratio %.3f)",
        batch,
        reference,
        entry["per_call"][reference]["median"] * 1e3,
        candidate,
        entry["per_call"][candidate]["median"] * 1e3,
        entry["per_call_ratio"]["median"],
    )
    return entry


def _add_memory(
    config: LatencyConfig, engines: dict[str, dict[str, Any]], names: Sequence[str], per_batch: list[dict[str, Any]]
) -> None:
    """Peak memory of every engine at the largest timed batch, each in a fresh process."""
    timed = [b["batch"] for b in per_batch if "skipped" not in b]
    batch = max(timed) if timed else 1
    for name, path in zip(names, config.engines):
        try:
            engines[name]["memory"] = engine_memory_isolated(path, batch, config.device)
        except Exception as exc:  # memory is a side figure: record why it is missing
            log.warning("memory measurement of %s failed: %s", path, exc)
            engines[name]["memory"] = {"error": f"{exc.__class__.__name__}: {exc}"}


def run_latency(config: LatencyConfig, command: str | None = None) -> dict[str, Any]:
    """Time both engines per denoiser call and end to end, interleaved, at every batch size."""
    from ..backends import load_runner

    config.validate()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(load_runner(p, device=config.device)) for p in config.engines]
        _check_pair(config, runners)
        preset = runners[0].preset
        names = engine_names(runners)
        by_name = dict(zip(names, runners))
        devices = {n: r.device_type for n, r in by_name.items()}
        pair = ("dense", "sparse") if set(names) == {"dense", "sparse"} else (names[0], names[1])
        per_batch: list[dict[str, Any]] = []
        for batch in config.batches:
            problem = _profile_problem(by_name, batch)
            if problem:
                log.warning("skipping batch %d: %s", batch, problem)
                per_batch.append({"batch": batch, "skipped": problem})
                continue
            per_batch.append(_time_batch(config, by_name, batch, pair))
        engines = {n: engine_info(r) for n, r in by_name.items()}
    if all("skipped" in b for b in per_batch):
        raise SparseDeployError(
            f"no batch of --batches {list(config.batches)} fits both engines ({per_batch[0]['skipped']}); pick batches inside the profiles"
        )
    if config.memory:
        _add_memory(config, engines, names, per_batch)
    settings = {**asdict(config), "engines": list(config.engines), "batches": list(config.batches)}
    reference, candidate = pair
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
    return record("latency", command, settings, results, started)
