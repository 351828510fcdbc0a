"""The noise schedule a model was trained with, carried from its scheduler config to every stage.

A schedule is a diffusers scheduler config (the contents of ``scheduler/scheduler_config.json``:
``_class_name``, betas, number of timesteps, prediction and variance type). Presets without one
use :data:`DEFAULT_SCHEDULE`, the linear 1,000-step schedule every built-in model is trained with.
Training draws its noise levels from it, sampling builds its scheduler from it (diffusers'
``from_config``, so a DDIM sampler keeps the model's betas), and checkpoint and engine manifests
record it (:func:`schedule_record`, with ``alphas_cumprod`` spelled out for the C++ sampler).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .errors import SparseDeployError
from .lazy import lazy_import

diffusers = lazy_import("diffusers", "the noise schedule", "make setup (the pinned diffusers of pyproject.toml)")

__all__ = [
    "DEFAULT_SCHEDULE",
    "SAMPLERS",
    "PREDICTION_TYPES",
    "check_schedule",
    "training_scheduler",
    "sampling_scheduler",
    "prediction_type",
    "training_target",
    "schedule_record",
    "sampling_config",
    "canonical_schedule",
    "SCHEDULER_CONFIG",
]

log = logging.getLogger(__name__)

# DiT's schedule (and every built-in preset's): linear betas 1e-4 .. 0.02 over 1,000 steps.
DEFAULT_SCHEDULE: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}
SAMPLERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_SUPPORTED = (
    "DDPMScheduler",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "PNDMScheduler",
)


def check_schedule(config: dict[str, Any], where: str = "scheduler config") -> dict[str, Any]:
    """Refuse a schedule the toolchain cannot train or sample with; return it unchanged."""
    if not isinstance(config, dict):
        raise SparseDeployError(f"{where} is not a JSON object")
    cls = config.get("_class_name", "DDPMScheduler")
    if cls not in _SUPPORTED:
        raise SparseDeployError(
            f"{where}: scheduler class '{cls}' is not supported; use one of {', '.join(_SUPPORTED)}"
        )
    pred = config.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise SparseDeployError(
            f"{where}: prediction_type '{pred}' is not supported; use one of {', '.join(PREDICTION_TYPES)}"
        )
    return config


def _schedule(config: dict[str, Any] | None) -> dict[str, Any]:
    return dict(config) if config else dict(DEFAULT_SCHEDULE)


def _scheduler_class(name: str):
    return getattr(diffusers, name)


def prediction_type(config: dict[str, Any] | None) -> str:
    """``epsilon`` | ``v_prediction`` | ``sample``: what the model's first channels predict."""
    return _schedule(config).get("prediction_type", "epsilon")


def training_scheduler(config: dict[str, Any] | None = None):
    """The schedule as a diffusers scheduler of its own class (its ``alphas_cumprod`` drive training)."""
    config = _schedule(config)
    return _scheduler_class(config.get("_class_name", "DDPMScheduler")).from_config(config)


def sampling_scheduler(name: str, config: dict[str, Any] | None = None):
    """A scheduler for sampling: ``ddpm``, ``ddim`` or ``dpm`` (DPM-Solver++ multistep).

    With a model schedule it is diffusers' ``<Class>.from_config(schedule)``: the model's own
    scheduler when the class matches, otherwise the sampler with the model's betas. Without
    one, the built-in linear schedule (DDIM without clipping, final alpha from step 0).
    """
    if name not in SAMPLERS:
        raise SparseDeployError(f"unknown scheduler '{name}'; choose one of: {', '.join(SAMPLERS)}")
    cls = _scheduler_class(SAMPLERS[name])
    if config:
        return cls.from_config(config)
    common = {k: DEFAULT_SCHEDULE[k] for k in ("num_train_timesteps", "beta_schedule")}
    if name == "ddim":
        return cls(**common, set_alpha_to_one=False, clip_sample=False)
    return cls(**common)


#: The file a diffusers scheduler folder holds (``scheduler/`` of a pipeline, or beside a model's config.json).
SCHEDULER_CONFIG = "scheduler_config.json"


def _public(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def sampling_config(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DDIM scheduler config the toolchain samples with, as diffusers writes it (``_class_name`` included).

    What a diffusers folder written by the toolchain carries in ``scheduler/scheduler_config.json``, so that
    ``DDIMScheduler.from_pretrained(folder, subfolder="scheduler")`` samples as ``run`` does: the model's
    betas, and for the default schedule ``clip_sample=False`` and ``set_alpha_to_one=False``.
    """
    return {"_class_name": SAMPLERS["ddim"], **_public(sampling_scheduler("ddim", config).config)}


def canonical_schedule(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``config``, or None when it is exactly the DDIM config the default schedule is sampled with.

    A folder the toolchain wrote for a model without a schedule of its own carries
    :func:`sampling_config` ``(None)``; reading it back as None keeps that model's preset, run
    identity and artifacts the same as its source's.
    """
    if config is None:
        return None
    if config.get("_class_name", SAMPLERS["ddim"]) != SAMPLERS["ddim"]:
        return config
    if _public(sampling_scheduler("ddim", config).config) == _public(sampling_config(None)):
        return None
    return config


def training_target(
    config: dict[str, Any] | None, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """What the model's first channels should output for ``x_t = sqrt(a) x0 + sqrt(1 - a) noise``."""
    pred = prediction_type(config)
    if pred == "epsilon":
        return noise
    if pred == "v_prediction":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    return x0


def schedule_record(config: dict[str, Any] | None) -> dict[str, Any]:
    """The schedule for a manifest: its config, what it means, and ``alphas_cumprod`` (float32).

    The C++ sampler reads ``alphas_cumprod``, ``prediction_type``, ``steps_offset``,
    ``timestep_spacing`` and ``final_alpha_cumprod`` instead of assuming a linear schedule.
    """
    given = config is not None
    config = _schedule(config)
    ddim = sampling_scheduler("ddim", config if given else None)
    return {
        "source": "model scheduler config" if given else "default (linear betas, 1000 steps)",
        "config": config,
        "num_train_timesteps": int(ddim.config.num_train_timesteps),
        "prediction_type": ddim.config.prediction_type,
        "variance_type": config.get("variance_type"),
        "timestep_spacing": ddim.config.timestep_spacing,
        "steps_offset": int(ddim.config.steps_offset),
        "clip_sample": bool(ddim.config.clip_sample),
        "clip_sample_range": float(ddim.config.clip_sample_range),
        "final_alpha_cumprod": float(ddim.final_alpha_cumprod),
        "alphas_cumprod": [float(a) for a in ddim.alphas_cumprod.float()],
    }
