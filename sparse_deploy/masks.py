"""Pure N:M mask math: no modules, no I/O, no device assumptions.

Layout rules follow what TensorRT's sparse kernels accept:

* Linear weight ``[out, in]``: groups of ``m`` consecutive weights along ``in`` (the
  reduction axis).
* Conv weight ``[K, C, R, S]``: for every output channel ``k`` and kernel tap ``(r, s)``,
  groups of ``m`` consecutive input channels ``C``. Groups never spill across taps.
"""

from __future__ import annotations

from itertools import combinations

import torch

__all__ = [
    "PATTERN",
    "PATTERN_N",
    "PATTERN_M",
    "eligibility",
    "nm_mask",
    "nm_violations",
    "is_nm_sparse",
    "nm_patterns",
    "to_groups",
    "from_groups",
    "pattern_index",
]

#: The one sparsity pattern of this toolchain: what TensorRT's SPARSE_WEIGHTS kernels and
#: cuSPARSELt (``torch.sparse.to_sparse_semi_structured``) run. The mask math below is written for
#: any N:M (so it is tested against the general definition); configs accept only this one.
PATTERN = "2:4"
PATTERN_N, PATTERN_M = 2, 4

# Practical eligibility used by ASP and Model Optimizer: out % 8 == 0 and in % 16 == 0.
OUT_MULTIPLE = 8
IN_MULTIPLE = 16


def to_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View ``weight`` as ``[..., m]`` groups along its reduction axis."""
    if weight.dim() == 2:
        return weight.reshape(weight.shape[0], weight.shape[1] // m, m)
    if weight.dim() == 4:
        # [K, C, R, S] -> [K, R, S, C] so that C is innermost, then group along C.
        k, c, r, s = weight.shape
        return weight.permute(0, 2, 3, 1).reshape(k, r, s, c // m, m)
    raise ValueError(f"N:M masks support 2-D (Linear) and 4-D (Conv2d) weights, got shape {tuple(weight.shape)}")


def from_groups(groups: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 2:
        return groups.reshape(shape)
    k, c, r, s = shape
    return groups.reshape(k, r, s, c).permute(0, 3, 1, 2).contiguous()


def eligibility(shape: tuple[int, ...] | torch.Size, n: int = 2, m: int = 4) -> str | None:
    """Return why a weight of ``shape`` cannot take an N:M mask, or None if it can.

    Args:
        shape: a Linear ``[out, in]`` or Conv2d ``[K, C, R, S]`` weight shape.
        n: weights kept per group.
        m: group size.
    """
    shape = tuple(shape)
    if not 0 < n < m:
        return f"invalid pattern {n}:{m} (need 0 < n < m)"
    if len(shape) not in (2, 4):
        return f"weight has {len(shape)} dims; only Linear (2) and Conv2d (4) weights are supported"
    out_features, in_features = shape[0], shape[1]
    if in_features % m:
        return f"reduction axis has {in_features} channels, not a multiple of {m}"
    if in_features % IN_MULTIPLE:
        return f"reduction axis has {in_features} channels, not a multiple of {IN_MULTIPLE} (TensorRT/ASP rule)"
    if out_features % OUT_MULTIPLE:
        return f"output axis has {out_features} channels, not a multiple of {OUT_MULTIPLE} (TensorRT/ASP rule)"
    return None


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Magnitude N:M mask: keep the ``n`` largest ``|w|`` in every group of ``m``.

    Ties are broken deterministically towards the lower index, so the result always has
    exactly ``n`` ones per group (also for all-zero groups).

    Returns:
        A bool tensor of ``weight``'s shape.
    """
    if not 0 < n < m:
        raise ValueError(f"invalid pattern {n}:{m} (need 0 < n < m)")
    if weight.dim() not in (2, 4) or weight.shape[1] % m:
        raise ValueError(
            f"cannot build a {n}:{m} mask for weight of shape {tuple(weight.shape)}: "
            f"need a 2-D or 4-D weight whose dim 1 is a multiple of {m}"
        )
    groups = to_groups(weight.detach().abs(), m)
    # A stable sort on -|w| keeps the lower index first among equal magnitudes.
    order = torch.sort(-groups.float(), dim=-1, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return from_groups(keep, weight.shape)


def nm_violations(weight: torch.Tensor, n: int = 2, m: int = 4) -> int:
    """Number of groups of ``m`` along the reduction axis with more than ``n`` non-zeros."""
    if weight.dim() not in (2, 4) or weight.shape[1] % m:
        raise ValueError(f"weight of shape {tuple(weight.shape)} has no {n}:{m} grouping along its reduction axis")
    nonzero = (to_groups(weight.detach(), m) != 0).sum(dim=-1)
    return int((nonzero > n).sum().item())


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True if every group of ``m`` along the reduction axis holds at most ``n`` non-zeros."""
    return nm_violations(weight, n, m) == 0


def nm_patterns(n: int = 2, m: int = 4) -> torch.Tensor:
    """Every way to keep ``n`` of ``m`` weights, as a ``[C(m, n), m]`` float 0/1 matrix (2:4: six rows).

    Rows are in lexicographic order of the kept indices: for 2:4, ``(0,1), (0,2), (0,3), (1,2), (1,3), (2,3)``.
    """
    rows = [[1.0 if i in keep else 0.0 for i in range(m)] for keep in combinations(range(m), n)]
    return torch.tensor(rows)


def pattern_index(mask: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Index into :func:`nm_patterns` of every group of an exact N:M bool ``mask`` (shape ``[..., groups]``)."""
    groups = to_groups(mask, m).to(torch.float32)
    patterns = nm_patterns(n, m)
    # A group matches exactly one pattern: the one whose kept positions all agree.
    hits = groups @ patterns.T  # [..., P] count of kept positions shared with each pattern
    index = hits.argmax(dim=-1)
    if not bool((groups.sum(dim=-1) == n).all()):
        raise ValueError(f"mask is not exact {n}:{m}: some group keeps a number of weights other than {n}")
    return index
