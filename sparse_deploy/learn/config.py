"""The settings of one training run (:class:`TrainConfig`).

Plain values; ``validate()`` fills in the preset's defaults and checks them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from ..errors import SparseDeployError
from ..guards import check_device, check_finite, check_positive, check_seed
from ..inputs import run_preset
from ..modes import MODES
from ..presets import Preset
from ..settings import KD_FEATURES_MIN_STEPS, MAX_WARMUP_SHARE
from ..sparsify import SparsityConfig

__all__ = ["TrainConfig", "LR_SCHEDULES", "EMA_HORIZON_SHARE", "finetune_ema_decay", "budget_warnings"]

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")

#: A fine-tuning run's EMA averages over about this share of its steps (its horizon ``1 / (1 - decay)``).
EMA_HORIZON_SHARE = 0.1


def finetune_ema_decay(pretrain_decay: float, steps: int) -> float:
    """The EMA decay of a fine-tuning run of ``steps``.

    A horizon of ``EMA_HORIZON_SHARE`` of the run, at most the pretraining decay.
    """
    return min(pretrain_decay, max(0.0, 1.0 - 1.0 / max(EMA_HORIZON_SHARE * steps, 1.0)))


@dataclass
class TrainConfig:
    """Settings of one training run (dense when ``sparsity`` is None)."""

    preset: str | None  # preset name; None: from --weights' config or --init's manifest
    out: str
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.99, 0.999)
    warmup_steps: int | None = None
    ema_decay: float | None = None
    ema_warmup: bool | None = None  # the from-scratch EMA warm-up (default: on from scratch, off when fine-tuning)
    lr_schedule: str | None = None  # constant | cosine (default: the preset's)
    grad_clip: float = 1.0
    checkpoint_every: int | None = None
    seed: int = 0
    cfg_drop: float = 0.1
    init: str | None = None  # checkpoint to start from (and to distil from, unless teacher); sparse only with teacher
    weights: str | None = None  # or diffusers weights to start from (already 2:4 weights keep their zeros as masks)
    teacher: str | None = None  # the dense model distilled from (checkpoint or diffusers); None: a copy of the start
    masks: str | None = None  # masks made elsewhere: an mto.save file or an apex ASP state dict
    sparsity: SparsityConfig | None = None
    kd_weight: float = 0.0
    kd_features: float = 0.0  # weight of block-output distillation from the teacher
    data_weight: float = (
        1.0  # weight of the data term ||eps - eps_S||^2 (0: regress on the teacher alone, as SparseDM's code)
    )
    data: str | None = None
    vae: str | None = None
    device: str = "auto"
    preview: int = 8  # images per class in the preview grid (0: none)
    preview_steps: int = 50

    def model_preset(self) -> Preset:
        """The run's preset: from --init's manifest or --weights' config when they carry one, else by name."""
        return run_preset(self.preset, self.weights, self.init)

    @property
    def fine_tunes(self) -> bool:
        """Whether the run starts from pretrained weights (``--init`` or ``--weights``) rather than from scratch."""
        return self.init is not None or self.weights is not None

    def validate(self) -> TrainConfig:
        preset = self.model_preset()
        self.preset = preset.name
        d = preset.train
        if self.steps is None:
            self.steps = d.dense_steps if self.sparsity is None else d.sparse_steps
        tune = self.fine_tunes
        # Fine-tuning a converged model (dense or sparse) is not pretraining: the fine-tuning rate, a short
        # warm-up, and an EMA that starts at the pretrained weights and averages over a tenth of the run
        # (docs/RESULTS.md, "Fine-tuning that does no harm").
        for name, default in (
            ("batch_size", d.batch_size),
            ("lr", (d.sparse_lr or d.lr) if tune or self.sparsity else d.lr),
            ("warmup_steps", min(d.warmup_steps, max(self.steps // 20, 1)) if tune else d.warmup_steps),
            ("ema_decay", finetune_ema_decay(d.ema_decay, self.steps) if tune else d.ema_decay),
            ("ema_warmup", not tune),
            ("checkpoint_every", d.checkpoint_every),
            ("lr_schedule", d.lr_schedule),
        ):
            if getattr(self, name) is None:
                setattr(self, name, default)
        mode = (
            MODES.get(self.sparsity.mode) if self.sparsity is not None else None
        )  # an unknown one: sparsity.validate() says so
        check_positive("--steps", self.steps, mode.min_steps if mode is not None else 1)
        check_positive("--batch-size", self.batch_size, 1, 65536)
        check_positive("--checkpoint-every", self.checkpoint_every)
        check_positive("--warmup-steps", self.warmup_steps, 0)
        check_positive("--preview", self.preview, 0, 1024)
        check_seed(self.seed)
        check_positive("--preview-steps", self.preview_steps)
        check_finite("--lr", self.lr, 0, strict=True)
        check_finite("--weight-decay", self.weight_decay, 0)
        check_device(self.device)
        if self.lr_schedule not in LR_SCHEDULES:
            raise SparseDeployError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got '{self.lr_schedule}'")
        if not 0 <= self.ema_decay < 1:  # also refuses nan
            raise SparseDeployError(f"--ema must be in [0, 1), got {self.ema_decay}")
        if self.kd_weight and self.init is None and self.weights is None and self.teacher is None:
            raise SparseDeployError(
                "distillation (--kd-weight > 0) needs a dense teacher: pass --init DENSE_CHECKPOINT or --teacher DENSE"
            )
        if not (0 <= self.kd_weight < math.inf and 0 <= self.kd_features < math.inf):  # also refuses nan
            raise SparseDeployError(
                f"--kd-weight and --kd-features must be finite and >= 0, got {self.kd_weight}, {self.kd_features}"
            )
        if self.kd_features and self.init is None and self.weights is None and self.teacher is None:
            raise SparseDeployError(
                "feature distillation (--kd-features > 0) needs a dense teacher: pass --init, --weights or --teacher"
            )
        if self.teacher is not None and self.sparsity is None:
            raise SparseDeployError("--teacher is the dense model a sparse run distils from; add --sparsity MODE")
        if self.teacher is not None and not self.fine_tunes:
            raise SparseDeployError("--teacher needs a model to fine-tune: pass --weights or --init (the start)")
        if self.masks is not None and self.sparsity is None:
            raise SparseDeployError("--masks sets where a sparse run's masks start; add --sparsity MODE")
        if self.masks is not None and self.sparsity.mask_init != "magnitude":
            raise SparseDeployError(
                f"--masks and --mask-init {self.sparsity.mask_init} both say where the masks start; pass one"
            )
        if not 0 <= self.data_weight < math.inf:
            raise SparseDeployError(f"--data-weight must be finite and >= 0, got {self.data_weight}")
        if self.data_weight == 0 and not self.kd_weight:
            raise SparseDeployError(
                "--data-weight 0 leaves no loss without distillation: give --kd-weight > 0 (and --init)"
            )
        if self.sparsity is not None:
            self.sparsity.validate()
        for warning in budget_warnings(self):
            log.warning(warning)
        return self

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["sparsity"] = self.sparsity.to_dict() if self.sparsity else None
        return out


def budget_warnings(config: TrainConfig) -> list[str]:
    """Settings known to waste or hurt a run of this length, each a sentence naming the better setting.

    ``config`` must be validated (defaults filled in). Checked: a warm-up longer than
    :data:`~sparse_deploy.settings.MAX_WARMUP_SHARE` of the run (the learning rate peaks late or never),
    and block distillation (``--kd-features``) below
    :data:`~sparse_deploy.settings.KD_FEATURES_MIN_STEPS` steps (it hurt at 150 steps, docs/RESULTS.md).
    """
    out = []
    steps, warmup = config.steps, config.warmup_steps
    if steps and warmup and warmup > max(1.0, MAX_WARMUP_SHARE * steps):
        peak = min(1.0, steps / warmup)
        better = max(1, steps // 20)  # the fine-tuning default: 5% of the run
        out.append(
            f"--warmup-steps {warmup} is {warmup / steps:.0%} of the {steps}-step run "
            + (f"(the learning rate peaks at {peak:.0%} of --lr)" if peak < 1 else "(the learning rate peaks late)")
            + f"; --warmup-steps {better} (5%, the fine-tuning default) leaves the run at the full rate"
        )
    if config.sparsity is not None and config.kd_features and steps < KD_FEATURES_MIN_STEPS:
        out.append(
            f"block distillation (--kd-features {config.kd_features:g}) hurt fine-tuning runs this short "
            f"(150 steps, docs/RESULTS.md); for {steps} steps --kd-features 0 is the better setting "
            f"(it pays off from about {KD_FEATURES_MIN_STEPS} steps)"
        )
    return out
