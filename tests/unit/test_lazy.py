"""Lazy imports: declared at a module's top, imported on first use, one sentence when the package is missing."""

from __future__ import annotations

import sys

import pytest

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.lazy import HEAVY, LazyModule, MissingDependency, lazy_import, load, missing_reason, require


def test_nothing_is_imported_until_an_attribute_is_read(monkeypatch):
    monkeypatch.delitem(sys.modules, "psutil", raising=False)
    module = lazy_import("psutil", "reading process memory", "pip install psutil")
    assert "psutil" not in sys.modules and repr(module) == "<lazy module 'psutil'>"
    with pytest.raises(AttributeError):
        module.__wrapped__  # introspection (inspect, doctest, copy) does not import  # noqa: B018
    assert "psutil" not in sys.modules


def test_a_present_module_behaves_as_itself():
    json_like = LazyModule("json", "a test", "nothing")  # any importable module
    assert (
        json_like.dumps([1]) == "[1]" and load(json_like) is sys.modules["json"] and missing_reason(json_like) is None
    )


def test_a_missing_module_is_one_sentence_that_says_how_to_install_it():
    module = LazyModule("no_such_package_here", "drawing the plots", "pip install no-such-package")
    with pytest.raises(MissingDependency) as info:
        module.anything  # noqa: B018
    message = str(info.value)
    assert message.startswith(
        "drawing the plots needs the Python module 'no_such_package_here', which could not be imported"
    )
    assert message.endswith("install it with: pip install no-such-package") and "\n" not in message
    assert isinstance(info.value, SparseDeployError) and isinstance(info.value, ImportError)  # caught by either
    assert "No module named" in missing_reason("no_such_package_here")
    with pytest.raises(MissingDependency):
        require("no_such_package_here", "x", "y")


def test_only_heavy_or_optional_packages_are_lazy():
    assert {"tensorrt", "polygraphy", "onnxruntime", "diffusers", "matplotlib", "tritonclient"} <= set(HEAVY)
    assert all(reason for reason in HEAVY.values())
    with pytest.raises(ValueError, match="not a heavy or optional package"):
        lazy_import("json")
