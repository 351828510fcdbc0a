"""Output folders (sparse_deploy.outputs): whose folder it is, one writer at a time, sample-folder completeness."""

from __future__ import annotations

import json
import os

import pytest

from sparse_deploy.errors import SparseDeployError
from sparse_deploy.outputs import RUN_RECORD, check_output, check_samples, claim_output, output_lock, samples_problem


def test_a_new_or_empty_folder_is_ours_and_someone_elses_is_refused(tmp_path):
    assert check_output(tmp_path / "new", "samples") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "samples")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(SparseDeployError, match="--out"):
        check_output(tmp_path / "mine", "samples")
    assert (tmp_path / "mine" / "holiday.jpg").exists()


def test_one_writer_per_folder(tmp_path):
    with claim_output(tmp_path / "out", "samples") as out:
        assert out.is_dir() or not out.exists()
        with output_lock(tmp_path / "out"):  # re-entrant in one process
            pass
    with output_lock(tmp_path / "out"):
        pass
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]


def test_a_sample_folder_is_incomplete_until_its_record_says_otherwise(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / RUN_RECORD).write_text(json.dumps({"complete": False}))
    assert samples_problem(folder)
    with pytest.raises(SparseDeployError, match="incomplete"):
        check_samples(folder)
    (folder / RUN_RECORD).write_text(json.dumps({"complete": True}))
    assert samples_problem(folder) is None
    check_samples(folder)
    assert os.access(folder, os.W_OK)
