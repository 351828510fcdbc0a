"""The shared comma-list parsers and the module-name rule every command line uses."""

from __future__ import annotations

import pytest

from sparse_deploy.cliargs import comma_floats, comma_ints, comma_list
from sparse_deploy.errors import SparseDeployError


def test_comma_list_strips_and_drops_empty_parts():
    assert comma_list(" fp32, fp16,,") == ("fp32", "fp16")
    assert comma_list(None) == ()
    assert comma_list("") == ()


def test_comma_ints_names_what_it_expected():
    assert comma_ints("1,2, 8") == (1, 2, 8)
    with pytest.raises(SparseDeployError, match="class ids.*got '1,x'"):
        comma_ints("1,x", what="class ids")


def test_comma_floats_counts():
    assert comma_floats("1,0.1", count=2) == (1.0, 0.1)
    with pytest.raises(SparseDeployError, match="START,END"):
        comma_floats("1,2,3", count=2, what="two numbers START,END")
    with pytest.raises(SparseDeployError):
        comma_floats("a,b")


def test_short_name_drops_only_the_denoiser_prefix():
    from sparse_deploy.models import short_name

    assert short_name("net.transformer_blocks.0.ff.net.0.proj") == "transformer_blocks.0.ff.net.0.proj"
    assert short_name("proj_out_1") == "proj_out_1"
