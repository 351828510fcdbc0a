"""Where the image data is and how to read it: idx files, Fashion-MNIST's folder, image files.

The one idx reader and image-file lister: training's datasets (:mod:`sparse_deploy.learn.datasets`),
FID's sources (:mod:`sparse_deploy.fid`) and the shipped reference features read through them.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

from .errors import SparseDeployError
from .limits import check_idx_shape

__all__ = [
    "read_idx",
    "idx_shape",
    "fashion_mnist_dirs",
    "find_fashion_mnist",
    "fashion_mnist_images_file",
    "fashion_mnist_arrays",
    "image_files",
    "FMNIST_ENV",
    "FMNIST_DEFAULT_DIR",
    "FMNIST_FILES",
    "IMAGE_SUFFIXES",
]

log = logging.getLogger(__name__)

FMNIST_ENV = "SPARSE_DEPLOY_FMNIST"  # a folder searched before FMNIST_DEFAULT_DIR
FMNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _idx_bytes(path: Path, size: int = -1) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(size)
    except (OSError, EOFError) as exc:
        raise SparseDeployError(f"cannot read idx file '{path}' ({exc}); reinstall the dataset") from exc


def _idx_header(data: bytes, path: Path) -> tuple[int, ...]:
    """The shape an unsigned-byte idx header declares (magic ``00 00 08 ndim``, then ``ndim`` big-endian sizes)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SparseDeployError(f"'{path}' is not an unsigned-byte idx file; reinstall the dataset")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise SparseDeployError(f"idx file '{path}' is truncated (in its header)")
    return tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape an idx file (optionally .gz) declares, read from its header alone."""
    path = Path(path)
    return _idx_header(_idx_bytes(path, 4 + 4 * 255), path)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally .gz) into a numpy array of its declared shape (checked against ``limits`` first)."""
    path = Path(path)
    shape = check_idx_shape(idx_shape(path), path)
    offset, total = 4 + 4 * len(shape), int(np.prod(shape))
    data = _idx_bytes(
        path, offset + total + 1
    )  # never more than the header declares (plus one byte to notice extra data)
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != total:
        state = "truncated" if arr.size < total else "longer than its header declares"
        raise SparseDeployError(
            f"idx file '{path}' is {state} ({arr.size if arr.size < total else 'more than ' + str(total)} of {total} "
            "values)"
        )
    return arr.reshape(shape)


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: ``$SPARSE_DEPLOY_FMNIST`` (when set), then Debian's folder."""
    return [Path(d) for d in (os.environ.get(FMNIST_ENV, ""), FMNIST_DEFAULT_DIR) if d]


def find_fashion_mnist(root: str | Path | None = None, stems: tuple[str, ...] = FMNIST_FILES["train"]) -> Path:
    """The folder holding the idx files ``stems`` (each raw or .gz; default: the train split's images and labels).

    ``root``, else the first of :func:`fashion_mnist_dirs` that has them; or an error saying how to get them.
    """
    candidates = [Path(root)] if root else fashion_mnist_dirs()
    for folder in candidates:
        if all((folder / stem).exists() or (folder / f"{stem}.gz").exists() for stem in stems):
            return folder
    raise SparseDeployError(
        f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))}; install "
        "them with "
        "'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; 'make setup' does "
        "this), or point "
        f"--data fashion-mnist:DIR or {FMNIST_ENV}=DIR at a folder holding "
        f"{' and '.join(f'{s}.gz' for s in stems)}"
    )


def _idx_file(folder: Path, stem: str) -> Path:
    return folder / stem if (folder / stem).exists() else folder / f"{stem}.gz"


def _split_stems(split: str) -> tuple[str, str]:
    if split not in FMNIST_FILES:
        raise SparseDeployError(f"unknown Fashion-MNIST split '{split}'; use 'train' or 'test'")
    return FMNIST_FILES[split]


def fashion_mnist_images_file(split: str = "train", root: str | Path | None = None) -> Path:
    """The idx file (raw or .gz) of a Fashion-MNIST split's images, looked up as :func:`find_fashion_mnist` does."""
    stem = _split_stems(split)[0]
    return _idx_file(find_fashion_mnist(root, (stem,)), stem)


def fashion_mnist_arrays(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels uint8 [N])`` of a Fashion-MNIST split."""
    img_stem, lab_stem = _split_stems(split)
    folder = find_fashion_mnist(root, (img_stem, lab_stem))
    return read_idx(_idx_file(folder, img_stem)), read_idx(_idx_file(folder, lab_stem))


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`, any case) in ``folder`` (and below it when ``recursive``), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
