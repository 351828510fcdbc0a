"""``sparse-deploy``: one command, the stages as subcommands (``sparse-deploy train ...``).

Each subcommand is the stage's own command line, unchanged: ``sparse-deploy run --engine E --out S``
is ``python -m sparse_deploy.run --engine E --out S`` (the same ``main``, flags and help), so both
forms keep working. :data:`COMMANDS` lists them with the module each one runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__, build, client, run, shipped, summary
from .cliargs import MODULE_PROG, finish_parser, set_program
from .errors import SparseDeployError, cli_entry
from .export import cli as export_cli
from .fid import cli as fid_cli
from .learn import cli as train_cli
from .measure import cli as bench_cli
from .triton import cli as triton_cli
from .triton import server as triton_server

__all__ = ["COMMANDS", "Command", "PROG", "build_parser", "main"]

PROG = "sparse-deploy"


@dataclass(frozen=True)
class Command:
    """A subcommand: the stage module it runs, its parser and ``main``, one line of help."""

    module: str
    main: Callable[[list[str] | None], int]
    build_parser: Callable[[], argparse.ArgumentParser]
    help: str


#: The stages in the order data flows through them, then the rest.
COMMANDS: dict[str, Command] = {
    "train": Command("train", train_cli.main, train_cli.build_parser, "sparse fine-tuning (and dense training)"),
    "export": Command("export", export_cli.main, export_cli.build_parser, "dense and 2:4 ONNX graphs, verified"),
    "build": Command("build", build.main, build.build_parser, "engines: TensorRT on a GPU, ONNX Runtime otherwise"),
    "run": Command("run", run.main, run.build_parser, "sample images from an engine, checkpoint or diffusers model"),
    "fid": Command("fid", fid_cli.main, fid_cli.build_parser, "FID (and KID) between two image sources"),
    "bench": Command("bench", bench_cli.main, bench_cli.build_parser, "latency, training cost, MACs, methods"),
    "summary": Command("summary", summary.main, summary.build_parser, "the demo's one-screen summary"),
    "shipped": Command("shipped", shipped.main, shipped.build_parser, "the shipped dense weights"),
    "triton": Command("triton", triton_cli.main, triton_cli.build_parser, "a Triton model repository"),
    "serve": Command(
        "triton.server", triton_server.main, triton_server.build_parser, "serve a Triton repository (CPU)"
    ),
    "client": Command("client", client.main, client.build_parser, "images from the Triton pipeline"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (for ``--help``): the stages, each with its own flags (``sparse-deploy STAGE -h``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="2:4-sparse diffusion models: fine-tune, export, build engines, sample, measure, serve. "
        "Each stage is also python -m sparse_deploy.<stage>; 'sparse-deploy STAGE -h' lists its flags.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}", help="print the version")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", title="stages")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return finish_parser(parser)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """``sparse-deploy STAGE ...``: the stage's own ``main`` with the rest of the command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    lead: list[str] = []  # --log-level / -q before the stage: handed to it
    while argv and (argv[0] in ("-q", "--quiet", "--log-level") or argv[0].startswith("--log-level=")):
        take = 2 if argv[0] == "--log-level" else 1
        lead, argv = lead + argv[:take], argv[take:]
    if not argv or argv[0].startswith("-"):  # no stage: --help, --version, or nothing
        build_parser().parse_args(lead + argv)
        build_parser().print_help()
        return 2
    stage = argv[0]
    command = COMMANDS.get(stage)
    if command is None:
        raise SparseDeployError(f"unknown stage '{stage}'; choose one of: {', '.join(COMMANDS)} ({PROG} --help)")
    set_program(MODULE_PROG + command.module, f"{PROG} {stage}")
    return command.main(argv[1:] + lead)


if __name__ == "__main__":
    raise SystemExit(main())
