"""Reading an upstream PyTorch checkpoint file, with its failures as one `CheckpointError` naming the file."""

from __future__ import annotations

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
