"""What an export is asked for: :class:`ExportConfig`, checked without touching the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import KINDS
from ..contract import PRECISIONS, BatchProfile
from ..errors import SparseDeployError
from ..guards import check_seed
from ..outputs import check_output
from ..presets import get_preset
from ..settings import DEFAULT_MAX_BATCH, DEFAULT_PRECISIONS
from ..sources import is_path

__all__ = ["ExportConfig"]


@dataclass
class ExportConfig:
    """What to export, from which weights, and where.

    Attributes:
        model: preset name; taken from the checkpoint when omitted.
        checkpoint: a checkpoint folder (``checkpoint.save_checkpoint``), dense or sparse.
        dense_checkpoint: the dense checkpoint for the dense graph of a sparse checkpoint (overrides
            the sparse checkpoint manifest's ``dense_checkpoint``).
        weights: a diffusers model folder or a ``.safetensors`` file (dense).
        out: folder for the graphs; default ``export/<preset>``.
        precisions: ``fp32`` and/or ``fp16``.
        kinds: ``dense`` and/or ``sparse``.
        max_batch / opt_batch: the batch profile written into a new graph's contract, i.e. the
            batches a runner of the bare graph accepts. The graph's batch axis is dynamic and the
            profile is not part of its identity: a graph reused by ``build`` keeps the profile it
            was exported with, and engines take theirs from the build (``BuildConfig``).
        require_masks: refuse a sparse export of a model without masks instead of pruning it
            one-shot.
        seed: seed of the random initialisation when there is neither checkpoint nor weights.
        external_data: write every graph's weights to ``<graph>.onnx.data`` (ONNX external
            data); graphs over 2 GiB of weights get it regardless.
    """

    model: str | None = None
    checkpoint: Path | None = None
    dense_checkpoint: Path | None = None
    weights: Path | None = None
    out: Path | None = None
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    kinds: tuple[str, ...] = KINDS
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int | None = None
    require_masks: bool = False
    seed: int = 0
    external_data: bool = False

    def validate(self) -> ExportConfig:
        if is_path(self.model):  # a pipeline/model folder or file given as --model: it is the weights
            if self.weights is not None:
                raise SparseDeployError(
                    f"--model '{self.model}' is a path and --weights '{self.weights}' too; pass the model once"
                )
            self.model, self.weights = None, Path(self.model)
        if self.model is not None:
            get_preset(self.model)
        if self.checkpoint is not None and self.weights is not None:
            raise SparseDeployError("pass either --checkpoint or --weights, not both")
        if self.model is None and self.checkpoint is None and self.weights is None:
            raise SparseDeployError(
                "--model is required unless --checkpoint names a checkpoint or --weights a diffusers "
                "pipeline/model folder (whose config names the layout)"
            )
        _check_choices("--precision", self.precisions, PRECISIONS)
        _check_choices("--kinds", self.kinds, KINDS)
        self.profile.validate()
        check_seed(self.seed)
        if self.out is not None:
            check_output(self.out, "export", "--out")
        return self

    @property
    def profile(self) -> BatchProfile:
        """The batch profile a new graph's contract records (see the class docstring)."""
        return BatchProfile.from_flags(self.max_batch, self.opt_batch)


def _check_choices(flag: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    if not values:
        raise SparseDeployError(f"{flag} needs at least one of: {', '.join(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SparseDeployError(f"unknown {flag} value(s) {bad}; choose from: {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise SparseDeployError(f"{flag} lists a value twice: {list(values)}")
