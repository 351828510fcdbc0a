"""Graphs and engines on disk: formats, names, manifests and the one staleness rule.

Export and build write through this module; the runners (``backends/``), the Triton generator
and the summaries read through it, and ``cpp/src/manifest.hpp`` reads the same engine manifest::

    export/<model>/<kind>-<precision>.onnx        + <kind>-<precision>.json       format ONNX_FORMAT
    engines/<model>/<kind>-<precision>.ort.onnx   + <kind>-<precision>.ort.json   format ENGINE_FORMAT
    engines/<model>/<kind>-<precision>.trt.plan   + <kind>-<precision>.trt.json   format ENGINE_FORMAT

Every manifest is sealed (``provenance.seal``), names its file and that file's sha256, and holds
the I/O contract, whose ``precision`` is the artifact's one precision field. A manifest also
records what decided its artifact (``fingerprint_inputs``) and their hash (``fingerprint``): an
artifact is current when the fingerprint of what would make it now is the recorded one, its file
(and external-data file) still hashes as recorded, and its verification passed
(:func:`stale_reason`, the same rule for graphs and engines).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import contract_problem
from .errors import SparseDeployError
from .onnx_files import data_problem
from .presets import PRESETS
from .provenance import seal_problem, sha256_file, write_manifest

__all__ = [
    "KINDS",
    "Artifact",
    "ONNX_FORMAT",
    "ENGINE_FORMAT",
    "ENGINE_SUFFIXES",
    "graph_path",
    "engine_path",
    "manifest_path",
    "rebuild_hint",
    "read_onnx_manifest",
    "read_engine_manifest",
    "source_graph",
    "fingerprint",
    "stale_reason",
    "write_artifact_manifest",
]

KINDS = ("dense", "sparse")
ONNX_FORMAT = "sparse-deploy-onnx/1"
ENGINE_FORMAT = "sparse-deploy-engine/1"
#: Engine file endings per build backend: ``<kind>-<precision><suffix>``.
ENGINE_SUFFIXES = {"onnxruntime": ".ort.onnx", "tensorrt": ".trt.plan"}
# Per format: the manifest entry naming the file, the one holding its sha256, and the
# verification entries that must say "passed" for the artifact to be kept or reused.
_FILE_KEY = {ONNX_FORMAT: "file", ENGINE_FORMAT: "engine"}
_SHA_KEY = {ONNX_FORMAT: "onnx_sha256", ENGINE_FORMAT: "engine_sha256"}
_CHECKS = {ONNX_FORMAT: ("parity", "sparsity_check"), ENGINE_FORMAT: ("engine_check",)}


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def graph_path(out: str | Path, kind: str, precision: str) -> Path:
    """``<out>/<kind>-<precision>.onnx``."""
    return Path(out) / f"{kind}-{precision}.onnx"


def engine_path(engine_dir: str | Path, kind: str, precision: str, backend: str) -> Path:
    """``<engine_dir>/<kind>-<precision>.ort.onnx`` or ``.trt.plan``."""
    return Path(engine_dir) / f"{kind}-{precision}{ENGINE_SUFFIXES[backend]}"


def manifest_path(artifact: str | Path) -> Path:
    """The manifest beside a graph or engine: ``x.onnx`` -> ``x.json``, ``x.trt.plan`` -> ``x.trt.json``."""
    return Path(artifact).with_suffix(".json")


@dataclass
class Artifact:
    """A graph or engine on disk with its manifest; ``reused`` when it was current and kept as it was."""

    kind: str
    precision: str
    path: Path
    manifest: dict[str, Any]
    reused: bool = False

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)


def rebuild_hint(path: str | Path, preset: str | None = None) -> str:
    """How to (re)build the engine at ``path``: for ``preset``, else the preset its folder is named after."""
    model = next((m for m in (preset, Path(path).parent.name) if m in PRESETS), None)
    if model is None:
        return (
            "make engine MODEL=<preset> (python -m sparse_deploy.build --model <preset>; presets: "
            + ", ".join(PRESETS)
            + ")"
        )
    return f"make engine MODEL={model} (python -m sparse_deploy.build --model {model})"


def _hint_preset(manifest: dict[str, Any]) -> str | None:
    """The preset to rebuild for: the contract's (written from the graph) before the top-level field."""
    contract = manifest.get("contract")
    for value in (contract.get("preset") if isinstance(contract, dict) else None, manifest.get("preset")):
        if isinstance(value, str):
            return value
    return None


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _parse(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, None)``, or ``(what was read, why it is not a sealed manifest of a known format)``."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"is corrupt ({exc})"
    if not isinstance(data, dict):
        return None, "is not a sparse-deploy manifest"
    problem = seal_problem(data)
    if problem:
        return data, problem
    if data.get("format") not in _FILE_KEY:
        return data, f"is not a sparse-deploy manifest (format {ENGINE_FORMAT} or {ONNX_FORMAT} expected)"
    # Every graph and engine manifest has been written sealed: one without its seal was edited (cpp/ checks the same).
    return data, seal_problem(data, required=True)


def _say(subject: str, problem: str) -> str:
    """``x is corrupt (...)`` / ``x: its content does not match ...``: a problem after what it is about."""
    return f"{subject} {problem}" if problem.startswith(("is ", "does ")) else f"{subject}: {problem}"


def _file_problem(path: Path, manifest: dict[str, Any]) -> str | None:
    """Why the file (and its external-data file) no longer hashes as its manifest records; None if it does."""
    if sha256_file(path) != manifest.get(_SHA_KEY[manifest["format"]]):
        return "does not match the sha256 in its manifest (edited, truncated or replaced)"
    return data_problem(path, manifest)


def read_onnx_manifest(onnx_path: str | Path) -> dict[str, Any]:
    """The manifest beside an exported graph, with one-line errors for missing/foreign files."""
    onnx_path = Path(onnx_path)
    path = manifest_path(onnx_path)
    if not onnx_path.is_file():
        raise SparseDeployError(
            f"ONNX graph '{onnx_path}' does not exist; export it with python -m sparse_deploy.export"
        )
    if not path.is_file():
        raise SparseDeployError(f"'{onnx_path}' has no manifest '{path.name}' beside it: not a sparse-deploy export")
    manifest, problem = _parse(path)
    if problem or manifest["format"] != ONNX_FORMAT:
        problem = problem or f"is not a sparse-deploy ONNX manifest (format {ONNX_FORMAT} expected)"
        raise SparseDeployError(_say(f"manifest '{path}'", problem) + "; re-export the graph")
    return manifest


def _locate(path: Path) -> tuple[Path, Path]:
    """``(artifact, manifest)`` paths for an artifact or its manifest given on the command line."""
    if path.suffix != ".json" or not path.is_file():
        return path, manifest_path(path)
    data, problem = _parse(path)  # the manifest itself was given
    if problem:
        raise SparseDeployError(_say(f"engine manifest '{path}'", problem) + f"; rebuild with {rebuild_hint(path)}")
    name = data.get(_FILE_KEY[data["format"]])
    if not isinstance(name, str) or not name:
        raise SparseDeployError(f"'{path}' is not a sparse-deploy engine manifest (no 'engine' entry)")
    return path.parent / name, path


def read_engine_manifest(path: str | Path, *, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """Find and check the manifest of an engine or exported graph (or take the manifest itself).

    Returns:
        ``(artifact_path, manifest)``. Raises a one-line :class:`SparseDeployError` for a missing
        file, a file without a (valid) manifest, a manifest whose contract is not its preset's, or
        (with ``verify``) a file whose sha256 differs from the manifest's.
    """
    path, mpath = _locate(Path(path))
    if not path.exists():
        raise SparseDeployError(f"engine '{path}' does not exist; build it with {rebuild_hint(path)}")
    if path.is_dir():
        raise SparseDeployError(f"'{path}' is a folder, not an engine file (a checkpoint folder needs a manifest.json)")
    if not mpath.is_file():
        raise SparseDeployError(
            f"'{path}' has no manifest '{mpath.name}' beside it, so it is not a sparse-deploy "
            f"engine; build one with {rebuild_hint(path)}"
        )
    manifest, problem = _parse(mpath)
    hint = rebuild_hint(path, _hint_preset(manifest) if manifest is not None else None)
    if manifest is not None and problem and problem.startswith("is not"):
        raise SparseDeployError(f"'{mpath}' {problem}; '{path}' is a foreign file")
    if problem:
        raise SparseDeployError(_say(f"engine manifest '{mpath}'", problem) + f"; rebuild with {hint}")
    named = manifest.get(_FILE_KEY[manifest["format"]])
    if named != path.name:
        raise SparseDeployError(f"manifest '{mpath}' describes '{named}', not '{path.name}'; rebuild with {hint}")
    for key in ("preset", "contract"):
        if key not in manifest:
            raise SparseDeployError(f"engine manifest '{mpath}' lacks '{key}'; rebuild with {hint}")
    problem = contract_problem(manifest)
    if problem:
        raise SparseDeployError(f"engine manifest '{mpath}': {problem}; rebuild with {hint}")
    problem = _file_problem(path, manifest) if verify else None
    if problem:
        raise SparseDeployError(_say(f"'{path}'", problem) + f"; rebuild with {hint}")
    return path, manifest


def source_graph(engine: str | Path, manifest: dict[str, Any]) -> Path | None:
    """The exported graph an engine was built from, if it is still there and unchanged.

    Looked for where the manifest says, relative to the working folder and to the engine's
    parents (a repository copy), and beside the engine.
    """
    source = manifest.get("source_onnx")
    if not source:
        return None
    engine, p = Path(engine), Path(source)
    candidates = [p] if p.is_absolute() else [p, engine.parent.parent.parent / p, engine.parent.parent / p]
    candidates.append(engine.parent / p.name)
    for candidate in candidates:
        if candidate.is_file() and sha256_file(candidate) == manifest.get("source_onnx_sha256"):
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# Writing and staleness
# --------------------------------------------------------------------------------------------


def fingerprint(inputs: dict[str, Any]) -> str:
    """The sha256 of everything that decides an artifact (JSON, keys sorted)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def write_artifact_manifest(
    artifact: str | Path, manifest: dict[str, Any], inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Seal ``manifest`` (plus ``inputs`` and their fingerprint) and write it atomically beside ``artifact``."""
    extra = {"fingerprint": fingerprint(inputs), "fingerprint_inputs": inputs} if inputs is not None else {}
    return write_manifest(manifest_path(artifact), {**manifest, **extra})


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    def same(key: str) -> bool:
        return json.dumps(old.get(key), sort_keys=True, default=str) == json.dumps(
            new.get(key), sort_keys=True, default=str
        )

    return sorted(k for k in set(old) | set(new) if not same(k))


def stale_reason(path: str | Path, inputs: dict[str, Any]) -> str | None:
    """None if the graph or engine at ``path`` is current for ``inputs``, else why not.

    Current means: a sealed manifest of ``inputs["format"]`` whose ``fingerprint`` is that of
    ``inputs``, a file (and external-data file) that still hashes as recorded, and every
    verification the format records passed.
    """
    path = Path(path)
    if not path.is_file():
        return "no file yet"
    if not manifest_path(path).is_file():
        return "no manifest beside it"
    manifest, problem = _parse(manifest_path(path))
    if problem:
        return _say("its manifest", problem)
    if manifest.get("fingerprint") != fingerprint(inputs) or manifest["format"] != inputs.get("format"):
        return f"changed: {', '.join(_changed(manifest.get('fingerprint_inputs') or {}, inputs)) or 'fingerprint'}"
    problem = _file_problem(path, manifest)
    if problem:
        return _say("the file", problem)
    if not all((manifest.get(check) or {}).get("passed") for check in _CHECKS[manifest["format"]]):
        return "its verification did not pass"
    return None
