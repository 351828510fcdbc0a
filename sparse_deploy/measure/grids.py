"""Sample grids of several engines of one model from the same seed and labels."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .engine_latency import engine_names
from .machine import record

__all__ = ["sample_grids"]


def sample_grids(
    engines: Sequence[str | Path],
    out: str | Path,
    *,
    per_class: int = 8,
    steps: int = 25,
    seed: int = 0,
    max_rows: int = 10,
    device: str = "auto",
    command: str | None = None,
) -> dict[str, Any]:
    """One grid per engine, from the same seed and labels; ``grids.json`` lists them.

    A row per class (the first ``max_rows`` classes; one row for unconditional models), ``per_class``
    images each, drawn as one request of ``sampling.sample_request`` (the seeding rule of
    ``python -m sparse_deploy.run``). Latent models' grids show their first latent channels
    (nothing here decodes them).
    """
    import torch

    from ..backends import load_runner
    from ..sampling import decode, sample_request, save_grid

    started = time.perf_counter()
    out = Path(out)
    grids = {}
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(load_runner(p, device=device)) for p in engines]
        for name, runner in zip(engine_names(runners), runners):
            preset = runner.preset
            rows = min(max(preset.num_classes, 1), max_rows)
            labels = [c for c in range(rows) for _ in range(per_class)] if preset.num_classes else None
            batch = min(rows * per_class, runner.contract.profile.max)
            parts, how = [], "pixels"
            for _, x, _ in sample_request(
                runner,
                preset,
                num=rows * per_class,
                batch=batch,
                seed=seed,
                labels=labels,
                steps=steps,
                scheduler="ddim",
            ):
                images, how = decode(x, preset)
                parts.append(images)
                del x
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
            path = save_grid(np.concatenate(parts), out / f"grid-{name.replace(':', '-')}.png", nrow=per_class)
            grids[name] = {
                "path": path.name,
                "engine": str(runner.path),
                "kind": runner.kind,
                "precision": runner.contract.precision,
                "rows": rows,
                "rendering": how,
            }
    settings = {
        "engines": [str(e) for e in engines],
        "per_class": per_class,
        "max_rows": max_rows,
        "steps": steps,
        "seed": seed,
        "scheduler": "ddim",
    }
    return record("grids", command, settings, {"grids": grids}, started)
