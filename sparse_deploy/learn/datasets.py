"""Training datasets: Fashion-MNIST, image folders, cached VAE latents, synthetic tensors.

All datasets yield ``(image, label)`` with images as float tensors in [-1, 1] (or latents)
of the preset's shape, so the training loop never special-cases a source. Files are found and
read with :mod:`sparse_deploy.data`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from ..data import IMAGE_SUFFIXES, fashion_mnist_arrays, image_files
from ..errors import SparseDeployError
from ..limits import open_image
from ..presets import Preset
from ..provenance import atomic_path
from ..sources import load_vae

__all__ = ["fashion_mnist", "image_folder", "latent_dataset", "synthetic", "make_dataset"]

log = logging.getLogger(__name__)


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
            f"Fashion-MNIST is 1-channel pixels; preset '{preset.name}' wants "
            f"{preset.in_channels}-channel {'latents' if preset.latent else 'images'}"
        )
    images, labels = fashion_mnist_arrays(split, root)
    x = _to_model_space(torch.from_numpy(images.copy()).unsqueeze(1), preset.sample_size)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


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
    vae = Path(vae)
    if not (vae / "config.json").is_file():
        raise SparseDeployError(
            f"VAE folder '{vae}' has no config.json; pass a local diffusers AutoencoderKL folder with --vae"
        )
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
            f"preset '{preset.name}' has no built-in dataset; pass --data DIR with your images "
            "(and --vae for latent models)"
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
