"""The denoising loop, shared by training previews, the runner, benchmarks and Triton.

The loop only needs a *denoise function* ``(sample, timestep, class_labels) -> output``
on CPU torch tensors, so the same code drives the PyTorch model, ONNX Runtime, TensorRT or a
Triton BLS call. Initial noise comes from a seeded CPU generator: one seed gives the same
images on every backend, within the backend's numerical tolerance. Every image has its own
generator, seeded by :func:`image_seed` from the request's seed and the image's index in the request:
the one rule for "the same images" (``run``, ``bench grids``, the method comparison, Triton). Image
``i`` of a request is the same whatever the batch size, and two requests share no image unless
their seeds are equal. A request for many images is drawn batch by batch with :func:`sample_request`;
:func:`decode` turns model-space samples into uint8 images.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .cliargs import comma_ints
from .errors import SparseDeployError
from .presets import Preset
from .provenance import atomic_path
from .schedule import DEFAULT_SCHEDULE, sampling_scheduler
from .schedule import training_scheduler as _training

__all__ = [
    "SCHEDULERS",
    "DenoiseFn",
    "make_scheduler",
    "training_scheduler",
    "sample",
    "image_seed",
    "image_generators",
    "initial_noise",
    "SEEDING",
    "sample_request",
    "to_uint8",
    "decode",
    "save_grid",
    "save_pngs",
    "parse_labels",
    "class_rows",
]

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

SCHEDULERS = ("ddpm", "ddim", "dpm")
# The default noise schedule's length (sparse_deploy.schedule.DEFAULT_SCHEDULE, DiT's: linear betas,
# 1,000 steps); a model's own scheduler config replaces the schedule (``Preset.schedule``).
TRAIN_TIMESTEPS = DEFAULT_SCHEDULE["num_train_timesteps"]


def training_scheduler(schedule: dict | None = None):
    """The training noise schedule as a diffusers scheduler (default: linear, 1000 steps)."""
    return _training(schedule)


def make_scheduler(name: str, schedule: dict | None = None):
    """A diffusers scheduler for sampling: ``ddpm``, ``ddim`` or ``dpm`` (DPM-Solver++ multistep),
    with the model's schedule when it has one (``Preset.schedule``)."""
    return sampling_scheduler(name, schedule)


#: How images are seeded, as recorded beside them (run.json, the shipped score).
SEEDING = (
    "image i of a request seeded s: torch.Generator seeded with the first 8 bytes (little-endian) of sha256('s:i')"
)


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image ``index`` of a request seeded ``seed`` (:data:`SEEDING`).

    A hash, so that no two (seed, index) pairs in practice share a generator: seeds that differ by
    a multiple of the batch size draw different images, as do overlapping requests.
    """
    digest = hashlib.sha256(f"{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def image_generators(seed: int, first: int, count: int) -> list[torch.Generator]:
    """One generator per image ``first .. first + count - 1`` of a request seeded ``seed``."""
    return [torch.Generator().manual_seed(image_seed(seed, first + j)) for j in range(count)]


def initial_noise(preset: Preset, seed: int, count: int, first: int = 0, labels_drawn: bool = False) -> torch.Tensor:
    """The initial noise :func:`sample` starts images ``first ..`` from (before ``init_noise_sigma``).

    ``labels_drawn``: the request drew random labels first (no ``labels`` given to a class-conditional model).
    """
    shape = (1, preset.in_channels, preset.sample_size, preset.sample_size)
    noise = []
    for gen in image_generators(seed, first, count):
        if labels_drawn:
            torch.randint(0, preset.num_classes, (1,), generator=gen)
        noise.append(torch.randn(shape, generator=gen))
    return torch.cat(noise)


def _labels_tensor(
    preset: Preset, labels: Sequence[int] | None, batch: int, gens: list[torch.Generator]
) -> torch.Tensor | None:
    if not preset.num_classes:
        if labels:
            raise SparseDeployError(f"preset '{preset.name}' is unconditional; drop --labels")
        return None
    if not labels:
        return torch.cat([torch.randint(0, preset.num_classes, (1,), generator=g) for g in gens])
    bad = [lab for lab in labels if not 0 <= lab < preset.num_classes]
    if bad:
        raise SparseDeployError(f"class labels {bad} are outside 0..{preset.num_classes - 1} of preset '{preset.name}'")
    return torch.tensor([labels[i % len(labels)] for i in range(batch)], dtype=torch.int64)


@torch.no_grad()
def sample(
    denoise: DenoiseFn,
    preset: Preset,
    *,
    batch: int,
    steps: int = 50,
    scheduler: str = "ddim",
    seed: int = 0,
    labels: Sequence[int] | None = None,
    guidance: float = 1.0,
    progress: bool = False,
    first: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the full denoising loop.

    Args:
        denoise: ``(sample, timestep, class_labels) -> output`` on CPU float32 tensors.
        preset: fixes the sample shape, classes and how to read the output.
        batch: images to draw.
        steps: scheduler steps (>= 1).
        scheduler: ``ddpm`` | ``ddim`` | ``dpm``.
        seed: the request's seed: image ``j`` draws its random label, initial noise and stochastic
            scheduler noise from its own generator, seeded ``image_seed(seed, first + j)``.
        labels: class ids, cycled over the batch; random when omitted (class-conditional only).
        guidance: classifier-free guidance scale; 1 disables it. With guidance the denoiser
            is called on a batch of ``2 * batch`` (conditional and null labels).
        first: the index of this batch's first image in its request (:func:`sample_request`).

    Returns:
        ``(samples, labels)``: samples in the model's space (pixels in [-1, 1] or latents).
    """
    if not 1 <= steps <= TRAIN_TIMESTEPS:
        raise SparseDeployError(
            f"--steps must be between 1 and {TRAIN_TIMESTEPS} (the training schedule's length), got {steps}"
        )
    if not math.isfinite(guidance):
        raise SparseDeployError(f"--guidance must be a finite number, got {guidance}")
    if batch < 1:
        raise SparseDeployError(f"--batch must be at least 1, got {batch}")
    use_cfg = guidance != 1.0
    if use_cfg and not preset.num_classes:
        raise SparseDeployError(
            f"classifier-free guidance needs a class-conditional model; '{preset.name}' is unconditional"
        )
    gens = image_generators(seed, first, batch)
    y = _labels_tensor(preset, labels, batch, gens)
    sched = make_scheduler(scheduler, preset.schedule)
    sched.set_timesteps(steps)
    # A DDPM sampler with a learned-range variance reads the model's variance channels too.
    keep = (
        preset.out_channels
        if getattr(sched.config, "variance_type", None) in ("learned", "learned_range")
        else preset.in_channels
    )
    shape = (1, preset.in_channels, preset.sample_size, preset.sample_size)
    x = torch.cat([torch.randn(shape, generator=g) for g in gens])
    x = x * sched.init_noise_sigma
    if use_cfg:
        y_in = torch.cat([y, torch.full_like(y, preset.null_class)])
    timesteps = sched.timesteps
    iterator = timesteps
    if progress:
        iterator = tqdm(timesteps, desc="sampling", unit="step")
    c = preset.in_channels
    for t in iterator:
        x_in = sched.scale_model_input(x, t)
        if use_cfg:
            x_in = torch.cat([x_in, x_in])
        t_in = torch.full((x_in.shape[0],), int(t), dtype=torch.int64)
        out = denoise(x_in, t_in, y_in if use_cfg else y).float()[:, :keep]
        if use_cfg:  # guidance on epsilon; the variance (if kept) is the conditional one
            cond, uncond = out.chunk(2)
            out = torch.cat([uncond[:, :c] + guidance * (cond[:, :c] - uncond[:, :c]), cond[:, c:]], dim=1)
        x = sched.step(out, t, x, generator=gens, return_dict=False)[0]  # one generator per image
    return x, y


def sample_request(
    denoise: DenoiseFn,
    preset: Preset,
    *,
    num: int,
    batch: int,
    seed: int = 0,
    labels: Sequence[int] | None = None,
    progress: bool = False,
    **options: Any,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Draw ``num`` images in batches of ``batch`` with :func:`sample`.

    Args:
        denoise / preset: as for :func:`sample`.
        num: images in the request; batch: images per batch (the last one may be smaller).
        seed: the request's seed; image ``i`` is seeded ``image_seed(seed, i)`` whatever the batch size.
        labels: class ids cycled over the request (image ``i`` gets ``labels[i % len(labels)]``);
            None: random labels drawn from each batch's generator.
        progress: a bar over the batches (over the steps when there is a single batch).
        options: ``steps``, ``scheduler``, ``guidance`` of :func:`sample`.

    Yields:
        ``(index of the batch's first image, samples, labels)`` per batch, in order.
    """
    starts = range(0, num, batch)
    for start in tqdm(starts, desc="batches", unit="batch", disable=not progress or len(starts) < 2):
        n = min(batch, num - start)
        chosen = [labels[(start + j) % len(labels)] for j in range(n)] if labels else None
        x, y = sample(
            denoise,
            preset,
            batch=n,
            seed=seed,
            first=start,
            labels=chosen,
            progress=progress and len(starts) == 1,
            **options,
        )
        yield start, x, y


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> ``[B, H, W, C]`` uint8 (C = 1 or 3)."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def decode(samples: torch.Tensor, preset: Preset, vae=None, chunk: int = 8) -> tuple[np.ndarray, str]:
    """Model-space samples -> uint8 images ``[B, H, W, C]`` and a word on how they were made.

    Pixel models: :func:`to_uint8`. Latent models: decoded by ``vae`` (a diffusers
    ``AutoencoderKL``) when given; otherwise their first three latent channels (one for models
    with fewer than three), each image normalised to its own range, and the word says so.
    """
    if not preset.latent:
        return to_uint8(samples), "pixels"
    if vae is not None:
        scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        parts = [vae.decode(samples[i : i + chunk] / scale).sample for i in range(0, len(samples), chunk)]
        return to_uint8(torch.cat(parts)), "vae"
    channels = samples[:, : 3 if samples.shape[1] >= 3 else 1]
    flat = channels.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    scaled = (channels - lo[:, None, None, None]) / (hi - lo).clamp_min(1e-8)[:, None, None, None] * 2 - 1
    return to_uint8(
        scaled
    ), f"latent channels 0..{channels.shape[1] - 1}, min-max normalised per image (no --vae: not decoded images)"


def _pil(arr: np.ndarray):
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_grid(
    images: np.ndarray, path: str | Path, nrow: int | None = None, pad: int = 2, scale: int | None = None
) -> Path:
    """Tile uint8 images ``[B, H, W, C]`` into one PNG (written atomically).

    ``scale`` enlarges the grid by nearest-neighbour; by default small images (< 64 px) are
    enlarged so that each tile is at least 56 px wide.
    """
    b, h, w, c = images.shape
    if scale is None:
        scale = max(1, 56 // w)
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    image = _pil(grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), resample=0)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def class_rows(labels: Sequence[int] | None) -> tuple[list[int], int | None]:
    """Image order and row length that give a grid one row per class.

    With labels that cover each of their classes equally often the order groups images by class
    (stable) and the row length is the count per class; otherwise the order is unchanged and the
    row length None (square grid).
    """
    if not labels:
        return [], None
    labels = [int(v) for v in labels]
    counts = {c: labels.count(c) for c in set(labels)}
    per_class = next(iter(counts.values()))
    if len(counts) < 2 or any(n != per_class for n in counts.values()):
        return list(range(len(labels))), None
    return sorted(range(len(labels)), key=lambda i: (labels[i], i)), per_class


def save_pngs(images: np.ndarray, folder: str | Path, prefix: str = "sample", start: int = 0) -> list[Path]:
    """Write one PNG per image into ``folder`` (``<prefix>-<start + i>``), each through a temporary name (never
    half-written).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images, start):
        p = folder / f"{prefix}-{i:04d}.png"
        with atomic_path(p) as tmp:
            _pil(img).save(tmp, format="PNG")
        paths.append(p)
    return paths


def parse_labels(text: str | None) -> tuple[int, ...] | None:
    """``--labels`` text (``"0,1,2"``) -> class ids; None when empty."""
    if text is None:
        return None
    labels = comma_ints(text, what="--labels as comma-separated class ids like 0,1,2")
    if not labels:
        raise SparseDeployError(
            f"--labels takes comma-separated class ids like 0,1,2; got '{text}' (no ids); omit it for random labels"
        )
    return labels
