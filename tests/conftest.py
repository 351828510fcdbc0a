"""Shared fixtures: a tiny Fashion-MNIST stand-in, so no test depends on /usr/share/datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

FMNIST_IMAGES = 64


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write a uint8 array as an idx file (gzip-compressed when ``path`` ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """A folder with Fashion-MNIST-shaped idx .gz files: 64 random 28x28 images, labels 0..9."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(FMNIST_IMAGES, 28, 28), dtype=np.uint8)
    labels = (np.arange(FMNIST_IMAGES) % 10).astype(np.uint8)
    write_idx(root / "train-images-idx3-ubyte.gz", images)
    write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def fmnist_data(fmnist_dir) -> str:
    """The ``--data`` value pointing training at :func:`fmnist_dir`."""
    return f"fashion-mnist:{fmnist_dir}"


@pytest.fixture(scope="session")
def idx_writer():
    """:func:`write_idx`, for tests that build their own idx files."""
    return write_idx


@pytest.fixture()
def killed_at_step(monkeypatch):
    """``with killed_at_step(n): ...``: training's n-th EMA update raises KeyboardInterrupt, as a kill during
    step n would (the checkpoints before it are written); the real update is back after the block."""
    import contextlib

    from sparse_deploy.learn import train as train_mod

    real_update = train_mod._ema_update_

    @contextlib.contextmanager
    def killed(step: int):
        calls = {"n": 0}

        def dying_update(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == step:
                raise KeyboardInterrupt("simulated kill")
            return real_update(*args, **kwargs)

        monkeypatch.setattr(train_mod, "_ema_update_", dying_update)
        try:
            yield
        finally:
            monkeypatch.setattr(train_mod, "_ema_update_", real_update)

    return killed
