"""ExportConfig: what an export is asked for, checked without touching any model."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_deploy.contract import BatchProfile
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export.config import ExportConfig


def test_defaults_export_every_kind_and_precision_with_the_default_profile():
    config = ExportConfig(model="tiny-dit").validate()
    assert config.kinds == ("dense", "sparse") and config.precisions == ("fp32", "fp16")
    assert config.profile == BatchProfile(1, 8, 64)
    assert ExportConfig(model="tiny-dit", max_batch=4).validate().profile == BatchProfile(1, 4, 4)


def test_a_path_given_as_model_is_the_weights(tmp_path):
    config = ExportConfig(model=str(tmp_path / "pipeline")).validate()
    assert config.model is None and config.weights == Path(tmp_path / "pipeline")
    with pytest.raises(SparseDeployError, match="is a path and --weights"):
        ExportConfig(model=str(tmp_path / "pipeline"), weights=tmp_path / "other").validate()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "--model is required unless --checkpoint"),
        (dict(model="no-such-preset"), "no-such-preset"),
        (dict(model="tiny-dit", checkpoint=Path("c"), weights=Path("w")), "either --checkpoint or --weights"),
        (dict(model="tiny-dit", precisions=("fp8",)), r"unknown --precision value\(s\) \['fp8'\]"),
        (dict(model="tiny-dit", precisions=()), "--precision needs at least one of"),
        (dict(model="tiny-dit", kinds=("dense", "dense")), "lists a value twice"),
        (dict(model="tiny-dit", kinds=("half",)), "unknown --kinds"),
        (dict(model="tiny-dit", max_batch=0), "--max-batch must be between"),
        (dict(model="tiny-dit", max_batch=4, opt_batch=8), "--opt-batch must be between 1 and --max-batch 4"),
    ],
)
def test_bad_settings_are_one_sentence(kwargs, match):
    with pytest.raises(SparseDeployError, match=match):
        ExportConfig(**kwargs).validate()


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(SparseDeployError, match="--out .* is a file"):
        ExportConfig(model="tiny-dit", out=tmp_path / "out").validate()
