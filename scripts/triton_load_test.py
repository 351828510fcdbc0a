"""Load-test the served sampling pipeline on this machine (loopback only), end to end.

Builds (or takes) an ONNX Runtime engine, writes the CPU-flavour Triton repository, starts the
tritonserver binary from nvidia-pytriton on free loopback ports, holds ``--concurrency`` clients
sending back to back for ``--duration`` seconds, stops the server, and reports throughput, latency
percentiles and failed requests (also as JSON). Exit status 1 if any request failed.

    .venv/bin/python scripts/triton_load_test.py --concurrency 4 --duration 60 --steps 50

Without ``--engine`` it builds the ``--model`` preset's sparse fp32 ONNX Runtime engine into a
temporary folder (random weights unless ``--checkpoint``: fine for latency, not for images), so
it never touches ``engines/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

from sparse_deploy.client import LoadTestConfig, load_test
from sparse_deploy.errors import cli_entry
from sparse_deploy.provenance import library_versions, timestamp, write_json_atomic
from sparse_deploy.triton.repository import RepositoryConfig, generate_repository
from sparse_deploy.triton.server import TritonServer


def _build_engine(model: str, checkpoint: Path | None, folder: Path, max_batch: int) -> Path:
    from sparse_deploy.build import BuildConfig, build_engines
    from sparse_deploy.export import ExportConfig

    export = ExportConfig(
        model=None if checkpoint else model,
        checkpoint=checkpoint,
        out=folder / "export",
        precisions=("fp32",),
        kinds=("sparse",),
        max_batch=max_batch,
    )
    report = build_engines(BuildConfig(export=export, backend="onnxruntime", engine_dir=folder / "engines"))
    return report.engines[0].path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engine", type=Path, help="ONNX Runtime engine to serve (default: build --model's into a temp folder)"
    )
    parser.add_argument(
        "--model",
        default="fmnist-dit",
        help="preset to build when no --engine (default fmnist-dit, the embedded default)",
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to build from (default: random weights)")
    parser.add_argument("--max-batch", type=int, default=16, help="engine max batch when building (default 16)")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per request (default 50)")
    parser.add_argument("--num", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale (default 1 = off)")
    parser.add_argument("--protocol", default="grpc", choices=("http", "grpc"))
    parser.add_argument("--pipeline-instances", type=int, default=2, help="pipeline model instances (default 2)")
    parser.add_argument("--instances", type=int, default=1, help="denoiser instances (default 1)")
    parser.add_argument(
        "--json", type=Path, default=Path("reports/triton-load-test.json"), help="where to write the report"
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triton-load-") as tmp:
        folder = Path(tmp)
        engine = args.engine or _build_engine(args.model, args.checkpoint, folder, args.max_batch)
        repository = generate_repository(
            RepositoryConfig(
                engine=engine,
                out=folder / "repository",
                flavour="python",
                instances=args.instances,
                pipeline_instances=args.pipeline_instances,
            )
        )
        with TritonServer(repository.root, startup_timeout=300) as server:
            report = load_test(
                LoadTestConfig(
                    url=server.url(args.protocol),
                    protocol=args.protocol,
                    concurrency=args.concurrency,
                    duration=args.duration,
                    num=args.num,
                    steps=args.steps,
                    guidance=args.guidance,
                    warmup=2,
                )
            )
    report.update(
        engine=str(
            args.engine
            or f"{args.model} sparse fp32 ONNX Runtime engine built for this run ({'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random weights'})"
        ),
        flavour="python (ONNX Runtime CPU inside the Python backend)",
        pipeline_instances=args.pipeline_instances,
        denoiser_instances=args.instances,
        denoiser_max_batch=repository.max_batch,
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine={
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        versions=library_versions(),
        created=timestamp(),
    )
    write_json_atomic(args.json, report)
    lat = {k: ("n/a" if v is None else f"{v:.1f}") for k, v in report["latency"].items()}
    print(
        json.dumps(
            {k: report[k] for k in ("requests", "succeeded", "failed", "wall_s", "throughput_rps", "images_per_s")}
        )
    )
    print(
        f"{args.concurrency} clients x {args.duration:.0f} s, {args.steps} steps, {args.num} image(s)/request over {args.protocol}: "
        f"{report['requests']} requests, {report['failed']} failed, {report['throughput_rps']:.2f} req/s, "
        f"latency p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms; wrote {args.json}"
    )
    if report["errors"]:
        print("errors:", *report["errors"], sep="\n  ")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
