"""The VGG19 feature stack in plain torch, laid out like torchvision's `vgg19().features`.

Module indices match torchvision, so `features.N.weight` keys of vgg19-dcbb9e9d.pth load unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from nst_daemon.engines import CheckpointError
from nst_daemon.engines.checkpoint import read_checkpoint

# torchvision's configuration "E": channel counts, "M" for a 2x2 max-pool.
_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layout() -> tuple[dict[str, int], dict[int, tuple[int, int]], int]:
    """Layer name -> module index, conv index -> (out, in) channels, and the total module count."""
    names: dict[str, int] = {}
    convs: dict[int, tuple[int, int]] = {}
    index, block, sub, channels = 0, 1, 1, 3
    for item in _CFG:
        if item == "M":
            names[f"pool{block}"] = index
            index += 1
            block, sub = block + 1, 1
            continue
        assert isinstance(item, int)
        convs[index] = (item, channels)
        names[f"conv{block}_{sub}"] = index
        names[f"relu{block}_{sub}"] = index + 1
        index, sub, channels = index + 2, sub + 1, item
    return names, convs, index


LAYER_INDEX, CONV_CHANNELS, NUM_MODULES = _layout()

# The checkpoint keys the feature stack needs, with their shapes.
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {}
for _index, (_out, _in) in CONV_CHANNELS.items():
    EXPECTED_SHAPES[f"features.{_index}.weight"] = (_out, _in, 3, 3)
    EXPECTED_SHAPES[f"features.{_index}.bias"] = (_out,)


def validate_vgg_state_dict(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision VGG19 state dict; CheckpointError names the first bad key."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"not a VGG19 state dict: expected a mapping of tensors, got {type(state_dict)}"
        )
    features: dict[str, torch.Tensor] = {}
    for key, shape in EXPECTED_SHAPES.items():
        if key not in state_dict:
            raise CheckpointError(f"not a torchvision VGG19 checkpoint: key {key} is missing")
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"not a torchvision VGG19 checkpoint: {key} is not a tensor")
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"not a torchvision VGG19 checkpoint: {key} has shape {tuple(value.shape)}, expected {shape}"
            )
        if not value.is_floating_point():
            raise CheckpointError(f"not a torchvision VGG19 checkpoint: {key} has dtype {value.dtype}")
        features[key] = value
    return features


def load_vgg_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read and validate a VGG19 checkpoint; only the feature tensors are kept (float32, CPU)."""
    raw = read_checkpoint(path, "VGG19")
    return {key: value.float() for key, value in validate_vgg_state_dict(raw).items()}


def layer_index(name: str) -> int:
    try:
        return LAYER_INDEX[name]
    except KeyError:
        known = ", ".join(n for n in LAYER_INDEX if not n.startswith("pool"))
        raise ValueError(f"unknown VGG19 layer {name!r}; known layers: {known}") from None


def min_input_side(layers: Iterable[str]) -> int:
    """The smallest image side the stack can take up to these layers: every max-pool halves it."""
    deepest = max(layer_index(name) for name in layers)
    pools = sum(1 for name, index in LAYER_INDEX.items() if name.startswith("pool") and index < deepest)
    return 2**pools


class VGG19Features(nn.Module):
    """VGG19 features up to the deepest requested layer, frozen, with ImageNet normalization in front.

    `forward` takes RGB in [0, 1] (N, 3, H, W) and returns {layer name: activation} for `layers`, where a
    `convX_Y` name is the pre-ReLU output and `reluX_Y` the post-ReLU one.
    """

    def __init__(self, layers: Iterable[str], state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(layers))
        if not self.layers:
            raise ValueError("VGG19Features needs at least one layer")
        self._capture: dict[int, list[str]] = {}
        for name in self.layers:
            self._capture.setdefault(layer_index(name), []).append(name)
        depth = max(self._capture) + 1
        # With weights at hand, skip the random init of 20M parameters (seconds on a CPU): build on the
        # meta device and adopt the checkpoint's tensors as they are.
        with torch.device("meta") if state_dict is not None else contextlib.nullcontext():
            self.features = nn.Sequential(*self._modules_up_to(depth))
        if state_dict is not None:
            wanted = {f"features.{i}.{p}" for i in CONV_CHANNELS if i < depth for p in ("weight", "bias")}
            self.load_state_dict({key: state_dict[key] for key in wanted}, strict=True, assign=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _modules_up_to(self, depth: int) -> list[nn.Module]:
        modules: list[nn.Module] = []
        for index in range(depth):
            if index in CONV_CHANNELS:
                out_channels, in_channels = CONV_CHANNELS[index]
                modules.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            elif index - 1 in CONV_CHANNELS:
                # An in-place ReLU would overwrite a conv output that is being kept as a feature.
                modules.append(nn.ReLU(inplace=index - 1 not in self._capture))
            else:
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        return modules

    def train(self, mode: bool = True) -> VGG19Features:
        # Always frozen: there is no dropout or batch norm here, but keep `.training` honest.
        return super().train(False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            for name in self._capture.get(index, ()):
                out[name] = x
        return out
