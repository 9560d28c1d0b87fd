"""Random-init checkpoints in the exact upstream formats, for tests that must not download weights.

`make_vgg19_state_dict` mirrors torchvision's vgg19 (IMAGENET1K_V1) keys and shapes;
`make_cyclegan_state_dict` mirrors pytorch-CycleGAN-and-pix2pix `latest_net_G` of a resnet_9blocks
generator; `make_adain_vgg_state_dict` and `make_adain_decoder_state_dict` mirror pytorch-AdaIN's
vgg_normalised.pth and decoder.pth. Values are random but well scaled (He-normal convolutions), so NST
losses are finite and fall and generator outputs span [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

VGG19_CONVS: tuple[tuple[int, int, int], ...] = (
    # (module index, out channels, in channels) of torchvision's vgg19().features
    (0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128),
    (10, 256, 128), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 512, 256), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
)  # fmt: skip
VGG19_CLASSIFIER: tuple[tuple[int, int, int], ...] = ((0, 4096, 25088), (3, 4096, 4096), (6, 1000, 4096))

CYCLEGAN_PARAMETERS = 11_378_179
_CYCLEGAN_NORMS = (2, 5, 8, 20, 23)  # InstanceNorm modules outside the residual blocks
_CYCLEGAN_BLOCKS = range(10, 19)


def _he_normal(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5


def make_vgg19_state_dict(seed: int = 0, with_classifier: bool = False) -> dict[str, torch.Tensor]:
    """torchvision VGG19 keys and shapes; `classifier.*` (about 480 MB) is zeros when asked for."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for index, out_channels, in_channels in VGG19_CONVS:
        state[f"features.{index}.weight"] = _he_normal(generator, (out_channels, in_channels, 3, 3))
        state[f"features.{index}.bias"] = torch.randn(out_channels, generator=generator) * 0.01
    if with_classifier:
        for index, out_features, in_features in VGG19_CLASSIFIER:
            state[f"classifier.{index}.weight"] = torch.zeros(out_features, in_features)
            state[f"classifier.{index}.bias"] = torch.zeros(out_features)
    return state


def cyclegan_shapes() -> dict[str, tuple[int, ...]]:
    """Upstream key -> shape for a resnet_9blocks generator with ngf 64 (conv bias on)."""
    shapes: dict[str, tuple[int, ...]] = {
        "model.1.weight": (64, 3, 7, 7),
        "model.1.bias": (64,),
        "model.4.weight": (128, 64, 3, 3),
        "model.4.bias": (128,),
        "model.7.weight": (256, 128, 3, 3),
        "model.7.bias": (256,),
    }
    for block in _CYCLEGAN_BLOCKS:
        for conv in (1, 5):
            shapes[f"model.{block}.conv_block.{conv}.weight"] = (256, 256, 3, 3)
            shapes[f"model.{block}.conv_block.{conv}.bias"] = (256,)
    shapes.update(
        {
            # ConvTranspose2d weights are (in, out, kH, kW).
            "model.19.weight": (256, 128, 3, 3),
            "model.19.bias": (128,),
            "model.22.weight": (128, 64, 3, 3),
            "model.22.bias": (64,),
            "model.26.weight": (3, 64, 7, 7),
            "model.26.bias": (3,),
        }
    )
    return shapes


def make_cyclegan_state_dict(seed: int = 0, legacy_norm_keys: bool = False) -> dict[str, torch.Tensor]:
    """Upstream `latest_net_G` keys; `legacy_norm_keys` adds the InstanceNorm buffers old files carry."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in cyclegan_shapes().items():
        if key.endswith(".bias"):
            state[key] = torch.randn(shape, generator=generator) * 0.01
        elif key in ("model.19.weight", "model.22.weight"):
            state[key] = _he_normal(generator, (shape[1], shape[0], *shape[2:])).transpose(0, 1).contiguous()
        else:
            state[key] = _he_normal(generator, shape)
    if legacy_norm_keys:
        channels = {2: 64, 5: 128, 8: 256, 20: 128, 23: 64}
        prefixes = [(f"model.{index}", channels[index]) for index in _CYCLEGAN_NORMS]
        prefixes += [(f"model.{block}.conv_block.{n}", 256) for block in _CYCLEGAN_BLOCKS for n in (2, 6)]
        for prefix, size in prefixes:
            state[f"{prefix}.running_mean"] = torch.zeros(size)
            state[f"{prefix}.running_var"] = torch.ones(size)
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


# pytorch-AdaIN (naoto0804/pytorch-AdaIN, net.py): plain nn.Sequential state dicts, keys "INDEX.weight".
ADAIN_VGG_CONVS: tuple[tuple[int, int, int, int], ...] = (
    # (module index, out channels, in channels, kernel) of the whole normalised VGG, to relu5_4
    (0, 3, 3, 1), (2, 64, 3, 3), (5, 64, 64, 3),
    (9, 128, 64, 3), (12, 128, 128, 3),
    (16, 256, 128, 3), (19, 256, 256, 3), (22, 256, 256, 3), (25, 256, 256, 3),
    (29, 512, 256, 3), (32, 512, 512, 3), (35, 512, 512, 3), (38, 512, 512, 3),
    (42, 512, 512, 3), (45, 512, 512, 3), (48, 512, 512, 3), (51, 512, 512, 3),
)  # fmt: skip
ADAIN_DECODER_CONVS: tuple[tuple[int, int, int], ...] = (
    # (module index, out channels, in channels); all 3×3
    (1, 256, 512), (5, 256, 256), (8, 256, 256), (11, 256, 256), (14, 128, 256),
    (18, 128, 128), (21, 64, 128), (25, 64, 64), (28, 3, 64),
)  # fmt: skip


def make_adain_vgg_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """vgg_normalised.pth keys and shapes (about 80 MB)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for index, out_channels, in_channels, kernel in ADAIN_VGG_CONVS:
        state[f"{index}.weight"] = _he_normal(generator, (out_channels, in_channels, kernel, kernel))
        state[f"{index}.bias"] = torch.randn(out_channels, generator=generator) * 0.01
    return state


def make_adain_decoder_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """decoder.pth keys and shapes (about 14 MB). The last conv is scaled so that most output pixels fall
    inside [0, 1] (around 0.5), where the clamp does not hide differences a test looks for."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for index, out_channels, in_channels in ADAIN_DECODER_CONVS:
        state[f"{index}.weight"] = _he_normal(generator, (out_channels, in_channels, 3, 3))
        state[f"{index}.bias"] = torch.randn(out_channels, generator=generator) * 0.01
    state["28.weight"] = state["28.weight"] * 0.5
    state["28.bias"] = torch.full((3,), 0.5)
    return state


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


def random_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth random RGB image of `size` (width, height): colour blobs with some texture, like a photo."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    image = Image.fromarray((coarse * 255).astype(np.uint8), "RGB").resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8), "RGB")


def install_random_models(models: Path, source: str) -> None:
    """Random-init VGG19 and one CycleGAN generator (style_monet, exported to ONNX) in `models`, with the
    manifest `nstd models import` would write: the models the benchmarks and the chaos suite run on."""
    import time

    from nst_daemon.engines.cyclegan import export_onnx
    from nst_daemon.manifest import InstalledModel, write_manifest

    vgg = save_checkpoint(make_vgg19_state_dict(seed=0), models / "vgg19-dcbb9e9d.pth")
    generator = save_checkpoint(make_cyclegan_state_dict(seed=1), models / "generator.pth")
    export_onnx(generator, models / "style_monet.onnx")
    now = time.time()

    def entry(name: str, kind: str, path: Path) -> InstalledModel:
        return InstalledModel(
            name=name,
            kind=kind,
            sha256="0" * 64,
            size=path.stat().st_size,
            source=source,
            installed_at=now,
            files=[path.name],
            runnable=path.name,
            pinned="import",
        )

    write_manifest(
        models,
        {
            "vgg19": entry("vgg19", "vgg19", vgg),
            "style_monet": entry("style_monet", "cyclegan", models / "style_monet.onnx"),
        },
    )
