"""``python -m sparse_deploy.export``: flags onto :class:`ExportConfig`, then :func:`export_all`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliargs import MODULE_PROG, add_alias, comma_list, finish_parser
from ..errors import cli_entry
from ..settings import DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH, DEFAULT_PRECISIONS
from .config import ExportConfig
from .graph import export_all

__all__ = ["add_source_arguments", "add_profile_arguments", "config_from_args", "build_parser", "from_args", "main"]


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``export`` and ``build``: which weights, kinds and precisions."""
    parser.add_argument("--model", help="preset name (default: the checkpoint's or the weights' own)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (dense or sparse)")
    parser.add_argument(
        "--dense-checkpoint",
        type=Path,
        help="the dense model of the dense graph when the input is sparse: a dense checkpoint or diffusers folder "
        "(default: the one the sparse model names)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="diffusers pipeline/model folder or .safetensors; weights that are already 2:4 (our diffusers/ "
        "output, Model Optimizer's mts.export) are the sparse graph as they are",
    )
    parser.add_argument(
        "--precision", default=",".join(DEFAULT_PRECISIONS), help="comma-separated: fp32,fp16 (default both)"
    )
    parser.add_argument("--kinds", default="dense,sparse", help="comma-separated: dense,sparse (default both)")
    parser.add_argument(
        "--require-masks",
        action="store_true",
        help="refuse a sparse export of a model without masks instead of pruning it one-shot (no fine-tuning)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init when no weights are given")
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="write weights to <graph>.onnx.data (ONNX external data); automatic for graphs over 2 GiB (DiT-XL fp32)",
    )


def add_profile_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    """``--max-batch`` / ``--opt-batch``: the batch profile of ``whose`` (the engines, for ``build``)."""
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"largest batch {whose} accept (default {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument(
        "--opt-batch", type=int, help=f"batch {whose} are tuned for (default min({DEFAULT_OPT_BATCH}, max-batch))"
    )


def config_from_args(args: argparse.Namespace, out: Path | None) -> ExportConfig:
    """The export settings of parsed flags; the batch profile is taken from them where the parser has one."""
    return ExportConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        dense_checkpoint=args.dense_checkpoint,
        weights=args.weights,
        out=out,
        precisions=comma_list(args.precision),
        kinds=comma_list(args.kinds),
        max_batch=getattr(args, "max_batch", DEFAULT_MAX_BATCH),
        opt_batch=getattr(args, "opt_batch", None),
        require_masks=args.require_masks,
        seed=args.seed,
        external_data=args.external_data,
    ).validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=MODULE_PROG + "export",
        description="Export dense and 2:4-sparse ONNX graphs (fp32/fp16), each checked for parity with PyTorch "
        "and for 2:4 sparsity before it is kept.",
    )
    add_source_arguments(parser)
    # Kept for compatibility: the profile written into a new graph's contract (the batch axis is
    # dynamic); engines take theirs from `build --max-batch/--opt-batch`.
    add_profile_arguments(parser, "runners of the bare graph (recorded in its contract; engines: see build)")
    parser.add_argument("--out", type=Path, help="output folder (default export/<preset>)")
    add_alias(parser, "--export-dir", "--out")  # build's name for the same folder
    return finish_parser(parser)


def from_args(args: argparse.Namespace) -> list:
    """What ``export`` does with parsed flags (the command line and :mod:`sparse_deploy.api` alike): the graphs."""
    return export_all(config_from_args(args, args.out))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    results = from_args(build_parser().parse_args(argv))
    for r in results:
        m = r.manifest
        worst = max(b["max_abs_err"] for b in m["parity"]["batches"].values())
        sparse = f", {len(m['sparse_layers'])} layers 2:4-sparse" if r.kind == "sparse" else ""
        print(f"{r.path}  ({r.precision}, parity max err {worst:.2g}{sparse})")
    return 0
