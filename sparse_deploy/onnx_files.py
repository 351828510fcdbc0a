"""ONNX graphs whose weights live in an external-data file beside them.

A protobuf message cannot exceed 2 GiB, so a graph with more weights than that (DiT-XL in fp32:
2.5 GiB) is written as two files: ``<name>.onnx`` (the graph, with references) and
``<name>.onnx.data`` (every initializer over 1 KiB, one after the other). ONNX Runtime,
Polygraphy and TensorRT's parser find the data file through the reference stored in the graph,
which is the data file's *name*, so the two must stay side by side under these names; the
manifests record the data file's size and sha256 and every reader checks them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .provenance import sha256_file

__all__ = [
    "DATA_SUFFIX",
    "data_path",
    "describe_data",
    "data_problem",
    "artifact_files",
    "save_with_external_data",
    "share_mode",
]

DATA_SUFFIX = ".data"
# Initializers at least this large go to the data file; smaller ones (scalars, shapes) stay inline.
_SIZE_THRESHOLD = 1024


def data_path(graph: str | Path) -> Path:
    """``dense-fp32.onnx`` -> ``dense-fp32.onnx.data``."""
    graph = Path(graph)
    return graph.with_name(graph.name + DATA_SUFFIX)


def describe_data(graph: str | Path) -> dict[str, Any] | None:
    """The manifest entry for ``graph``'s data file: name, bytes, sha256 (None when there is none)."""
    path = data_path(graph)
    if not path.is_file():
        return None
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def data_problem(graph: str | Path, manifest: dict[str, Any]) -> str | None:
    """None when the data file the manifest records (if any) is beside ``graph`` and unchanged, else what is wrong."""
    entry = manifest.get("external_data")
    if not entry:
        return None
    path = Path(graph).with_name(entry["file"])
    if not path.is_file():
        return f"its external-data file '{path.name}' is missing (it must stay beside '{Path(graph).name}')"
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        return f"its external-data file '{path.name}' does not match the sha256 in the manifest"
    return None


def artifact_files(graph: str | Path, manifest: dict[str, Any] | None = None) -> list[Path]:
    """``graph`` and, when the manifest records one (or one exists), its data file."""
    graph = Path(graph)
    entry = (manifest or {}).get("external_data")
    extra = graph.with_name(entry["file"]) if entry else data_path(graph)
    return [graph] + ([extra] if extra.is_file() else [])


def save_with_external_data(model, graph: str | Path) -> None:
    """Write ``model`` (an ``onnx.ModelProto`` with its weights loaded) as ``graph`` + ``graph.data``.

    The reference stored in the graph is the data file's final name, so write into the folder
    the pair will live in (a staging folder renamed file by file is fine: names are kept).
    """
    import onnx

    graph = Path(graph)
    data = data_path(graph)
    data.unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(
        model,
        str(graph),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=_SIZE_THRESHOLD,
        convert_attribute=False,
    )
    share_mode(graph)


def share_mode(graph: str | Path) -> None:
    """Give ``graph``'s data file (if any) the graph's permissions: onnx creates it private (0600)."""
    data = data_path(graph)
    if data.is_file():
        shutil.copymode(graph, data)
