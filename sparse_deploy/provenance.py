"""Provenance for manifests: library versions, file hashes, atomic writes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

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
    "temp_sibling",
    "temp_dir",
    "remove_stale_temps",
    "pid_alive",
    "follow_link",
    "settle_modes",
    "is_temp_name",
]

_LIBS = ("sparse_deploy", "torch", "diffusers", "onnx", "onnxruntime", "polygraphy", "tensorrt", "numpy", "safetensors")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape artifacts (None where not installed)."""
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


# Temporaries are named after what they become and the process that made them: ``.<name>.<tag>-<pid>``
# (``tmp``: being written; ``old``: the version a folder swap is replacing; ``stage``: an export's
# staging folder). A later run removes those of dead processes (:func:`remove_stale_temps`).
TEMP_TAGS = ("tmp", "old", "stage")
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old|stage)-(?P<pid>[0-9]+)$")


def temp_sibling(final: str | Path, tag: str = "tmp") -> Path:
    """``.<name>.<tag>-<pid>`` beside ``final``: a temporary that says what made it."""
    final = Path(final)
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts; one of another user counts too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries (``.<name>.<tag>-<pid>``) of dead processes in ``folder``; returns them.

    Only those of ``name`` when given. A swap's ``old`` copy whose final name is missing is put
    back instead (:func:`recover_dir`), never removed. Temporaries of live processes are kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP_NAME.match(entry.name)
        if match is None or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
            continue
        if match["tag"] == "old" and not (folder / match["name"]).exists():
            recover_dir(folder / match["name"])
            continue
        _remove(entry)
        removed.append(entry)
    return removed


_SWEPT: set[str] = set()  # folders this process has already cleared of dead processes' temporaries


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temps` of ``folder``, once per process (a folder of a million PNGs is listed once, not per
    PNG).
    """
    key = os.path.normpath(folder.absolute())
    if key not in _SWEPT:
        remove_stale_temps(folder)
        _SWEPT.add(key)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary of :func:`temp_sibling` (of any process)."""
    return _TEMP_NAME.match(name) is not None


def follow_link(path: str | Path) -> Path:
    """``path`` with a symlink at its end followed (to where it points), so a write replaces the target, not the
    link.
    """
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def settle_modes(path: str | Path) -> None:
    """Give a freshly written file (or every file and folder below a fresh folder) the mode a plain ``open`` gives.

    Writers that go through a private temporary file (safetensors' own atomic save does, with
    mkstemp's 0600) would otherwise leave artifacts only their owner can read; ``save_pretrained``'s
    ``config.json`` and every other file here is ``0666 & ~umask``.
    """
    path = Path(path)
    mask = _umask()
    items = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for item in items:
        if item.is_symlink():
            continue
        st = item.stat()
        base = 0o777 if item.is_dir() or st.st_mode & 0o111 else 0o666
        want = base & ~mask
        if st.st_mode & 0o777 != want:
            os.chmod(item, want)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed to ``final``, on failure removed.

    A killed process leaves only ``.<name>.tmp-<pid>``, which the next process writing into that
    folder removes (:func:`remove_stale_temps`, once per process and folder), never a half-written
    ``final``. A symlink at ``final`` is
    followed: its target is replaced. The file gets a plain file's mode (:func:`settle_modes`).
    """
    final = follow_link(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(final.parent)
    tmp = temp_sibling(final)
    try:
        yield tmp
        if tmp.exists():
            settle_modes(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def temp_dir(final: str | Path, tag: str = "tmp") -> Iterator[Path]:
    """A fresh folder ``.<name>.<tag>-<pid>`` beside ``final`` (stale ones of dead processes removed), removed on
    exit.
    """
    final = follow_link(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(final.parent)
    tmp = temp_sibling(final, tag)
    _remove(tmp)  # a folder of an earlier process that had this pid
    tmp.mkdir()
    try:
        yield tmp
    finally:
        _remove(tmp)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
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
    final = follow_link(final)
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
    :func:`recover_dir` puts back. A symlink at ``final`` is followed (its target is replaced).
    """
    final = follow_link(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    with temp_dir(final) as tmp:
        yield tmp
        settle_modes(tmp)
        _fsync_tree(tmp)
        if final.exists() and _exchange(tmp, final):
            pass  # tmp now holds the old version; temp_dir removes it
        else:
            old = temp_sibling(final, "old")
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            if old.exists():
                shutil.rmtree(old)
        _fsync_dir(final.parent)


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


def seal_problem(manifest: dict[str, Any], *, required: bool = False) -> str | None:
    """Why a manifest's content does not match its own hash; None when it does, or has none (older files) unless
    ``required``.
    """
    want = manifest.get(MANIFEST_SEAL)
    if want is None:
        return f"it carries no seal ({MANIFEST_SEAL}: written by hand or by an older version)" if required else None
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
