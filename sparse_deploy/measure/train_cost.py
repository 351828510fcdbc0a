"""Seconds per fine-tuning step of each method, interleaved method by method.

Each timed call is one :func:`sparse_deploy.train.train_step` of a prepared run, so the figure is
the cost of a step as training pays it (mask refresh, batch draw, forward, teacher forward for
distillation, backward, clipping, AdamW, LR schedule, EMA update).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import SparseDeployError
from ..sources import run_preset
from .machine import record
from .recipes import METHODS, TRAIN_COST_METHODS, method_train_config, trains
from .timing import clock_name, run_interleaved, summarize

__all__ = ["run_train_cost"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _dense_init(preset_name: str, dense_checkpoint: str | Path | None) -> Iterator[Path]:
    """The given dense checkpoint, or a random-init one in a temporary folder (cost is the same)."""
    if dense_checkpoint is not None:
        yield Path(dense_checkpoint)
        return
    import torch

    from ..checkpoint import save_checkpoint
    from ..models import build_model

    with tempfile.TemporaryDirectory(prefix="bench-init-") as tmp:
        torch.manual_seed(0)
        model = build_model(run_preset(preset_name), announce_random=False)
        log.info("no --dense-checkpoint: timing from a random-init dense model (same cost per step)")
        yield save_checkpoint(Path(tmp) / "dense", model, sparsity=None)


def _prepare_runs(
    model: str,
    methods: Sequence[str],
    init: Path,
    folder: Path,
    steps: int,
    device: str,
    dev,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """One prepared training run per method, sharing one copy of the dataset."""
    import torch

    from ..train import prepare_run

    runs: dict[str, Any] = {}
    shared = None
    for method in methods:
        config = method_train_config(method, model, folder / method, steps=steps, init=init, device=device, **overrides)
        torch.manual_seed(config.seed)
        run = prepare_run(config, dev)
        if shared is None:
            shared = (run.images, run.labels)
        else:  # one copy of the dataset in memory
            run.images, run.labels = shared
        run.model.train()
        runs[method] = run
    return runs


def _step_tasks(runs: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """One callable per method that runs its next training step."""
    from ..train import train_step

    counters = {m: 0 for m in runs}

    def step_fn(method: str) -> Callable[[], Any]:
        def fn() -> Any:
            row = train_step(runs[method], counters[method])
            counters[method] += 1
            return row

        return fn

    return {m: step_fn(m) for m in runs}


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
    from ..distributed import DistEnv, resolve_device

    unknown = [m for m in methods if m not in METHODS or not trains(m)]
    if unknown:
        raise SparseDeployError(f"train-cost methods must be among {', '.join(TRAIN_COST_METHODS)}; got {unknown}")
    if data is None and run_preset(model).dataset is None:
        data = "synthetic"  # a step costs the same on random tensors of the right shape
    started = time.perf_counter()
    dev = resolve_device(device, DistEnv())
    overrides = {k: v for k, v in (("batch_size", batch_size), ("data", data)) if v is not None}
    with _dense_init(model, dense_checkpoint) as init, tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        runs = _prepare_runs(model, methods, init, Path(tmp), warmup + steps, device, dev, overrides)
        times = run_interleaved(_step_tasks(runs), steps, warmup, dev.type, progress="train-cost")
    batch = runs[methods[0]].config.batch_size
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
        "model": model,
        "steps": steps,
        "warmup": warmup,
        "methods": list(methods),
        "batch_size": batch,
        "dense_checkpoint": str(dense_checkpoint) if dense_checkpoint else None,
        "device": dev.type,
        "data": data,
        "amp": runs[methods[0]].amp.dtype,
    }
    results = {
        "model": model,
        "clock": clock_name(dev.type),
        "note": "one train_step = mask refresh (srste/ste), batch draw, forward (+ teacher forward for kd), "
        "backward, gradient clipping, AdamW, LR schedule, EMA update",
        "methods": per_method,
    }
    return record("train-cost", command, settings, results, started)
