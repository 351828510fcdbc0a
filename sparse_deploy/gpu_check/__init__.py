"""``make gpu-check``: one prepared call that proves (or disproves) the speed claims on a GPU machine.

Made for a fresh GPU machine with PyTorch and CUDA but no internet, no diffusers and maybe no
TensorRT: the pure-Python wheels it lacks travel in ``.whl/`` (``make gpu-wheels``; see
:data:`GPU_WHEELS`) and are unpacked into ``.cache/gpu-site/`` with pip, offline. It writes
``reports/gpu/`` within :data:`DEFAULT_BUDGET_S` seconds, each part in its own process with its own
time box, so one failure or hang loses that part only:

=========  =====================================================================================
tests      ``pytest tests/gpu`` (TensorRT, torch24), with every skip and its reason
gemm       every distinct Linear shape of DiT-S/B/XL at 256 tokens x batch 1..64 (conditioning
           layers: batch rows), ``F.linear`` dense against 2:4 (``to_sparse_semi_structured``:
           cuSPARSELt, else CUTLASS), fp16 and bf16, interleaved, CUDA events, medians and
           spread; ``gemm.json`` is also a ``--latency-profile`` for training
e2e        DiT-XL/2 (random weights, one-shot 2:4 masks, fp16): one denoiser call and 50-step DDIM
           sampling, masked dense against 2:4 kernels, batch 1/8/32, eager and CUDA-graph replay,
           and the 2:4 model's output against the masked dense model's
tensorrt   where TensorRT imports: dense and sparse fp16 engines (``--trt-model``, default DiT-S),
           the layers TensorRT picked sparse kernels for, the plan against ONNX Runtime, latency
=========  =====================================================================================

Then ``report.json`` (everything, with the machine and command), ``report.md`` and plots. On a
machine without a CUDA GPU it prints one sentence and exits 0 having done nothing.

The package: :mod:`.machine` (what the machine has, the wheels), :mod:`.parts` (the four parts),
:mod:`.report` (``report.json``, ``report.md``, plots) and :mod:`.cli` (arguments, each part in a
time-boxed process). No module here imports more than the standard library at its top: the kit
runs before anything else is known to be installed.
"""

from __future__ import annotations

from .cli import DEFAULT_BUDGET_S, PART_CAPS, REPORT_RESERVE_S, build_parser, main, run_part
from .machine import GPU_WHEELS, no_gpu_reason
from .parts import PARTS, gemm_shapes
from .report import write_report

__all__ = [
    "PARTS",
    "GPU_WHEELS",
    "DEFAULT_BUDGET_S",
    "PART_CAPS",
    "REPORT_RESERVE_S",
    "no_gpu_reason",
    "gemm_shapes",
    "run_part",
    "write_report",
    "build_parser",
    "main",
]
