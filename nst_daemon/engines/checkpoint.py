"""Reading an upstream PyTorch checkpoint file, with its failures as one `CheckpointError` naming the file,
and saying in words what a CycleGAN file of another layout is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from nst_daemon.engines import CheckpointError


def read_checkpoint(path: Path, label: str) -> object:
    """`torch.load(weights_only=True)` on the CPU; `label` names the model in the error ("VGG19")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{label} checkpoint {path} does not exist") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot read {label} checkpoint {path}: {exc}") from None


def check_against(
    state_dict: Mapping[str, object], expected: Mapping[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Every key and shape of `expected` (a meta-device state dict) present in `state_dict`, nothing more;
    CheckpointError "<what>: ..." names the first bad key. Returns float32 tensors in `expected`'s order."""
    for key, tensor in expected.items():
        value = state_dict.get(key)
        if value is None:
            raise CheckpointError(f"{what}: key {key} is missing")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: {key} is not a tensor")
        if value.shape != tensor.shape:
            raise CheckpointError(
                f"{what}: {key} has shape {tuple(value.shape)}, expected {tuple(tensor.shape)}"
            )
    unexpected = sorted(str(key) for key in set(state_dict) - set(expected))
    if unexpected:
        raise CheckpointError(f"{what}: unexpected key {unexpected[0]}")
    return {key: state_dict[key].float() for key in expected}  # type: ignore[union-attr]


UPSTREAM_LAYOUT = "the pytorch-CycleGAN-and-pix2pix resnet_9blocks layout"
_BLOCK_KEY = re.compile(r"^model\.(\d+)\.([A-Za-z_]\w*)\.")


def describe_foreign_generator(state_dict: Mapping[str, object]) -> str | None:
    """What a CycleGAN generator file that is not upstream's layout is, in words; None when nothing
    stands out (then the key-by-key check names the first difference).

    Third-party CycleGAN code often keeps upstream's shapes but names or normalises differently, and
    "key model.10.conv_block.1.weight is missing" leaves its owner guessing. This says, for example,
    "InstanceNorm with affine weights and `block` instead of `conv_block`: not the ... layout".
    """
    keys = [key.removeprefix("module.") for key in state_dict if isinstance(key, str)]
    nested = [key for key, value in state_dict.items() if isinstance(value, Mapping)]
    if nested:
        shown = ", ".join(sorted(map(str, nested))[:4])
        return (
            f"a checkpoint that wraps other dictionaries ({shown}), not a generator's state_dict(): "
            f"save the generator's own state_dict() in {UPSTREAM_LAYOUT}"
        )
    found: list[str] = []
    tops = sorted({key.split(".", 1)[0] for key in keys})
    if tops and tops != ["model"]:
        found.append(
            f"layers named {', '.join(tops[:4])}{', ...' if len(tops) > 4 else ''} instead of model.N"
        )
    # A normalisation layer with affine weights: a 1-D weight with a 1-D bias beside it (convolutions'
    # weights are 4-D; a stray 1-D key alone is left to the key check, which names it).
    one_dim = {
        key.removesuffix(".weight")
        for key in keys
        if key.endswith(".weight")
        and _ndim(state_dict, key) == 1
        and _ndim(state_dict, key.removesuffix(".weight") + ".bias") == 1
    }
    if one_dim:
        stats = any(f"{prefix}.running_mean" in keys for prefix in one_dim)
        found.append(
            "BatchNorm (affine weights and running statistics)"
            if stats
            else "InstanceNorm with affine weights"
        )
    names: dict[str, set[int]] = {}
    for key in keys:
        if match := _BLOCK_KEY.match(key):
            names.setdefault(match.group(2), set()).add(int(match.group(1)))
    for name in sorted(set(names) - {"conv_block"}):
        found.append(f"`{name}` instead of `conv_block`")
    blocks = len(set().union(*names.values())) if names else 0
    if blocks and blocks != 9:
        found.append(f"{blocks} residual blocks (resnet_{blocks}blocks)")
    first = state_dict.get("model.1.weight")
    if isinstance(first, torch.Tensor) and first.dim() == 4 and first.shape[0] != 64:
        found.append(f"{first.shape[0]} filters in the first layer (upstream: 64)")
    if not found:
        return None
    return f"{' and '.join(found)}: not {UPSTREAM_LAYOUT}"


def _ndim(state_dict: Mapping[str, object], key: str) -> int:
    value = state_dict.get(key, state_dict.get(f"module.{key}"))
    return value.dim() if isinstance(value, torch.Tensor) else -1
