"""Per-layer GEMM latency, dense against 2:4, and latency-aware layer selection.

A layer is worth 2:4 only where its sparse kernel beats the dense one on the target GPU at the
deployment shape (a Linear ``[out, in]`` fed ``rows_per_sample * batch`` rows). This module:

* lists every distinct Linear shape of a model and how many rows each sees per sample
  (:func:`linear_shapes`; on the meta device, so DiT-XL costs no memory),
* times ``F.linear`` with the dense weight against the same weight as a semi-structured 2:4
  tensor (``torch.sparse.to_sparse_semi_structured``: cuSPARSELt, else CUTLASS), interleaved,
  with CUDA events, medians and spread (:func:`time_linear`), and collects those rows into a
  latency profile (JSON, written by ``make gpu-check`` as ``reports/gpu/gemm.json``),
* reads such a profile back and keeps dense every selected layer whose 2:4 kernel is not faster
  at the deployment shape (:func:`apply_latency_profile`, ``train --latency-profile``), saying
  which and why in the coverage report.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import SparseDeployError
from .models import short_name

__all__ = [
    "PROFILE_FORMAT",
    "GEMM_BATCHES",
    "LinearShape",
    "linear_shapes",
    "layer_rows",
    "time_linear",
    "LatencyProfile",
    "load_latency_profile",
    "apply_latency_profile",
]

log = logging.getLogger(__name__)

PROFILE_FORMAT = "sparse-deploy-gemm-latency/1"
#: Batches the kit times every shape at (256 tokens per DiT/2 sample at 256 px: 256 to 16,384 rows).
GEMM_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class LinearShape:
    """One distinct ``nn.Linear`` weight shape and the rows (tokens, or 1 for conditioning) it sees per sample."""

    out_features: int
    in_features: int
    rows_per_sample: int
    layers: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[int, int, int]:
        return self.out_features, self.in_features, self.rows_per_sample

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out_features,
            "in": self.in_features,
            "rows_per_sample": self.rows_per_sample,
            "layers": len(self.layers),
            "example": self.layers[0] if self.layers else None,
        }


@torch.no_grad()
def layer_rows(model: nn.Module, inputs: Sequence[torch.Tensor | None]) -> dict[str, int]:
    """Rows each ``nn.Linear`` of ``model`` multiplies in one forward pass on ``inputs`` (batch 1: per sample).

    A layer called more than once (diffusers' DiT reuses block 0's conditioning embedder) keeps
    the rows of its largest call.
    """
    from .macs import forward_with_hooks

    rows: dict[str, int] = {}

    def record(name: str, module: nn.Module, args: tuple, _out: Any) -> None:
        short = short_name(name)
        rows[short] = max(rows.get(short, 0), args[0].numel() // module.in_features)

    forward_with_hooks(model, inputs, (nn.Linear,), record)
    return rows


def linear_shapes(preset_name: str) -> list[LinearShape]:
    """Every distinct Linear shape of a preset (e.g. ``dit-xl``), from a forward pass on the meta device."""
    from .models import build_model, example_inputs
    from .presets import get_preset

    preset = get_preset(preset_name)
    with torch.device("meta"):
        model = build_model(preset, None, announce_random=False)
    model = model.to("meta").eval()  # buffers made from numpy at construction land on the CPU: move them too
    inputs = [t.to("meta") if t is not None else None for t in example_inputs(preset, 1)]
    rows = layer_rows(model, inputs)
    grouped: dict[tuple[int, int, int], list[str]] = {}
    for name, module in model.named_modules():
        short = short_name(name)
        if isinstance(module, nn.Linear) and short in rows:
            grouped.setdefault((module.out_features, module.in_features, rows[short]), []).append(short)
    return [
        LinearShape(o, i, r, tuple(layers))
        for (o, i, r), layers in sorted(grouped.items(), key=lambda kv: (-kv[0][2], kv[0]))
    ]


def _semi_structured(weight: torch.Tensor) -> torch.Tensor:
    from torch.sparse import to_sparse_semi_structured

    return to_sparse_semi_structured(weight)


def time_linear(
    out_features: int,
    in_features: int,
    rows: int,
    dtype: torch.dtype,
    *,
    device: str = "cuda",
    repeats: int = 15,
    warmup: int = 3,
    inner: int = 10,
    make_sparse: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``F.linear(x, W)`` dense against 2:4 (``make_sparse(W * mask)``) for ``x`` of ``rows`` rows.

    ``make_sparse`` turns the masked weight into the 2:4 operand (default: a semi-structured
    tensor). Both run on the same 2:4-masked weight; each timed sample is ``inner`` back-to-back calls
    (CUDA events around them, on CUDA), dense and sparse interleaved A B A B. Also returns the
    largest difference between the two outputs relative to their scale (the sparse kernel must
    compute the same product).

    Returns:
        ``{"dense": summary, "sparse": summary, "speedup": dense/sparse medians, "max_rel_err": ...}``
        (seconds per call), or ``{"error": why}`` when the 2:4 tensor cannot be made for this shape.
    """
    from .measure.timing import ratio, run_interleaved, summarize
    from .masks import PATTERN_M, PATTERN_N, nm_mask

    gen = torch.Generator(device=device).manual_seed(seed)  # drawn where they are used: no large host copies
    weight = torch.randn(out_features, in_features, generator=gen, device=device).to(dtype)
    weight = weight * nm_mask(weight, PATTERN_N, PATTERN_M)
    x = torch.randn(rows, in_features, generator=gen, device=device).to(dtype)
    try:
        sparse = (make_sparse or _semi_structured)(weight)
        with torch.no_grad():
            got, want = nn.functional.linear(x, sparse), nn.functional.linear(x, weight)
    except (
        RuntimeError,
        ValueError,
        NotImplementedError,
    ) as exc:  # below the kernel's minimum tile, unsupported dtype, ...
        return {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    max_rel_err = float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))

    def calls(w: torch.Tensor) -> Callable[[], None]:
        def fn() -> None:
            with torch.no_grad():
                for _ in range(inner):
                    nn.functional.linear(x, w)

        return fn

    times = run_interleaved({"dense": calls(weight), "sparse": calls(sparse)}, repeats, warmup, device)
    per_call = {k: [t / inner for t in v] for k, v in times.items()}
    return {
        "dense": summarize(per_call["dense"]),
        "sparse": summarize(per_call["sparse"]),
        "speedup": ratio(per_call["dense"], per_call["sparse"]),
        "max_rel_err": max_rel_err,
    }


@dataclass
class LatencyProfile:
    """Dense and 2:4 GEMM timings per ``(out, in, rows, dtype)`` on one GPU."""

    gpu: str
    entries: dict[tuple[int, int, int, str], dict[str, Any]] = field(default_factory=dict)
    source: str = ""

    def lookup(self, out_features: int, in_features: int, rows: int, dtype: str) -> tuple[int, dict[str, Any]] | None:
        """The timing measured nearest (in log rows) to ``rows`` for this weight shape and dtype, with its rows."""
        measured = [
            (r, e)
            for (o, i, r, d), e in self.entries.items()
            if (o, i, d) == (out_features, in_features, dtype) and "speedup" in e
        ]
        if not measured:
            return None
        return min(measured, key=lambda re: abs(math.log(re[0]) - math.log(max(rows, 1))))


def load_latency_profile(path: str | Path) -> LatencyProfile:
    """Read a GEMM latency profile (``make gpu-check``'s ``reports/gpu/gemm.json``), one-sentence errors."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SparseDeployError(
            f"--latency-profile '{path}' does not exist; make one with make gpu-check on the target GPU"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseDeployError(f"--latency-profile '{path}' is not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise SparseDeployError(
            f"--latency-profile '{path}' is not a GEMM latency profile (format {PROFILE_FORMAT} expected)"
        )
    profile = LatencyProfile(gpu=str(data.get("gpu") or "?"), source=str(path))
    for row in data.get("entries", []):
        try:
            key = (int(row["out"]), int(row["in"]), int(row["rows"]), str(row["dtype"]))
        except (KeyError, TypeError, ValueError):
            raise SparseDeployError(f"--latency-profile '{path}' has a malformed entry: {row!r}") from None
        profile.entries[key] = row
    if not profile.entries:
        raise SparseDeployError(f"--latency-profile '{path}' holds no timings")
    return profile


def apply_latency_profile(
    choice,
    rows_per_sample: dict[str, int],
    shapes: dict[str, tuple[int, int]],
    profile: LatencyProfile,
    *,
    batch: int,
    dtype: str,
) -> list[str]:
    """Move from ``choice.selected`` to ``choice.skipped`` every layer whose 2:4 kernel is not faster.

    Args:
        choice: a :class:`sparsify.LayerChoice`, changed in place.
        rows_per_sample: rows each layer multiplies per sample (:func:`layer_rows` at batch 1).
        shapes: ``(out, in)`` of each layer.
        profile: the target GPU's timings.
        batch: the deployment batch; a layer's GEMM has ``rows_per_sample * batch`` rows.
        dtype: ``fp16`` or ``bf16``, the engines' precision.

    Returns:
        The selected layers the profile has no timing for (they stay 2:4; logged).
    """
    kept, unprofiled = [], []
    for name in choice.selected:
        if name not in shapes:  # a Conv2d: the profile times Linear layers only
            kept.append(name)
            unprofiled.append(name)
            continue
        rows = rows_per_sample.get(name, 1) * batch
        found = profile.lookup(*shapes[name], rows, dtype)
        if found is None:
            kept.append(name)
            unprofiled.append(name)
            continue
        measured_rows, entry = found
        speedup = float(entry["speedup"]["median"])
        if speedup > 1.0:
            kept.append(name)
        else:
            choice.skipped[name] = (
                f"kept dense by --latency-profile: on {profile.gpu} the 2:4 {dtype} GEMM is not faster at "
                f"{shapes[name][0]}x{shapes[name][1]}, {measured_rows} rows (dense/2:4 time {speedup:.2f})"
            )
    choice.selected[:] = kept
    if unprofiled:
        log.warning(
            "--latency-profile has no timing for %d selected layer(s) at this shape (kept 2:4): %s",
            len(unprofiled),
            unprofiled[:4],
        )
    return unprofiled
