"""The flag checks every CLI runs before any work: output folders and files, numbers, devices."""

from __future__ import annotations

import math

import pytest

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.guards import check_device, check_finite, check_output_dir, check_output_file, check_positive


def test_output_dir_may_exist_or_be_created_below_a_folder(tmp_path):
    assert check_output_dir(tmp_path, "--out") == tmp_path
    deep = tmp_path / "a" / "b"
    assert check_output_dir(deep, "--out") == deep and not deep.exists()  # checked, not created


def test_output_dir_refuses_files_on_the_way(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(SparseDeployError, match="--out '.*f' is a file, not a folder"):
        check_output_dir(tmp_path / "f", "--out")
    with pytest.raises(SparseDeployError, match="cannot be created: '.*f' is a file"):
        check_output_dir(tmp_path / "f" / "below", "--out")


def test_output_file_refuses_folders_and_files_on_the_way(tmp_path):
    assert check_output_file(tmp_path / "new" / "r.json", "--json") == tmp_path / "new" / "r.json"
    with pytest.raises(SparseDeployError, match="is a folder; pass a file name"):
        check_output_file(tmp_path, "--json")
    (tmp_path / "f").write_text("")
    with pytest.raises(SparseDeployError, match="cannot be created"):
        check_output_file(tmp_path / "f" / "r.json", "--json")


@pytest.mark.parametrize(
    "value, low, strict, ok",
    [
        (0.0, 0, False, True),
        (0.0, 0, True, False),
        (1e-9, 0, True, True),
        (-1.0, 0, False, False),
        (math.nan, None, False, False),
        (math.inf, None, False, False),
        (-5.0, None, False, True),
    ],
)
def test_check_finite(value, low, strict, ok):
    if ok:
        assert check_finite("--lr", value, low, strict=strict) == value
    else:
        with pytest.raises(SparseDeployError, match="--lr must be a finite number"):
            check_finite("--lr", value, low, strict=strict)


def test_check_positive_bounds_and_message():
    assert (
        check_positive("--steps", 1) == 1
        and check_positive("--steps", 0, 0) == 0
        and check_positive("--n", 3, 1, 3) == 3
    )
    with pytest.raises(SparseDeployError, match="--steps must be at least 1, got 0"):
        check_positive("--steps", 0)
    with pytest.raises(SparseDeployError, match="--n must be between 1 and 3, got 4"):
        check_positive("--n", 4, 1, 3)


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_known_devices(name):
    assert check_device(name) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "mps", ""])
def test_unknown_devices_say_which_are_known(name):
    with pytest.raises(SparseDeployError, match="use auto, cpu, cuda or cuda:N"):
        check_device(name, "--device")
