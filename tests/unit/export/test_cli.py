"""The export flags onto an ExportConfig (shared with build), without exporting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_deploy.contract import BatchProfile
from sparse_deploy.errors import SparseDeployError
from sparse_deploy.export.cli import build_parser, config_from_args, main


def test_flags_map_onto_the_config(tmp_path):
    args = build_parser().parse_args(
        [
            "--model",
            "tiny-dit",
            "--precision",
            "fp16",
            "--kinds",
            "sparse",
            "--max-batch",
            "4",
            "--opt-batch",
            "2",
            "--require-masks",
            "--seed",
            "3",
            "--external-data",
            "--out",
            str(tmp_path),
        ]
    )
    config = config_from_args(args, args.out)
    assert (config.model, config.precisions, config.kinds) == ("tiny-dit", ("fp16",), ("sparse",))
    assert (
        config.profile == BatchProfile(1, 2, 4) and config.require_masks and config.seed == 3 and config.external_data
    )
    assert config.out == Path(tmp_path)


def test_defaults_are_both_kinds_and_precisions():
    config = config_from_args(build_parser().parse_args(["--model", "tiny-dit"]), None)
    assert config.kinds == ("dense", "sparse") and config.precisions == ("fp32", "fp16") and config.out is None


def test_bad_flags_are_refused_before_any_export(capsys):
    with pytest.raises(SparseDeployError, match="unknown --kinds"):
        config_from_args(build_parser().parse_args(["--model", "tiny-dit", "--kinds", "both"]), None)
    assert main(["--model", "tiny-dit", "--precision", "fp8"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown --precision")
