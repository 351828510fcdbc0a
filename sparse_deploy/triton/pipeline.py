"""The sampling pipeline served by Triton: its I/O, request validation and the loop itself.

This module is plain Python (no Triton import): the pipeline model (``pipeline/1/model.py``)
reads its inputs into numpy arrays and calls :func:`parse_request` and :func:`run_request`; the
repository generator and the client read the tensor names and types from :data:`PIPELINE_INPUTS`
and :func:`pipeline_outputs`. One request is one batch of images::

    seed          INT64  [1]    optional, default 0: seeds the initial noise (and random labels)
    first_image   INT64  [1]    optional, default 0: the index of this request's first image in a
                                larger draw split over requests (image j is seeded from seed and
                                first_image + j, sampling.image_seed)
    num_images    INT64  [1]    optional, default len(class_labels), else 1
    class_labels  INT64  [-1]   optional (class-conditional models): cycled over the images;
                                random labels when omitted
    steps         INT64  [1]    optional, default 50
    guidance      FP32   [1]    optional, default 1 (off); classifier-free guidance scale
    request parameter "scheduler"  optional, default "ddim": ddpm | ddim | dpm

The scheduler is a request *parameter*, not a STRING tensor: the Python-backend stub in the
nvidia-pytriton wheel is built for NumPy 1, and with NumPy 2 in the environment it crashed while
deserializing any BYTES input (numeric tensors are passed through DLPack, which is unaffected).

    images        UINT8  [N, H, W, C]   decoded images
    samples       FP32   [N, C, S, S]   model-space samples (pixels in [-1, 1] or latents)
    labels        INT64  [N]            the labels used (class-conditional models only)

With the same arguments the images equal ``python -m sparse_deploy.run``'s images
``first_image .. first_image + N - 1`` of the same seed (any ``--batch``): both call
:func:`sparse_deploy.sampling.sample`, which seeds each image from the seed and its index.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SparseDeployError
from ..presets import Preset, get_preset
from ..sampling import SCHEDULERS, TRAIN_TIMESTEPS, DenoiseFn, decode, sample

__all__ = [
    "PipelineTensor",
    "PIPELINE_INPUTS",
    "PIPELINE_PARAMETERS",
    "pipeline_outputs",
    "PipelineSettings",
    "PipelineRequest",
    "parse_request",
    "run_request",
]


@dataclass(frozen=True)
class PipelineTensor:
    """One pipeline input or output; ``-1`` marks a variable dimension (no batch axis)."""

    name: str
    dtype: str  # numpy dtype name, or "string"
    dims: tuple[int, ...]
    doc: str = ""


PIPELINE_INPUTS: tuple[PipelineTensor, ...] = (
    PipelineTensor("seed", "int64", (1,), "seeds the initial noise and random labels (default 0)"),
    PipelineTensor("first_image", "int64", (1,), "index of the request's first image in a larger draw (default 0)"),
    PipelineTensor("num_images", "int64", (1,), "images to draw (default: len(class_labels), else 1)"),
    PipelineTensor("class_labels", "int64", (-1,), "class ids cycled over the images (default random)"),
    PipelineTensor("steps", "int64", (1,), "scheduler steps (default 50)"),
    PipelineTensor("guidance", "float32", (1,), "classifier-free guidance scale (default 1 = off)"),
)
# Request parameters (strings) the pipeline reads.
PIPELINE_PARAMETERS = {"scheduler": "ddpm | ddim | dpm (default ddim)"}


def pipeline_outputs(preset: Preset, vae: bool = False) -> tuple[PipelineTensor, ...]:
    """The pipeline's outputs for ``preset`` (decoded through a VAE when ``vae``)."""
    s, c = preset.sample_size, preset.in_channels
    if preset.latent and vae:
        image_dims: tuple[int, ...] = (-1, -1, -1, 3)  # the VAE sets the pixel size
    elif preset.latent:
        image_dims = (-1, s, s, 3 if c >= 3 else 1)
    else:
        image_dims = (-1, s, s, c)
    outputs = [
        PipelineTensor("images", "uint8", image_dims, "decoded images, [N, H, W, C] uint8"),
        PipelineTensor("samples", "float32", (-1, c, s, s), "model-space samples, [N, C, S, S] float32"),
    ]
    if preset.num_classes:
        outputs.append(PipelineTensor("labels", "int64", (-1,), "the class labels used, [N]"))
    return tuple(outputs)


@dataclass(frozen=True)
class PipelineSettings:
    """What the pipeline model knows about its denoiser (from its config.pbtxt parameters)."""

    preset: str
    precision: str
    max_batch: int
    denoiser: str = "denoiser"
    default_steps: int = 50
    max_steps: int = TRAIN_TIMESTEPS
    default_scheduler: str = "ddim"
    vae: str = ""
    preset_spec: str = ""  # JSON of the whole preset (model config and schedule); "" for a built-in preset

    def model_preset(self) -> Preset:
        """The denoiser's preset (with its noise schedule): the recorded spec, else the built-in one."""
        if self.preset_spec:
            return Preset.from_dict(json.loads(self.preset_spec))
        return get_preset(self.preset)

    def to_parameters(self) -> dict[str, str]:
        """Model-config parameters (all strings)."""
        return {k: str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> PipelineSettings:
        try:
            return cls(
                preset=params["preset"],
                precision=params["precision"],
                max_batch=int(params["max_batch"]),
                denoiser=params.get("denoiser", "denoiser"),
                default_steps=int(params.get("default_steps", 50)),
                max_steps=int(params.get("max_steps", TRAIN_TIMESTEPS)),
                default_scheduler=params.get("default_scheduler", "ddim"),
                vae=params.get("vae", ""),
                preset_spec=params.get("preset_spec", ""),
            )
        except (KeyError, ValueError) as exc:
            raise SparseDeployError(
                f"pipeline config parameters are incomplete or malformed ({exc}); regenerate the repository"
            ) from exc


@dataclass(frozen=True)
class PipelineRequest:
    """One validated request."""

    num_images: int
    seed: int
    labels: tuple[int, ...] | None
    steps: int
    guidance: float
    scheduler: str
    first: int = 0  # the index of the request's first image in a larger draw

    @property
    def denoiser_batch(self) -> int:
        return self.num_images * (2 if self.guidance != 1.0 else 1)


def _one(name: str, value: np.ndarray, kind: str) -> Any:
    if value.size != 1:
        raise SparseDeployError(f"input '{name}' takes exactly one value, got shape {list(value.shape)}")
    if kind == "int" and not np.issubdtype(value.dtype, np.integer):
        raise SparseDeployError(f"input '{name}' must be INT64, got {value.dtype}")
    if kind == "float" and not np.issubdtype(value.dtype, np.floating):
        raise SparseDeployError(f"input '{name}' must be FP32, got {value.dtype}")
    return value.reshape(-1)[0]


def parse_request(
    values: Mapping[str, np.ndarray | None], settings: PipelineSettings, parameters: Mapping[str, Any] | None = None
) -> PipelineRequest:
    """Validate one request's inputs (``None`` for an absent optional input) and parameters.

    Parameters other than :data:`PIPELINE_PARAMETERS` are ignored (clients and frontends add
    their own).

    Raises:
        SparseDeployError: one sentence naming the input, what was wrong and what is accepted.
    """
    preset = settings.model_preset()
    unknown = sorted(set(values) - {t.name for t in PIPELINE_INPUTS})
    if unknown:
        raise SparseDeployError(f"unknown input(s) {unknown}; the pipeline takes {[t.name for t in PIPELINE_INPUTS]}")
    get = lambda name: None if values.get(name) is None else np.asarray(values[name])  # noqa: E731

    seed = 0 if get("seed") is None else int(_one("seed", get("seed"), "int"))
    first = 0 if get("first_image") is None else int(_one("first_image", get("first_image"), "int"))
    if first < 0:
        raise SparseDeployError(f"input 'first_image' must be at least 0, got {first}")

    labels: tuple[int, ...] | None = None
    raw_labels = get("class_labels")
    if raw_labels is not None:
        if not preset.num_classes:
            raise SparseDeployError(f"model '{preset.name}' is unconditional: drop the class_labels input")
        if raw_labels.ndim != 1 or raw_labels.size == 0:
            raise SparseDeployError(
                f"input 'class_labels' must be a non-empty 1-D INT64 tensor, got shape {list(raw_labels.shape)}"
            )
        if not np.issubdtype(raw_labels.dtype, np.integer):
            raise SparseDeployError(f"input 'class_labels' must be INT64, got {raw_labels.dtype}")
        bad = sorted({int(v) for v in raw_labels if not 0 <= int(v) < preset.num_classes})
        if bad:
            raise SparseDeployError(
                f"unknown class label(s) {bad}: model '{preset.name}' has classes 0..{preset.num_classes - 1}"
            )
        labels = tuple(int(v) for v in raw_labels)

    if get("num_images") is not None:
        num = int(_one("num_images", get("num_images"), "int"))
    else:
        num = len(labels) if labels else 1
    if num < 1:
        raise SparseDeployError(f"input 'num_images' must be at least 1, got {num}")

    steps = settings.default_steps if get("steps") is None else int(_one("steps", get("steps"), "int"))
    if not 1 <= steps <= settings.max_steps:
        raise SparseDeployError(f"input 'steps' must be between 1 and {settings.max_steps}, got {steps}")

    guidance = 1.0 if get("guidance") is None else float(_one("guidance", get("guidance"), "float"))
    if not math.isfinite(guidance) or guidance < 0:
        raise SparseDeployError(f"input 'guidance' must be a finite number >= 0, got {guidance}")
    if guidance != 1.0 and not preset.num_classes:
        raise SparseDeployError(
            f"classifier-free guidance needs a class-conditional model; '{preset.name}' is "
            "unconditional (send guidance 1)"
        )

    scheduler = (parameters or {}).get("scheduler", settings.default_scheduler)
    if scheduler not in SCHEDULERS:
        raise SparseDeployError(
            f"unknown scheduler {scheduler!r} (request parameter 'scheduler'); choose one of: {', '.join(SCHEDULERS)}"
        )

    request = PipelineRequest(num, seed, labels, steps, guidance, scheduler, first)
    if request.denoiser_batch > settings.max_batch:
        per = settings.max_batch // (2 if guidance != 1.0 else 1)
        raise SparseDeployError(
            f"{num} images{' with guidance (2 denoiser rows each)' if guidance != 1.0 else ''} "
            "need a denoiser batch of "
            f"{request.denoiser_batch}, above the engine's max batch {settings.max_batch}; send "
            f"at most {per} images per request"
        )
    return request


def run_request(request: PipelineRequest, denoise: DenoiseFn, preset: Preset, vae: Any = None) -> dict[str, np.ndarray]:
    """Run the sampling loop for one request and decode its images.

    Returns:
        ``{"images": uint8 [N, H, W, C], "samples": float32 [N, C, S, S], "labels": int64 [N]}``
        (``labels`` only for class-conditional models).
    """
    x, y = sample(
        denoise,
        preset,
        batch=request.num_images,
        steps=request.steps,
        scheduler=request.scheduler,
        seed=request.seed,
        first=request.first,
        labels=list(request.labels) if request.labels else None,
        guidance=request.guidance,
    )
    images, _ = decode(x, preset, vae)
    out = {"images": np.ascontiguousarray(images), "samples": np.ascontiguousarray(x.float().numpy())}
    if preset.num_classes:
        out["labels"] = y.numpy().astype(np.int64)
    return out
