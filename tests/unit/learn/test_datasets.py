"""Training datasets: Fashion-MNIST, image folders, cached VAE latents, synthetic data, the make_dataset dispatcher."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.learn.datasets import image_folder, latent_dataset, make_dataset
from sparse_deploy.presets import get_preset


def test_fashion_mnist_dataset_from_fixture(fmnist_dir, fmnist_data):
    preset = get_preset("tiny-dit")
    dataset = make_dataset(preset, fmnist_data)
    images, labels = dataset.tensors
    assert images.shape == (64, 1, 16, 16) and images.dtype == torch.float32  # resized 28 -> 16
    assert images.min() >= -1 and images.max() <= 1
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 10 for i in range(64)]


def test_fashion_mnist_refuses_rgb_presets(fmnist_data):
    with pytest.raises(SparseDeployError, match="1-channel"):
        make_dataset(get_preset("ddpm-cifar10"), fmnist_data)


def _png(path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(path)


def test_image_folder_class_subfolders(tmp_path):
    _png(tmp_path / "cat" / "a.png", 0)
    _png(tmp_path / "cat" / "b.png", 0)
    _png(tmp_path / "dog" / "c.png", 255)
    _png(tmp_path / "emu" / "sub" / "d.png", 255)  # nested files count for their class
    (tmp_path / "dog" / "readme.txt").write_text("ignored")
    dataset = image_folder(get_preset("tiny-dit"), tmp_path)
    images, labels = dataset.tensors
    assert images.shape == (4, 1, 16, 16)
    assert labels.tolist() == [0, 0, 1, 2]  # sorted class folders
    assert torch.all(images[:2] == -1) and torch.all(images[2:] == 1)
    assert images.min() >= -1 and images.max() <= 1


def test_image_folder_flat_folder_is_one_class(tmp_path):
    _png(tmp_path / "x.png", 128)
    _png(tmp_path / "y.png", 64)
    images, labels = image_folder(get_preset("tiny-dit"), tmp_path).tensors
    assert labels.tolist() == [0, 0]
    assert images.min() >= -1 and images.max() <= 1


def test_image_folder_empty_and_missing(tmp_path):
    (tmp_path / "empty" / "class0").mkdir(parents=True)
    with pytest.raises(SparseDeployError, match="holds no images"):
        image_folder(get_preset("tiny-dit"), tmp_path / "empty")
    with pytest.raises(SparseDeployError, match="does not exist"):
        image_folder(get_preset("tiny-dit"), tmp_path / "missing")


def test_image_folder_too_many_classes(tmp_path):
    for c in range(11):
        _png(tmp_path / f"c{c:02d}" / "x.png", 0)
    with pytest.raises(SparseDeployError, match="11 class folders"):
        image_folder(get_preset("tiny-dit"), tmp_path)


def test_latent_dataset_encodes_once_and_caches(tmp_path):
    # A tiny random AutoencoderKL stands in for a user's VAE (nothing is downloaded).
    vae_dir = tmp_path / "vae"
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
    ).save_pretrained(vae_dir)
    preset = dataclasses.replace(get_preset("dit-s"), sample_size=4)  # 4x4 latents = 32 px images (8x VAE)
    images = tmp_path / "imgs" / "cat"
    images.mkdir(parents=True)
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    cache = tmp_path / "cache"
    first = latent_dataset(preset, tmp_path / "imgs", vae_dir, cache_dir=cache)
    latents, labels = first.tensors
    assert latents.shape == (3, 4, 4, 4) and labels.tolist() == [0, 0, 0]
    assert len(list(cache.glob("*.safetensors"))) == 1
    second = latent_dataset(preset, tmp_path / "imgs", vae_dir, cache_dir=cache)
    torch.testing.assert_close(second.tensors[0], latents)  # read back from the cache


def test_synthetic_data_has_the_preset_shape_and_says_what_it_is(caplog):
    with caplog.at_level("WARNING"):
        ds = make_dataset(get_preset("dit-s"), "synthetic:6")
    x, y = ds.tensors
    assert x.shape == (6, 4, 32, 32) and y.shape == (6,) and int(y.max()) < 1000
    assert any("SYNTHETIC" in m for m in caplog.messages)
    pixels = make_dataset(get_preset("tiny-dit"), "synthetic").tensors[0]
    assert pixels.shape[0] == 1024 and pixels.abs().max() <= 1
    with pytest.raises(SparseDeployError, match="synthetic:N"):
        make_dataset(get_preset("tiny-dit"), "synthetic:many")
