"""Model presets: the registry of model layouts the toolchain knows, keyed by name.

A preset is pure data (importable Python, no I/O): the diffusers class and its kwargs, the
sample geometry, class conditioning, which layers the paper's recipe sparsifies, and the
training defaults of the embedded model. ``sparse_deploy.models`` turns a preset into a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import SparseDeployError

__all__ = ["Preset", "PRESETS", "get_preset", "DEFAULT_PRESET"]

# Layer selection rules follow SparseDM: in a transformer, the attention q/k/v/out projections
# and both MLP layers of every block; embeddings, adaLN modulation and the final projection
# stay dense (adaLN can be opted in). In the DDPM UNet every eligible conv/linear.
DIT_INCLUDE = (
    "transformer_blocks.*.attn1.to_q",
    "transformer_blocks.*.attn1.to_k",
    "transformer_blocks.*.attn1.to_v",
    "transformer_blocks.*.attn1.to_out.0",
    "transformer_blocks.*.ff.net.0.proj",
    "transformer_blocks.*.ff.net.2",
)
DIT_ADALN = ("transformer_blocks.*.norm1.linear",)
UNET_INCLUDE = ("*",)
UNET_EXCLUDE = ("time_embedding.*", "class_embedding", "conv_in", "conv_out")


@dataclass(frozen=True)
class TrainDefaults:
    """Training settings a preset suggests for dense pretraining and sparse fine-tuning."""

    dense_steps: int = 10_000
    sparse_steps: int = 5_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 2_500
    ema_decay: float = 0.9999
    checkpoint_every: int = 500
    lr_schedule: str = "constant"  # or "cosine": decay to LR_FLOOR x lr after warm-up
    sparse_lr: float | None = None  # learning rate of sparse fine-tuning (None: lr)


@dataclass(frozen=True)
class Preset:
    """Everything needed to build one model layout.

    Attributes:
        name: registry key, e.g. ``"dit-s"``.
        family: ``"dit"`` (DiTTransformer2DModel) or ``"unet"`` (UNet2DModel).
        model_kwargs: keyword arguments of the diffusers class.
        in_channels: channels of the denoised sample (4 for SD-VAE latents).
        sample_size: spatial size of the denoised sample.
        num_classes: classes for conditioning; 0 means unconditional. Class-conditional
            models reserve id ``num_classes`` as the null label for classifier-free guidance.
        latent: whether samples live in a VAE latent space.
        learned_sigma: the model also predicts a variance (output has 2x channels); the
            toolchain uses the first ``in_channels`` output channels as epsilon.
        include / exclude: glob patterns over module names selecting layers to sparsify.
        adaln: extra patterns added by the ``adaln`` option (DiT modulation layers).
        dataset: the built-in dataset the preset trains on, if any.
        train: training defaults.
        description: one line for ``--help`` and reports.
    """

    name: str
    family: str
    model_kwargs: dict[str, Any]
    in_channels: int
    sample_size: int
    num_classes: int
    latent: bool
    learned_sigma: bool = False
    include: tuple[str, ...] = DIT_INCLUDE
    exclude: tuple[str, ...] = ()
    adaln: tuple[str, ...] = ()
    dataset: str | None = None
    train: TrainDefaults = field(default_factory=TrainDefaults)
    description: str = ""

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learned_sigma else 1)

    @property
    def null_class(self) -> int | None:
        """The label id meaning "no class" (classifier-free guidance), or None if unconditional."""
        return self.num_classes if self.num_classes else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dit(name: str, heads: int, head_dim: int, layers: int, **kw: Any) -> Preset:
    in_channels = kw.pop("in_channels", 4)
    sample_size = kw.pop("sample_size", 32)
    patch = kw.pop("patch_size", 2)
    num_classes = kw.pop("num_classes", 1000)
    learned_sigma = kw.pop("learned_sigma", True)
    model_kwargs = dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=in_channels * (2 if learned_sigma else 1),
        num_layers=layers,
        sample_size=sample_size,
        patch_size=patch,
        num_embeds_ada_norm=num_classes,
    )
    return Preset(
        name=name,
        family="dit",
        model_kwargs=model_kwargs,
        in_channels=in_channels,
        sample_size=sample_size,
        num_classes=num_classes,
        learned_sigma=learned_sigma,
        include=DIT_INCLUDE,
        adaln=DIT_ADALN,
        **kw,
    )


def _unet(name: str, block_out_channels: tuple[int, ...], down: tuple[str, ...], up: tuple[str, ...], **kw: Any) -> Preset:
    in_channels = kw.pop("in_channels", 3)
    sample_size = kw.pop("sample_size", 32)
    num_classes = kw.pop("num_classes", 0)
    model_kwargs = dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=block_out_channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=kw.pop("layers_per_block", 2),
        norm_num_groups=kw.pop("norm_num_groups", 32),
        attention_head_dim=kw.pop("attention_head_dim", None),
        dropout=kw.pop("dropout", 0.0),
    )
    if num_classes:
        model_kwargs["num_class_embeds"] = num_classes + 1  # + the null label
    return Preset(
        name=name,
        family="unet",
        model_kwargs=model_kwargs,
        in_channels=in_channels,
        sample_size=sample_size,
        num_classes=num_classes,
        include=UNET_INCLUDE,
        exclude=UNET_EXCLUDE,
        **kw,
    )


# The embedded default: a class-conditional DiT trained here, on Fashion-MNIST, on 2 CPU cores.
# Dense: the recipe of the shipped weights (weights/fmnist-dit, `make pretrain`). Sparse: the demo's fine-tune.
_FMNIST_TRAIN = TrainDefaults(
    dense_steps=10_000, sparse_steps=600, batch_size=64, lr=1e-3, warmup_steps=200, ema_decay=0.9995, checkpoint_every=500,
    lr_schedule="cosine", sparse_lr=3e-4,
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _dit(
            "fmnist-dit",
            heads=4,
            head_dim=32,
            layers=6,
            in_channels=1,
            sample_size=28,
            patch_size=4,
            num_classes=10,
            learned_sigma=False,
            latent=False,
            dataset="fashion-mnist",
            train=_FMNIST_TRAIN,
            description="embedded default: class-conditional DiT (6 blocks, hidden 128, patch 4) on Fashion-MNIST 28x28",
        ),
        _dit(
            "tiny-dit",
            heads=2,
            head_dim=16,
            layers=2,
            in_channels=1,
            sample_size=16,
            patch_size=4,
            num_classes=10,
            learned_sigma=False,
            latent=False,
            dataset="fashion-mnist",
            train=TrainDefaults(dense_steps=20, sparse_steps=20, batch_size=16, lr=1e-3, warmup_steps=5, ema_decay=0.99, checkpoint_every=10),
            description="test-sized DiT (2 blocks, hidden 32) on 16x16 Fashion-MNIST; seconds on a CPU",
        ),
        _dit("dit-s", heads=6, head_dim=64, layers=12, latent=True, description="DiT-S/2, 256 px (4x32x32 SD-VAE latents)"),
        _dit("dit-b", heads=12, head_dim=64, layers=12, latent=True, description="DiT-B/2, 256 px (4x32x32 SD-VAE latents)"),
        _dit("dit-xl", heads=16, head_dim=72, layers=28, latent=True, description="DiT-XL/2, 256 px (4x32x32 SD-VAE latents)"),
        _unet(
            "ddpm-cifar10",
            block_out_channels=(128, 256, 256, 256),
            down=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            dropout=0.1,
            latent=False,
            description="DDPM UNet2DModel layout of google/ddpm-cifar10-32 (unconditional, 3x32x32)",
        ),
        _unet(
            "tiny-unet",
            block_out_channels=(32, 64),
            down=("DownBlock2D", "AttnDownBlock2D"),
            up=("AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=16,
            in_channels=1,
            sample_size=16,
            num_classes=10,
            latent=False,
            dataset="fashion-mnist",
            train=TrainDefaults(dense_steps=20, sparse_steps=20, batch_size=16, lr=1e-3, warmup_steps=5, ema_decay=0.99, checkpoint_every=10),
            description="test-sized class-conditional UNet2DModel on 16x16 Fashion-MNIST",
        ),
    )
}

DEFAULT_PRESET = "fmnist-dit"


def get_preset(name: str) -> Preset:
    """Look up a preset by name, or raise an error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SparseDeployError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}") from None
