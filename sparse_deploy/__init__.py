"""sparse-deploy: 2:4-sparse diffusion models, from SR-STE fine-tuning to TensorRT and Triton.

Stages, over a shared model layer (``presets``, ``models``, ``modes``, ``sparsify``, ``checkpoint``):
learn (``learn``; ``python -m sparse_deploy.train``), export (``export``), build (``build``), run and
measure (``run``, ``bench``, ``fid``), serve (``triton``). docs/ARCHITECTURE.md draws the layers.
Importing the package pulls in no GPU library (nor PyTorch); hardware-bound modules declare theirs with
:func:`sparse_deploy.lazy.lazy_import`.

The Python API (:mod:`sparse_deploy.api`: ``finetune``, ``prune``, ``export_graphs``, ``build_engines``,
``sample``, ``compute_fid``, ``modelopt_rules``) is importable from here, ``sparse_deploy.finetune(...)``;
it is loaded on first use, so ``import sparse_deploy`` stays light.
The ``sparse-deploy`` command is :mod:`sparse_deploy.cli`.
"""

import importlib

__version__ = "0.1.0"

#: The API's functions, re-exported from :mod:`sparse_deploy.api` on first use (PEP 562).
API = ("finetune", "prune", "export_graphs", "build_engines", "sample", "compute_fid", "modelopt_rules")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module("sparse_deploy.api"), name)
    raise AttributeError(f"module 'sparse_deploy' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
