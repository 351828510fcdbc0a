"""Datasets: Fashion-MNIST from idx files, image folders, and cached VAE latents.

All datasets yield ``(image, label)`` with images as float tensors in [-1, 1] (or latents)
of the preset's shape, so the training loop never special-cases a source.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .errors import SparseDeployError
from .limits import open_image
from .presets import Preset

__all__ = [
    "read_idx",
    "idx_shape",
    "fashion_mnist_dirs",
    "find_fashion_mnist",
    "fashion_mnist_images_file",
    "fashion_mnist_arrays",
    "fashion_mnist",
    "image_files",
    "image_folder",
    "latent_dataset",
    "synthetic",
    "make_dataset",
    "FMNIST_ENV",
    "FMNIST_DEFAULT_DIR",
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
    from .limits import check_idx_shape

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
            f"idx file '{path}' is {state} ({arr.size if arr.size < total else 'more than ' + str(total)} of {total} values)"
        )
    return arr.reshape(shape)


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: ``$SPARSE_DEPLOY_FMNIST`` (when set), then Debian's folder."""
    return [Path(d) for d in (os.environ.get(FMNIST_ENV, ""), FMNIST_DEFAULT_DIR) if d]


def find_fashion_mnist(root: str | Path | None = None, stems: tuple[str, ...] = FMNIST_FILES["train"]) -> Path:
    """The folder holding the idx files ``stems`` (each raw or .gz; default: the train split's images and
    labels): ``root``, else the first of :func:`fashion_mnist_dirs` that has them; or an error saying how to get them."""
    candidates = [Path(root)] if root else fashion_mnist_dirs()
    for folder in candidates:
        if all((folder / stem).exists() or (folder / f"{stem}.gz").exists() for stem in stems):
            return folder
    raise SparseDeployError(
        f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))}; install them with "
        "'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; 'make setup' does this), or point "
        f"--data fashion-mnist:DIR or {FMNIST_ENV}=DIR at a folder holding {' and '.join(f'{s}.gz' for s in stems)}"
    )


def _idx_file(folder: Path, stem: str) -> Path:
    return folder / stem if (folder / stem).exists() else folder / f"{stem}.gz"


def _split_stems(split: str) -> tuple[str, str]:
    if split not in FMNIST_FILES:
        raise SparseDeployError(f"unknown Fashion-MNIST split '{split}'; use 'train' or 'test'")
    return FMNIST_FILES[split]


def fashion_mnist_images_file(split: str = "train", root: str | Path | None = None) -> Path:
    """The idx file (raw or .gz) of a Fashion-MNIST split's images, found as :func:`find_fashion_mnist` finds folders."""
    stem = _split_stems(split)[0]
    return _idx_file(find_fashion_mnist(root, (stem,)), stem)


def fashion_mnist_arrays(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels uint8 [N])`` of a Fashion-MNIST split."""
    img_stem, lab_stem = _split_stems(split)
    folder = find_fashion_mnist(root, (img_stem, lab_stem))
    return read_idx(_idx_file(folder, img_stem)), read_idx(_idx_file(folder, lab_stem))


def _to_model_space(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float in [-1, 1], resized (antialiased) to ``size``."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


def fashion_mnist(preset: Preset, split: str = "train", root: str | Path | None = None) -> TensorDataset:
    """Fashion-MNIST as ``(image [1, S, S] in [-1, 1], label)`` at the preset's size."""
    if preset.in_channels != 1 or preset.latent:
        raise SparseDeployError(
            f"Fashion-MNIST is 1-channel pixels; preset '{preset.name}' wants {preset.in_channels}-channel {'latents' if preset.latent else 'images'}"
        )
    images, labels = fashion_mnist_arrays(split, root)
    x = _to_model_space(torch.from_numpy(images.copy()).unsqueeze(1), preset.sample_size)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`, any case) in ``folder`` and, when ``recursive``, below it, sorted by path."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _list_images(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names: one class per subfolder (searched recursively), or a flat folder = one class."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    if classes:
        for idx, cls in enumerate(classes):
            found = image_files(root / cls)
            files += found
            labels += [idx] * len(found)
    else:
        files = image_files(root, recursive=False)
        labels = [0] * len(files)
    return files, labels, classes


def image_folder(preset: Preset, root: str | Path) -> TensorDataset:
    """Images from ``root`` (one subfolder per class, or a flat folder = one class), loaded into memory."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise SparseDeployError(f"dataset folder '{root}' does not exist; pass --data DIR with your images")
    files, labels, classes = _list_images(root)
    if not files:
        raise SparseDeployError(
            f"dataset folder '{root}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "put images in it, one subfolder per class for class-conditional models"
        )
    if preset.num_classes and classes and len(classes) > preset.num_classes:
        raise SparseDeployError(
            f"'{root}' has {len(classes)} class folders but preset '{preset.name}' has {preset.num_classes} classes"
        )
    mode = "L" if preset.in_channels == 1 else "RGB"
    arrays = []
    for p in files:
        with open_image(p) as im:  # a pixel limit, checked before decoding
            arrays.append(np.asarray(im.convert(mode).resize((preset.sample_size,) * 2, Image.BICUBIC)))
    x = torch.from_numpy(np.stack(arrays))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    log.info("loaded %d images in %d classes from %s", len(files), max(len(classes), 1), root)
    return TensorDataset(_to_model_space(x, preset.sample_size), torch.tensor(labels, dtype=torch.int64))


@torch.no_grad()
def latent_dataset(
    preset: Preset, root: str | Path, vae: str | Path, cache_dir: str | Path = ".cache/latents", batch: int = 16
) -> TensorDataset:
    """Images from ``root`` encoded once by a local diffusers AutoencoderKL, cached as safetensors."""
    from safetensors.torch import load_file, save_file

    from .provenance import atomic_path

    vae = Path(vae)
    if not (vae / "config.json").is_file():
        raise SparseDeployError(
            f"VAE folder '{vae}' has no config.json; pass a local diffusers AutoencoderKL folder with --vae"
        )
    import json

    # Each encoder block but the last halves the resolution (8x for the SD VAE's 4 blocks).
    blocks = json.loads((vae / "config.json").read_text()).get("block_out_channels", [0, 0, 0, 0])
    pixel_size = preset.sample_size * 2 ** (len(blocks) - 1)
    files, labels, _ = _list_images(Path(root)) if Path(root).is_dir() else ([], [], [])
    if not files:
        raise SparseDeployError(f"dataset folder '{root}' holds no images; pass --data DIR with your images")
    key = hashlib.sha256("|".join([str(vae.resolve()), str(pixel_size), *map(str, files)]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{preset.name}-{key}.safetensors"
    if cache.exists():
        try:
            data = load_file(str(cache))
            return TensorDataset(data["latents"], data["labels"])
        except Exception as exc:  # a damaged cache is recomputed, never fatal
            log.warning("ignoring unreadable latent cache %s (%s: %s); re-encoding", cache, exc.__class__.__name__, exc)
    from PIL import Image
    from tqdm.auto import tqdm

    from .sources import load_vae

    model = load_vae(vae)
    scale = float(getattr(model.config, "scaling_factor", 0.18215))
    latents = []
    for i in tqdm(range(0, len(files), batch), desc="encoding latents"):
        parts = []
        for p in files[i : i + batch]:
            with open_image(p) as im:
                parts.append(np.asarray(im.convert("RGB").resize((pixel_size,) * 2, Image.BICUBIC)))
        arr = np.stack(parts)
        x = _to_model_space(torch.from_numpy(arr).permute(0, 3, 1, 2), pixel_size)
        latents.append(model.encode(x).latent_dist.sample() * scale)
    out = {"latents": torch.cat(latents).contiguous(), "labels": torch.tensor(labels, dtype=torch.int64)}
    with atomic_path(cache) as tmp:
        save_file(out, str(tmp))
    return TensorDataset(out["latents"], out["labels"])


def synthetic(preset: Preset, num: int = 1024, seed: int = 0) -> TensorDataset:
    """``num`` random samples of the preset's shape with random labels: for timing and smoke tests only."""
    if num < 1:
        raise SparseDeployError(f"synthetic:N needs N >= 1, got {num}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num, preset.in_channels, preset.sample_size, preset.sample_size, generator=gen)
    if not preset.latent:
        x = x.clamp_(-1, 1)
    y = torch.randint(0, max(preset.num_classes, 1), (num,), generator=gen)
    log.warning(
        "SYNTHETIC data for '%s' (%d random tensors): fine for step timing, meaningless for image quality",
        preset.name,
        num,
    )
    return TensorDataset(x, y)


def make_dataset(preset: Preset, data: str | None = None, vae: str | None = None) -> Dataset:
    """The training set: a folder of images, ``fashion-mnist[:DIR]``, ``synthetic[:N]`` (random
    tensors, for timing), or None for the preset's default."""
    if data is None:
        data = preset.dataset
    if data is None:
        raise SparseDeployError(
            f"preset '{preset.name}' has no built-in dataset; pass --data DIR with your images (and --vae for latent models)"
        )
    if data == "synthetic" or data.startswith("synthetic:"):
        count = data.partition(":")[2]
        if count and not count.isdigit():
            raise SparseDeployError(f"--data '{data}': write synthetic or synthetic:N with N a number of samples")
        return synthetic(preset, int(count or 1024))
    if data == "fashion-mnist" or data.startswith("fashion-mnist:"):
        return fashion_mnist(preset, "train", data.partition(":")[2] or None)
    if preset.latent:
        if vae is None:
            raise SparseDeployError(
                f"preset '{preset.name}' trains on VAE latents; pass --vae DIR (a local diffusers AutoencoderKL)"
            )
        return latent_dataset(preset, data, vae)
    return image_folder(preset, data)
