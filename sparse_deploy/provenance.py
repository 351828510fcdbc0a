"""Provenance for manifests: library versions, file hashes, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "library_versions",
    "sha256_file",
    "atomic_path",
    "atomic_dir",
    "recover_dir",
    "write_json_atomic",
    "write_text_atomic",
    "timestamp",
    "MANIFEST_SEAL",
    "seal",
    "seal_problem",
    "write_manifest",
]

_LIBS = ("sparse_deploy", "torch", "diffusers", "onnx", "onnxruntime", "polygraphy", "tensorrt", "numpy", "safetensors")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape artifacts (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = None
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed to ``final``, on failure removed.

    A killed process leaves only ``.<name>.tmp-<pid>`` litter, never a half-written ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def recover_dir(final: str | Path) -> bool:
    """Put back ``final`` from the ``.<name>.old-*`` copy a swap killed half-way left; True if it did."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return False
    olds = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], final)
    return True


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory: fill the yielded folder, then it replaces ``final``.

    The swap is one atomic exchange where the filesystem supports it, so ``final`` always names a
    complete folder; elsewhere a kill between the two renames leaves ``.<name>.old-<pid>``, which
    :func:`recover_dir` puts back.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists() and _exchange(tmp, final):
            shutil.rmtree(tmp)  # now the old version
        else:
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            if old.exists():
                shutil.rmtree(old)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush a freshly written folder's files to disk before it is renamed into place."""
    for item in folder.rglob("*"):
        if item.is_file():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling, flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


MANIFEST_SEAL = "manifest_sha256"


def _content_sha256(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SEAL}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``manifest_sha256``: the hash of its own content, so an edit is caught."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_SEAL}, default=str))
    return {**body, MANIFEST_SEAL: _content_sha256(body)}


def seal_problem(manifest: dict[str, Any]) -> str | None:
    """Why a manifest's content does not match its own hash; None when it does or has none (older files)."""
    want = manifest.get(MANIFEST_SEAL)
    if want is None:
        return None
    if want != _content_sha256(manifest):
        return "its content does not match its own hash (edited by hand or damaged)"
    return None


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Seal ``manifest`` (:func:`seal`) and write it atomically; returns what was written."""
    sealed = seal(manifest)
    write_json_atomic(path, sealed)
    return sealed


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
