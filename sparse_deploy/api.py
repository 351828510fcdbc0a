"""The Python API: each stage as one function, with the command line's flags as keyword arguments.

``finetune(weights="weights/fmnist-dit", steps=600)`` is ``sparse-deploy train --weights weights/fmnist-dit
--sparsity srste --steps 600``: the keywords are the flags (``--kd-weight`` is ``kd_weight``; a list is
comma-joined; ``True`` gives a switch, ``False`` its ``--no-`` form), read by the stage's own parser, with
its defaults and checks, and handed to the same ``from_args`` the command calls. So the two never
disagree, and ``sparse-deploy STAGE --help`` documents every keyword. Instead of printing, each
function returns what the stage made::

    import sparse_deploy as sd

    ckpt = sd.finetune(weights="weights/fmnist-dit", out="runs/fmnist-dit/srste", steps=600)
    report = sd.build_engines(checkpoint=ckpt, precision="fp32", backend="onnxruntime")
    record = sd.sample(engine=report.engines[-1].path, out="samples/x", num=16)
    result = sd.compute_fid("samples/x", "fashion-mnist:test")

The names are not the modules' (``sparse_deploy.build``, ``.export``, ``.fid``, ``.sparsify`` are modules).

A bad value raises :class:`~sparse_deploy.errors.SparseDeployError` (one sentence), never ``SystemExit``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from types import ModuleType
from typing import Any

from . import build as _build
from . import run as _run
from .errors import SparseDeployError
from .export import cli as _export
from .fid import cli as _fid
from .learn import cli as _train

__all__ = [
    "STAGES",
    "prune",
    "finetune",
    "export_graphs",
    "build_engines",
    "sample",
    "compute_fid",
    "modelopt_rules",
    "flags_of",
]


def _key_option(action: argparse.Action, key: str) -> str:
    """The option a keyword names: the one spelled like it, else the first long one."""
    spelled = [o for o in action.option_strings if o.lstrip("-").replace("-", "_") == key]
    return (spelled or [o for o in action.option_strings if o.startswith("--")] or action.option_strings)[0]


def flags_of(parser: argparse.ArgumentParser, positional: tuple[Any, ...] = (), **kwargs: Any) -> list[str]:
    """The command line ``kwargs`` stand for on ``parser`` (keyword ``kd_weight`` -> ``--kd-weight``).

    ``None`` leaves a flag at its default; ``True``/``False`` set a switch (``--x`` / ``--no-x``, or a
    ``store_false`` flag such as ``--no-tf32`` by its destination ``tf32=False``); lists and tuples
    are comma-joined. An unknown keyword is refused, naming the known ones.
    """
    actions = {}
    for action in parser._actions:  # by destination and by each option's name (--sample-steps: sample_steps)
        if action.option_strings and action.help != argparse.SUPPRESS:
            actions.setdefault(action.dest, action)
            for option in action.option_strings:
                actions.setdefault(option.lstrip("-").replace("-", "_"), action)
    argv = [str(p) for p in positional]
    for key, value in kwargs.items():
        action = actions.get(key)
        if action is None:
            known = ", ".join(sorted(k for k in actions if k != "help"))
            raise SparseDeployError(f"unknown keyword '{key}' for {parser.prog}; known: {known}")
        if value is None:
            continue
        option = _key_option(action, key)
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(option if value else option.replace("--", "--no-", 1))
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if bool(value) == isinstance(action, argparse._StoreTrueAction):
                argv.append(option)
        elif isinstance(value, (list, tuple)):
            if action.nargs in ("+", "*") or isinstance(action.nargs, int):
                argv += [option, *map(str, value)]
            else:
                argv += [option, ",".join(map(str, value))]
        else:
            argv += [option, str(value)]
    return argv


def _parse(parser: argparse.ArgumentParser, positional: tuple[Any, ...] = (), **kwargs: Any) -> argparse.Namespace:
    argv = flags_of(parser, positional, **kwargs)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()
        raise SparseDeployError(
            f"{parser.prog}: {message[-1] if message else 'bad arguments'} ({' '.join(argv)})"
        ) from None


#: ``{function: the stage module}``: each function parses its keywords with the module's ``build_parser`` and hands
#: them to the module's ``from_args``, the function the module's command line (``main``) calls.
STAGES: dict[str, ModuleType] = {
    "finetune": _train,
    "prune": _train,
    "modelopt_rules": _train,
    "export_graphs": _export,
    "build_engines": _build,
    "sample": _run,
    "compute_fid": _fid,
}


def _call(function: str, positional: tuple[Any, ...] = (), **kwargs: Any) -> Any:
    module = STAGES[function]
    return module.from_args(_parse(module.build_parser(), positional, **kwargs))


def finetune(*, sparsity: str = "srste", **flags: Any) -> Path:
    """Sparse fine-tuning (``sparse-deploy train``); returns the checkpoint folder (``<out>/checkpoint``).

    Keywords are ``train``'s flags: ``weights`` or ``init`` (the start), ``teacher``, ``masks``, ``out``,
    ``steps``, ``mask_init``, ``kd_weight``, ``kd_features``, ``data``, ``device``, ... The run also writes
    ``<out>/diffusers/`` (plain diffusers loads it) and ``<out>/coverage.json``. ``sparsity="none"``:
    dense training.
    """
    return _call("finetune", sparsity=sparsity, **flags)


def prune(*, mask_init: str = "magnitude", **flags: Any) -> Path:
    """One-shot 2:4 pruning, no fine-tuning (``train --sparsity oneshot``); returns the checkpoint folder.

    ``mask_init``: ``magnitude``, ``wanda``, ``sparsegpt`` (calibrated on training data) or
    ``modelopt:sparse_magnitude`` / ``modelopt:sparsegpt`` (NVIDIA Model Optimizer's own masks).
    """
    return _call("prune", sparsity="oneshot", mask_init=mask_init, **flags)


def export_graphs(**flags: Any) -> list:
    """Dense and 2:4 ONNX graphs, verified (``sparse-deploy export``); returns the ``ExportedGraph`` list.

    Keywords: ``checkpoint`` or ``weights``, ``out``, ``precision`` (``"fp32"`` or ``("fp32", "fp16")``),
    ``kinds``, ``dense_checkpoint``, ``require_masks``, ...
    """
    return _call("export_graphs", **flags)


def build_engines(**flags: Any):
    """Engines (``sparse-deploy build``): TensorRT on a GPU, ONNX Runtime otherwise; returns the ``BuildReport``.

    Keywords: ``checkpoint`` or ``weights``, ``out`` (the engines' folder), ``backend`` (``auto``,
    ``tensorrt``/``trt``, ``onnxruntime``/``ort``), ``precision``, ``max_batch``, ``force``, ...
    """
    return _call("build_engines", **flags)


def sample(**flags: Any) -> dict[str, Any]:
    """Images from an engine, checkpoint or diffusers folder (``sparse-deploy run``); returns ``run.json``'s record.

    Keywords: ``engine``, ``out``, ``num``, ``batch``, ``sample_steps``, ``scheduler``, ``seed``, ``labels``,
    ``guidance``, ``backend``, ``device``, ...
    """
    return _call("sample", **flags)


def compute_fid(a: str | Path, b: str | Path, **flags: Any) -> dict[str, Any]:
    """FID (and with ``kid=True`` KID) between two image sources (``sparse-deploy fid A B``); returns the result.

    A source is a folder of images, an ``.npz`` of uint8 images, ``fashion-mnist:test`` or
    ``fashion-mnist:train``; the value is ``result["fid"]``.
    """
    return _call("compute_fid", (a, b), **flags)


def modelopt_rules(**flags: Any) -> dict:
    """Our layer selection as an NVIDIA Model Optimizer rules dict (``train --print-modelopt-rules``).

    Keywords: ``weights`` or ``model``, ``include``, ``exclude``, ``adaln``; pass the result to
    ``mts.sparsify(net, [("sparsegpt", rules)], ...)`` on the diffusers model.
    """
    return _call("modelopt_rules", print_modelopt_rules=True, **flags)
