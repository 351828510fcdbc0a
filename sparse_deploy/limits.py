"""Sane limits on what inputs may ask for, checked before anything is allocated.

A file or config read from disk states sizes (an idx header, an image's width and height, a model
config's layers and widths); these are checked here against limits far above any real use, so a
damaged or hostile file is refused in one sentence instead of exhausting memory:

* :func:`check_idx_shape`: an idx file's declared shape (Fashion-MNIST is 60,000 x 28 x 28);
* :func:`open_image`: an image is opened lazily and refused past :data:`MAX_IMAGE_PIXELS`
  (PIL's own decompression-bomb limit, raised as one sentence instead of a traceback);
* :func:`check_model_config`: a model config's integers and lists, then its parameter count,
  counted on PyTorch's ``meta`` device (no memory) before the model is built for real.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .errors import SparseDeployError

__all__ = [
    "MAX_IDX_VALUES",
    "MAX_IMAGE_PIXELS",
    "MAX_CONFIG_INT",
    "MAX_CONFIG_LIST",
    "MAX_MODEL_PARAMETERS",
    "check_idx_shape",
    "open_image",
    "check_model_config",
]

#: An idx file holds at most this many values (1 GiB of uint8; Fashion-MNIST's train images are 47 M).
MAX_IDX_VALUES = 2**30
#: An idx file has at most this many dimensions.
MAX_IDX_DIMS = 4
#: Pixels of one image (8k x 8k; FID resizes every image to 299 x 299). Below PIL's own
#: decompression-bomb limit, so this sentence, not PIL's warning or error, is what a user sees.
MAX_IMAGE_PIXELS = 8192 * 8192
#: Any integer in a model config (channels, layers, heads, sample size, classes).
MAX_CONFIG_INT = 1 << 20
#: Any list in a model config (block types, channels per block).
MAX_CONFIG_LIST = 64
#: Tighter bounds on the integers that multiply a model's size or its buffers.
CONFIG_INT_BOUNDS = {"sample_size": 4096, "num_layers": 1024, "layers_per_block": 64, "patch_size": 4096}
#: Parameters of a model (DiT-XL/2 has 675 M; this is 16 GiB in fp32).
MAX_MODEL_PARAMETERS = 4_000_000_000


def check_idx_shape(shape: tuple[int, ...], path: str | Path) -> tuple[int, ...]:
    """Refuse an idx header whose declared shape no real dataset has (before its data is read)."""
    total = math.prod(shape) if shape else 0
    if not shape or len(shape) > MAX_IDX_DIMS or total > MAX_IDX_VALUES:
        raise SparseDeployError(
            f"idx file '{path}' declares a shape of {list(shape)[:8]} ({total:,} values; at most {MAX_IDX_DIMS} "
            "dimensions "
            f"and {MAX_IDX_VALUES:,} values are read): damaged or not a dataset file; reinstall the dataset"
        )
    return shape


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Any]:
    """``PIL.Image.open`` with a pixel limit checked on the header, before any pixel is decoded.

    Raises one sentence for an unreadable file or one larger than ``max_pixels``.
    """
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise SparseDeployError(
            f"'{path}' is too large to read ({exc}); images of at most {max_pixels:,} pixels are read"
        ) from exc
    except (OSError, ValueError) as exc:
        raise SparseDeployError(
            f"'{path}' is not a readable image ({exc.__class__.__name__}); remove it or pass another folder"
        ) from exc
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise SparseDeployError(
                f"'{path}' is {width} x {height} pixels, over the {max_pixels:,} read here; shrink it or remove it"
            )
        yield im


def _walk(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        yield where, value
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")
    else:
        yield where, value


def check_model_config(kwargs: dict[str, Any], name: str, build=None) -> None:
    """Refuse a model config asking for absurd sizes, before the model is allocated.

    Every integer must be below :data:`MAX_CONFIG_INT` and every list at most
    :data:`MAX_CONFIG_LIST` long; then, when ``build`` (``config -> nn.Module``) is given, the model
    is built on PyTorch's ``meta`` device (shapes only, no memory) and its parameters counted.
    """
    for where, value in _walk(kwargs, ""):
        if isinstance(value, bool):
            continue
        bound = CONFIG_INT_BOUNDS.get(where, MAX_CONFIG_INT)
        if isinstance(value, int) and abs(value) > bound:
            raise SparseDeployError(
                f"model '{name}' config sets {where} = {value}, beyond the {bound:,} any real model uses; fix its "
                "config.json"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise SparseDeployError(f"model '{name}' config sets {where} = {value}; fix its config.json")
        if isinstance(value, (list, tuple)) and len(value) > MAX_CONFIG_LIST:
            raise SparseDeployError(
                f"model '{name}' config lists {len(value)} entries in {where}, over the {MAX_CONFIG_LIST} allowed; "
                "fix its config.json"
            )
    if build is None:
        return
    try:
        with torch.device("meta"):
            net = build(kwargs)
    except SparseDeployError:
        raise
    except Exception as exc:  # a config diffusers itself refuses
        raise SparseDeployError(
            f"model '{name}' config is not a valid model ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); fix its config.json"
        ) from exc
    count = sum(p.numel() for p in net.parameters())
    if count > MAX_MODEL_PARAMETERS:
        raise SparseDeployError(
            f"model '{name}' config asks for {count:,} parameters, over the {MAX_MODEL_PARAMETERS:,} allowed "
            f"({count * 4 / 2**30:.0f} GiB in fp32); fix its config.json"
        )
