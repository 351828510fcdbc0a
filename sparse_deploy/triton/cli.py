"""The command line of ``python -m sparse_deploy.triton``: write a Triton model repository for an engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliargs import MODULE_PROG, finish_parser
from ..errors import cli_entry
from ..outputs import check_output
from .repository import (
    FLAVOURS,
    ORT_ACCELERATORS,
    RepositoryConfig,
    generate_repository,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=MODULE_PROG + "triton",
        description="Write a Triton model repository (denoiser + sampling pipeline) from an engine and its manifest.",
    )
    parser.add_argument(
        "--engine", type=Path, required=True, help="engine file (*.trt.plan, *.ort.onnx) or its manifest"
    )
    parser.add_argument("--out", type=Path, required=True, help="model repository folder (other models in it are kept)")
    parser.add_argument(
        "--flavour",
        default="auto",
        choices=FLAVOURS,
        help="denoiser flavour; auto: tensorrt for a TensorRT plan, python (ONNX Runtime in the "
        "Python backend, any Triton) otherwise",
    )
    parser.add_argument(
        "--max-batch", type=int, help="denoiser max_batch_size (default and upper bound: the engine profile's max)"
    )
    parser.add_argument("--instances", type=int, default=1, help="denoiser instances (default 1)")
    parser.add_argument(
        "--pipeline-instances", type=int, default=1, help="pipeline instances: requests sampled in parallel (default 1)"
    )
    parser.add_argument("--name", default="denoiser", help="denoiser model name (default denoiser)")
    parser.add_argument("--pipeline-name", default="pipeline", help="pipeline model name (default pipeline)")
    parser.add_argument(
        "--ort-accelerator",
        default="none",
        choices=ORT_ACCELERATORS,
        help="onnxruntime flavour: add ONNX Runtime's TensorRT accelerator (2:4 sparsity on for sparse engines)",
    )
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=1000, help="dynamic batcher delay in microseconds (default 1000)"
    )
    parser.add_argument(
        "--vae", type=Path, help="local diffusers AutoencoderKL folder for latent models (path as seen by the server)"
    )
    parser.add_argument(
        "--default-steps", type=int, default=50, help="pipeline steps when a request does not say (default 50)"
    )
    return finish_parser(parser)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_output(args.out, "triton", "--out")
    report = generate_repository(
        RepositoryConfig(
            engine=args.engine,
            out=args.out,
            flavour=args.flavour,
            max_batch=args.max_batch,
            instances=args.instances,
            pipeline_instances=args.pipeline_instances,
            name=args.name,
            pipeline_name=args.pipeline_name,
            ort_accelerator=args.ort_accelerator,
            max_queue_delay_us=args.max_queue_delay_us,
            vae=args.vae,
            default_steps=args.default_steps,
        )
    )
    print(
        f"wrote {report.denoiser} ({report.flavour} flavour, max batch {report.max_batch}) "
        f"and {report.pipeline} "
        f"to {report.root}; serve it with: python -m sparse_deploy.triton.server --model-repository "
        f"{report.root}"
    )
    return 0
