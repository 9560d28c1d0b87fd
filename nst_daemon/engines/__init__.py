"""Style engines: multi-style Gatys NST (PyTorch, VGG19), CycleGAN generators and AdaIN (ONNX Runtime).

Each engine is a plugin (registry.py; one `*_plugin.py` declaration per engine); the pretrained styles are
the catalog's (style_catalog.py).

This module stays free of torch and onnxruntime so that the daemon, the bot and the catalog can use the
names and errors below without paying for those imports; the engines live in `vgg`, `nst` and `cyclegan`.
`Cancelled` is `nst_daemon.errors.Cancelled`, re-exported; the NST engine sets `.steps` on it.
"""

from __future__ import annotations

from nst_daemon.errors import Cancelled, NstdError

NST_BACKBONE = "vgg19"


class CheckpointError(NstdError):
    """A checkpoint that is not the expected upstream format; the message names the first bad key."""


class ConversionError(NstdError):
    """The ONNX export does not reproduce the PyTorch model closely enough, or could not be written."""


class DeviceError(NstdError):
    """A device was asked for explicitly and cannot be used."""


__all__ = [
    "NST_BACKBONE",
    "Cancelled",
    "CheckpointError",
    "ConversionError",
    "DeviceError",
]
