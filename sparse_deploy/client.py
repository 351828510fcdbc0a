"""Client for the served sampling pipeline, and a bounded load test.

Draw images (``--num`` in requests of ``--batch``; each request sends the seed and the index of
its first image, so image ``i`` is seeded from ``(seed, i)`` as in ``python -m sparse_deploy.run``,
and the same flags give the same images whatever ``--batch``)::

    python -m sparse_deploy.client --url 127.0.0.1:8001 --protocol grpc --num 8 --batch 4 --seed 0 \\
        --labels 0,1,2,3 --steps 50 --out samples/triton

Load test (``--duration``): ``--concurrency`` clients each send requests back to back until the
time is up (and at most ``--max-requests`` in all); reports throughput, latency p50/p90/p99 and
failed requests, and writes ``load-test.json``. Load tests target loopback addresses only.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cliargs import MODULE_PROG, add_alias, finish_parser
from .errors import SparseDeployError, cli_entry
from .guards import check_positive
from .lazy import require
from .outputs import claim_output
from .provenance import timestamp, write_json_atomic
from .sampling import parse_labels, save_grid, save_pngs

__all__ = [
    "PROTOCOLS",
    "TRITONCLIENT_INSTALL",
    "PipelineResult",
    "PipelineClient",
    "LoadTestConfig",
    "latency_stats",
    "load_test",
    "is_loopback",
    "main",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
TRITONCLIENT_INSTALL = "pip install 'tritonclient[http,grpc]==2.73.0'"


def _client_module(protocol: str):
    if protocol not in PROTOCOLS:
        raise SparseDeployError(f"unknown --protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    return require(f"tritonclient.{protocol}", f"talking to Triton over {protocol}", TRITONCLIENT_INSTALL)


@dataclass
class PipelineResult:
    """One answered request."""

    images: np.ndarray  # uint8 [N, H, W, C]
    samples: np.ndarray  # float32 [N, C, S, S]
    labels: np.ndarray | None  # int64 [N]
    latency_s: float


class PipelineClient:
    """A ``tritonclient`` connection to the pipeline model (one per thread).

    Args:
        url: ``host:port`` (HTTP default 8000, gRPC 8001).
        protocol: ``http`` | ``grpc``.
        model: the pipeline model's name.
        timeout: seconds for one request (network and server time).
    """

    def __init__(self, url: str, protocol: str = "http", model: str = "pipeline", timeout: float = 600.0):
        self.protocol = protocol
        self.model = model
        self.timeout = timeout
        self._mod = _client_module(protocol)
        self._utils = require("tritonclient.utils", "talking to Triton", TRITONCLIENT_INSTALL)
        if protocol == "http":
            self._client = self._mod.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            self._client = self._mod.InferenceServerClient(url)

    def __enter__(self) -> PipelineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model))
        except Exception:
            return False

    def _input(self, name: str, array: np.ndarray, datatype: str):
        tensor = self._mod.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def generate(
        self,
        *,
        num: int | None = None,
        seed: int | None = None,
        first: int | None = None,
        labels: Sequence[int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        scheduler: str | None = None,
        raw_inputs: Sequence[tuple[str, np.ndarray, str]] = (),
    ) -> PipelineResult:
        """Send one request; ``None`` leaves an input to the pipeline's default.

        ``raw_inputs`` adds ``(name, array, triton datatype)`` tensors as given (tests send
        malformed requests this way).

        Raises:
            SparseDeployError: the server's error message (e.g. an invalid argument).
        """
        inputs = []
        for name, value, dtype, triton in (
            ("seed", seed, np.int64, "INT64"),
            ("first_image", first or None, np.int64, "INT64"),
            ("num_images", num, np.int64, "INT64"),
            ("steps", steps, np.int64, "INT64"),
            ("guidance", guidance, np.float32, "FP32"),
        ):
            if value is not None:
                inputs.append(self._input(name, np.array([value], dtype=dtype), triton))
        if labels:
            inputs.append(self._input("class_labels", np.asarray(list(labels), dtype=np.int64), "INT64"))
        inputs += [self._input(name, np.asarray(array), dtype) for name, array, dtype in raw_inputs]
        parameters = {"scheduler": scheduler} if scheduler else None
        start = time.perf_counter()
        try:
            if self.protocol == "http":
                result = self._client.infer(self.model, inputs, parameters=parameters)
            else:
                result = self._client.infer(self.model, inputs, parameters=parameters, client_timeout=self.timeout)
        except self._utils.InferenceServerException as exc:
            raise SparseDeployError(f"{self.model}: {exc.message() or exc}") from exc
        latency = time.perf_counter() - start
        labels_out = result.as_numpy("labels") if result.get_output("labels") is not None else None
        return PipelineResult(result.as_numpy("images"), result.as_numpy("samples"), labels_out, latency)


# --------------------------------------------------------------------------------------------
# Load test
# --------------------------------------------------------------------------------------------


def is_loopback(url: str) -> bool:
    """Whether ``host[:port]`` names only loopback addresses (127.0.0.0/8, ::1)."""
    host = url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def latency_stats(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99, mean and max of latencies in seconds, reported in milliseconds."""
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    arr = np.asarray(latencies, dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(arr.mean()),
        "max_ms": float(arr.max()),
    }


@dataclass
class LoadTestConfig:
    """A bounded load test against one pipeline on a loopback address.

    Attributes:
        url / protocol / model: where to send.
        concurrency: clients sending back to back.
        duration: seconds to keep sending (requests in flight at the end are awaited).
        max_requests: a hard cap on requests in all.
        num / steps / guidance / labels / scheduler / seed: each request's arguments; request
            ``k`` uses seed ``seed + k``.
        warmup: requests sent (one client) before timing starts.
    """

    url: str
    protocol: str = "grpc"
    model: str = "pipeline"
    concurrency: int = 4
    duration: float = 30.0
    max_requests: int = 100_000
    num: int = 1
    steps: int = 10
    guidance: float = 1.0
    labels: tuple[int, ...] | None = None
    scheduler: str = "ddim"
    seed: int = 0
    warmup: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> LoadTestConfig:
        if not 1 <= self.concurrency <= 256:
            raise SparseDeployError(f"--concurrency must be between 1 and 256, got {self.concurrency}")
        if not 0 < self.duration <= 3600:
            raise SparseDeployError(f"--duration must be in (0, 3600] seconds, got {self.duration}")
        if self.max_requests < 1:
            raise SparseDeployError(f"--max-requests must be at least 1, got {self.max_requests}")
        if not is_loopback(self.url):
            raise SparseDeployError(
                f"load tests only target loopback addresses (127.0.0.1, localhost, [::1]); got '{self.url}'"
            )
        _client_module(self.protocol)
        return self


def load_test(config: LoadTestConfig) -> dict[str, Any]:
    """Hold ``concurrency`` clients busy for ``duration`` seconds; return the figures.

    Returns:
        ``requests``, ``failed``, ``errors`` (up to 5 distinct messages), ``throughput_rps``,
        ``images_per_s``, latency percentiles (ms) of successful requests, wall time and the config.
    """
    config.validate()
    kwargs = dict(
        num=config.num, steps=config.steps, guidance=config.guidance, labels=config.labels, scheduler=config.scheduler
    )
    with PipelineClient(config.url, config.protocol, config.model) as client:
        for i in range(config.warmup):
            client.generate(seed=config.seed - 1 - i, **kwargs)

    lock = threading.Lock()
    counter = iter(range(config.max_requests))
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + config.duration

    def worker() -> None:
        with PipelineClient(config.url, config.protocol, config.model) as c:
            while time.perf_counter() < deadline:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                try:
                    result = c.generate(seed=config.seed + k, **kwargs)
                    with lock:
                        latencies.append(result.latency_s)
                except Exception as exc:  # a failed request is counted, not fatal
                    with lock:
                        errors.append(f"{exc.__class__.__name__}: {exc}")

    threads = [threading.Thread(target=worker, name=f"load-{i}", daemon=True) for i in range(config.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=config.duration + 660)  # one request may still be in flight at the deadline
    wall = time.perf_counter() - start
    done = len(latencies)
    return {
        "requests": done + len(errors),
        "succeeded": done,
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "wall_s": wall,
        "throughput_rps": done / wall if wall > 0 else 0.0,
        "images_per_s": done * config.num / wall if wall > 0 else 0.0,
        "latency": latency_stats(latencies),
        "config": asdict(config),
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=MODULE_PROG + "client",
        description="Get images from the Triton sampling pipeline, or (with --duration) run a bounded "
        "load test on loopback.",
    )
    parser.add_argument("--url", default="127.0.0.1:8001", help="server host:port (default 127.0.0.1:8001, gRPC)")
    parser.add_argument("--protocol", default="grpc", choices=PROTOCOLS, help="grpc or http (the --url's port)")
    parser.add_argument("--model", default="pipeline", help="pipeline model name (default pipeline)")
    parser.add_argument(
        "--num", type=int, default=4, help="images in all (default 4); in a load test: images per request"
    )
    parser.add_argument("--batch", type=int, help="images per request (default: --num)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request: image i is seeded from (seed, i)")
    parser.add_argument("--labels", help="comma-separated class ids, cycled over the images (default random)")
    parser.add_argument("--sample-steps", dest="steps", type=int, help="sampling steps (default: the pipeline's)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 1 = off)")
    parser.add_argument("--scheduler", help="ddpm | ddim | dpm (default: the pipeline's, ddim)")
    parser.add_argument("--out", type=Path, required=True, help="folder for PNGs + client.json (or load-test.json)")
    parser.add_argument("--concurrency", type=int, default=1, help="load test: concurrent clients (default 1)")
    parser.add_argument("--duration", type=float, help="load test: seconds to send for (bounded; loopback only)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="load test: cap on requests in all")
    add_alias(parser, "--steps", "--sample-steps")
    return finish_parser(parser)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = parse_labels(args.labels)
    if args.num < 1:
        raise SparseDeployError(f"--num must be at least 1, got {args.num}")
    check_positive("--seed", args.seed, -(2**63), 2**63 - 1)  # the pipeline's seed input is INT64
    with claim_output(args.out, "client", "--out"):  # a new folder or an earlier client's, one writer
        return _main(args, labels)


def _main(args: argparse.Namespace, labels: tuple[int, ...] | None) -> int:
    if args.duration is not None:
        report = load_test(
            LoadTestConfig(
                url=args.url,
                protocol=args.protocol,
                model=args.model,
                concurrency=args.concurrency,
                duration=args.duration,
                max_requests=args.max_requests,
                num=args.num,
                steps=args.steps or 50,
                guidance=1.0 if args.guidance is None else args.guidance,
                labels=labels,
                scheduler=args.scheduler or "ddim",
                seed=args.seed,
            )
        )
        report["created"] = timestamp()
        write_json_atomic(args.out / "load-test.json", report)
        lat = report["latency"]
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        print(
            f"{report['requests']} requests in {report['wall_s']:.1f} s with {args.concurrency} "
            f"clients: {report['failed']} failed, "
            f"{report['throughput_rps']:.2f} req/s ({report['images_per_s']:.2f} img/s), latency "
            f"p50 {fmt(lat['p50_ms'])} ms, "
            f"p90 {fmt(lat['p90_ms'])} ms, p99 {fmt(lat['p99_ms'])} ms; wrote "
            f"{args.out / 'load-test.json'}"
        )
        return 1 if report["failed"] else 0

    batch = args.batch or args.num
    if batch < 1:
        raise SparseDeployError(f"--batch must be at least 1, got {batch}")
    images, requests = [], []
    with PipelineClient(args.url, args.protocol, args.model) as client:
        for start in range(0, args.num, batch):
            n = min(batch, args.num - start)
            chunk = [labels[(start + j) % len(labels)] for j in range(n)] if labels else None
            result = client.generate(
                num=n,
                seed=args.seed,
                first=start,
                labels=chunk,
                steps=args.steps,
                guidance=args.guidance,
                scheduler=args.scheduler,
            )
            images.append(result.images)
            requests.append(
                {
                    "seed": args.seed,
                    "first_image": start,
                    "num": n,
                    "labels": None if result.labels is None else [int(v) for v in result.labels],
                    "latency_ms": round(result.latency_s * 1000, 2),
                }
            )
            print(f"request {len(requests)}: {n} images in {result.latency_s * 1000:.1f} ms")
    all_images = np.concatenate(images)
    save_pngs(all_images, args.out)
    save_grid(all_images, args.out / "grid.png")
    write_json_atomic(
        args.out / "client.json",
        {
            "url": args.url,
            "protocol": args.protocol,
            "model": args.model,
            "steps": args.steps,
            "guidance": args.guidance,
            "scheduler": args.scheduler,
            "requests": requests,
            "created": timestamp(),
        },
    )
    print(f"wrote {len(all_images)} images + grid.png + client.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
