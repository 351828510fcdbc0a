"""FID's image sources and their identity.

A folder of images, a run's sample folder, an .npz, or fashion-mnist:train/test, loaded as uint8 NHWC, and
the identity (kind, name, content hash, count) that keys their cached statistics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..data import (
    IMAGE_SUFFIXES,
    fashion_mnist_images_file,
    idx_shape,
    image_files,
    read_idx,
)
from ..errors import SparseDeployError
from ..limits import open_image
from ..outputs import check_samples
from ..provenance import sha256_file

# ----------------------------------------------------------------------------- sources


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise SparseDeployError(f"FID expects uint8 images (0-255), got dtype {arr.dtype}")
    if arr.ndim == 3:  # [N, H, W] gray
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise SparseDeployError(f"FID expects images shaped [N, H, W, C] with C 1 or 3, got {list(arr.shape)}")
    return arr


def _fashion_mnist_images(path: Path) -> np.ndarray:
    """A Fashion-MNIST images idx file (data.py's reader) as uint8 ``[N, H, W, 1]``."""
    arr = read_idx(path)
    if arr.ndim != 3:
        raise SparseDeployError(f"{path} is not an idx file of images (its shape is {list(arr.shape)})")
    return arr[..., None]


def _run_images(folder: Path) -> list[Path] | None:
    """The sample files a ``sparse_deploy.run`` folder's ``run.json`` lists (not its grid), or None."""
    record_path = folder / "run.json"
    if not record_path.is_file():
        return None
    try:
        names = json.loads(record_path.read_text())["images"]
        files = [folder / str(name) for name in names]
    except (ValueError, KeyError, TypeError) as exc:
        raise SparseDeployError(
            f"'{record_path}' is not a sampling record ({exc.__class__.__name__}); re-run sampling or remove it"
        ) from exc
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SparseDeployError(
            f"{len(missing)} images listed in '{record_path}' are missing (first: {missing[0]}); re-run sampling"
        )
    return files


def _image_files(folder: Path) -> list[Path]:
    check_samples(folder)  # a sample folder whose run has not finished is refused
    listed = _run_images(folder)
    if listed is not None:
        return listed
    files = image_files(folder)
    if not files:
        raise SparseDeployError(f"no {'/'.join(s[1:].upper() for s in sorted(IMAGE_SUFFIXES))} images in {folder}")
    return files


def _parse_source(source: str | Path) -> tuple[str, str | Path]:
    text = str(source)
    if text.startswith("fashion-mnist:"):
        return "fashion-mnist", text.split(":", 1)[1]
    path = Path(text)
    if path.is_dir():
        return "folder", path
    if path.is_file() and path.suffix == ".npz":
        return "npz", path
    raise SparseDeployError(
        f"'{text}' is not an image folder, an .npz of uint8 images, fashion-mnist:test or fashion-mnist:train"
    )


def _npz_key(path: Path, keys: list[str]) -> str:
    if "images" in keys or len(keys) == 1:
        return "images" if "images" in keys else keys[0]
    raise SparseDeployError(f"{path} holds several arrays ({', '.join(keys)}); name the images array 'images'")


def _npz_images(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            return _as_nhwc(data[_npz_key(path, list(data.keys()))])
    except SparseDeployError as exc:
        raise SparseDeployError(f"'{path}': {exc}") from exc
    except Exception as exc:  # not a zip, pickled objects, wrong dtype: one sentence
        raise SparseDeployError(f"'{path}' is not an .npz of uint8 images ({exc.__class__.__name__}: {exc})") from exc


def _check_num(num: int | None, available: int, source: str) -> int:
    if num is None:
        return available
    if num < 1 or num > available:
        raise SparseDeployError(f"asked for {num} images from {source}, which has {available}")
    return num


def load_images(source: str | Path, num: int | None = None) -> np.ndarray | list[np.ndarray]:
    """The first ``num`` images of a source as uint8 (``[N, H, W, C]``, or a list when sizes differ).

    Sources: ``fashion-mnist:test`` / ``fashion-mnist:train`` (the idx files :mod:`sparse_deploy.data`
    finds: ``$SPARSE_DEPLOY_FMNIST``, else Debian's), a folder of images (``data.IMAGE_SUFFIXES``:
    PNG, JPEG, BMP, WebP; sorted by path, searched recursively), or an ``.npz`` holding one uint8
    array ``[N, H, W(, C)]`` (or several, one named ``images``).
    """

    kind, where = _parse_source(source)
    if kind == "fashion-mnist":
        arr = _fashion_mnist_images(fashion_mnist_images_file(str(where)))
        return arr[: _check_num(num, len(arr), str(source))]
    if kind == "npz":
        arr = _npz_images(Path(where))
        return arr[: _check_num(num, len(arr), str(source))]
    files = _image_files(Path(where))
    files = files[: _check_num(num, len(files), str(source))]
    images = []
    for f in files:
        with open_image(f) as im:  # a pixel limit, checked before decoding
            try:
                images.append(np.asarray(im.convert("L" if im.mode in ("L", "1") else "RGB"), dtype=np.uint8))
            except (OSError, ValueError) as exc:
                raise SparseDeployError(
                    f"'{f}' is not a readable image ({exc.__class__.__name__}); remove it or pass another folder"
                ) from exc
    images = [im[..., None] if im.ndim == 2 else im for im in images]
    if len({im.shape for im in images}) == 1:
        return np.stack(images)
    return images


def source_identity(source: str | Path, num: int | None = None) -> dict:
    """What makes a source's features what they are: kind, content hash, count (no images decoded)."""
    kind, where = _parse_source(source)
    if kind == "fashion-mnist":
        path = fashion_mnist_images_file(str(where))
        n_total = idx_shape(path)[0]
        return {"kind": kind, "split": where, "sha256": sha256_file(path), "num": _check_num(num, n_total, str(source))}
    if kind == "npz":
        n_total = len(_npz_images(Path(where)))
        return {
            "kind": kind,
            "name": Path(where).name,
            "sha256": sha256_file(where),
            "num": _check_num(num, n_total, str(source)),
        }
    files = _image_files(Path(where))
    files = files[: _check_num(num, len(files), str(source))]
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(where)).encode() + b"\0" + bytes.fromhex(sha256_file(f)))
    return {"kind": kind, "name": Path(where).resolve().name, "sha256": digest.hexdigest(), "num": len(files)}
