"""The flags of ``python -m sparse_deploy.train`` and how they map onto a :class:`TrainConfig`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cliargs import MODULE_PROG, comma_floats, comma_list, finish_parser
from ..errors import SparseDeployError, cli_entry
from ..inputs import run_preset
from ..models import build_model
from ..modes import MODES, get_mode
from ..presets import DEFAULT_PRESET, PRESETS
from ..settings import DEFAULT_KD_FEATURES, DEFAULT_KD_WEIGHT
from ..sources import is_path
from ..sparsify import MASK_INITS, SparsityConfig, select_layers
from .config import LR_SCHEDULES, TrainConfig
from .distributed import DistEnv
from .modelopt_masks import modelopt_rules
from .train import train

_SPARSE = SparsityConfig()  # the flag defaults are the config's

__all__ = ["DESCRIPTION", "build_parser", "config_from_args", "modelopt_rules_of", "from_args", "main"]

DESCRIPTION = "One training loop for dense pretraining and sparse fine-tuning (the SparseDM recipe)."


def _parse_pair(text: str) -> tuple[float, float]:
    try:
        a, b = comma_floats(text, count=2, what="two numbers START,END")
    except SparseDeployError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return a, b


#: The mask start of sparse runs from pretrained weights when --mask-init is not given (docs/RESULTS.md, "Quality at
#: full 2:4": the calibrated SparseGPT one-shot scores FID 73.93 against magnitude's 286.91, seed 0, no fine-tuning).
PRETRAINED_MASK_INIT = "sparsegpt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=MODULE_PROG + "train", description=DESCRIPTION)
    p.add_argument(
        "--model", help=f"preset ({', '.join(PRESETS)}; default {DEFAULT_PRESET}) or a diffusers pipeline/model folder"
    )
    p.add_argument("--out", help="run folder (default runs/<model>/<dense|mode>)")
    p.add_argument(
        "--sparsity",
        choices=("none", *MODES),
        default="none",
        help="none: dense training; " + ", ".join(f"{m.name} ({m.help})" if m.help else m.name for m in MODES.values()),
    )
    p.add_argument(
        "--init",
        help="checkpoint folder to start from; also the distillation teacher unless --teacher "
        "(a sparse checkpoint needs --teacher)",
    )
    p.add_argument(
        "--weights",
        help="diffusers pipeline folder, model folder or .safetensors to start from (its config sets the "
        "layout); weights that are already 2:4 (Model Optimizer's mts.export, our diffusers/ output) keep "
        "their zeros as the masks",
    )
    p.add_argument(
        "--teacher",
        help="the dense model to distil from (checkpoint or diffusers folder), e.g. the model a mask made "
        "elsewhere was pruned from (default: a copy of the start model)",
    )
    p.add_argument(
        "--masks",
        help="where the masks start, made elsewhere: an mto.save file (NVIDIA Model Optimizer) or an apex ASP "
        "state dict (.pt/.safetensors with <layer>.__weight_mma_mask buffers)",
    )
    p.add_argument(
        "--print-modelopt-rules",
        action="store_true",
        help="print this run's layer selection (--model/--weights, --include/--exclude/--adaln) as an NVIDIA Model "
        "Optimizer rules dict (JSON, for mts.sparsify on the diffusers model) and exit",
    )
    p.add_argument(
        "--kd-weight",
        type=float,
        default=None,
        help=f"distillation weight (default {DEFAULT_KD_WEIGHT} when sparse from --init or --weights, else 0)",
    )
    p.add_argument(
        "--decay",
        type=float,
        default=_SPARSE.decay,
        help=f"SR-STE lambda on pruned weights (default {_SPARSE.decay:g})",
    )
    p.add_argument("--mask-every", type=int, default=1, help="recompute masks every K steps (srste/ste/maskllm)")
    p.add_argument(
        "--pruned-decay",
        type=float,
        default=0.0,
        help="decoupled decay of pruned weights after each step, w *= 1 - lr*R (srste/ste/maskllm; default 0: off)",
    )
    p.add_argument(
        "--mask-prior",
        type=float,
        default=_SPARSE.mask_prior,
        help=f"maskllm: initial logit of the magnitude pattern (default {_SPARSE.mask_prior:g})",
    )
    p.add_argument(
        "--mask-lr",
        type=float,
        default=_SPARSE.mask_lr,
        help=f"maskllm: learning rate of the mask logits (default {_SPARSE.mask_lr:g})",
    )
    p.add_argument(
        "--tau",
        type=_parse_pair,
        default=_SPARSE.tau,
        help=f"maskllm: Gumbel temperature START,END (default {_SPARSE.tau[0]:g},{_SPARSE.tau[1]:g})",
    )
    p.add_argument(
        "--logit-scale",
        type=_parse_pair,
        default=_SPARSE.logit_scale,
        help=f"maskllm: logit scale START,END (default {_SPARSE.logit_scale[0]:g},{_SPARSE.logit_scale[1]:g})",
    )
    p.add_argument(
        "--macs-budget",
        type=float,
        help="effective MACs as a share of dense (e.g. 0.75): only the least "
        "loss-sensitive selected layers go 2:4 (default: all selected layers)",
    )
    p.add_argument(
        "--latency-profile",
        help="GEMM latency profile of the target GPU (make gpu-check's reports/gpu/gemm.json): "
        "selected layers whose 2:4 kernel is not faster there stay dense (coverage.json says "
        "which and why)",
    )
    p.add_argument(
        "--latency-batch", type=int, default=8, help="deployment batch the latency profile is read at (default 8)"
    )
    p.add_argument(
        "--latency-dtype",
        choices=("fp16", "bf16"),
        default="fp16",
        help="engine precision the profile is read at (default fp16)",
    )
    p.add_argument(
        "--kd-features",
        type=float,
        default=None,
        help="weight of block-output distillation from the dense teacher (default "
        f"{DEFAULT_KD_FEATURES} when sparse from "
        "--init or --weights, else 0; 0 is the paper's recipe)",
    )
    p.add_argument("--include", help="comma-separated module globs to sparsify (default: the preset's)")
    p.add_argument("--exclude", help="comma-separated module globs to keep dense")
    p.add_argument("--adaln", action="store_true", help="also sparsify DiT adaLN modulation layers")
    p.add_argument(
        "--steps",
        type=int,
        help="training steps (default: the preset's; dense from scratch or sparse fine-tuning); sampling steps "
        "of the preview are --preview-steps",
    )
    p.add_argument("--batch-size", type=int, help="global batch (default: the preset's)")
    p.add_argument(
        "--lr", type=float, help="peak learning rate (default: the preset's; its fine-tuning rate when fine-tuning)"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        help="linear learning-rate warm-up (default: the preset's from scratch, 5%% of the run when fine-tuning)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="after warm-up: constant, or cosine decay to 1%% of --lr (default: the preset's)",
    )
    p.add_argument(
        "--ema",
        type=float,
        dest="ema_decay",
        help="EMA decay (default: the preset's from scratch; when fine-tuning, a horizon of a tenth of the run)",
    )
    p.add_argument(
        "--ema-warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the from-scratch EMA warm-up (1+step)/(10+step) (default: on from scratch, off when "
        "fine-tuning from --init/--weights)",
    )
    p.add_argument(
        "--mask-init",
        choices=MASK_INITS,
        default=None,
        help="where the masks start: magnitude, or calibrated on noised training inputs layer by layer: wanda "
        "(|w|*||x||) or sparsegpt (mask + kept weights reconstructed), or NVIDIA Model Optimizer's own masks "
        "(modelopt:sparse_magnitude, modelopt:sparsegpt; pip install 'sparse-deploy[modelopt]'); the one-shot "
        f"criterion with --sparsity oneshot (default: {PRETRAINED_MASK_INIT} from --init/--weights, which keeps "
        "far more quality than magnitude, docs/RESULTS.md; magnitude from random weights; --masks FILE starts "
        "from that file's masks instead)",
    )
    p.add_argument(
        "--decay-ramp",
        type=float,
        default=0.0,
        help="srste: ramp the SR-STE decay from 0 over this share of training (Adaptive Sparse "
        "Trainer; default 0: none)",
    )
    p.add_argument(
        "--data-weight",
        type=float,
        default=1.0,
        help="weight of the data term ||eps - eps_S||^2 (default 1; 0 regresses on the teacher "
        "alone, as SparseDM's code)",
    )
    p.add_argument(
        "--modelopt-default-rules",
        action="store_true",
        help="with --mask-init modelopt:...: sparsify the layers NVIDIA Model Optimizer's default "
        "rules take "
        "(adaLN, timestep and output layers too) instead of ours",
    )
    p.add_argument(
        "--calib-samples",
        type=int,
        default=_SPARSE.calib_samples,
        help=f"calibration inputs of --mask-init wanda/sparsegpt (default {_SPARSE.calib_samples})",
    )
    p.add_argument(
        "--checkpoint-every", type=int, help="save a resumable checkpoint every N steps (default: the preset's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, noise and init (default 0)")
    p.add_argument(
        "--data",
        help="image folder, fashion-mnist[:DIR], or synthetic[:N] (random tensors: timing and "
        "smoke tests) (default: the preset's dataset)",
    )
    p.add_argument(
        "--vae",
        help="diffusers pipeline or AutoencoderKL folder (latent models; default: the --weights pipeline's VAE)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--preview", type=int, default=8, help="preview images per class (0: none)")
    p.add_argument("--preview-steps", type=int, default=50, help="DDIM steps of the preview grid")
    return finish_parser(p)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The (not yet validated) :class:`TrainConfig` that parsed flags ask for."""
    preset = run_preset(args.model, args.weights, args.init)
    model, weights = (None, args.model) if is_path(args.model) else (args.model, args.weights)
    sparsity = None
    calibrate = bool(args.init or weights) and not args.masks  # a pretrained start, unless --masks brings masks
    if args.sparsity != "none":
        sparsity = SparsityConfig(
            mode=args.sparsity,
            decay=args.decay,
            mask_every=args.mask_every,
            include=comma_list(args.include),
            exclude=comma_list(args.exclude),
            adaln=args.adaln,
            pruned_decay=args.pruned_decay,
            mask_prior=args.mask_prior,
            mask_lr=args.mask_lr,
            tau=args.tau,
            logit_scale=args.logit_scale,
            macs_budget=args.macs_budget,
            latency_profile=args.latency_profile,
            latency_batch=args.latency_batch,
            latency_dtype=args.latency_dtype,
            mask_init=args.mask_init or (PRETRAINED_MASK_INIT if calibrate else "magnitude"),
            calib_samples=args.calib_samples,
            modelopt_default_rules=args.modelopt_default_rules,
            decay_ramp=args.decay_ramp,
        )
    teacher = args.teacher or args.init or weights
    # sparse fine-tuning from dense weights: the teacher is there, and the mode distils by default
    distil = sparsity is not None and bool(teacher) and get_mode(sparsity.mode).distils_by_default
    kd = args.kd_weight if args.kd_weight is not None else (DEFAULT_KD_WEIGHT if distil else 0.0)
    kd_features = args.kd_features if args.kd_features is not None else (DEFAULT_KD_FEATURES if distil else 0.0)
    out = args.out or f"runs/{preset.name}/{args.sparsity if sparsity else 'dense'}"
    return TrainConfig(
        preset=model and preset.name,
        out=out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        ema_decay=args.ema_decay,
        ema_warmup=args.ema_warmup,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        init=args.init,
        weights=weights,
        teacher=args.teacher,
        masks=args.masks,
        sparsity=sparsity,
        kd_weight=kd,
        kd_features=kd_features,
        data_weight=args.data_weight,
        data=args.data,
        vae=args.vae,
        device=args.device,
        preview=args.preview,
        preview_steps=args.preview_steps,
    )


def modelopt_rules_of(config: TrainConfig) -> dict:
    """The layers ``config`` would sparsify, as a Model Optimizer rules dict (``--print-modelopt-rules``).

    Its layer selection only (``--include``/``--exclude``/``--adaln``); the ``--macs-budget`` and
    ``--latency-profile`` choices, which need data or a profile, are not applied.
    """
    preset = config.model_preset()
    model = build_model(preset, None, announce_random=False)
    choice = select_layers(model, config.sparsity or SparsityConfig())
    return modelopt_rules(choice.selected, model)


def from_args(args: argparse.Namespace) -> Path | dict:
    """What ``train`` does with parsed flags (the command line and :mod:`sparse_deploy.api` alike).

    Returns the checkpoint folder, or with ``--print-modelopt-rules`` the rules dict.
    """
    if args.print_modelopt_rules:
        return modelopt_rules_of(config_from_args(args))
    return train(config_from_args(args))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """``python -m sparse_deploy.train``: the flags onto a :class:`TrainConfig`, then :func:`.train.train`."""
    result = from_args(build_parser().parse_args(argv))
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
        return 0
    ckpt = result
    if DistEnv.from_env().main:  # under torchrun only rank 0 wrote it
        print(f"checkpoint: {ckpt}")
    return 0
