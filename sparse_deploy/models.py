"""Build diffusers models from presets and wrap them behind one denoiser signature.

Every model the toolchain touches is a :class:`Denoiser`: ``forward(sample, timestep,
class_labels) -> prediction``. That one signature is what training, ONNX export, the engines
and the sampling loop share.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .errors import SparseDeployError
from .limits import check_model_config
from .presets import PRESETS, Preset
from .sources import diffusers_class, resolve_source

__all__ = ["Denoiser", "short_name", "NET_PREFIX", "build_model", "load_pretrained_weights", "example_inputs", "cast_"]

log = logging.getLogger(__name__)


NET_PREFIX = "net."


def short_name(name: str) -> str:
    """A module name as diffusers spells it: without the :class:`Denoiser`'s ``net.`` prefix."""
    return name[len(NET_PREFIX) :] if name.startswith(NET_PREFIX) else name


class Denoiser(nn.Module):
    """A diffusers DiT or UNet2DModel behind ``(sample, timestep, class_labels) -> output``.

    The diffusers model lives in ``self.net`` so that module names inside it are the
    familiar diffusers names prefixed with ``net.``.
    """

    def __init__(self, preset: Preset, net: nn.Module):
        super().__init__()
        self.preset = preset
        self.net = net

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.preset.family == "dit":
            return self.net(sample, timestep=timestep, class_labels=class_labels, return_dict=False)[0]
        return self.net(sample, timestep, class_labels=class_labels, return_dict=False)[0]


def cast_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``module``'s floating-point parameters and buffers to ``dtype`` in place, quietly; returns it.

    ``nn.Module._apply``, as ``.half()`` does: diffusers' own ``ModelMixin.to`` prints a warning about
    modules to keep in fp32 on every cast (none, for the models here).
    """
    return module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)


def _disable_internal_label_dropout(net: nn.Module) -> None:
    # diffusers' LabelEmbedding drops labels at random in train mode. The training loop drops
    # them itself so that student and teacher see the same labels; the null-label row of the
    # table (created because dropout_prob > 0 at construction) is kept.
    for module in net.modules():
        if module.__class__.__name__ == "LabelEmbedding":
            module.dropout_prob = 0.0


def _builtin(preset: Preset) -> bool:
    return PRESETS.get(preset.name) == preset


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SparseDeployError(f"'{path}' is not readable JSON ({exc}); fix or replace it") from exc
    if not isinstance(data, dict):
        raise SparseDeployError(f"'{path}' is not a diffusers config (a JSON object)")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _check_size(kwargs: dict, name: str, cls, trusted: bool = False) -> None:
    """Refuse a config asking for absurd sizes (``limits.check_model_config``) before anything is allocated."""
    check_model_config(dict(kwargs), name, build=None if trusted else (lambda config: cls.from_config(dict(config))))


def build_model(preset: Preset, weights: str | Path | None = None, *, announce_random: bool = True) -> Denoiser:
    """Build the preset's model, with weights from a diffusers pipeline or model folder or a .safetensors file.

    With no weights the model is randomly initialised, and a warning says so: fine for latency
    work, meaningless for image quality.
    """
    cls = diffusers_class(preset.family)
    _check_size(preset.model_kwargs, preset.name, cls, trusted=_builtin(preset))
    if weights is not None:
        weights = resolve_source(weights).weights
    if weights is not None and Path(weights).is_dir():
        path = Path(weights)
        if (path / "config.json").is_file():  # the folder's own config decides what from_pretrained allocates
            _check_size(_read_config(path / "config.json"), str(path), cls)
        try:
            net = cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False)
        except Exception as exc:
            raise SparseDeployError(
                f"could not load diffusers weights from '{path}' ({exc.__class__.__name__}: {exc}); "
                "point --weights at a folder holding config.json and diffusion_pytorch_model.safetensors"
            ) from exc
        config = json.loads((path / "config.json").read_text())
        log.info("loaded diffusers weights from %s (%s)", path, config.get("_class_name", cls.__name__))
        _disable_internal_label_dropout(net)
        return Denoiser(preset, net)

    net = cls.from_config(dict(preset.model_kwargs))
    _disable_internal_label_dropout(net)
    model = Denoiser(preset, net)
    if weights is None and announce_random:
        log.warning(
            "preset '%s' starts from RANDOM weights: fine for latency work, meaningless for "
            "image quality "
            "(pass --weights or --checkpoint for a pretrained model)",
            preset.name,
        )
    elif weights is not None:
        load_pretrained_weights(model, weights)
    return model


def load_pretrained_weights(model: Denoiser, path: str | Path) -> None:
    """Load a safetensors state dict (diffusers names, with or without the ``net.`` prefix)."""
    path = Path(path)
    if not path.exists():
        raise SparseDeployError(f"weights file '{path}' does not exist; check the path")
    if path.is_dir():
        raise SparseDeployError(
            f"'{path}' is a folder without config.json; pass a diffusers model folder or a .safetensors file"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SparseDeployError(
            f"'{path}' is not a readable safetensors file ({exc}); re-download or re-export it"
        ) from exc
    state = {k if k.startswith(NET_PREFIX) else f"{NET_PREFIX}{k}": v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("weight_mask")]
    if missing or unexpected:
        raise SparseDeployError(
            f"weights in '{path}' do not fit preset '{model.preset.name}': "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
            f"{unexpected[:2]}); "
            "pick the preset these weights were trained for"
        )
    log.info("loaded weights from %s", path)


def example_inputs(preset: Preset, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random but valid denoiser inputs: ``(sample, timestep, class_labels)`` (labels only if conditional)."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, preset.in_channels, preset.sample_size, preset.sample_size, generator=gen)
    timestep = torch.randint(0, 1000, (batch,), generator=gen)
    if preset.num_classes:
        labels = torch.randint(0, preset.num_classes, (batch,), generator=gen)
        return sample, timestep, labels
    return sample, timestep
