"""The sparsification-method comparison at an equal fine-tuning budget.

Every method of :data:`~sparse_deploy.measure.recipes.METHODS` is fine-tuned from one dense
checkpoint for each seed, sampled, and scored: FID and KID against the reference set, FID between
its samples and the dense method's samples of the same seed (same noise and labels). Each run
leaves ``result.json`` in its folder and is reused when the settings match, so an interrupted
comparison resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import fid
from ..backends import load_runner
from ..backends.device import torch_device
from ..checkpoint import read_manifest
from ..errors import SparseDeployError
from ..inputs import run_preset
from ..learn.train import train
from ..models import build_model, example_inputs
from ..provenance import atomic_path, timestamp, write_json_atomic
from ..sampling import sample_request, save_grid, to_uint8
from ..settings import DEFAULT_KD_WEIGHT
from ..sparsify import SparsityConfig, coverage_report, select_layers
from ..timing import spread, time_call
from .machine import record
from .recipes import (
    DEFAULT_METHODS,
    FIRST_METHODS,
    METHOD_LABELS,
    METHOD_RECIPES,
    METHODS,
    START,
    is_dense_method,
    method_train_config,
    recipe_key,
    trains,
)

__all__ = [
    "budget_text",
    "draw_methods",
    "draw_run",
    "methods_unsupported",
    "MethodsConfig",
    "fid_sampling_seed",
    "draw_samples",
    "run_methods",
    "method_macs",
]

log = logging.getLogger(__name__)


def methods_unsupported(preset, reference: str | None, data: str | None) -> str | None:
    """Why the method comparison cannot run for ``preset`` with these sources (None: it can)."""
    if preset.latent:
        return (
            f"the method comparison scores images with Inception, and '{preset.name}' samples VAE "
            "latents (decoding "
            "them is not part of the comparison): run it on a pixel-space preset, e.g. fmnist-dit"
        )
    if preset.dataset != "fashion-mnist" and (reference is None or data is None):
        return (
            f"preset '{preset.name}' has no built-in dataset: pass --data (its training images) "
            "and --reference "
            "(real images to score against: a folder, an .npz, or fashion-mnist:test)"
        )
    return None


@dataclass
class MethodsConfig:
    """The method comparison at an equal fine-tuning budget.

    Attributes:
        model: preset name.
        dense_checkpoint: the dense model every method starts from (and the distillation teacher).
        steps: fine-tuning steps of every trained method (one-shot: none).
        num_samples: images drawn per run, labels cycled over the classes.
        seeds: training and sampling seeds; every method runs once per seed, and runs of one seed
            draw their samples from the same noise and labels.
        sample_steps / scheduler: the sampler.
        sample_batch: images per sampling batch.
        reference / ref_num: the FID reference set (``fid.reference_stats``, cached); default
            ``fashion-mnist:test`` for presets trained on Fashion-MNIST, required otherwise.
        work: folder for the runs (checkpoints, samples, features, per-run results); default
            ``runs/<model>/bench-methods/steps<N>-n<S>-ref<R>``.
        methods: subset of :data:`METHODS`.
        lr / warmup_steps / batch_size: fine-tuning overrides (None: preset defaults; warm-up
            defaults to ``min(preset warm-up, steps // 5)`` so short budgets reach the full LR).
        kd_weight: output-distillation weight of the methods that distil (``+kd``).
        kid_subsets: KID subset pairs.
        label: a free-text label stored with the results (e.g. "small-budget run").
        macs_budget: the sparse methods' effective MACs as a share of the dense model's
            (``--macs-budget``: the most sensitive layers stay dense); None: every eligible layer 2:4.

    :func:`draw_methods` (``--no-score``) trains and samples without the FID network, e.g. on a GPU
    machine that lacks it; :func:`run_methods` with the same settings later scores those samples
    (``drawn.json`` beside each ``samples.npz`` says which settings drew them) instead of redrawing.
    """

    model: str
    dense_checkpoint: str
    steps: int
    num_samples: int = 1000
    seeds: tuple[int, ...] = (0, 1)
    sample_steps: int = 25
    scheduler: str = "ddim"
    sample_batch: int = 100
    reference: str | None = None
    ref_num: int | None = None
    work: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    lr: float | None = None
    warmup_steps: int | None = None
    batch_size: int | None = None
    kd_weight: float = DEFAULT_KD_WEIGHT
    kid_subsets: int = 100
    data: str | None = None
    device: str = "auto"
    label: str | None = None
    macs_budget: float | None = None

    def validate(self) -> MethodsConfig:
        preset = run_preset(self.model)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise SparseDeployError(f"unknown method(s) {bad}; choose from: {', '.join(METHODS)}")
        if self.steps < 0 or self.num_samples < 2 or self.sample_steps < 1 or self.sample_batch < 1 or not self.seeds:
            raise SparseDeployError(
                "--steps >= 0, --num-samples >= 2, --sample-steps >= 1 and at least one seed are needed"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise SparseDeployError(f"--seeds lists a seed twice: {list(self.seeds)}")
        problem = methods_unsupported(preset, self.reference, self.data)
        if problem:
            raise SparseDeployError(problem)
        if self.reference is None:
            self.reference = "fashion-mnist:test"
        if self.macs_budget is not None and not 0 < self.macs_budget <= 1:
            raise SparseDeployError(f"--macs-budget must be in (0, 1], got {self.macs_budget}")
        if self.work is None:  # one folder per budget: a different budget never meets stored runs of another
            macs = f"-macs{self.macs_budget:g}" if self.macs_budget is not None else ""
            ref = self.ref_num or "all"
            self.work = f"runs/{self.model}/bench-methods/steps{self.steps}-n{self.num_samples}-ref{ref}{macs}"
        return self

    def resolved_training(self, method: str) -> dict[str, Any] | None:
        """The fine-tuning settings a trained method runs with once defaults are filled in (None: it trains nothing)."""
        if not trains(method) or self.steps == 0:
            return None
        tconfig = method_train_config(
            method,
            self.model,
            "unused",
            steps=self.steps,
            init=self.dense_checkpoint,
            kd_weight=self.kd_weight,
            macs_budget=self.macs_budget,
            **self.train_overrides(),
        )
        return {
            k: getattr(tconfig, k)
            for k in ("lr", "warmup_steps", "lr_schedule", "ema_decay", "ema_warmup", "batch_size")
        }

    def run_key(self, method: str, seed: int, dense_sha: str | None) -> dict[str, Any]:
        """What a stored per-run result must match to be reused."""
        return {
            "model": self.model,
            "method": method,
            "seed": seed,
            "dense_weights_sha256": dense_sha,
            "steps": self.steps,
            "num_samples": self.num_samples,
            "sample_steps": self.sample_steps,
            "scheduler": self.scheduler,
            "reference": self.reference,
            "ref_num": self.ref_num,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "batch_size": self.batch_size,
            "kd_weight": self.kd_weight if METHOD_RECIPES[method][1] else 0.0,
            **({"recipe": recipe_key(method)} if method not in FIRST_METHODS else {}),
            **({"macs_budget": self.macs_budget} if self.macs_budget is not None and method != "dense" else {}),
            **({"dense_lr": "fine-tuning"} if method == "dense" else {}),
            **({"training": self.resolved_training(method)} if trains(method) else {}),
        }

    def train_overrides(self) -> dict[str, Any]:
        """The fine-tuning settings given (not None), as ``TrainConfig`` fields."""
        return {
            k: v
            for k, v in (
                ("lr", self.lr),
                ("warmup_steps", self.warmup_steps),
                ("batch_size", self.batch_size),
                ("data", self.data),
            )
            if v is not None
        }


def fid_sampling_seed(seed: int) -> int:
    """The request seed (:func:`sparse_deploy.sampling.sample_request`) of the FID samples of training seed ``seed``.

    Spread far apart so that the requests of two seeds never share a batch seed.
    """
    return seed * 1_000_003


def draw_samples(
    runner, preset, num: int, seed: int, steps: int, scheduler: str, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` uint8 images ``[N, H, W, C]`` and their labels (cycled; -1 when unconditional), from fixed seeds."""
    images, labels = [], []
    classes = tuple(range(preset.num_classes)) if preset.num_classes else None
    batch = min(batch, runner.contract.profile.max)
    for _, x, y in sample_request(
        runner,
        preset,
        num=num,
        batch=batch,
        seed=fid_sampling_seed(seed),
        labels=classes,
        steps=steps,
        scheduler=scheduler,
    ):
        images.append(to_uint8(x))
        labels.append(y.numpy() if y is not None else np.full(len(x), -1))
        del x
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return np.concatenate(images), np.concatenate(labels)


def _dense_manifest(config: MethodsConfig, preset) -> dict[str, Any]:
    manifest = read_manifest(config.dense_checkpoint)
    if manifest.get("masked_layers"):
        raise SparseDeployError(
            f"--dense-checkpoint '{config.dense_checkpoint}' is sparse; pass the dense model the methods start from"
        )
    if manifest.get("preset") != preset.name:
        raise SparseDeployError(f"--dense-checkpoint holds preset '{manifest.get('preset')}', not '{preset.name}'")
    if not manifest.get("complete", True):
        log.warning(
            "dense checkpoint %s is not complete (step %s): the comparison starts from a partly trained model",
            config.dense_checkpoint,
            manifest.get("step"),
        )
    return manifest


def _stored_run(result_path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of a run made with these settings, None when there is none; other settings are refused."""
    if not result_path.is_file():
        return None
    stored = json.loads(result_path.read_text())
    if stored.get("key") != key:
        changed = sorted(k for k in key if stored.get("key", {}).get(k) != key[k])
        raise SparseDeployError(
            f"'{result_path}' was made with other settings ({', '.join(changed)} differ); pass "
            "another --work folder or delete it"
        )
    return stored


DRAWN = "drawn.json"


def _stored_draw(folder: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The samples a run already drew with these settings (``drawn.json`` + ``samples.npz``), else None."""
    path = folder / DRAWN
    if not path.is_file() or not (folder / "samples.npz").is_file():
        return None
    drawn = json.loads(path.read_text())
    if drawn.get("key") != key:
        log.info("%s was drawn with other settings: training and sampling again", path)
        return None
    with np.load(folder / "samples.npz") as data:
        images = data["images"]
    log.info("%s: reusing the samples drawn on %s", folder, drawn.get("device"))
    return {**drawn, "images": images}


def _train_and_sample(
    config: MethodsConfig, preset, method: str, seed: int, folder: Path, key: dict[str, Any]
) -> dict[str, Any]:
    """Fine-tune a method for a seed, draw its samples, save them (``samples.npz``, ``grid.png``, ``drawn.json``)."""
    log.info("%s seed %d: training %d steps", method, seed, config.steps if trains(method) else 0)
    resumed = (folder / "checkpoint" / "manifest.json").is_file()
    if method == START:  # the starting model itself, sampled as every method is
        ckpt, train_seconds = Path(config.dense_checkpoint), 0.0
    else:
        tconfig = method_train_config(
            method,
            preset.name,
            folder,
            steps=config.steps,
            init=config.dense_checkpoint,
            seed=seed,
            kd_weight=config.kd_weight,
            device=config.device,
            macs_budget=config.macs_budget,
            **config.train_overrides(),
        )
        ckpt, train_seconds = time_call(lambda: train(tconfig))
    with load_runner(ckpt, device=config.device) as runner:
        (images, labels), sample_seconds = time_call(
            lambda: draw_samples(
                runner, preset, config.num_samples, seed, config.sample_steps, config.scheduler, config.sample_batch
            )
        )
    with atomic_path(folder / "samples.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=images, labels=labels)
    save_grid(images[: 8 * max(preset.num_classes, 1)], folder / "grid.png", nrow=max(preset.num_classes, 8))
    manifest = read_manifest(ckpt)
    drawn = {
        "key": key,
        "checkpoint": str(ckpt),
        "manifest": {k: manifest.get(k) for k in ("masked_layers", "coverage")},
        "resumed": resumed,
        "train_seconds": train_seconds,
        "sample_seconds": sample_seconds,
        "device": str(torch_device(config.device)),
        "torch_threads": torch.get_num_threads(),
        "created": timestamp(),
    }
    write_json_atomic(folder / DRAWN, drawn)
    return {**drawn, "images": images}


def draw_run(config: MethodsConfig, preset, method: str, seed: int, dense_sha: str | None) -> dict[str, Any]:
    """One method x seed fine-tuned and sampled, or its samples already drawn with these settings."""
    folder = Path(config.work) / method / f"seed{seed}"
    key = config.run_key(method, seed, dense_sha)
    return _stored_draw(folder, key) or _train_and_sample(config, preset, method, seed, folder, key)


def _vs_dense(config: MethodsConfig, dense_folder: Path, images: np.ndarray, feats: np.ndarray) -> dict[str, Any]:
    """A method's samples against the dense method's samples of the same seed (same noise and labels)."""
    dense_feats = np.load(dense_folder / "features.npy")
    with np.load(dense_folder / "samples.npz") as dense_samples:
        dense_images = dense_samples["images"]
    paired = min(len(dense_images), len(images))
    diff = images[:paired].astype(np.float64) / 255.0 - dense_images[:paired].astype(np.float64) / 255.0
    kd_mean, kd_std = fid.kid_from_features(
        feats, dense_feats, config.kid_subsets, min(1000, len(feats), len(dense_feats))
    )
    return {
        "fid": fid.fid_from_features(feats, dense_feats),
        "kid": {"mean": kd_mean, "std": kd_std},
        "paired_pixel_rmse": float(np.sqrt(np.mean(diff**2))),
        "paired_pixel_mae": float(np.mean(np.abs(diff))),
        "note": "same seeds: sample i of both runs starts from the same noise and label",
    }


def _score(
    config: MethodsConfig, method: str, seed: int, folder: Path, drawn: dict[str, Any], featurize, reference
) -> dict[str, Any]:
    """FID and KID of one run's samples against the reference set (and against the dense samples of its seed)."""
    images = drawn["images"]
    feats, feature_seconds = time_call(lambda: np.asarray(featurize(images), np.float32))
    np.save(folder / "features.npy", feats)
    ref_features = np.asarray(reference.features)
    subset = min(1000, len(feats), len(ref_features))
    kid_mean, kid_std = fid.kid_from_features(feats, ref_features, config.kid_subsets, subset)
    trained = config.steps and trains(method) and not drawn["resumed"]
    manifest = drawn["manifest"]
    run: dict[str, Any] = {
        "method": method,
        "label": METHOD_LABELS[method],
        "seed": seed,
        "checkpoint": str(drawn["checkpoint"]),
        "train_steps": config.steps if trains(method) else 0,
        "train_seconds": drawn["train_seconds"],
        "train_resumed": drawn["resumed"],
        "train_seconds_per_step": drawn["train_seconds"] / config.steps if trained else None,
        "sample_seconds": drawn["sample_seconds"],
        "train_device": drawn["device"],
        "train_torch_threads": drawn.get("torch_threads"),  # absent from samples drawn before it was recorded
        "feature_seconds": feature_seconds,
        "num_samples": int(len(images)),
        "fid": fid.frechet_distance(*fid.stats_from_features(feats), reference.mu, reference.sigma),
        "kid": {"mean": kid_mean, "std": kid_std, "subset_size": subset, "subsets": config.kid_subsets},
        "masked_layers": len(manifest.get("masked_layers") or []),
        "effective_macs": (manifest.get("coverage") or {}).get("effective_macs"),
        "samples": str(folder / "samples.npz"),
        "grid": str(folder / "grid.png"),
    }
    dense_folder = Path(config.work) / "dense" / f"seed{seed}"
    if method != "dense" and (dense_folder / "features.npy").is_file():
        run["vs_dense"] = _vs_dense(config, dense_folder, images, feats)
    return run


def run_one(
    config: MethodsConfig, preset, method: str, seed: int, dense_sha: str | None, featurize, reference
) -> dict[str, Any]:
    """One method x seed: its stored result when the settings match, else train, sample, score and store it."""
    folder = Path(config.work) / method / f"seed{seed}"
    result_path = folder / "result.json"
    key = config.run_key(method, seed, dense_sha)
    stored = _stored_run(result_path, key)
    if stored is not None:
        log.info("%s seed %d: reusing %s", method, seed, result_path)
        return stored
    drawn = draw_run(config, preset, method, seed, dense_sha)
    run = {"key": key, **_score(config, method, seed, folder, drawn, featurize, reference)}
    write_json_atomic(result_path, run)
    log.info("%s seed %d: FID %.2f, KID %.4f", method, seed, run["fid"], run["kid"]["mean"])
    del drawn
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return run


def method_macs(preset) -> dict[str, Any]:
    """Dense and effective sparse MACs of ``preset`` with the default layer selection (a random-init model)."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(preset, announce_random=False).eval()
    choice = select_layers(model, SparsityConfig())
    cov = coverage_report(model, example_inputs(preset, 1), choice.selected, choice.skipped)
    return {"dense_macs": cov.model_macs, "effective_sparse_macs": cov.effective_macs, "sparse_share": cov.sparse_share}


def budget_text(settings: dict[str, Any]) -> str:
    """The comparison's budget in words, from its settings (:class:`MethodsConfig` as a dict)."""
    macs = settings.get("macs_budget")
    return (
        f"{settings['steps']} fine-tuning steps per method (one-shot: none), "
        f"{settings['num_samples']} samples per run, "
        f"{len(settings['seeds'])} seed(s), {settings['scheduler'].upper()} "
        f"{settings['sample_steps']} steps"
        + (f", sparse methods at {macs:g} of the dense MACs (--macs-budget)" if macs is not None else "")
    )


def summarise(runs: list[dict[str, Any]], order: list[str], macs: dict[str, Any]) -> dict[str, Any]:
    """Per method: FID, KID, FID and pixel error against the dense samples, step time (spread over seeds) and MACs."""
    summary = {}
    for method in order:
        mine = [r for r in runs if r["method"] == method]
        summary[method] = {
            "label": METHOD_LABELS[method],
            "fid": spread([r["fid"] for r in mine]),
            "kid": spread([r["kid"]["mean"] for r in mine]),
            "fid_vs_dense": spread([r.get("vs_dense", {}).get("fid") for r in mine]),
            "kid_vs_dense": spread([r.get("vs_dense", {}).get("kid", {}).get("mean") for r in mine]),
            "paired_pixel_rmse_vs_dense": spread([r.get("vs_dense", {}).get("paired_pixel_rmse") for r in mine]),
            "train_seconds_per_step": spread([r.get("train_seconds_per_step") for r in mine]),
        }
    for method in order:
        measured = [r["effective_macs"] for r in runs if r["method"] == method and r.get("effective_macs")]
        full = macs["dense_macs"] if is_dense_method(method) else macs["effective_sparse_macs"]
        summary[method]["macs"] = int(np.mean(measured)) if measured and not is_dense_method(method) else full
    return summary


def draw_methods(config: MethodsConfig) -> list[Path]:
    """Fine-tune and sample every method x seed without scoring (no FID network needed); the ``drawn.json`` files.

    For a machine without the Inception weights (a GPU machine here): copy each run's
    ``samples.npz`` and ``drawn.json`` back into the same ``--work`` folder elsewhere and run the
    comparison there with the same settings; it scores these samples and trains nothing again.
    Runs already scored are skipped.
    """
    config.validate()
    preset = run_preset(config.model)
    dense_sha = _dense_manifest(config, preset).get("weights_sha256")
    drawn = []
    for seed in config.seeds:
        for method in [m for m in METHODS if m in config.methods]:
            folder = Path(config.work) / method / f"seed{seed}"
            if _stored_run(folder / "result.json", config.run_key(method, seed, dense_sha)) is None:
                draw_run(config, preset, method, seed, dense_sha)
                drawn.append(folder / DRAWN)
    return drawn


def run_methods(
    config: MethodsConfig,
    *,
    command: str | None = None,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    reference: Any | None = None,
) -> dict[str, Any]:
    """Train, sample and score every method x seed; reuse per-run results already in ``config.work``.

    Args:
        config: the comparison.
        command: recorded in the result.
        features: images -> ``[N, D]`` features (default: the FID Inception network).
        reference: an object with ``features``, ``mu``, ``sigma`` (default: cached
            ``fid.reference_stats(config.reference, config.ref_num)``).
    """
    config.validate()
    started = time.perf_counter()
    preset = run_preset(config.model)
    dense_manifest = _dense_manifest(config, preset)
    dense_sha = dense_manifest.get("weights_sha256")
    device = torch_device(config.device)  # the Inception pass runs where training does
    featurize = features or (lambda images: fid.features_from_images(images, progress=False, device=device))
    if reference is None:
        reference = fid.reference_stats(config.reference, config.ref_num, device=device)
    order = [m for m in METHODS if m in config.methods]
    if "dense" not in order:
        log.warning("'dense' is not among --methods: no sparse-vs-dense FID (it needs the dense samples of each seed)")
    runs = [
        run_one(config, preset, method, seed, dense_sha, featurize, reference)
        for seed in config.seeds
        for method in order
    ]
    macs = method_macs(preset)
    settings = {**asdict(config), "seeds": list(config.seeds), "methods": list(order)}
    results = {
        "model": preset.name,
        "label": config.label,
        "budget": budget_text(settings),
        "dense_checkpoint": {
            "path": str(config.dense_checkpoint),
            "weights_sha256": dense_sha,
            "step": dense_manifest.get("step"),
            "complete": dense_manifest.get("complete"),
        },
        "reference": {
            "source": config.reference,
            "num": int(len(np.asarray(reference.features))),
            "identity": getattr(reference, "identity", None),
        },
        "preprocessing": fid.PREPROCESSING if features is None else "custom feature function (test)",
        "fid_note": "FID against the reference set; vs_dense = FID between a method's samples and the "
        "dense method's samples "
        "of the same seed (same noise and labels). FID is biased upward at small N: compare "
        "only at equal N.",
        "macs": macs,
        "runs": runs,
        "summary": summarise(runs, order, macs),
    }
    return record("methods", command, settings, results, started)
