"""AdaIN's two networks in PyTorch, only to validate pytorch-AdaIN's release files and export them to ONNX.

The layout is upstream's (naoto0804/pytorch-AdaIN, `net.py`), rebuilt here from its description: both files
are plain `nn.Sequential` state dicts, so the keys are module indices ("29.weight").
- `vgg_normalised.pth`: a 1×1 conv at index 0, then reflection-padded 3×3 convs and ceil-mode max-pools up
  to relu5_4 (53 modules). AdaIN encodes with the first 31 (up to relu4_1); only those are exported.
- `decoder.pth`: convs at 1, 5, 8, 11, 14, 18, 21, 25 and 28, nearest ×2 upsampling after 1, 14 and 21.

The daemon never imports this module: it runs the exported graphs (`adain.py`). It is imported at install
(`nstd models pull` / `import` / `verify`) and by tests and benchmarks.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nst_daemon.engines import CheckpointError, ConversionError
from nst_daemon.engines.checkpoint import check_against, read_checkpoint
from nst_daemon.engines.ort_session import publish_export, staging_file

log = logging.getLogger(__name__)

ENCODER_MODULES = 31  # vgg_normalised up to relu4_1
# (output channels, convolutions) per VGG block; a ceil-mode max-pool comes before every block but the first.
_VGG_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
# (output channels, nearest ×2 upsampling after it) per decoder conv; every conv but the last has a ReLU.
_DECODER_CONVS = (
    (256, True), (256, False), (256, False), (256, False), (128, True),
    (128, False), (64, True), (64, False), (3, False),
)  # fmt: skip
OPSET = 18
FILES = {"adain_vgg": "pytorch-AdaIN vgg_normalised.pth", "adain_decoder": "pytorch-AdaIN decoder.pth"}


def vgg_normalised() -> nn.Sequential:
    """The whole normalised VGG of vgg_normalised.pth (53 modules, to relu5_4)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    channels = 3
    for block, (out, convs) in enumerate(_VGG_BLOCKS):
        if block:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
        for _ in range(convs):
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(channels, out, (3, 3)), nn.ReLU()]
            channels = out
    return nn.Sequential(*layers)


def decoder() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 512
    for index, (out, upsample) in enumerate(_DECODER_CONVS):
        layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(channels, out, (3, 3))]
        if index < len(_DECODER_CONVS) - 1:
            layers.append(nn.ReLU())
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        channels = out
    return nn.Sequential(*layers)


def _architecture(kind: str) -> nn.Sequential:
    if kind == "adain_vgg":
        return vgg_normalised()
    if kind == "adain_decoder":
        return decoder()
    raise ValueError(f"not an AdaIN model kind: {kind!r}")


def clean_state_dict(kind: str, state_dict: object) -> dict[str, torch.Tensor]:
    """Check every key and shape of an upstream file of `kind` (adain_vgg | adain_decoder); CheckpointError
    names the first bad key. Returns float32 tensors."""
    what = f"not the {FILES[kind]} layout"
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{what}: expected a state dict of tensors, got {type(state_dict).__name__}")
    with torch.device("meta"):  # shapes only: no memory, no random init
        expected = _architecture(kind).state_dict()
    return check_against(state_dict, expected, what)


def load_network(kind: str, checkpoint: Path | Mapping[str, torch.Tensor]) -> nn.Sequential:
    """The frozen network AdaIN runs: the encoder (first 31 VGG modules) or the decoder."""
    raw = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint, FILES[kind])
    weights = clean_state_dict(kind, raw)
    with torch.device("meta"):
        network = _architecture(kind)
    network.load_state_dict(weights, strict=True, assign=True)
    if kind == "adain_vgg":
        network = nn.Sequential(*list(network.children())[:ENCODER_MODULES])
    network.requires_grad_(False)
    return network.eval()


# --- ONNX export --------------------------------------------------------------------------------------------


def _sample(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An input of the graph: an RGB image in [0, 1] for the encoder, relu4_1-like features (non-negative,
    a few units) for the decoder."""
    if kind == "adain_vgg":
        return rng.uniform(0.0, 1.0, size=(1, 3, height, width)).astype(np.float32)
    return rng.exponential(1.0, size=(1, 512, height, width)).astype(np.float32)


# (H, W) of the check inputs: odd sizes exercise the ceil-mode pools; the decoder's are feature maps.
_CHECK_SIZES = {"adain_vgg": ((45, 61), (64, 48)), "adain_decoder": ((6, 9), (8, 5))}


def check_onnx(kind: str, network: nn.Module, onnx_path: Path) -> float:
    """Max abs difference between ONNX Runtime (CPU) and torch on seeded random inputs.

    The encoder's difference is taken relative to its largest feature (at least 1): the real VGG's relu4_1
    features reach the tens, where float32 itself resolves about 1e-6 of the value. The decoder's output is
    on the image's own [0, 1] scale, so its difference is absolute."""
    from nst_daemon.engines.ort_session import open_session

    session = open_session(onnx_path, "cpu")
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    worst = 0.0
    for height, width in _CHECK_SIZES[kind]:
        sample = _sample(kind, height, width, rng)
        with torch.inference_mode():
            expected = network(torch.from_numpy(sample)).numpy()
        (actual,) = session.run(None, {name: sample})
        if actual.shape != expected.shape:
            raise ConversionError(f"ONNX output shape {actual.shape} != torch {expected.shape}")
        scale = max(1.0, float(np.abs(expected).max())) if kind == "adain_vgg" else 1.0
        worst = max(worst, float(np.abs(actual - expected).max()) / scale)
    return worst


def export_onnx(kind: str, checkpoint: Path, onnx_path: Path) -> float:
    """Export the encoder or the decoder with dynamic H and W, check it against torch, write atomically.

    Returns the max difference (see `check_onnx`); ConversionError when it is 1e-4 or more."""
    network = load_network(kind, Path(checkpoint))
    onnx_path = Path(onnx_path)
    channels = 3 if kind == "adain_vgg" else 512
    names = ("image", "features") if kind == "adain_vgg" else ("features", "image")
    tmp = staging_file(onnx_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes do not concern a fixed net
            try:
                # The TorchScript exporter: about 1 s against about 10 s for dynamo on a 2-core CPU.
                torch.onnx.export(
                    network,
                    (torch.zeros(1, channels, 32, 32),),
                    str(tmp),
                    input_names=[names[0]],
                    output_names=[names[1]],
                    dynamic_axes={names[0]: {2: "height", 3: "width"}, names[1]: {2: "height", 3: "width"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            except Exception as exc:
                raise ConversionError(f"ONNX export of {FILES[kind]} failed: {exc}") from exc
        diff = check_onnx(kind, network, tmp)
        publish_export(tmp, onnx_path, diff, FILES[kind])
        log.info("exported %s -> %s (max diff %.1e)", FILES[kind], onnx_path.name, diff)
        return diff
    finally:
        tmp.unlink(missing_ok=True)
