"""One I/O contract per exportable model, shared by the exporter, the engine builders, the
runtimes and the Triton config generator.

The denoiser's contract::

    sample        [B, C, H, W]  float32 | float16   noisy sample (pixels or latents)
    timestep      [B]           int64               diffusion step in [0, 1000)
    class_labels  [B]           int64               class id; num_classes is the null label (CFG)
                                                    (present only for class-conditional models)
    out           [B, C', H, W] float32 | float16   epsilon (C' = 2C when the model learns sigma)

``B`` is the one dynamic axis; its min/opt/max profile bounds what engines accept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import SparseDeployError
from .presets import Preset
from .settings import DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH

__all__ = [
    "PRECISIONS",
    "PRECISION_DTYPES",
    "MAX_PROFILE_BATCH",
    "float_dtype",
    "precision_of",
    "TensorSpec",
    "BatchProfile",
    "IOContract",
    "contract_for",
    "contract_problem",
]

#: The one precision -> dtype table: the numpy (and torch) name of a float tensor at each precision.
PRECISION_DTYPES: dict[str, str] = {"fp32": "float32", "fp16": "float16"}
PRECISIONS = tuple(PRECISION_DTYPES)
#: The largest batch a profile may name; far beyond what one GPU holds for these models.
MAX_PROFILE_BATCH = 4096


def float_dtype(precision: str) -> str:
    """The numpy/torch dtype name of float tensors at ``precision`` (``float32`` | ``float16``)."""
    if precision not in PRECISION_DTYPES:
        raise SparseDeployError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    return PRECISION_DTYPES[precision]


def precision_of(manifest: dict[str, Any]) -> str | None:
    """An artifact's precision: its contract's (manifests written before one field kept a top-level copy)."""
    contract = manifest.get("contract")
    precision = contract.get("precision") if isinstance(contract, dict) else None
    return precision if precision is not None else manifest.get("precision")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor; ``-1`` in ``shape`` marks the dynamic batch axis."""

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == -1 else d for d in self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes an engine is built for (TensorRT optimization profile)."""

    min: int = 1
    opt: int = DEFAULT_OPT_BATCH
    max: int = DEFAULT_MAX_BATCH

    @classmethod
    def from_flags(cls, max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int | None = None) -> "BatchProfile":
        """The profile ``--max-batch`` / ``--opt-batch`` ask for (opt defaults to ``min(DEFAULT_OPT_BATCH, max)``)."""
        if not 1 <= max_batch <= MAX_PROFILE_BATCH:
            raise SparseDeployError(f"--max-batch must be between 1 and {MAX_PROFILE_BATCH}, got {max_batch}")
        opt = opt_batch if opt_batch is not None else min(DEFAULT_OPT_BATCH, max_batch)
        if not 1 <= opt <= max_batch:
            raise SparseDeployError(f"--opt-batch must be between 1 and --max-batch {max_batch}, got {opt}")
        return cls(min=1, opt=opt, max=max_batch)

    def validate(self) -> "BatchProfile":
        if not 1 <= self.min <= self.opt <= self.max:
            raise SparseDeployError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        return self

    def check(self, batch: int, where: str = "engine") -> None:
        """Refuse a batch the profile does not cover, saying how to fix it."""
        if not self.min <= batch <= self.max:
            raise SparseDeployError(
                f"batch {batch} is outside the {where}'s profile [{self.min}, {self.max}] "
                f"(classifier-free guidance doubles the batch); lower --batch or rebuild with --max-batch {batch}"
            )


@dataclass(frozen=True)
class IOContract:
    """Names, dtypes, dynamic axis and batch profile of one exported model."""

    preset: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: BatchProfile
    num_classes: int | None = None  # None in contracts written before it was recorded

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s dynamic_axes: axis 0 of every tensor is the batch."""
        return {t.name: {0: "batch"} for t in (*self.inputs, *self.outputs)}

    def sample_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random valid inputs as numpy arrays, keyed by input name.

        For a class-conditional model, the last label of every batch of two or more is the null
        label (``num_classes``, classifier-free guidance's unconditional row), so every check
        that runs these inputs at such a batch also covers the guidance path.
        """
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = spec.concrete(batch)
            if spec.name == "sample":
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.name == "timestep":
                feeds[spec.name] = rng.integers(0, 1000, shape).astype(spec.dtype)
            else:
                labels = rng.integers(0, self._num_classes, shape)
                if batch > 1:
                    labels[-1] = self.null_label
                feeds[spec.name] = labels.astype(spec.dtype)
        return feeds

    @property
    def null_label(self) -> int | None:
        """The class id meaning "no class" (``num_classes``), or None for an unconditional model."""
        return self._num_classes if "class_labels" in self.input_names else None

    @property
    def _num_classes(self) -> int:
        if self.num_classes is not None:
            return max(self.num_classes, 1)
        from .presets import get_preset

        return max(get_preset(self.preset).num_classes, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IOContract":
        return cls(
            preset=data["preset"],
            precision=data["precision"],
            inputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["inputs"]),
            outputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data["outputs"]),
            profile=BatchProfile(**data["profile"]),
            num_classes=data.get("num_classes"),
        )


def contract_for(preset: Preset, precision: str = "fp32", profile: BatchProfile | None = None) -> IOContract:
    """The denoiser contract of ``preset`` at ``precision`` (``fp32`` or ``fp16``)."""
    fdt = float_dtype(precision)
    c, s = preset.in_channels, preset.sample_size
    inputs = [TensorSpec("sample", fdt, (-1, c, s, s)), TensorSpec("timestep", "int64", (-1,))]
    if preset.num_classes:
        inputs.append(TensorSpec("class_labels", "int64", (-1,)))
    outputs = (TensorSpec("out", fdt, (-1, preset.out_channels, s, s)),)
    return IOContract(
        preset.name, precision, tuple(inputs), outputs, (profile or BatchProfile()).validate(), preset.num_classes
    )


def contract_problem(manifest: dict[str, Any]) -> str | None:
    """Why a manifest's preset, precision and contract disagree (field by field); None when they agree.

    The contract must be exactly the one the manifest's preset (its recorded ``preset_spec``, else
    the built-in preset it names) and precision give (I/O names, dtypes, shapes), with a valid
    batch profile. The precision is the contract's; a top-level ``precision`` (manifests written
    before there was one field) must agree with it.
    """
    from .presets import PRESET_SPEC, PRESETS, preset_from_manifest

    preset = manifest.get("preset")
    precision = manifest.get("precision", precision_of(manifest))
    if preset not in PRESETS and not isinstance(manifest.get(PRESET_SPEC), dict):
        return f"its preset {preset!r} is not one of {', '.join(PRESETS)} and it records no {PRESET_SPEC}"
    if precision not in PRECISIONS:
        return f"its precision {precision!r} is not one of {', '.join(PRECISIONS)}"
    try:
        spec = preset_from_manifest(manifest)
        contract = IOContract.from_dict(manifest["contract"])
        contract.profile.validate()
    except (KeyError, TypeError, ValueError, SparseDeployError) as exc:
        return f"its contract or preset is incomplete or malformed ({exc.__class__.__name__}: {exc})"
    if spec.name != preset or contract.preset != preset or contract.precision != precision:
        return f"its contract is for {contract.preset}/{contract.precision} but it says {preset}/{precision}"
    expected = contract_for(spec, precision, contract.profile)
    if contract.num_classes is None:  # written before contracts recorded num_classes
        contract = dataclasses.replace(contract, num_classes=expected.num_classes)
    if contract != expected:
        return f"its contract (I/O names, dtypes or shapes) is not the one preset '{preset}' at {precision} has"
    return None
