"""Datasets: idx files, Fashion-MNIST lookup, image folders, the make_dataset dispatcher."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_deploy.data import find_fashion_mnist, image_folder, make_dataset, read_idx
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.presets import get_preset


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path, idx_writer, name):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = idx_writer(tmp_path / name, array)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, array)


def test_read_idx_labels_1d(tmp_path, idx_writer):
    labels = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(idx_writer(tmp_path / "labels-idx1-ubyte.gz", labels)), labels)


def test_read_idx_truncated(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "x-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SparseDeployError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "x-idx3-ubyte.gz", np.ones((64, 28, 28), dtype=np.uint8) * 7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SparseDeployError, match="cannot read idx file"):
        read_idx(path)


def test_read_idx_not_an_idx_file(tmp_path):
    path = tmp_path / "junk.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"PK\x03\x04 definitely not idx")
    with pytest.raises(SparseDeployError, match="not an unsigned-byte idx file"):
        read_idx(path)


def test_find_fashion_mnist_missing_says_how_to_install(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SparseDeployError) as info:
        find_fashion_mnist(missing)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and str(missing) in message


def test_find_fashion_mnist_needs_both_train_files(tmp_path, idx_writer):
    idx_writer(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), dtype=np.uint8))
    with pytest.raises(SparseDeployError):
        find_fashion_mnist(tmp_path)
    idx_writer(tmp_path / "train-labels-idx1-ubyte", np.zeros(1, dtype=np.uint8))  # raw is fine too
    assert find_fashion_mnist(tmp_path) == tmp_path


def test_fashion_mnist_folder_from_the_environment_at_call_time(tmp_path, monkeypatch, idx_writer):
    from sparse_deploy import data

    monkeypatch.delenv(data.FMNIST_ENV, raising=False)
    monkeypatch.setattr(data, "FMNIST_DEFAULT_DIR", str(tmp_path / "debian"))
    with pytest.raises(SparseDeployError, match=data.FMNIST_ENV):
        find_fashion_mnist()
    idx_writer(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), dtype=np.uint8))
    idx_writer(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    monkeypatch.setenv(data.FMNIST_ENV, str(tmp_path))  # set after import: read when looked up
    assert find_fashion_mnist() == tmp_path
    # A split is looked up by its own files: the test images are not in this folder.
    with pytest.raises(SparseDeployError, match="t10k-images-idx3-ubyte.gz"):
        data.fashion_mnist_images_file("test")
    test_images = idx_writer(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), dtype=np.uint8))
    assert data.fashion_mnist_images_file("test") == test_images
    assert data.idx_shape(test_images) == (3, 28, 28) and data.idx_shape(tmp_path / "train-labels-idx1-ubyte.gz") == (
        2,
    )
    with pytest.raises(SparseDeployError, match="split"):
        data.fashion_mnist_images_file("val")


def test_image_files_every_suffix_any_case_sorted(tmp_path):
    from sparse_deploy.data import IMAGE_SUFFIXES, image_files

    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
    for name in ("b.WEBP", "a.bmp", "c.txt", "sub/d.jpeg", "sub/e.Png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == [
        "a.bmp",
        "b.WEBP",
        "sub/d.jpeg",
        "sub/e.Png",
    ]
    assert [p.name for p in image_files(tmp_path, recursive=False)] == ["a.bmp", "b.WEBP"]


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
    import dataclasses

    from diffusers import AutoencoderKL
    from PIL import Image

    from sparse_deploy import data as data_mod
    from sparse_deploy.presets import get_preset

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
    first = data_mod.latent_dataset(preset, tmp_path / "imgs", vae_dir, cache_dir=cache)
    latents, labels = first.tensors
    assert latents.shape == (3, 4, 4, 4) and labels.tolist() == [0, 0, 0]
    assert len(list(cache.glob("*.safetensors"))) == 1
    second = data_mod.latent_dataset(preset, tmp_path / "imgs", vae_dir, cache_dir=cache)
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
