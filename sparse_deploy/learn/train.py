"""One training loop for dense pretraining and sparse fine-tuning (the SparseDM recipe).

Sparse fine-tuning = masks (``sparsify``) + improved STE + output distillation from the frozen
dense model::

    L = mean||eps - eps_S(x_t, t)||^2 + kd_weight * mean||eps_T(x_t, t) - eps_S(x_t, t)||^2

The teacher runs under ``no_grad``. Every step draws its batch, labels-to-drop, timesteps and
noise from a generator seeded by ``(seed, step)``, so a resumed run continues exactly where the
killed one stopped. ``python -m sparse_deploy.train --help`` lists the flags.

On CUDA the forward pass runs under bf16 autocast where the GPU supports it, else fp16 autocast with
a ``GradScaler`` (SR-STE's decay term is scaled with the loss, so unscaling leaves it exact); the
choice (:class:`MixedPrecision`) is written into every metrics row and checkpoint manifest.
Multi-GPU: launch with ``torchrun --nproc_per_node N -m sparse_deploy.train ...`` (PyTorch DDP,
:mod:`sparse_deploy.learn.distributed`): ``--batch-size`` is the global batch, split across the ranks.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import (
    load_checkpoint,
    load_training_state,
    read_manifest,
    save_checkpoint,
)
from ..errors import SparseDeployError
from ..guards import check_output_dir
from ..inputs import is_checkpoint, open_model, run_vae
from ..masks import PATTERN
from ..models import build_model, example_inputs
from ..modes import get_mode
from ..outputs import claim_output
from ..presets import Preset
from ..provenance import recover_dir, write_json_atomic
from ..sampling import sample, save_grid, to_uint8, training_scheduler
from ..schedule import training_target
from ..sparsify import (
    CoverageReport,
    LayerChoice,
    SparsityConfig,
    adopt_masks_,
    bake_,
    coverage_report,
    select_layers,
    zero_masks,
)
from .config import TrainConfig
from .datasets import make_dataset
from .diffusers_out import write_run_diffusers
from .distill import (  # noqa: F401 (re-exported: the names were here first)
    _BLOCK_PREFIXES,
    FeatureTaps,
)
from .distributed import DistEnv, Distributed, resolve_device, state_digest
from .layer_choice import choose_by_latency_, choose_by_macs_budget_
from .masking import (
    decay_pruned_,
    decay_schedule,
    mask_logit_parameters,
    mask_schedule,
    refresh_masks_,
    set_decay_,
    set_grad_scale_,
    set_mask_temperature_,
    train_masks_,
)
from .modelopt_masks import masks_from_file
from .optim import (  # noqa: F401 (re-exported: the names were here first)
    LR_FLOOR,
    MixedPrecision,
    _device_precision,
    _ema_update_,
    choose_precision,
    ema_decay_at,
    lr_factor,
)
from .reconstruct import calibration_summary, init_masks_, prior_logits_
from .resume import check_resumable, rewrite_metrics, sync_file

__all__ = ["TrainConfig", "TrainingRun", "MixedPrecision", "choose_precision", "prepare_run", "train_step", "train"]

log = logging.getLogger(__name__)


def _inference_copy(ema: torch.nn.Module, sparsity: SparsityConfig | None) -> torch.nn.Module:
    """The EMA model with masks recomputed from its own dense weights (SR-STE / STE)."""
    model = copy.deepcopy(ema).cpu().eval()
    if sparsity is not None and sparsity.learns_masks:
        refresh_masks_(model)
    return model


def preview_grid(model: torch.nn.Module, path: Path, per_class: int, steps: int, seed: int = 0) -> Path:
    """A grid of samples, one row per class (or one block if unconditional), DDIM, fixed seed."""
    preset = model.preset
    classes = preset.num_classes or 1
    labels = [c for c in range(classes) for _ in range(per_class)] if preset.num_classes else None
    images, _ = sample(
        model, preset, batch=classes * per_class, steps=steps, scheduler="ddim", seed=seed, labels=labels
    )
    return save_grid(to_uint8(images), path, nrow=per_class)


@dataclass
class TrainingRun:
    """Everything one optimisation step touches: built by :func:`prepare_run`, advanced by :func:`train_step`.

    :func:`train` wraps these two with resume, checkpoints and logs; the training-cost benchmark
    (``sparse_deploy.bench train-cost``) times :func:`train_step` alone.
    """

    config: TrainConfig
    preset: Preset
    device: torch.device
    model: torch.nn.Module
    ema: torch.nn.Module
    teacher: torch.nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    images: torch.Tensor
    labels: torch.Tensor
    alphas: torch.Tensor
    coverage: CoverageReport | None = None
    train_model: torch.nn.Module | None = None  # the model, or its DDP wrapper
    dist: Distributed | None = None  # None: one process
    features: FeatureTaps | None = None
    amp: MixedPrecision = field(default_factory=MixedPrecision)
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast only
    layer_flips: dict[str, list[float]] = field(
        default_factory=dict
    )  # per layer: flip shares since the last checkpoint
    calibration: dict | None = None  # the calibrated mask start (reconstruct.calibration_summary), None for magnitude
    start_sparse: bool = False  # the start model was already 2:4 (sparse --init, 2:4 weights or --masks)

    @property
    def learns_masks(self) -> bool:
        return self.config.sparsity is not None and self.config.sparsity.learns_masks

    @property
    def train_steps(self) -> int:
        """Optimisation steps of the run: ``config.steps``, or 0 for one-shot pruning."""
        sparsity = self.config.sparsity
        return self.config.steps if (sparsity is None or get_mode(sparsity.mode).trains) else 0


def _start_masks(model: torch.nn.Module, config: TrainConfig) -> tuple[dict[str, torch.Tensor], str | None]:
    """Masks the start already has: ``--masks FILE``, else the exact 2:4 zeros of its weights; and what they are."""
    if config.masks is not None and config.sparsity is not None:
        return masks_from_file(config.masks, model), "--masks"
    masks = zero_masks(model)
    return masks, ("the start weights' 2:4 zeros" if masks else None)


def _load_teacher(path: str, preset: Preset) -> torch.nn.Module:
    """The dense model to distil from (``--teacher``): a dense checkpoint or dense diffusers weights, same layout."""
    model, manifest = open_model(path)
    if manifest.get("masked_layers"):
        raise SparseDeployError(
            f"--teacher '{path}' is {PATTERN}-sparse on {len(manifest['masked_layers'])} layers; the teacher is the "
            "dense model"
        )
    if model.preset.model_kwargs != preset.model_kwargs or model.preset.schedule != preset.schedule:
        raise SparseDeployError(
            f"--teacher '{path}' is '{model.preset.name}', a different model or schedule than the one fine-tuned "
            f"('{preset.name}')"
        )
    log.info("distilling from the dense teacher %s", path)
    return model


def dense_parent(config: TrainConfig, start_sparse: bool) -> dict[str, str | None]:
    """The dense model a sparse run's dense engine comes from: ``--teacher``, else a dense start; None if unknown."""
    if config.teacher is not None:
        key = "dense_checkpoint" if is_checkpoint(config.teacher) else "dense_weights"
        return {"dense_checkpoint": None, "dense_weights": None, key: str(Path(config.teacher).resolve())}
    if start_sparse:
        return {"dense_checkpoint": None, "dense_weights": None}
    return {
        "dense_checkpoint": str(Path(config.init).resolve()) if config.init else None,
        "dense_weights": str(Path(config.weights).resolve()) if config.weights else None,
    }


def prepare_run(
    config: TrainConfig, device: torch.device, dist: Distributed | None = None, amp: MixedPrecision | None = None
) -> TrainingRun:
    """Build the model (dense start, then masks), teacher, EMA, optimizer, schedule and data; writes nothing.

    ``config`` must be validated; the global torch seed should be set first (random init).
    ``amp`` defaults to what the device supports (:func:`choose_precision`).
    """
    preset = config.model_preset()
    # Model: the start (random, diffusers weights or a checkpoint), then masks.
    if config.init is not None:
        manifest = read_manifest(config.init)
        if manifest["preset"] != preset.name:
            raise SparseDeployError(f"--init checkpoint is preset '{manifest['preset']}', not '{preset.name}'")
        if manifest.get("masked_layers") and config.teacher is None:
            raise SparseDeployError(
                f"--init '{config.init}' is a sparse checkpoint: start fine-tuning from the dense one, or pass "
                "--teacher DENSE (the dense model to distil from) to fine-tune these masks"
            )
        model, _ = load_checkpoint(config.init)
        bake_(model)  # a sparse checkpoint's masks become its zeros, kept as the masks below
        preset = model.preset  # as recorded: its model config and schedule
    else:
        model = build_model(preset, config.weights)
    start_masks, start = _start_masks(model, config)
    teacher = None
    if config.kd_weight:
        source = _load_teacher(config.teacher, preset) if config.teacher is not None else model
        teacher = copy.deepcopy(source).to(device).eval().requires_grad_(False)
        if config.teacher is None and start_masks:
            log.warning(
                "the start model is already %s-sparse and no --teacher is given: distillation teaches it its own "
                "sparse outputs; pass --teacher DENSE (the dense model its masks were made from)",
                PATTERN,
            )
    elif preset.learned_sigma and config.sparsity is not None:
        log.warning(
            "'%s' learns sigma and no teacher is distilled (--kd-weight 0): its variance "
            "channels get no loss and will drift",
            preset.name,
        )

    images, labels = make_dataset(preset, config.data, run_vae(config.vae, config.weights)).tensors
    alphas = training_scheduler(preset.schedule).alphas_cumprod
    coverage = calibration = None
    if config.sparsity is not None and start_masks:
        choice = select_layers(model, config.sparsity)
        outside = sorted(set(start_masks) - set(choice.selected))
        layers = adopt_masks_(model, start_masks, config.sparsity)
        prior_logits_(model, config.sparsity)
        ignored = [
            flag
            for flag, value in (
                ("--mask-init", config.sparsity.mask_init != "magnitude"),
                ("--macs-budget", config.sparsity.macs_budget is not None),
                ("--latency-profile", bool(config.sparsity.latency_profile)),
            )
            if value
        ]
        log.info(
            "masks start from %s: %d layers, kept as they are (no re-pruning)%s%s",
            start,
            len(layers),
            f"; {len(outside)} of them outside this run's selection (kept too): {outside[:4]}" if outside else "",
            f"; {', '.join(ignored)} not applied" if ignored else "",
        )
        skipped = {k: v for k, v in choice.skipped.items() if k not in layers}
        choice = LayerChoice(selected=list(layers), skipped=skipped)
        train_masks_(model, config.sparsity)
        calibration = {
            "mask_init": start,
            "kept_as_is": True,
            "count": len(layers),
            "outside_selection": outside,
            "source": config.masks or config.weights or config.init,
        }
        coverage = coverage_report(model, example_inputs(preset, 1), choice.selected, choice.skipped)
        log.info("coverage: %s", coverage.summary())
    elif config.sparsity is not None:
        choice = select_layers(model, config.sparsity)
        if config.sparsity.latency_profile:
            choose_by_latency_(model, preset, choice, config.sparsity)
        if config.sparsity.macs_budget is not None:
            choose_by_macs_budget_(
                model, preset, choice, images, labels, alphas, config.sparsity.macs_budget, seed=config.seed
            )
        masked, errors = init_masks_(
            model, config.sparsity, choice.selected, preset, images, labels, alphas, seed=config.seed
        )
        if masked != choice.selected:  # Model Optimizer's default rules chose the layers
            choice.skipped = {k: v for k, v in choice.skipped.items() if k not in masked}
            choice.selected[:] = masked
        train_masks_(model, config.sparsity)  # the masked layers' training weights (learn.masking)
        calibration = calibration_summary(errors, config.sparsity)
        coverage = coverage_report(model, example_inputs(preset, 1), choice.selected, choice.skipped)
        log.info("coverage: %s", coverage.summary())
    elif start_masks:
        log.warning(
            "the start weights are %s-sparse on %d layers and this run is dense (--sparsity none): training "
            "fills their zeros; pass --sparsity MODE to keep them",
            PATTERN,
            len(start_masks),
        )
    model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    logits = mask_logit_parameters(model)
    logit_ids = {id(p) for p in logits}
    groups = [{"params": [p for p in model.parameters() if id(p) not in logit_ids]}]
    if logits:  # maskllm: the mask logits learn at their own rate, without weight decay
        groups.append({"params": logits, "lr": config.sparsity.mask_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas))
    total = config.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, config.warmup_steps, total, config.lr_schedule)
    )
    alphas = alphas.to(device)
    features = FeatureTaps(model, teacher) if config.kd_features and teacher is not None else None
    amp = amp if amp is not None else _device_precision(device)
    return TrainingRun(
        config,
        preset,
        device,
        model,
        ema,
        teacher,
        opt,
        sched,
        images,
        labels,
        alphas,
        coverage,
        model,
        dist,
        features,
        amp,
        amp.scaler(device),
        calibration=calibration,
        start_sparse=bool(start_masks),
    )


def train_step(run: TrainingRun, step: int) -> dict[str, float]:
    """One optimisation step (mask refresh, batch, loss, backward, AdamW, schedule, EMA).

    The global batch, labels-to-drop, timesteps and noise come from a generator seeded by
    ``(seed, step)`` alone; under torchrun each rank keeps its slice of them. Returns the step's
    metrics row (``step`` counts from 1; losses are the means over the global batch).
    """
    config, preset, device, model = run.config, run.preset, run.device, run.model
    train_model = run.train_model if run.train_model is not None else model
    dist = run.dist if run.dist is not None else Distributed(DistEnv(), device)
    c = preset.in_channels
    gen = torch.Generator().manual_seed((config.seed * 1_000_003 + step * 7919) % 2**64)  # folded: any 64-bit --seed
    sparsity = config.sparsity
    flipped = 0.0
    if run.learns_masks and step % sparsity.mask_every == 0:
        layers: dict[str, float] = {}
        flipped = refresh_masks_(model, layers)
        for name, share in layers.items():
            run.layer_flips.setdefault(name, []).append(share)
    if sparsity is not None and sparsity.decay_ramp and sparsity.effective_decay:
        set_decay_(model, decay_schedule(sparsity, step, run.train_steps))
    if sparsity is not None and get_mode(sparsity.mode).mask_logits:
        set_mask_temperature_(model, *mask_schedule(sparsity, step, run.train_steps))
        # The Gumbel noise of this step: the same on every rank, so the ranks' masks stay identical.
        torch.manual_seed((config.seed * 1_000_003 + step * 7919 + 1) % 2**64)
    idx = torch.randint(0, len(run.images), (config.batch_size,), generator=gen)
    x0, y = run.images[idx], run.labels[idx]
    if preset.num_classes:
        drop = torch.rand(len(y), generator=gen) < config.cfg_drop
        y = dist.shard(torch.where(drop, torch.full_like(y, preset.null_class), y)).to(device)
    else:
        y = None
    t = dist.shard(torch.randint(0, len(run.alphas), (len(x0),), generator=gen)).to(device)
    noise = dist.shard(torch.randn(x0.shape, generator=gen)).to(device)
    x0 = dist.shard(x0).to(device)
    a = run.alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    grad_scale = run.scaler.get_scale() if run.scaler is not None else 1.0
    set_grad_scale_(model, grad_scale)  # SR-STE's decay term joins the scaled gradient; unscaling leaves it exact
    with torch.autocast(device.type, dtype=run.amp.torch_dtype, enabled=run.amp.torch_dtype is not None):
        full = train_model(x_t, t, y).float()
        pred = full[:, :c]
        loss_eps = torch.nn.functional.mse_loss(pred, training_target(preset.schedule, x0, noise, a))
        loss = config.data_weight * loss_eps
        loss_kd = loss_sigma = torch.zeros(())
        if run.teacher is not None:
            with torch.no_grad():
                teacher = run.teacher(x_t, t, y).float()
            loss_kd = torch.nn.functional.mse_loss(pred, teacher[:, :c])
            loss = loss + config.kd_weight * loss_kd
            if preset.learned_sigma:  # the variance channels have no other target: match the teacher's
                loss_sigma = torch.nn.functional.mse_loss(full[:, c:], teacher[:, c:])
                loss = loss + loss_sigma
        loss_feat = torch.zeros(())
        if run.features is not None:
            loss_feat = run.features.loss(reduce=dist.mean_tensor)
            loss = loss + config.kd_features * loss_feat
    # One all-reduce: the log shows the global batch's losses, and every rank sees a bad loss together.
    losses = dist.mean([float(v.item()) for v in (loss, loss_eps, loss_kd, loss_sigma, loss_feat)])
    if not math.isfinite(losses[0]):
        raise SparseDeployError(f"loss became {losses[0]} at step {step}; lower --lr or check the data")
    run.opt.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.opt)  # clip the true gradient, not the scaled one
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.opt)  # skipped when the gradient overflowed; the scale then drops
        run.scaler.update()
    else:
        run.opt.step()
    if sparsity is not None and sparsity.pruned_decay:
        decay_pruned_(model, 1.0 - run.sched.get_last_lr()[0] * sparsity.pruned_decay)
    run.sched.step()
    _ema_update_(run.ema, model, ema_decay_at(config.ema_decay, step, config.ema_warmup))
    names = ("loss", "loss_eps", "loss_kd", "loss_sigma", "loss_feat")
    return {
        "step": step + 1,
        **dict(zip(names, losses, strict=True)),
        "lr": run.sched.get_last_lr()[0],
        "mask_flips": flipped,
        "amp": run.amp.dtype,
        "grad_scale": grad_scale,
    }


def train(config: TrainConfig) -> Path:
    """Run (or resume) training; returns the checkpoint folder ``<out>/checkpoint``.

    Under torchrun every rank calls this; rank 0 alone writes (see :mod:`sparse_deploy.learn.distributed`).
    """
    config.validate()
    env = DistEnv.from_env()
    device = resolve_device(config.device, env)
    with claim_output(config.out, "training-run", "--out", lock=env.main):  # a run folder, one writer (rank 0)
        dist = Distributed(env, device).start()  # the rank's GPU is made current before anything touches CUDA
        try:
            return _train(config, dist)
        finally:
            dist.close()


def _train(config: TrainConfig, dist: Distributed) -> Path:
    device = dist.device
    dist.check_batch(config.batch_size)
    out = Path(config.out)
    ckpt_dir = out / "checkpoint"
    check_output_dir(out, "--out")
    # Nothing is written into the run folder before this check: another run's folder is refused whole.
    if dist.main:
        recover_dir(ckpt_dir)
    dist.barrier()
    prior = check_resumable(out, ckpt_dir, config)
    torch.manual_seed(config.seed)

    run = prepare_run(config, device, dist)
    log.info("mixed precision: %s%s", run.amp.dtype, " with loss scaling" if run.scaler else "")
    if run.coverage is not None and dist.main:
        write_json_atomic(out / "coverage.json", {**run.coverage.to_dict(), "mask_start": run.calibration})
    start = _resume_(run, ckpt_dir) if prior is not None else 0
    run.train_model = dist.wrap(run.model)
    finished = prior is not None and prior.get("complete") and start >= run.train_steps
    elapsed = _train_steps(run, out, ckpt_dir, start)
    if finished:
        log.info("%s is already complete at step %d with this config; nothing to train", ckpt_dir, start)
    else:
        _save(run, out, ckpt_dir, run.train_steps)
    dist.barrier()
    if dist.main:
        _finish(run, out, ckpt_dir, start, elapsed, finished)
    return ckpt_dir


def _resume_(run: TrainingRun, ckpt_dir: Path) -> int:
    """Load the student, EMA, optimizer, schedule (and loss scale) of the last checkpoint; returns its step."""
    state = load_training_state(ckpt_dir, run.device)
    ema_model, _ = load_checkpoint(ckpt_dir)
    run.model.load_state_dict(state["model"])
    run.ema.load_state_dict(ema_model.state_dict())
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    start = int(state["step"])
    log.info("resuming %s from step %d of %d", ckpt_dir, start, run.config.steps)
    return start


def _train_steps(run: TrainingRun, out: Path, ckpt_dir: Path, start: int) -> float:
    """Steps ``start`` to the end, a metrics row each, a checkpoint every ``checkpoint_every``; returns the seconds."""
    config, dist, train_steps = run.config, run.dist, run.train_steps
    metrics_path = out / "metrics.jsonl"
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        # Drop rows a killed run wrote past its last checkpoint: the resumed run writes them again.
        rewrite_metrics(metrics_path, start)
        rewrite_metrics(out / "mask_flips.jsonl", start)
    metrics = metrics_path.open("a") if dist.main else None
    desc = f"train {run.preset.name} {config.sparsity.mode if config.sparsity else 'dense'}"
    bar = tqdm(range(start, train_steps), initial=start, total=train_steps, desc=desc, disable=not dist.main)
    run.model.train()
    t0 = time.perf_counter()
    for step in bar:
        row = train_step(run, step)
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.1e}", flips=f"{row['mask_flips']:.1e}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < train_steps:
            if metrics is not None:
                sync_file(metrics)
            _save(run, out, ckpt_dir, step + 1)
    if metrics is not None:
        sync_file(metrics)
        metrics.close()
    return time.perf_counter() - t0


def _save(run: TrainingRun, out: Path, ckpt_dir: Path, step: int) -> None:
    """The checkpoint at ``step`` (rank 0 writes it once every rank's state is found identical), the mask-flip row."""
    config, dist, model, ema = run.config, run.dist, run.model, run.ema
    # Every rank hashes its student (weights and masks) and EMA; they must be bit-identical.
    digests = dist.check_same(
        state_digest(
            {
                **{f"model.{k}": v for k, v in model.state_dict().items()},
                **{f"ema.{k}": v for k, v in ema.state_dict().items()},
            }
        ),
        "weights or masks",
    )
    if not dist.main:
        return
    if run.layer_flips:  # per-layer mask-flip rate over the interval: are masks still learning?
        row = {
            "step": step,
            "refreshes": len(next(iter(run.layer_flips.values()))),
            "layers": {name: sum(v) / len(v) for name, v in run.layer_flips.items()},
        }
        with (out / "mask_flips.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            sync_file(fh)
        run.layer_flips.clear()
    coverage = run.coverage
    info = {
        "step": step,
        "complete": step >= run.train_steps,
        "train_config": config.to_dict(),
        **dense_parent(config, run.start_sparse),
        "coverage": {k: v for k, v in coverage.to_dict().items() if k != "layer_macs"} if coverage else None,
        "mask_start": {k: v for k, v in run.calibration.items() if k != "layers"} if run.calibration else None,
        "mixed_precision": {
            "autocast": run.amp.dtype,
            "grad_scaler": run.scaler is not None,
            "device": run.device.type,
        },
        "distributed": {
            "world_size": dist.world,
            "global_batch": config.batch_size,
            "per_rank_batch": config.batch_size // dist.world,
            "rank_state_sha256": digests,
        },
    }
    training_state = {
        "model": model.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "step": step,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
    }
    save_checkpoint(
        ckpt_dir,
        _inference_copy(ema, config.sparsity),
        sparsity=config.sparsity,
        info=info,
        training_state=training_state,
    )


def _finish(run: TrainingRun, out: Path, ckpt_dir: Path, start: int, elapsed: float, finished: bool) -> None:
    """Rank 0 after the last checkpoint: timing line, preview grid and diffusers model (each unless already there)."""
    config, train_steps = run.config, run.train_steps
    if train_steps > start:
        log.info(
            "trained %d steps in %.0f s (%.2f s/step)", train_steps - start, elapsed, elapsed / (train_steps - start)
        )
    if config.preview and not (finished and (out / "samples.png").exists()):
        final, _ = load_checkpoint(ckpt_dir)
        grid = preview_grid(final, out / "samples.png", config.preview, config.preview_steps, seed=config.seed)
        log.info("wrote preview grid %s", grid)
    if run.coverage is not None:
        log.info("coverage: %s", run.coverage.summary())
    if not (finished and (out / "diffusers" / "sparse_deploy.json").exists()):
        log.info("wrote diffusers model %s", write_run_diffusers(out, ckpt_dir, config.weights))
