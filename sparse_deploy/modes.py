"""The sparsity modes: one entry per mode, the one place that says what each mode does.

Code that must know "does this mode train?", "does it learn masks?" or "how do its gradients reach
the dense weights?" asks :func:`get_mode` instead of testing mode names. Adding a mode means adding
one :class:`SparsityMode` to :data:`MODES` (and, for a new kind of gradient, its training weight in
:mod:`sparse_deploy.learn.masking`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SparseDeployError

__all__ = ["SparsityMode", "MODES", "MODE_NAMES", "ONESHOT", "GRADIENTS", "get_mode"]

#: How the dense weights of a masked layer receive their gradient during training:
#: ``srste`` - straight through, plus SR-STE's decay of the pruned weights; ``ste`` - straight
#: through (the dense gradient, pruned weights included); ``masked`` - through ``W * M`` (pruned
#: weights get none); ``gumbel`` - through a Gumbel-softmax mixture of the 2:4 patterns (with the logits).
GRADIENTS = ("srste", "ste", "masked", "gumbel")


@dataclass(frozen=True)
class SparsityMode:
    """What one sparsity mode does.

    Attributes:
        name: the ``--sparsity`` value, recorded in every checkpoint's ``SparsityConfig``.
        label: how reports and logs name it.
        help: what the ``--sparsity`` help says of it, after its name (may be empty).
        trains: whether a run optimises at all (``oneshot`` prunes and stops: 0 steps).
        learns_masks: whether training recomputes the masks (from the dense weights, or from
            learned logits); a mode that does not keeps the masks it started with.
        gradient: how the dense weights get their gradient (one of :data:`GRADIENTS`).
        mask_logits: whether every group of four holds learnable logits over the 2:4 patterns
            (a checkpoint of such a mode stores them).
        decays_pruned: whether SR-STE's decay term (``SparsityConfig.decay``) applies.
        distils_by_default: whether a run with a dense teacher at hand (``--init`` / ``--weights``)
            distils from it unless ``--kd-weight`` / ``--kd-features`` say otherwise.
    """

    name: str
    label: str
    help: str
    trains: bool = True
    learns_masks: bool = False
    gradient: str = "masked"
    mask_logits: bool = False
    decays_pruned: bool = False
    distils_by_default: bool = True

    def __post_init__(self) -> None:
        if self.gradient not in GRADIENTS:
            raise ValueError(f"mode {self.name}: gradient must be one of {GRADIENTS}, got {self.gradient!r}")

    @property
    def min_steps(self) -> int:
        """The fewest ``--steps`` a run of this mode accepts."""
        return 1 if self.trains else 0


MODES: dict[str, SparsityMode] = {
    mode.name: mode
    for mode in (
        SparsityMode(
            "srste",
            "SR-STE",
            "SparseDM improved STE",
            learns_masks=True,
            gradient="srste",
            decays_pruned=True,
        ),
        SparsityMode("ste", "plain STE", "", learns_masks=True, gradient="ste"),
        SparsityMode("fixed", "fixed masks, fine-tuned", "ASP-style", gradient="masked"),
        SparsityMode("oneshot", "one-shot magnitude 2:4 (no training)", "no training", trains=False),
        SparsityMode(
            "maskllm",
            "learned masks (MaskLLM-style)",
            "learnable Gumbel-softmax masks over the six 2:4 patterns",
            learns_masks=True,
            gradient="gumbel",
            mask_logits=True,
        ),
    )
}
MODE_NAMES = tuple(MODES)
#: The mode of a one-shot prune (export's baseline of a maskless model, the GPU kit's DiT-XL).
ONESHOT = "oneshot"


def get_mode(name: str) -> SparsityMode:
    """The mode called ``name``, or one sentence listing the modes there are."""
    try:
        return MODES[name]
    except KeyError:
        raise SparseDeployError(f"unknown sparsity mode '{name}'; choose one of: {', '.join(MODES)}") from None
