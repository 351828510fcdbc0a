"""N:M mask math: exact 2:4 patterns along the reduction axis, ties, checks, eligibility."""

from __future__ import annotations

import pytest
import torch

from sparse_deploy.masks import (
    eligibility,
    from_groups,
    is_nm_sparse,
    nm_mask,
    nm_patterns,
    nm_violations,
    pattern_index,
)


def test_linear_mask_groups_along_input_features():
    # One row: groups [0..3] and [4..7] along `in`.
    w = torch.tensor([[0.1, 0.9, 0.2, 0.8, 5.0, 0.0, 4.0, 0.3]])
    mask = nm_mask(w)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert mask.tolist() == [[False, True, False, True, True, False, True, False]]


def test_linear_mask_does_not_group_along_output_features():
    # w[o, i] = 10 * (4 - i) + o: along `in` every row keeps columns 0 and 1; grouping along
    # `out` (the wrong axis) would keep rows 2 and 3 of every column instead.
    o, i = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    w = 10 * (4 - i) + o
    mask = nm_mask(w)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, :2] = True
    assert torch.equal(mask, expected)
    wrong_axis = nm_mask(w.t().contiguous()).t()
    assert torch.equal(wrong_axis[2:], torch.ones(2, 4, dtype=torch.bool))
    assert not torch.equal(mask, wrong_axis)


def test_conv_mask_groups_along_input_channels_per_tap():
    k, c, r, s = 2, 8, 3, 3
    gen = torch.Generator().manual_seed(0)
    # Small noise everywhere, then for every (k, tap, group of 4 channels) two chosen channels
    # get large values. Those large values are also the largest along R*S and along K, so a
    # mask grouped across taps or output channels would keep different entries.
    w = torch.rand(k, c, r, s, generator=gen) * 0.01
    expected = torch.zeros(k, c, r, s, dtype=torch.bool)
    for ki in range(k):
        for ri in range(r):
            for si in range(s):
                for g in range(c // 4):
                    picks = torch.randperm(4, generator=gen)[:2] + 4 * g
                    w[ki, picks, ri, si] = 1.0 + torch.rand(2, generator=gen)
                    expected[ki, picks, ri, si] = True
    mask = nm_mask(w)
    assert torch.equal(mask, expected)
    assert is_nm_sparse(w * mask)
    # Exactly 2 of every 4 consecutive channels, for every (k, r, s).
    per_group = mask.permute(0, 2, 3, 1).reshape(k, r, s, c // 4, 4).sum(-1)
    assert torch.all(per_group == 2)
    # The wrong layouts (groups across the flattened C*R*S, or along the last axis) differ.
    flat = nm_mask(w.reshape(k, c * r * s)).reshape(k, c, r, s)
    assert not torch.equal(mask, flat)


def test_conv_mask_wrong_axis_would_differ_on_a_handcrafted_weight():
    # [K=2, C=8, R=1, S=4], w[k, c, 0, s] = 10 * (8 - c) + s + k: per tap, along C, channels
    # {0, 1} and {4, 5} win. Grouping along the taps of a channel (which is what flattening
    # [K, C*R*S] into groups of 4 does here) would keep taps 2 and 3 of every channel.
    k, c, s = torch.meshgrid(torch.arange(2.0), torch.arange(8.0), torch.arange(4.0), indexing="ij")
    w = (10 * (8 - c) + s + k).unsqueeze(2)
    mask = nm_mask(w)
    expected = torch.zeros(2, 8, 1, 4, dtype=torch.bool)
    expected[:, [0, 1, 4, 5]] = True
    assert torch.equal(mask, expected)
    flat = nm_mask(w.reshape(2, 32)).reshape(2, 8, 1, 4)
    assert torch.equal(flat[..., 2:], torch.ones(2, 8, 1, 2, dtype=torch.bool))
    assert not torch.equal(mask, flat)


def test_ties_keep_lower_index_and_exactly_n():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 3.0, 3.0, 3.0]])
    mask = nm_mask(w)
    assert mask.tolist() == [[True, True, False, False, True, True, False, False, False, True, True, False]]
    assert torch.all(mask.reshape(-1, 4).sum(-1) == 2)
    # Deterministic: the same answer every time, and for all-zero conv groups too.
    assert torch.equal(nm_mask(w), mask)
    zeros = torch.zeros(2, 8, 3, 3)
    zmask = nm_mask(zeros)
    assert torch.all(zmask.permute(0, 2, 3, 1).reshape(-1, 4).sum(-1) == 2)
    assert torch.all(zmask[:, [0, 1, 4, 5]]) and not torch.any(zmask[:, [2, 3, 6, 7]])


def test_magnitude_not_sign():
    w = torch.tensor([[-5.0, 1.0, -0.1, 4.0, 0.2, -0.3, 0.25, -7.0]])
    assert nm_mask(w).tolist() == [[True, False, False, True, False, True, False, True]]


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (4, 8), (3, 8)])
def test_other_patterns_keep_n_of_m(n, m):
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    mask = nm_mask(w, n, m)
    assert torch.all(mask.reshape(8, -1, m).sum(-1) == n)
    # The kept entries are the n largest magnitudes of their group.
    groups = w.abs().reshape(8, -1, m)
    kept_min = torch.where(mask.reshape(8, -1, m), groups, torch.inf).amin(-1)
    dropped_max = torch.where(mask.reshape(8, -1, m), -torch.inf, groups).amax(-1)
    assert torch.all(kept_min >= dropped_max)
    assert is_nm_sparse(w * mask, n, m)


def test_is_nm_sparse_and_violations():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
    assert nm_violations(w) == 2  # row 0 group 1 (3 non-zeros), row 1 group 1 (4)
    assert not is_nm_sparse(w)
    assert nm_violations(w * nm_mask(w)) == 0
    assert is_nm_sparse(w * nm_mask(w))
    assert is_nm_sparse(torch.zeros(4, 8))
    assert nm_violations(w, 3, 4) == 1  # only the 4-non-zero group exceeds 3:4
    conv = torch.ones(2, 8, 3, 3)
    assert nm_violations(conv) == 2 * 3 * 3 * 2
    conv[:, 0::4] = 0
    conv[:, 1::4] = 0
    assert is_nm_sparse(conv)
    conv[1, 1, 2, 2] = 0.5  # one group at one tap now has 3 non-zeros
    assert nm_violations(conv) == 1


def test_eligibility_reasons():
    assert eligibility((32, 32)) is None
    assert eligibility((64, 32, 3, 3)) is None
    rgb = eligibility((64, 3, 3, 3))
    assert rgb is not None and "3 channels" in rgb and "multiple of 4" in rgb
    in_reason = eligibility((32, 8))  # multiple of 4, not of 16
    assert in_reason is not None and "multiple of 16" in in_reason
    out_reason = eligibility((12, 32))
    assert out_reason is not None and "12" in out_reason and "multiple of 8" in out_reason
    assert "dims" in eligibility((32,))
    assert "invalid pattern" in eligibility((32, 32), 4, 4)


@pytest.mark.parametrize("n,m", [(0, 4), (4, 4), (5, 4), (-1, 4)])
def test_invalid_pattern_raises(n, m):
    with pytest.raises(ValueError, match="invalid pattern"):
        nm_mask(torch.ones(8, 16), n, m)


def test_unsupported_shapes_raise():
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.ones(8, 6))
    with pytest.raises(ValueError):
        nm_mask(torch.ones(8, 16, 3))
    with pytest.raises(ValueError):
        nm_violations(torch.ones(8, 6))


def test_patterns_are_the_six_2_4_choices_and_index_round_trips():
    patterns = nm_patterns(2, 4)
    assert patterns.shape == (6, 4) and torch.equal(patterns.sum(1), torch.full((6,), 2.0))
    assert len({tuple(r.tolist()) for r in patterns}) == 6
    for shape in ((16, 32), (8, 16, 3, 3)):
        w = torch.randn(shape)
        mask = nm_mask(w)
        index = pattern_index(mask)
        rebuilt = patterns[index.reshape(-1)].reshape(*index.shape, 4)
        assert torch.equal(from_groups(rebuilt.bool(), w.shape), mask)
    with pytest.raises(ValueError, match="not exact 2:4"):
        pattern_index(torch.ones(4, 16, dtype=torch.bool))
