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

__all__ = [
    "Preset",
    "PRESETS",
    "get_preset",
    "DEFAULT_PRESET",
    "preset_from_config",
    "preset_from_manifest",
    "PRESET_SPEC",
]

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
    sparse_lr: float | None = None  # learning rate of fine-tuning a pretrained model, dense or sparse (None: lr)
    # A second dense cosine cycle from the first one's checkpoint (a warm restart; 0: none).
    # `make pretrain` (shipped.pretrain) runs it when the preset asks for it.
    refine_steps: int = 0
    refine_lr: float | None = None


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
        schedule: the model's diffusers scheduler config (``scheduler_config.json``); None
            means the default linear 1,000-step schedule (see ``sparse_deploy.schedule``).
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
    schedule: dict[str, Any] | None = None

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learned_sigma else 1)

    @property
    def null_class(self) -> int | None:
        """The label id meaning "no class" (classifier-free guidance), or None if unconditional."""
        return self.num_classes if self.num_classes else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        """The inverse of :meth:`to_dict` (as read back from a JSON manifest)."""
        data = dict(data)
        for key in ("include", "exclude", "adaln"):
            data[key] = tuple(data.get(key) or ())
        data["train"] = TrainDefaults(**(data.get("train") or {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


def _unet(
    name: str, block_out_channels: tuple[int, ...], down: tuple[str, ...], up: tuple[str, ...], **kw: Any
) -> Preset:
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
    dense_steps=10_000,
    # The demo's fine-tuning budget: the most that keeps `make demo` under 15 minutes on 2 CPU cores. The
    # calibrated start's FID keeps falling with steps (docs/RESULTS.md, "Quality at full 2:4": 600, 1,200,
    # 2,400, 9,600); at 600 the demo's N=300 summary ended 10.4% over the dense engine.
    sparse_steps=1800,
    batch_size=64,
    lr=1e-3,
    warmup_steps=200,
    ema_decay=0.9995,
    checkpoint_every=500,
    lr_schedule="cosine",
    # Fine-tuning the converged model (dense or sparse): 3e-5, a tenth of the first choice, chosen on the dense
    # control: continued at 3e-5 it is no worse than the starting model after 600 and 2,400 steps, at 3e-4 it
    # is (docs/RESULTS.md, "Quality at full 2:4").
    sparse_lr=3e-5,
    refine_steps=18_000,
    refine_lr=4e-4,
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
            description="embedded default: class-conditional DiT (6 blocks, hidden 128, patch 4) on "
            "Fashion-MNIST 28x28",
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
            train=TrainDefaults(
                dense_steps=20,
                sparse_steps=20,
                batch_size=16,
                lr=1e-3,
                warmup_steps=5,
                ema_decay=0.99,
                checkpoint_every=10,
            ),
            description="test-sized DiT (2 blocks, hidden 32) on 16x16 Fashion-MNIST; seconds on a CPU",
        ),
        _dit(
            "dit-s",
            heads=6,
            head_dim=64,
            layers=12,
            latent=True,
            description="DiT-S/2, 256 px (4x32x32 SD-VAE latents)",
        ),
        _dit(
            "dit-b",
            heads=12,
            head_dim=64,
            layers=12,
            latent=True,
            description="DiT-B/2, 256 px (4x32x32 SD-VAE latents)",
        ),
        _dit(
            "dit-xl",
            heads=16,
            head_dim=72,
            layers=28,
            latent=True,
            description="DiT-XL/2, 256 px (4x32x32 SD-VAE latents)",
        ),
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
            train=TrainDefaults(
                dense_steps=20,
                sparse_steps=20,
                batch_size=16,
                lr=1e-3,
                warmup_steps=5,
                ema_decay=0.99,
                checkpoint_every=10,
            ),
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


# Manifests (checkpoint, ONNX, engine) record the whole preset under this key, so a model built
# from any diffusers config is rebuilt later without a registry entry or --model.
PRESET_SPEC = "preset_spec"
_FAMILIES = {"DiTTransformer2DModel": "dit", "UNet2DModel": "unet"}


def family_of(class_name: str | None) -> str:
    """``dit`` or ``unet`` for a diffusers class name, or an error naming the supported ones."""
    if class_name not in _FAMILIES:
        raise SparseDeployError(
            f"diffusers class '{class_name}' is not supported; the toolchain takes {' or '.join(_FAMILIES)}"
        )
    return _FAMILIES[class_name]


def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise SparseDeployError(f"{what} {list(value)} is not square; only square samples are supported")
        value = value[0]
    return int(value)


def preset_from_config(
    family: str,
    config: dict[str, Any],
    *,
    name: str,
    latent: bool,
    schedule: dict[str, Any] | None = None,
    description: str = "",
) -> Preset:
    """A preset for any DiTTransformer2DModel (``dit``) or UNet2DModel (``unet``) config.

    The layout is the config itself; sample geometry, class conditioning and learned sigma are
    read from it; layer selection follows the family's rules (DiT: attention and MLP Linears;
    UNet: every eligible conv/linear but the embeddings and the first and last conv).
    A UNet's ``num_class_embeds`` counts the null label too (as the built-in presets write it).
    """
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    in_channels = int(kwargs.get("in_channels", 4 if family == "dit" else 3))
    out_channels = int(kwargs.get("out_channels") or in_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise SparseDeployError(
            f"model '{name}' outputs {out_channels} channels for {in_channels} in: only epsilon "
            "(C) or epsilon + sigma (2C) are supported"
        )
    sample_size = _square(kwargs.get("sample_size", 32), f"model '{name}' sample_size")
    if family == "dit":
        if kwargs.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
            raise SparseDeployError(
                f"DiT '{name}' uses norm_type '{kwargs['norm_type']}'; only ada_norm_zero "
                "(class-conditional DiT) is supported"
            )
        num_classes = int(kwargs.get("num_embeds_ada_norm") or 1000)
        rules: dict[str, Any] = dict(include=DIT_INCLUDE, adaln=DIT_ADALN)
    elif family == "unet":
        if kwargs.get("class_embed_type") is not None:
            raise SparseDeployError(
                f"UNet '{name}' uses class_embed_type '{kwargs['class_embed_type']}'; only a plain "
                "class table (num_class_embeds) is supported"
            )
        embeds = int(kwargs.get("num_class_embeds") or 0)
        num_classes = embeds - 1 if embeds > 1 else 0
        rules = dict(include=UNET_INCLUDE, exclude=UNET_EXCLUDE)
    else:
        raise SparseDeployError(f"unknown model family '{family}'; use dit or unet")
    return Preset(
        name=name,
        family=family,
        model_kwargs=kwargs,
        in_channels=in_channels,
        sample_size=sample_size,
        num_classes=num_classes,
        latent=latent,
        learned_sigma=out_channels == 2 * in_channels,
        schedule=schedule,
        description=description or f"{config.get('_class_name', family)} from a diffusers config",
        **rules,
    )


def preset_from_manifest(manifest: dict[str, Any]) -> Preset:
    """The preset a manifest was made with: its recorded spec, else the built-in preset it names."""
    spec = manifest.get(PRESET_SPEC) or (manifest.get("fingerprint_inputs") or {}).get("preset")
    if isinstance(spec, dict):
        return Preset.from_dict(spec)
    if "preset" not in manifest:
        raise SparseDeployError("the manifest names no preset; re-create the artifact")
    return get_preset(manifest["preset"])
