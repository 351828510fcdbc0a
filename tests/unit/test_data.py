"""The readers: idx files, the Fashion-MNIST folder lookup, image-file listing."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from sparse_deploy import data
from sparse_deploy.data import IMAGE_SUFFIXES, find_fashion_mnist, image_files, read_idx
from sparse_deploy.errors import SparseDeployError


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
