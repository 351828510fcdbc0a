"""The one-screen closing summary of ``make demo``: what was made and what it costs in quality.

``python -m sparse_deploy.summary --run runs/fmnist-dit/srste --engines engines/fmnist-dit`` reads
the fine-tuning run (coverage, MACs, its dense source), lists the engine files, and scores the
dense and the sparse engine on the same footing: ``--num`` DDIM samples each (labels cycled over
the classes, the same seeds for both) against the first ``--ref-num`` test images, plus the
sparse samples against the dense ones. Small N keeps the demo short; the FIDs are biased upward
at small N, so compare them with each other, not with figures measured at other N. The result is
also written to ``--json`` (default ``<engines>/summary.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from . import fid
from .artifacts import read_engine_manifest
from .backends import load_runner
from .checkpoint import read_manifest
from .cliargs import MODULE_PROG, add_alias, finish_parser
from .errors import SparseDeployError, cli_entry
from .measure.methods import draw_samples
from .outputs import check_output_record
from .provenance import timestamp, write_json_atomic
from .settings import CPU_PRECISION

__all__ = ["demo_summary", "format_summary", "main"]

log = logging.getLogger(__name__)


def _engine(folder: Path, kind: str, precision: str) -> Path:
    matches = sorted(folder.glob(f"{kind}-{precision}.*.onnx")) + sorted(folder.glob(f"{kind}-{precision}.*.plan"))
    if not matches:
        raise SparseDeployError(
            f"no {kind} {precision} engine in '{folder}'; build it with 'make engine' or 'python "
            "-m sparse_deploy.build'"
        )
    return matches[0]


def _check_engines_of_run(run: Path, manifest: dict[str, Any], sparse_engine: Path) -> None:
    """Refuse a sparse engine built from another checkpoint than the run's (its manifest records its source's weights
    hash).
    """
    _, engine_manifest = read_engine_manifest(sparse_engine, verify=False)
    source = engine_manifest.get("source") or {}
    if source.get("weights_sha256") != manifest.get("weights_sha256"):
        raise SparseDeployError(
            f"the sparse engine '{sparse_engine}' was built from {source.get('path') or 'other weights'}, not from "
            "the run's "
            f"'{run / 'checkpoint'}' (its weights differ); rebuild it with python -m sparse_deploy.build "
            f"--checkpoint {run / 'checkpoint'} "
            f"--engine-dir {sparse_engine.parent}, or pass the engines of this run"
        )


def demo_summary(
    run: str | Path,
    engines: str | Path,
    *,
    precision: str = CPU_PRECISION,
    num: int = 300,
    ref_num: int = 1000,
    steps: int = 25,
    reference: str = "fashion-mnist:test",
    seed: int = 0,
    cache_dir: str | Path = ".cache/fid",
) -> dict[str, Any]:
    """Coverage, MACs, engines and dense-vs-sparse FID of one fine-tuning run and its engines."""
    run, engines = Path(run), Path(engines)
    manifest = read_manifest(run / "checkpoint")
    coverage_path = run / "coverage.json"
    coverage = json.loads(coverage_path.read_text()) if coverage_path.is_file() else {}
    config = manifest.get("train_config") or {}
    sparsity = config.get("sparsity") or {}
    result: dict[str, Any] = {
        "preset": manifest.get("preset"),
        "recipe": {
            "mode": sparsity.get("mode"),
            "kd_weight": config.get("kd_weight"),
            "kd_features": config.get("kd_features", 0.0),
            "pruned_decay": sparsity.get("pruned_decay", 0.0),
            "steps": manifest.get("step"),
            "lr": config.get("lr"),
            "mask_init": sparsity.get("mask_init", "magnitude"),
        },
        "dense_source": config.get("init") or config.get("weights"),
        "coverage": {
            k: coverage.get(k) for k in ("pattern", "sparse_layers", "sparse_share", "model_macs", "effective_macs")
        },
        "engines": {},
        "fid": {
            "num": num,
            "reference": reference,
            "reference_num": ref_num,
            "sampler": f"ddim {steps}",
            "seed": seed,
            "preprocessing": fid.PREPROCESSING,
        },
    }
    _check_engines_of_run(
        run, manifest, _engine(engines, "sparse", precision)
    )  # never one run's settings with another's engines
    feats = {}
    for kind in ("dense", "sparse"):
        path = _engine(engines, kind, precision)
        with load_runner(path, device="cpu") as runner:
            result["engines"][kind] = {"path": str(path), "bytes": path.stat().st_size, "backend": runner.backend}
            preset = runner.preset
            images, _ = draw_samples(runner, preset, num, seed, steps, "ddim", 100)
        log.info("Inception features of %d %s samples", num, kind)
        feats[kind] = fid.features_from_images(images, progress=False)
    ref = fid.reference_stats(reference, ref_num, cache_dir=cache_dir, progress=False)
    stats = {k: fid.stats_from_features(v) for k, v in feats.items()}
    for kind in ("dense", "sparse"):
        result["fid"][kind] = fid.frechet_distance(*stats[kind], ref.mu, ref.sigma)
    result["fid"]["sparse_vs_dense_samples"] = fid.frechet_distance(*stats["sparse"], *stats["dense"])
    result["fid"]["gap"] = result["fid"]["sparse"] / result["fid"]["dense"] - 1.0
    return result


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a short block of text (one screen)."""
    cov, f, r = s["coverage"], s["fid"], s["recipe"]
    recipe = f"{r['mode']}" + (
        f" from {r['mask_init']} masks" if r.get("mask_init", "magnitude") != "magnitude" else ""
    )
    recipe += f" + output distillation {r['kd_weight']}" if r.get("kd_weight") else ""
    recipe += f" + block distillation {r['kd_features']}" if r.get("kd_features") else ""
    recipe += f" + pruned-weight decay {r['pruned_decay']}" if r.get("pruned_decay") else ""
    lines = [
        f"== sparse-deploy summary: {s['preset']} ==",
        f"dense source     {s['dense_source']}",
        f"fine-tuning      {recipe}, {r['steps']} steps, lr {r['lr']}",
    ]
    if cov.get("sparse_layers") is not None:
        lines += [
            f"coverage         {len(cov['sparse_layers'])} layers {cov['pattern']}, "
            f"{cov['sparse_share']:.1%} of the model's MACs",
            f"MACs / sample    dense {cov['model_macs'] / 1e6:.2f} M -> effective "
            f"{cov['effective_macs'] / 1e6:.2f} M "
            f"({cov['effective_macs'] / cov['model_macs']:.1%})",
        ]
    for kind, e in s["engines"].items():
        lines.append(f"{kind + ' engine':<16} {e['path']} ({e['bytes'] / 1e6:.1f} MB, {e['backend']})")
    if all(e["backend"] != "tensorrt" for e in s["engines"].values()):
        lines.append(
            "                 no TensorRT engine was built (no GPU/TensorRT here): ONNX Runtime "
            "CPU engines, no 2:4 speed-up"
        )
    lines += [
        f"FID (N={f['num']} {f['sampler']} samples vs {f['reference_num']} {f['reference']} "
        "images; small N, compare side by side)",
        f"                 dense {f['dense']:.1f} | sparse {f['sparse']:.1f} "
        f"({f['gap']:+.1%}) | sparse vs dense samples "
        f"{f['sparse_vs_dense_samples']:.1f}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=MODULE_PROG + "summary", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", required=True, help="the sparse fine-tuning run folder (holds checkpoint/ and coverage.json)"
    )
    p.add_argument("--engines", required=True, help="folder with the dense and sparse engines")
    p.add_argument(
        "--precision", default=CPU_PRECISION, help=f"engines to sample (default {CPU_PRECISION}, as the demo builds)"
    )
    p.add_argument("--num", type=int, default=300, help="samples per engine for FID (default 300)")
    p.add_argument("--ref-num", type=int, default=1000, help="reference images (default the first 1000)")
    p.add_argument("--sample-steps", dest="steps", type=int, default=25, help="DDIM sampling steps (default 25)")
    add_alias(p, "--steps", "--sample-steps")
    p.add_argument("--reference", default="fashion-mnist:test", help="FID reference images")
    p.add_argument("--json", help="also write the summary here (default <engines>/summary.json)")
    return finish_parser(p)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num < 2 or args.ref_num < 2 or args.steps < 1:
        raise SparseDeployError("--num and --ref-num must be at least 2, --sample-steps at least 1")
    out = Path(args.json or Path(args.engines) / "summary.json")
    check_output_record(out, "--json", "fid")  # a new file or an earlier summary, never someone's file
    summary = demo_summary(
        args.run,
        args.engines,
        precision=args.precision,
        num=args.num,
        ref_num=args.ref_num,
        steps=args.steps,
        reference=args.reference,
    )
    summary["created"] = timestamp()
    write_json_atomic(out, summary)
    print(format_summary(summary))
    print(f"summary: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
