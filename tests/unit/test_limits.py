"""Input limits (sparse_deploy.limits): idx headers, image pixels and model configs, checked before allocating."""

from __future__ import annotations

import pytest
from PIL import Image

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.limits import MAX_IDX_VALUES, check_idx_shape, check_model_config, open_image


def test_idx_shapes_within_the_limits_pass_and_absurd_ones_are_one_sentence(tmp_path):
    assert check_idx_shape((60000, 28, 28), tmp_path / "x") == (60000, 28, 28)
    with pytest.raises(SparseDeployError, match="declares a shape"):
        check_idx_shape((MAX_IDX_VALUES, 2), tmp_path / "x")
    with pytest.raises(SparseDeployError, match="declares a shape"):
        check_idx_shape((1,) * 9, tmp_path / "x")


def test_images_are_opened_under_a_pixel_limit(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (40, 30)).save(path)
    with open_image(path) as im:
        assert im.size == (40, 30)
    with pytest.raises(SparseDeployError, match="over the 100 read here"), open_image(path, max_pixels=100) as im:
        im.load()
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(SparseDeployError, match="not a readable image"), open_image(tmp_path / "b.png"):
        pass


def test_model_configs_asking_for_absurd_sizes_are_refused():
    check_model_config({"sample_size": 32, "num_layers": 12}, "dit")
    with pytest.raises(SparseDeployError, match="sample_size"):
        check_model_config({"sample_size": 10**7}, "dit")
    with pytest.raises(SparseDeployError, match="entries"):
        check_model_config({"block_out_channels": list(range(1000))}, "unet")
