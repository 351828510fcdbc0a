"""Sample images from any backend: an engine, an exported graph or a checkpoint folder.

``python -m sparse_deploy.run --engine engines/fmnist-dit/sparse-fp32.ort.onnx --out samples/x``
draws ``--num`` images in batches of ``--batch`` with ``sampling.sample`` (one seed gives the same
images on every backend, within its numerical tolerance), writes ``sample-0000.png`` ...,
``grid.png`` and ``run.json`` (what was run, on what, how long it took).

Latent models are decoded with a local diffusers ``AutoencoderKL`` folder (``--vae``); without one
their first three latent channels (one for models with fewer than three) are written as images,
each normalised to its own range, and the run says so.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .backends import BACKENDS, Runner, load_runner
from .errors import SparseDeployError, cli_entry
from .provenance import library_versions, timestamp, write_json_atomic
from .guards import check_finite, check_output_dir
from .sampling import (
    TRAIN_TIMESTEPS,
    class_rows,
    decode,
    make_scheduler,
    parse_labels,
    sample_request,
    save_grid,
    save_pngs,
)
from .sources import load_vae

__all__ = [
    "RunConfig",
    "load_vae",
    "decode",
    "generate",
    "run",
    "main",
]  # decode lives in sampling, load_vae in sources; named here for older callers

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """One sampling run.

    Attributes:
        engine: engine file (or its manifest), exported ``.onnx`` graph, or checkpoint folder.
        out: folder for the PNGs, ``grid.png`` and ``run.json``.
        num: images to draw; batch: images per denoiser batch (doubled with guidance).
        steps / scheduler / seed / labels / guidance: see ``sampling.sample``. The batch starting
            at image ``start`` uses seed ``sampling.batch_seed(seed, start)`` (``seed + start``).
        vae: local diffusers AutoencoderKL folder, for latent models.
        device: ``auto`` | ``cpu`` | ``cuda``; backend: ``auto`` | ``torch`` | ``torch24`` | ...
    """

    engine: Path
    out: Path
    num: int = 16
    batch: int = 8
    steps: int = 50
    scheduler: str = "ddim"
    seed: int = 0
    labels: tuple[int, ...] | None = None
    guidance: float = 1.0
    vae: Path | None = None
    device: str = "auto"
    backend: str = "auto"

    def validate(self) -> "RunConfig":
        for flag, value in (("--num", self.num), ("--batch", self.batch), ("--steps", self.steps)):
            if value < 1:
                raise SparseDeployError(f"{flag} must be at least 1, got {value}")
        check_finite("--guidance", self.guidance, 0)
        if self.steps > TRAIN_TIMESTEPS:
            raise SparseDeployError(
                f"--steps must be between 1 and {TRAIN_TIMESTEPS} (the training schedule's length), got {self.steps}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise SparseDeployError(f"unknown --device '{self.device}'; use auto, cpu or cuda")
        make_scheduler(self.scheduler)  # the one place that knows the scheduler names
        check_output_dir(self.out, "--out")
        return self


def generate(runner: Runner, config: RunConfig) -> tuple[torch.Tensor, list[int] | None, list[int]]:
    """Draw ``config.num`` samples in batches (``sampling.sample_request``); returns ``(samples, labels, seeds per batch)``."""
    outs, all_labels, seeds = [], [], []
    for seed, x, y in sample_request(
        runner,
        runner.preset,
        num=config.num,
        batch=config.batch,
        seed=config.seed,
        labels=config.labels,
        progress=True,
        steps=config.steps,
        scheduler=config.scheduler,
        guidance=config.guidance,
    ):
        outs.append(x)
        seeds.append(seed)
        if y is not None:
            all_labels.extend(int(v) for v in y)
    return torch.cat(outs), (all_labels or None), seeds


def run(config: RunConfig) -> dict[str, Any]:
    """Sample, decode, write PNGs + ``grid.png`` + ``run.json``; return what ``run.json`` holds."""
    config.validate()
    vae = None
    with load_runner(config.engine, device=config.device, backend=config.backend) as runner:
        preset = runner.preset
        if config.vae is not None:
            if not preset.latent:
                raise SparseDeployError(f"--vae decodes latents, but preset '{preset.name}' samples pixels; drop --vae")
            vae = load_vae(config.vae)
        start = time.perf_counter()
        samples, labels, seeds = generate(runner, config)
        seconds = time.perf_counter() - start
        info = {
            "backend": runner.backend,
            "preset": preset.name,
            "precision": runner.contract.precision,
            "kind": runner.kind,
        }
    images, how = decode(samples, preset, vae)
    if preset.latent and vae is None:
        log.warning("preset '%s' samples VAE latents and no --vae was given: writing %s", preset.name, how)
    out = Path(config.out)
    # A stale run.json must never describe a half-replaced folder: it goes first, the new one comes last.
    (out / "run.json").unlink(missing_ok=True)
    paths = save_pngs(images, out)
    order, nrow = class_rows(labels)  # one row per class when the labels cover classes evenly
    save_grid(images[order] if nrow else images, out / "grid.png", nrow=nrow)
    record = {
        "engine": str(config.engine),
        **info,
        "num": config.num,
        "batch": config.batch,
        "steps": config.steps,
        "scheduler": config.scheduler,
        "seed": config.seed,
        "batch_seeds": seeds,
        "labels": labels,
        "guidance": config.guidance,
        "decode": how if vae is None else f"vae {config.vae}",
        "images": [p.name for p in paths],
        "grid": "grid.png",
        "sampling_seconds": round(seconds, 3),
        "versions": library_versions(),
        "created": timestamp(),
    }
    write_json_atomic(out / "run.json", record)
    stale = sorted(set(out.glob("sample-*.png")) - set(paths))
    for path in stale:  # an earlier, larger run's images: no record describes them any more
        path.unlink()
    if stale:
        log.warning("removed %d sample PNGs of an earlier run in %s", len(stale), out)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_deploy.run", description="Sample images from an engine or checkpoint."
    )
    parser.add_argument(
        "--engine",
        type=Path,
        required=True,
        help="engine file (.ort.onnx/.trt.plan), exported .onnx, or checkpoint folder",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for PNGs, grid.png and run.json")
    parser.add_argument("--num", type=int, default=16, help="images to draw (default 16)")
    parser.add_argument(
        "--batch", type=int, default=8, help="images per batch (default 8; guidance doubles the engine batch)"
    )
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    parser.add_argument("--scheduler", default="ddim", help="ddpm | ddim | dpm (default ddim)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", help="comma-separated class ids, cycled over the images (default random)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--vae", type=Path, help="local diffusers AutoencoderKL folder to decode latents")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS + ("ort", "trt"),
        help="for a checkpoint folder: torch (default) or torch24",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    record = run(
        RunConfig(
            engine=args.engine,
            out=args.out,
            num=args.num,
            batch=args.batch,
            steps=args.steps,
            scheduler=args.scheduler,
            seed=args.seed,
            labels=parse_labels(args.labels),
            guidance=args.guidance,
            vae=args.vae,
            device=args.device,
            backend=args.backend,
        )
    )
    print(
        f"wrote {record['num']} images + grid.png to {args.out} ({record['backend']}, {record['precision']}, "
        f"{record['steps']} {record['scheduler']} steps, {record['sampling_seconds']:.1f} s; decode: {record['decode']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
