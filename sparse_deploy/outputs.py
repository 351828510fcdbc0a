"""Output folders: what a stage may write into, one writer at a time, and what killed writers left.

Every stage that writes a folder claims it first (:func:`claim_output`)::

    with claim_output(config.out, "samples", "--out"):
        ...  # write

A claim refuses, before any work, a folder that holds anything but an earlier output of the same
kind (:data:`KINDS`: each kind is recognised by its own manifest or run record) and names what is
there; a folder that does not exist yet, or is empty, is fine. While the claim is held, a second
writer of the same folder is refused (an advisory ``fcntl.flock`` on ``.<name>.lock`` beside it,
removed when the claim ends), and the temporaries that killed processes left in and beside it
(``provenance.remove_stale_temps``) are removed. A symlink at ``--out`` is followed: the claim,
and the writes, are about the folder it points to.

A sample folder is marked incomplete until its run record lands (:func:`samples_problem`): its
``run.json`` says ``"complete": false`` from the moment images start to change, and readers
(``fid``, and ``bench`` through it) refuse such a folder in one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SparseDeployError
from .guards import check_output_dir, check_output_file
from .provenance import follow_link, is_temp_name, recover_dir, remove_stale_temps

__all__ = [
    "OutputKind",
    "KINDS",
    "RUN_RECORD",
    "check_output",
    "check_output_record",
    "claim_output",
    "output_lock",
    "samples_problem",
    "check_samples",
]

RUN_RECORD = "run.json"  # a sample folder's record (python -m sparse_deploy.run)
_LOCK_SUFFIX = ".lock"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _format_of(path: Path) -> str | None:
    data = _json(path) if path.is_file() else None
    return data.get("format") if isinstance(data, dict) and isinstance(data.get("format"), str) else None


def _holds_format(folder: Path, fmt: str) -> bool:
    return any(_format_of(p) == fmt for p in folder.glob("*.json"))


def _is_training_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("checkpoint/manifest.json", "metrics.jsonl", "coverage.json"))


def _is_sample_folder(folder: Path) -> bool:
    data = _json(folder / RUN_RECORD)
    return isinstance(data, dict) and "images" in data


def _is_triton_repository(folder: Path) -> bool:
    return any((p / "config.pbtxt").is_file() for p in folder.iterdir() if p.is_dir())


def _is_plain_checkpoint(folder: Path) -> bool:
    """A checkpoint folder without training state (an export of weights, not a run's checkpoint)."""
    data = _json(folder / "manifest.json")
    return (
        isinstance(data, dict)
        and data.get("format") == "sparse-deploy-checkpoint/1"
        and not data.get("training_state_sha256")
    )


def _is_report_folder(folder: Path) -> bool:
    return (folder / "report.md").is_file() or any(
        isinstance(_json(p), dict) and "kind" in _json(p) for p in folder.glob("*.json")
    )


@dataclass(frozen=True)
class OutputKind:
    """One kind of output folder.

    Attributes:
        name: what it is called in messages (``training run``).
        made_by: the command that makes one.
        recognise: whether a folder holds an earlier output of this kind.
        replaced_whole: the stage writes a new folder and swaps it in (``provenance.atomic_dir``),
            rather than writing files into it.
    """

    name: str
    made_by: str
    recognise: Callable[[Path], bool]
    replaced_whole: bool = False


#: Every kind of output folder, keyed by the name stages claim it with.
KINDS: dict[str, OutputKind] = {
    "training-run": OutputKind("training run", "python -m sparse_deploy.train", _is_training_run),
    "samples": OutputKind("sample folder", "python -m sparse_deploy.run", _is_sample_folder),
    "export": OutputKind(
        "ONNX export folder", "python -m sparse_deploy.export", lambda p: _holds_format(p, "sparse-deploy-onnx/1")
    ),
    "engines": OutputKind(
        "engine folder", "python -m sparse_deploy.build", lambda p: _holds_format(p, "sparse-deploy-engine/1")
    ),
    "triton": OutputKind("Triton model repository", "python -m sparse_deploy.triton", _is_triton_repository),
    "weights": OutputKind(
        "shipped weights folder",
        "python -m sparse_deploy.shipped pack",
        lambda p: _format_of(p / "MANIFEST.json") == "sparse-deploy-weights/1",
        replaced_whole=True,
    ),
    "fid-reference": OutputKind(
        "FID reference folder",
        "python -m sparse_deploy.shipped reference",
        lambda p: _format_of(p / "MANIFEST.json") == "sparse-deploy-fid-reference/1",
    ),
    "checkpoint": OutputKind(
        "checkpoint without training state",
        "python -m sparse_deploy.shipped checkpoint",
        _is_plain_checkpoint,
        replaced_whole=True,
    ),
    "report": OutputKind("report folder", "python -m sparse_deploy.bench", _is_report_folder),
    "client": OutputKind(
        "client folder",
        "python -m sparse_deploy.client",
        lambda p: (p / "client.json").is_file() or (p / "load-test.json").is_file(),
    ),
}


def _contents(folder: Path) -> list[str]:
    """What a folder holds, less temporaries and lock files (any process's: they say nothing about whose folder it
    is).
    """
    return sorted(
        p.name
        for p in folder.iterdir()
        if not is_temp_name(p.name) and not (p.name.startswith(".") and p.name.endswith(_LOCK_SUFFIX))
    )


def _describe(folder: Path, names: list[str]) -> str:
    """What is in a folder we may not write into: an output of another kind, or foreign files."""
    if (folder / "checkpoint" / "manifest.json").is_file() and (
        folder / "checkpoint" / "training_state.safetensors"
    ).is_file():
        return "holds a training run (its checkpoint/ has training state)"
    for key, kind in KINDS.items():
        if key != "report" and kind.recognise(folder):
            return f"holds a {kind.name} ({kind.made_by})"
    if _format_of(folder / "manifest.json") == "sparse-deploy-checkpoint/1":
        return "holds a training run's checkpoint (with training state)"
    shown = ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"holds files sparse-deploy did not write ({shown})"


def check_output(path: str | Path, kind: str, flag: str = "--out") -> Path:
    """Refuse (one sentence) an output folder that holds anything but an earlier output of ``kind``.

    Returns the folder to write, with a symlink at its end followed. Nothing is written (a folder a
    killed swap left aside under ``.<name>.old-<pid>`` is put back first).
    """
    what = KINDS[kind]
    check_output_dir(path, flag)
    folder = follow_link(path)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise SparseDeployError(f"{flag} '{path}' points to '{folder}', which is not a folder; pass a folder")
    if not folder.is_dir():
        return folder
    if what.replaced_whole:
        recover_dir(folder)
    names = _contents(folder)
    if not names or what.recognise(folder):
        return folder
    verb = "replace" if what.replaced_whole else "write into"
    there = _describe(folder, names)
    way_out = "or move its contents away" if "did not write" in there else "not another stage's output"
    raise SparseDeployError(
        f"{flag} '{path}' {there}, not a {what.name}; refusing to {verb} it. "
        f"Pass a new or empty folder (or one holding an earlier {what.name}), {way_out}"
    )


def check_output_record(path: str | Path, flag: str, key: str) -> Path:
    """An output JSON file: new, or an earlier result of the same kind (a JSON object holding ``key``).

    Anything else at ``path`` is someone's file and is refused in one sentence, never overwritten.
    """
    check_output_file(path, flag)
    target = follow_link(path)
    if target.exists():
        data = _json(target)
        if not (isinstance(data, dict) and key in data):
            raise SparseDeployError(
                f"{flag} '{path}' is a file sparse-deploy did not write (not an earlier result); refusing to "
                "overwrite it. "
                "Pass a new file name, or move that file away"
            )
    return target


# -- one writer per folder ----------------------------------------------------------------------

_HELD: dict[str, int] = {}  # folders this process holds the lock of -> nesting depth


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown pid"


@contextlib.contextmanager
def output_lock(path: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold the one-writer lock of an output folder (``.<name>.lock`` beside it), or refuse in one sentence.

    Re-entrant within a process (a build holds its export folder while the export claims it too).
    The lock file names its holder and is removed when the lock ends.
    """
    folder = Path(os.path.realpath(path))  # one lock per folder, whichever path (or link) names it
    key = str(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}{_LOCK_SUFFIX}"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SparseDeployError(
                f"{flag} '{path}' is being written by another process ({holder}); wait for it to finish, or pass "
                f"another {flag}"
            ) from None
        # The previous holder removes the file as it lets go: a lock on a removed file locks nothing.
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()}: {shlex.join([os.path.basename(sys.executable), *sys.argv])[:400]}\n".encode(), 0
        )
    except OSError:
        pass
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def claim_output(path: str | Path, kind: str, flag: str = "--out", *, lock: bool = True) -> Iterator[Path]:
    """Check an output folder (:func:`check_output`), hold its lock, and clear what killed writers left.

    Yields the folder (a symlink at its end followed). ``lock=False`` checks and cleans without
    locking (the ranks of a torchrun job other than the writing one).
    """
    folder = check_output(path, kind, flag)
    with output_lock(folder, flag) if lock else contextlib.nullcontext():
        folder = check_output(path, kind, flag)  # again under the lock: a writer that just finished may have changed it
        if lock:
            remove_stale_temps(folder.parent, folder.name)
            remove_stale_temps(folder)
        yield folder


# -- sample folders: complete or not -------------------------------------------------------------


def samples_problem(folder: str | Path) -> str | None:
    """Why a sample folder (one with a ``run.json``) may not be read: its run has not finished; None if it has.

    A folder without a run record is someone's own image folder, not ours: no problem.
    """
    record = Path(folder) / RUN_RECORD
    if not record.is_file():
        return None
    data = _json(record)
    if isinstance(data, dict) and data.get("complete") is False:
        command = data.get("command") or "the python -m sparse_deploy.run command that made it"
        return (
            f"'{folder}' is an incomplete sample folder (its run was killed or is still running; {RUN_RECORD} says "
            "so); "
            f"finish it by running {command} again"
        )
    return None


def check_samples(folder: str | Path) -> None:
    """Raise :func:`samples_problem` as one sentence."""
    problem = samples_problem(folder)
    if problem:
        raise SparseDeployError(problem)
