"""Sample images from any backend: an engine, an exported graph or a checkpoint folder.

``python -m sparse_deploy.run --engine engines/fmnist-dit/sparse-fp32.ort.onnx --out samples/x``
draws ``--num`` images in batches of ``--batch`` with ``sampling.sample`` (one seed gives the same
images on every backend, within its numerical tolerance), writes ``sample-0000.png`` ... batch by
batch (nothing but the grid's first images is held in memory), ``grid.png`` and ``run.json`` (what
was run, on what, how long it took).

The output folder is claimed (``outputs.claim_output``): a new or empty folder, or an earlier
sample folder (one with a ``run.json``), never anyone else's images, one run at a time. From the
first image written until the last, ``run.json`` says ``"complete": false``, so a killed run's
folder is refused by ``fid`` until the same command finishes it.

Latent models are decoded with a local diffusers ``AutoencoderKL`` folder (``--vae``); without one
their first three latent channels (one for models with fewer than three) are written as images,
each normalised to its own range, and the run says so.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKEND_ALIASES, BACKENDS, Runner, load_runner
from .cliargs import MODULE_PROG, add_alias, finish_parser
from .errors import SparseDeployError, cli_entry
from .guards import check_finite, check_positive, check_seed
from .outputs import RUN_RECORD, check_output, claim_output
from .provenance import library_versions, timestamp, write_json_atomic
from .sampling import (
    SEEDING,
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
    "from_args",
    "main",
]  # decode lives in sampling, load_vae in sources; named here for older callers

log = logging.getLogger(__name__)

#: The most images one run draws (each is a file; run.json lists them all).
MAX_NUM = 1_000_000
#: The most images per denoiser batch (guidance doubles it).
MAX_BATCH = 4096
#: The grid shows the first images, at most this many.
GRID_MAX = 256


@dataclass
class RunConfig:
    """One sampling run.

    Attributes:
        engine: engine file (or its manifest), exported ``.onnx`` graph, or checkpoint folder.
        out: folder for the PNGs, ``grid.png`` and ``run.json``.
        num: images to draw; batch: images per denoiser batch (doubled with guidance).
        steps / scheduler / seed / labels / guidance: see ``sampling.sample``. Image ``i`` is
            seeded ``sampling.image_seed(seed, i)``, whatever the batch size.
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

    def validate(self) -> RunConfig:
        for flag, value in (("--num", self.num), ("--batch", self.batch), ("--sample-steps", self.steps)):
            if value < 1:
                raise SparseDeployError(f"{flag} must be at least 1, got {value}")
        check_positive("--num", self.num, 1, MAX_NUM)
        check_positive("--batch", self.batch, 1, MAX_BATCH)
        check_seed(self.seed)
        check_finite("--guidance", self.guidance, 0)
        if self.steps > TRAIN_TIMESTEPS:
            raise SparseDeployError(
                f"--sample-steps must be between 1 and {TRAIN_TIMESTEPS} (the training schedule's length), "
                f"got {self.steps}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise SparseDeployError(f"unknown --device '{self.device}'; use auto, cpu or cuda")
        make_scheduler(self.scheduler)  # the one place that knows the scheduler names
        check_output(self.out, "samples", "--out")
        return self

    def command(self) -> str:
        """The ``python -m sparse_deploy.run`` command line of this run."""
        args = [
            "--engine",
            str(self.engine),
            "--out",
            str(self.out),
            "--num",
            str(self.num),
            "--batch",
            str(self.batch),
            "--sample-steps",
            str(self.steps),
            "--scheduler",
            self.scheduler,
            "--seed",
            str(self.seed),
            "--device",
            self.device,
            "--backend",
            self.backend,
        ]
        if self.labels:
            args += ["--labels", ",".join(map(str, self.labels))]
        if self.guidance != 1.0:
            args += ["--guidance", str(self.guidance)]
        if self.vae is not None:
            args += ["--vae", str(self.vae)]
        return MODULE_PROG + "run " + shlex.join(args)


def generate(
    runner: Runner, config: RunConfig, vae=None
) -> Iterator[tuple[int, np.ndarray, list[int] | None, str, float]]:
    """Draw ``config.num`` samples batch by batch (``sampling.sample_request``), decoded.

    Yields ``(index of the batch's first image, uint8 images, labels or None, how they were decoded,
    seconds spent sampling the batch)``.
    """
    batches = sample_request(
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
    )
    while True:
        start = time.perf_counter()
        try:
            first, x, y = next(batches)
        except StopIteration:
            return
        seconds = time.perf_counter() - start
        images, how = decode(x, runner.preset, vae)
        yield first, images, (None if y is None else [int(v) for v in y]), how, seconds


def run(config: RunConfig) -> dict[str, Any]:
    """Sample, decode and write PNGs batch by batch, then ``grid.png`` and ``run.json``; return what ``run.json``
    holds.
    """
    config.validate()
    with claim_output(config.out, "samples", "--out") as out:
        return _run(config, out)


def _run(config: RunConfig, out: Path) -> dict[str, Any]:
    vae = None
    with load_runner(config.engine, device=config.device, backend=config.backend) as runner:
        preset = runner.preset
        if config.vae is not None:
            if not preset.latent:
                raise SparseDeployError(f"--vae decodes latents, but preset '{preset.name}' samples pixels; drop --vae")
            vae = load_vae(config.vae)
        record = {
            "engine": str(config.engine),
            "backend": runner.backend,
            "preset": preset.name,
            "precision": runner.contract.precision,
            "kind": runner.kind,
            "num": config.num,
            "batch": config.batch,
            "steps": config.steps,
            "scheduler": config.scheduler,
            "seed": config.seed,
            "seeding": SEEDING,
            "labels": None,
            "guidance": config.guidance,
            "images": [],
            "grid": "grid.png",
            "complete": False,  # until the last image and the grid are written
            "command": config.command(),
            "versions": library_versions(),
            "created": timestamp(),
        }
        paths: list[Path] = []
        labels: list[int] = []
        grid: list[np.ndarray] = []
        seconds, how = 0.0, "pixels"
        for first, images, batch_labels, decoded_as, spent in generate(runner, config, vae):
            how = decoded_as  # every batch is decoded alike; the record names it
            if first == 0:  # the first batch was drawn (bad labels, batches and guidance are refused by now)
                # From here until the record below, the folder's images change: it is marked incomplete first.
                write_json_atomic(out / RUN_RECORD, record)
            paths += save_pngs(images, out, start=first)
            labels += batch_labels or []
            grid += list(images[: max(0, GRID_MAX - len(grid))])
            seconds += spent
    if preset.latent and vae is None:
        log.warning("preset '%s' samples VAE latents and no --vae was given: wrote %s", preset.name, how)
    grid_labels = labels[: len(grid)] or None
    order, nrow = class_rows(grid_labels)  # one row per class when the labels cover classes evenly
    grid_images = np.stack(grid)
    save_grid(grid_images[order] if nrow else grid_images, out / "grid.png", nrow=nrow)
    stale = sorted(set(out.glob("sample-*.png")) - set(paths))
    for path in stale:  # an earlier, larger run's images: no record describes them any more
        path.unlink()
    if stale:
        log.warning("removed %d sample PNGs of an earlier run in %s", len(stale), out)
    record.update(
        labels=labels or None,
        decode=how if vae is None else f"vae {config.vae}",
        images=[p.name for p in paths],
        grid_images=len(grid),
        sampling_seconds=round(seconds, 3),
        complete=True,
        created=timestamp(),
    )
    write_json_atomic(out / RUN_RECORD, record)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=MODULE_PROG + "run", description="Sample images from an engine, a checkpoint or a diffusers model."
    )
    parser.add_argument(
        "--engine",
        type=Path,
        required=True,
        help="engine file (.ort.onnx/.trt.plan), exported .onnx, checkpoint folder, or diffusers pipeline/model "
        "folder (run by PyTorch)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for PNGs, grid.png and run.json")
    parser.add_argument("--num", type=int, default=16, help="images to draw (default 16)")
    parser.add_argument(
        "--batch", type=int, default=8, help="images per batch (default 8; guidance doubles the engine batch)"
    )
    parser.add_argument("--sample-steps", dest="steps", type=int, default=50, help="sampling steps (default 50)")
    add_alias(parser, "--steps", "--sample-steps")
    parser.add_argument("--scheduler", default="ddim", help="ddpm | ddim | dpm (default ddim)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request: image i is seeded from (seed, i)")
    parser.add_argument("--labels", help="comma-separated class ids, cycled over the images (default random)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--vae", type=Path, help="local diffusers AutoencoderKL folder to decode latents")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS + tuple(BACKEND_ALIASES),
        help="auto: the engine's own; for a checkpoint or diffusers folder torch (auto) or torch24; aliases ort, "
        "trt, pytorch",
    )
    return finish_parser(parser)


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    """What ``run`` does with parsed flags (the command line and :mod:`sparse_deploy.api` alike): run.json's record."""
    return run(
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


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    record = from_args(args)
    print(
        f"wrote {record['num']} images + grid.png to {args.out} ({record['backend']}, {record['precision']}, "
        f"{record['steps']} {record['scheduler']} steps, {record['sampling_seconds']:.1f} s; decode: "
        f"{record['decode']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
