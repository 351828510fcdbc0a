"""Pretrained dense weights shipped in ``weights/<preset>/``: pack, score, and start from them.

A shipped model is a plain diffusers model folder, as a user would download one::

    weights/fmnist-dit/
        config.json                          diffusers config (DiTTransformer2DModel)
        diffusion_pytorch_model.safetensors  weights (fp16 to stay under 8 MiB)
        scheduler_config.json                the DDIM scheduler it is sampled with (``DDIMScheduler.from_pretrained``)
        MANIFEST.json                        how it was made: training command and config, data hash,
                                             steps, file hashes, the FID it scores (with protocol)
        samples.png                          one row per class, from the shipped (fp16) weights

``python -m sparse_deploy.shipped pack --checkpoint DIR --out weights/<preset>`` writes it from a
dense training checkpoint; ``score`` measures its FID (1,000 DDIM-25 samples against the
Fashion-MNIST test set by default) and records it in the manifest; ``checkpoint`` turns the
folder into a dense checkpoint (``--init`` of a fine-tuning run, the dense engine's source),
after checking every file against the manifest. ``make pretrain`` chains training, pack and score.

``reference`` (``make fid-reference``) writes ``weights/fid/``: the exact Inception features of the
first 1,000 Fashion-MNIST test images, which the demo's summary would otherwise spend about three
minutes computing on a fresh clone; :mod:`sparse_deploy.fid` uses them only while their key matches.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import fid
from .backends import load_runner
from .checkpoint import load_checkpoint, read_manifest, save_checkpoint
from .cliargs import MODULE_PROG, add_alias, finish_parser
from .contract import PRECISIONS, float_dtype
from .data import FMNIST_FILES, _idx_file, find_fashion_mnist
from .errors import SparseDeployError, cli_entry
from .measure.methods import draw_samples
from .models import build_model, cast_
from .outputs import check_output, claim_output
from .presets import PRESETS, family_of, get_preset
from .provenance import (
    atomic_dir,
    atomic_path,
    library_versions,
    seal_problem,
    sha256_file,
    temp_dir,
    timestamp,
    write_json_atomic,
    write_manifest,
)
from .sampling import SEEDING, class_rows, save_grid
from .schedule import SCHEDULER_CONFIG, sampling_config

__all__ = [
    "MANIFEST",
    "pack_weights",
    "verify_weights",
    "seal_weights",
    "weights_to_checkpoint",
    "score_weights",
    "ship_reference",
    "training_command",
    "main",
]

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
FORMAT = "sparse-deploy-weights/1"


def training_command(train_config: dict[str, Any]) -> str:
    """The ``python -m sparse_deploy.train`` command that reproduces a dense run's config."""
    return "python -m sparse_deploy.train " + shlex.join(_training_args(train_config))


def _training_args(train_config: dict[str, Any], out: str | Path | None = None) -> list[str]:
    flags = [
        ("--model", train_config["preset"]),
        ("--steps", train_config["steps"]),
        ("--batch-size", train_config["batch_size"]),
        ("--lr", train_config["lr"]),
        ("--warmup-steps", train_config["warmup_steps"]),
        ("--lr-schedule", train_config.get("lr_schedule", "constant")),
        ("--ema", train_config["ema_decay"]),
        ("--seed", train_config["seed"]),
    ]
    for key, flag in (("data", "--data"), ("init", "--init")):
        if train_config.get(key):
            flags.append((flag, train_config[key]))
    if out is not None:
        flags.append(("--out", out))
    # Runs recorded before the option existed all warmed their EMA up from the first step.
    ema_warmup = "--ema-warmup" if train_config.get("ema_warmup", True) else "--no-ema-warmup"
    return [str(part) for pair in flags for part in pair] + [ema_warmup]


def training_commands(train_config: dict[str, Any]) -> list[str]:
    """Every dense run behind a config, oldest first: a run started with ``--init`` names its parent."""
    chain = [training_command(train_config)]
    seen = set()
    while train_config.get("init") and str(train_config["init"]) not in seen:
        seen.add(str(train_config["init"]))
        try:
            train_config = read_manifest(train_config["init"]).get("train_config") or {}
        except SparseDeployError:
            chain.insert(0, f"(the dense checkpoint {train_config['init']}: its manifest is gone)")
            break
        if not train_config:
            break
        chain.insert(0, training_command(train_config))
    return chain


def _data_identity(train_config: dict[str, Any]) -> dict[str, Any]:
    data = train_config.get("data")
    if data and not str(data).startswith("fashion-mnist"):
        return {"source": data}
    root = str(data).split(":", 1)[1] if data and ":" in str(data) else None
    folder = find_fashion_mnist(root)
    files = {stem: sha256_file(_idx_file(folder, stem)) for stem in FMNIST_FILES["train"]}
    return {
        "source": "Fashion-MNIST train split (Debian package dataset-fashion-mnist)",
        "folder": str(folder),
        "sha256": files,
    }


def pack_weights(checkpoint: str | Path, out: str | Path, precision: str = "fp16") -> Path:
    """Write a dense checkpoint's (EMA) model as a diffusers folder with its manifest, atomically."""
    dtype = getattr(torch, float_dtype(precision))  # float_dtype refuses an unknown precision
    model, manifest = load_checkpoint(checkpoint)
    if manifest.get("masked_layers"):
        raise SparseDeployError(f"'{checkpoint}' is a sparse checkpoint; ship the dense model it was fine-tuned from")
    if not manifest.get("complete", False):
        raise SparseDeployError(
            f"'{checkpoint}' is not complete (step {manifest.get('step')}); finish or resume its training first"
        )
    config = manifest.get("train_config") or {}
    metrics = Path(checkpoint).parent / "metrics.jsonl"
    with claim_output(out, "weights", "--out"), atomic_dir(out) as tmp:
        cast_(model.net, dtype).save_pretrained(str(tmp), safe_serialization=True)
        _write_scheduler(tmp, manifest["preset"])
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        info = {
            "format": FORMAT,
            "preset": manifest["preset"],
            "precision": precision,
            "files": files,
            "steps": manifest.get("step"),
            "training_command": training_command(config) if config else None,
            "training_commands": training_commands(config) if config else None,
            "train_config": config,
            "data": _data_identity(config) if config else None,
            "source_checkpoint": {"weights_sha256": manifest.get("weights_sha256"), "created": manifest.get("created")},
            "final_loss": _last_loss(metrics),
            "fid": None,
            "created": timestamp(),
            "versions": library_versions(),
        }
        write_manifest(tmp / MANIFEST, info)  # sealed: an edited FID or file list is refused
    log.info("packed %s (%s) into %s", checkpoint, precision, out)
    return Path(out)


def _write_scheduler(folder: Path, preset: str) -> Path:
    """The DDIM scheduler config the model is sampled with, beside its config.json (diffusers reads it from there)."""
    path = folder / SCHEDULER_CONFIG
    write_json_atomic(path, sampling_config(get_preset(preset).schedule))
    return path


def _last_loss(metrics: Path) -> float | None:
    if not metrics.is_file():
        return None
    rows = [json.loads(r) for r in metrics.read_text().splitlines()[-200:] if r.strip()]
    return sum(r["loss"] for r in rows) / len(rows) if rows else None


WEIGHTS_FILES = ("config.json", "diffusion_pytorch_model.safetensors")  # what every shipped folder's manifest lists


def _restore_hint(folder: Path) -> str:
    return f"restore it with 'git checkout {folder}' or rebuild it with 'make pretrain'"


def read_weights_manifest(folder: str | Path, *, sealed: bool = True) -> dict[str, Any]:
    """The shipped folder's MANIFEST.json, refused unless its seal matches (``sealed=False``: for re-sealing)."""

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise SparseDeployError(
            f"'{folder}' has no {MANIFEST}: not a shipped weights folder (make one with 'make pretrain')"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseDeployError(f"'{path}' is corrupt ({exc}); {_restore_hint(folder)}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SparseDeployError(
            f"'{path}' is not a shipped weights manifest (format {FORMAT} expected); {_restore_hint(folder)}"
        )
    problem = seal_problem(manifest, required=True) if sealed else None
    if problem:
        raise SparseDeployError(
            f"'{path}': {problem}; {_restore_hint(folder)} (after an honest change: make seal-weights)"
        )
    return manifest


def _config_problem(folder: Path, manifest: dict[str, Any]) -> str | None:
    """Why the folder's config.json is not the model of the manifest's preset; None when it is."""

    preset = PRESETS.get(manifest.get("preset"))  # type: ignore[arg-type]
    if preset is None:
        return f"names preset {manifest.get('preset')!r}, which is not a built-in one ({', '.join(PRESETS)})"
    try:
        config = json.loads((folder / "config.json").read_text())
        family = family_of(config.get("_class_name"))
    except (OSError, ValueError, AttributeError, SparseDeployError) as exc:
        return f"has no readable diffusers config.json ({exc.__class__.__name__})"
    if family != preset.family:
        return f"says preset '{preset.name}' ({preset.family}) but config.json is a {config.get('_class_name')}"
    differ = [
        f"{k}: {config.get(k)!r} in config.json, {v!r} in the preset"
        for k, v in preset.model_kwargs.items()
        if json.dumps(config.get(k)) != json.dumps(v)
    ]
    if differ:
        return f"says preset '{preset.name}' but config.json contradicts it ({'; '.join(differ[:3])})"
    return None


def _files_problem(folder: Path, manifest: dict[str, Any]) -> str | None:
    """Why the files do not match the manifest (a sentence naming the file or the manifest); None when they do."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"'{folder / MANIFEST}' lists no files"
    missing = [name for name in WEIGHTS_FILES if name not in files]
    if missing:
        return f"'{folder / MANIFEST}' does not list {', '.join(missing)}"

    for name, digest in files.items():
        path = folder / str(name)
        if Path(str(name)).name != name:
            return f"'{folder / MANIFEST}' lists '{name}', which is not a file of the folder"
        if not path.is_file() or sha256_file(path) != digest:
            return f"'{path}' is missing or does not match {MANIFEST} (corrupt, edited, or a Git LFS pointer)"
    return None


def verify_weights(folder: str | Path, *, sealed: bool = True) -> dict[str, Any]:
    """Check a shipped weights folder: its sealed manifest, every file against it, its config.json against its preset.

    Returns the manifest.
    """
    folder = Path(folder)
    manifest = read_weights_manifest(folder, sealed=sealed)
    problem = _files_problem(folder, manifest)
    if problem is None and (problem := _config_problem(folder, manifest)):
        problem = f"'{folder / MANIFEST}' {problem}"
    if problem:
        raise SparseDeployError(f"{problem}; {_restore_hint(folder)}")
    return manifest


def seal_weights(folder: str | Path) -> Path:
    """Seal a shipped folder's MANIFEST.json (``make seal-weights``) after checking it against its files and config.

    The weights are never touched, and nothing that does not match the manifest is sealed. A folder
    packed before shipped folders carried their scheduler gets its ``scheduler_config.json`` (the one
    ``pack`` writes), listed in the manifest.
    """

    folder = Path(folder)
    with claim_output(folder, "weights", "the weights folder"):
        manifest = verify_weights(folder, sealed=False)
        if SCHEDULER_CONFIG not in manifest["files"]:
            path = _write_scheduler(folder, manifest["preset"])
            manifest["files"] = dict(sorted({**manifest["files"], SCHEDULER_CONFIG: sha256_file(path)}.items()))
            log.info("added %s (the DDIM schedule it is sampled with) to %s", path, folder)
        write_manifest(folder / MANIFEST, manifest)
    return folder / MANIFEST


def weights_to_checkpoint(folder: str | Path, out: str | Path) -> Path:
    """A dense checkpoint (fp32 model) from a verified shipped weights folder; its manifest names the source."""
    check_output(out, "checkpoint", "--out")  # never over the weights folder, a run or anyone's files

    manifest = verify_weights(folder)
    model = build_model(get_preset(manifest["preset"]), folder).float().eval()
    info = {
        "step": manifest.get("steps"),
        "complete": True,
        "train_config": manifest.get("train_config"),
        "source_weights": {"path": str(Path(folder)), "files": manifest.get("files"), "fid": manifest.get("fid")},
    }
    with claim_output(out, "checkpoint", "--out"):
        return save_checkpoint(out, model, sparsity=None, info=info)


def score_weights(
    folder: str | Path,
    num: int = 1000,
    steps: int = 25,
    reference: str = "fashion-mnist:test",
    ref_num: int | None = None,
    seed: int = 0,
    batch: int = 100,
    cache_dir: str | Path = ".cache/fid",
) -> dict[str, Any]:
    """FID of ``num`` DDIM samples of the shipped model (as shipped: its fp16 weights) against ``reference``.

    Records the result (with its protocol) in the folder's manifest and writes ``samples.png``.
    """
    with claim_output(folder, "weights", "the weights folder"):
        return _score(folder, num, steps, reference, ref_num, seed, batch, cache_dir)


def _score(folder, num, steps, reference, ref_num, seed, batch, cache_dir) -> dict[str, Any]:
    manifest = verify_weights(folder)
    with temp_dir(folder) as tmp:  # .<folder>.tmp-<pid> beside it: a killed score's is removed by the next claim
        ckpt = weights_to_checkpoint(folder, Path(tmp) / "dense")
        with load_runner(ckpt, device="cpu") as runner:
            preset = runner.preset
            images, _ = draw_samples(runner, preset, num, seed, steps, "ddim", batch)
            grid, grid_labels = draw_samples(
                runner, preset, 10 * max(preset.num_classes, 1), seed + 1, steps, "ddim", batch
            )
    order, nrow = class_rows(grid_labels.tolist() if preset.num_classes else None)
    save_grid(grid[order] if nrow else grid, Path(folder) / "samples.png", nrow=nrow)
    ref = fid.reference_stats(reference, ref_num, cache_dir=cache_dir)
    feats = fid.features_from_images(images)
    mu, sigma = fid.stats_from_features(feats)
    value = fid.frechet_distance(mu, sigma, ref.mu, ref.sigma)
    result = {
        "value": value,
        "samples": num,
        "sampler": "ddim",
        "steps": steps,
        "seed": seed,
        "seeding": SEEDING,
        "labels": "cycled over the classes",
        "reference": reference,
        "reference_num": ref.num,
        "preprocessing": fid.PREPROCESSING,
        "measured": timestamp(),
        "command": f"python -m sparse_deploy.shipped score {folder} --num {num} --sample-steps {steps}",
    }
    manifest["fid"] = result
    write_manifest(Path(folder) / MANIFEST, manifest)
    log.info("FID %.2f (%d samples vs %s n=%d)", value, num, reference, ref.num)
    return result


def ship_reference(
    source: str = "fashion-mnist:test",
    num: int | None = 1000,
    out: str | Path | None = None,
    cache_dir: str | Path | None = ".cache/fid",
) -> Path:
    """Write the Inception features of ``source``'s first ``num`` images into ``out`` (default ``weights/fid``).

    :func:`sparse_deploy.fid.reference_stats` reads such a file instead of running Inception when
    its key (the source's content and count, the preprocessing, the network file) matches. The
    features come from the network (or the local cache, which holds the network's own), never from
    another shipped file. They are stored exactly (float32, compressed) with a JSON ``meta``: the
    key, the source's identity, the preprocessing, the network's and the features' SHA-256, the
    command, the versions.
    """
    out = Path(out) if out is not None else fid.SHIPPED_REFERENCE_DIR
    with claim_output(out, "fid-reference", "--out"):
        return _ship_reference(source, num, out, cache_dir)


def _ship_reference(source: str, num: int | None, out: Path, cache_dir: str | Path | None) -> Path:
    stats = fid.reference_stats(source, num, cache_dir=cache_dir, shipped_dir=None)
    features = np.ascontiguousarray(stats.features, dtype=np.float32)
    meta = {
        "key": stats.key,
        "source": stats.source,
        "identity": stats.identity,
        "preprocessing": fid.PREPROCESSING,
        "network_sha256": fid.INCEPTION_SHA256,
        "features_sha256": fid.features_sha256(features),
        "command": f"python -m sparse_deploy.shipped reference --source {source} --num {stats.num}",
        "created": timestamp(),
        "versions": library_versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / fid.reference_file_name(stats.identity, stats.key)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, features=features, meta=np.array(json.dumps(meta, sort_keys=True)))
    if path.stat().st_size > 8 * 2**20:
        log.warning("%s is %.1f MiB, over the 8 MiB a shipped file may weigh", path, path.stat().st_size / 2**20)
    # A readable manifest beside the files (each file's own meta is what fid checks).
    index = out / MANIFEST
    entries = json.loads(index.read_text()).get("files", {}) if index.is_file() else {}
    entries[path.name] = {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        **{k: meta[k] for k in ("command", "created", "identity", "key", "network_sha256", "features_sha256")},
        "make": "make fid-reference",
    }
    write_json_atomic(
        index,
        {
            "format": "sparse-deploy-fid-reference/1",
            "preprocessing": fid.PREPROCESSING,
            "files": dict(sorted(entries.items())),
        },
    )
    return path


def pretrain_commands(model: str, runs: str | Path) -> list[tuple[list[str], Path]]:
    """The dense runs ``make pretrain`` chains for a preset: its recipe, then its refine cycle if it has one.

    Each entry is ``(python -m sparse_deploy.train arguments, run folder)``; the last run's
    checkpoint is the one shipped.
    """
    train = get_preset(model).train
    runs = Path(runs)
    chain = [(["--model", model, "--out", str(runs / "pretrain"), "--preview", "0"], runs / "pretrain")]
    if train.refine_steps:
        chain.append(
            (
                [
                    "--model",
                    model,
                    "--init",
                    str(runs / "pretrain" / "checkpoint"),
                    "--steps",
                    str(train.refine_steps),
                    "--lr",
                    str(train.refine_lr or train.lr),
                    "--warmup-steps",
                    str(train.warmup_steps),
                    "--ema",
                    str(train.ema_decay),
                    "--ema-warmup",
                    "--out",
                    str(runs / "pretrain2"),
                    "--preview",
                    "0",
                ],
                runs / "pretrain2",
            )
        )
    return chain


def pretrain(model: str, runs: str | Path, out: str | Path, score: bool = True) -> Path:
    """Train a preset's dense model from scratch (every run of its recipe), pack it into ``out``, score it.

    Each run resumes from its last checkpoint when re-run, and is a no-op once complete.
    """
    chain = pretrain_commands(model, runs)
    for args, _ in chain:
        command = [sys.executable, "-m", "sparse_deploy.train", *args]
        print("+ python -m sparse_deploy.train " + shlex.join(args), flush=True)
        if subprocess.run(command).returncode:
            raise SparseDeployError(
                f"dense training failed: {shlex.join(command)} (re-run 'make pretrain' to resume it)"
            )
    packed = pack_weights(chain[-1][1] / "checkpoint", out)
    if score:
        score_weights(packed)
    return packed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=MODULE_PROG + "shipped", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("pack", help="a dense checkpoint -> weights/<preset>/ (diffusers folder + MANIFEST.json)")
    q.add_argument("--checkpoint", required=True, help="the dense (complete) checkpoint to ship")
    q.add_argument("--out", required=True, help="the weights folder to write (weights/<preset>)")
    q.add_argument("--precision", default="fp16", choices=PRECISIONS, help="stored precision (fp16 stays small)")
    q = sub.add_parser(
        "pretrain", help="the preset's dense recipe from scratch (resumable), packed into --out and scored"
    )
    q.add_argument("--model", default="fmnist-dit", help="preset")
    q.add_argument("--runs", help="run folders (default runs/<model>)")
    q.add_argument("--out", help="weights folder (default weights/<model>)")
    q.add_argument("--no-score", action="store_true", help="skip the FID measurement")
    q = sub.add_parser("score", help="FID of the shipped model, recorded in its manifest (+ samples.png)")
    q.add_argument("folder", help="the shipped weights folder")
    q.add_argument("--num", type=int, default=1000, help="samples scored")
    q.add_argument("--sample-steps", dest="steps", type=int, default=25, help="DDIM sampling steps")
    add_alias(q, "--steps", "--sample-steps")
    q.add_argument("--reference", default="fashion-mnist:test", help="FID reference images")
    q.add_argument("--cache-dir", default=".cache/fid", help="Inception feature cache")
    q = sub.add_parser(
        "reference", help="Inception features of FID reference images -> weights/fid/ (the demo's summary reads them)"
    )
    q.add_argument("--source", default="fashion-mnist:test", help="reference images")
    q.add_argument("--num", type=int, default=1000, help="the first N images")
    q.add_argument("--out", help="folder (default weights/fid)")
    q.add_argument("--cache-dir", default=".cache/fid", help="Inception feature cache")
    q = sub.add_parser(
        "seal",
        help="seal a shipped folder's MANIFEST.json after checking it against its files and config (make seal-weights)",
    )
    q.add_argument("folder", help="the shipped weights folder")
    q = sub.add_parser(
        "checkpoint", help="a shipped weights folder -> a dense checkpoint (verified against its manifest)"
    )
    q.add_argument("folder", help="the shipped weights folder")
    q.add_argument("--out", required=True, help="the checkpoint folder to write")
    return finish_parser(p)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pretrain":
        out = pretrain(
            args.model, args.runs or f"runs/{args.model}", args.out or f"weights/{args.model}", score=not args.no_score
        )
        print(f"weights: {out}")
    elif args.command == "pack":
        print(f"weights: {pack_weights(args.checkpoint, args.out, args.precision)}")
    elif args.command == "score":
        if args.num < 2 or args.steps < 1:
            raise SparseDeployError("--num must be at least 2 and --sample-steps at least 1")
        result = score_weights(args.folder, args.num, args.steps, args.reference, cache_dir=args.cache_dir)
        print(
            f"FID {result['value']:.2f} ({result['samples']} samples, DDIM {result['steps']} vs "
            f"{result['reference']} "
            f"n={result['reference_num']}; {result['preprocessing']})"
        )
    elif args.command == "reference":
        if args.num < 2:
            raise SparseDeployError("--num must be at least 2")
        print(f"reference features: {ship_reference(args.source, args.num, args.out, args.cache_dir)}")
    elif args.command == "seal":
        print(f"sealed: {seal_weights(args.folder)}")
    else:
        print(f"checkpoint: {weights_to_checkpoint(args.folder, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
