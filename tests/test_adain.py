"""The AdaIN engine against the contract of issue 21, with random-init checkpoints in pytorch-AdaIN's layout
installed by the real `models pull` (download from a loopback server, validate, convert, parity check).

The reference below is a straightforward PyTorch transcription of the contract (pytorch-AdaIN's test.py):
its own Sequential networks from the checkpoint files, its own padding, its own statistics; it shares no
code with the engine but the image padding helper of `imaging`."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import (
    make_adain_decoder_state_dict,
    make_adain_vgg_state_dict,
    random_image,
    save_checkpoint,
)
from http_fixture import FileServer, write_catalog
from PIL import Image
from rich.console import Console
from torch import nn

from nst_daemon import catalog
from nst_daemon.config import Settings
from nst_daemon.engines import Cancelled
from nst_daemon.engines.adain import AdaINEngine, blend, mean_std
from nst_daemon.errors import NstdError
from nst_daemon.imaging import reflect_pad_to_multiple

FILES = {"adain_vgg": "vgg_normalised.pth", "adain_decoder": "decoder.pth"}


# --- the models, pulled for real ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def adain_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adain_checkpoints")
    return {
        "adain_vgg": save_checkpoint(make_adain_vgg_state_dict(seed=3), folder / FILES["adain_vgg"]),
        "adain_decoder": save_checkpoint(
            make_adain_decoder_state_dict(seed=4), folder / FILES["adain_decoder"]
        ),
    }


def adain_settings(root: Path, server: FileServer, models_dir: Path | None = None) -> Settings:
    entries = [
        {
            "name": name,
            "kind": name,
            "style": "",
            "url": server.url(f"/{file}"),
            "file": file,
            "size": 80_110_000 if name == "adain_vgg" else 14_030_000,
            "size_exact": False,
        }
        for name, file in FILES.items()
    ]
    write_catalog(root / "catalog.toml", entries)
    return Settings.model_validate(
        {
            "paths": {"models_dir": str(models_dir or root / "models"), "state_dir": str(root / "state")},
            "models": {"catalog": str(root / "catalog.toml")},
        }
    )


@pytest.fixture(scope="session")
def adain_models(tmp_path_factory: pytest.TempPathFactory, adain_checkpoints: dict[str, Path]) -> Path:
    """A models dir where `models pull adain_vgg adain_decoder` installed the random-init files."""
    root = tmp_path_factory.mktemp("adain_pulled")
    out = io.StringIO()
    with FileServer() as server:
        for name, path in adain_checkpoints.items():
            server.add_file(f"/{FILES[name]}", path)
        settings = adain_settings(root, server)
        assert catalog.pull(settings, list(FILES), console=Console(file=out, width=200)) == 0
    text = out.getvalue()
    assert "trusting it on first use" in text and "ONNX export ok" in text, text
    return root / "models"


@pytest.fixture(scope="module")
def engine(adain_models: Path) -> AdaINEngine:
    engine = AdaINEngine(
        adain_models / "adain_vgg.onnx", adain_models / "adain_decoder.onnx", device="cpu", cpu_threads=1
    )
    engine.load()
    return engine


# --- the reference: the contract in plain torch -------------------------------------------------------------


def _reference_networks(checkpoints: dict[str, Path]) -> tuple[nn.Sequential, nn.Sequential]:
    def conv(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
        return [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, kernel), nn.ReLU()]

    pool = nn.MaxPool2d(2, 2, ceil_mode=True)
    vgg = nn.Sequential(
        nn.Conv2d(3, 3, 1), *conv(3, 64), *conv(64, 64), pool, *conv(64, 128), *conv(128, 128), pool,
        *conv(128, 256), *conv(256, 256), *conv(256, 256), *conv(256, 256), pool, *conv(256, 512),
    )  # fmt: skip
    up = nn.Upsample(scale_factor=2, mode="nearest")
    dec = nn.Sequential(
        *conv(512, 256), up, *conv(256, 256), *conv(256, 256), *conv(256, 256), *conv(256, 128), up,
        *conv(128, 128), *conv(128, 64), up, *conv(64, 64), nn.ReflectionPad2d(1), nn.Conv2d(64, 3, 3),
    )  # fmt: skip
    assert len(vgg) == 31
    full = torch.load(checkpoints["adain_vgg"], weights_only=True)
    vgg.load_state_dict({k: v for k, v in full.items() if int(k.split(".")[0]) < 31})
    dec.load_state_dict(torch.load(checkpoints["adain_decoder"], weights_only=True))
    return vgg.eval(), dec.eval()


def _calc_mean_std(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = feat.shape[:2]
    var = feat.view(n, c, -1).var(dim=2) + 1e-5
    return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def _adain(fc: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    c_mean, c_std = _calc_mean_std(fc)
    s_mean, s_std = _calc_mean_std(fs)
    return (fc - c_mean) / c_std * s_std + s_mean


@pytest.fixture(scope="module")
def reference(adain_checkpoints: dict[str, Path]):
    vgg, dec = _reference_networks(adain_checkpoints)

    def run(content: np.ndarray, styles: list[np.ndarray], weights: list[float], alpha: float) -> np.ndarray:
        padded, (height, width) = reflect_pad_to_multiple(content, 8)
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)[None]))  # noqa: E731
        with torch.inference_mode():
            fc = vgg(to_t(padded))
            total = sum(weights)
            feat = sum((w / total) * _adain(fc, vgg(to_t(s))) for w, s in zip(weights, styles, strict=True))
            t = alpha * feat + (1 - alpha) * fc
            out = dec(t).clamp(0, 1)
        return out[0].permute(1, 2, 0).numpy()[:height, :width]

    return run


def rgb(size: tuple[int, int], seed: int) -> np.ndarray:
    return np.asarray(random_image(size, seed=seed), dtype=np.float32) / 255.0


# --- parity with the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_matches_the_contract_on_odd_sizes(engine: AdaINEngine, reference, alpha: float) -> None:
    content, style = rgb((53, 37), 1), rgb((41, 29), 2)  # (width, height): pads to 56×40
    got = engine.stylize_array(content, [style], strength=alpha)
    want = reference(content, [style], [1.0], alpha)
    assert got.shape == (37, 53, 3)
    assert np.abs(got - want).max() < 1e-4
    assert got.std() > 0.01  # not a flat image that would match anything


def test_two_styles_blend_by_their_weights(engine: AdaINEngine, reference) -> None:
    content, first, second = rgb((45, 35), 5), rgb((40, 40), 6), rgb((60, 26), 7)
    blended = engine.stylize_array(content, [first, second], weights=[3, 1], strength=0.8)
    assert np.abs(blended - reference(content, [first, second], [3, 1], 0.8)).max() < 1e-4
    only_first = engine.stylize_array(content, [first], strength=0.8)
    only_second = engine.stylize_array(content, [second], strength=0.8)
    assert np.abs(blended - only_first).max() > 1e-2
    assert np.abs(blended - only_second).max() > 1e-2
    # Equal weights by default: the same as [1, 1] and as [5, 5] (weights are normalised).
    equal = engine.stylize_array(content, [first, second])
    assert np.abs(equal - engine.stylize_array(content, [first, second], weights=[5, 5])).max() < 1e-6


def test_a_style_seen_before_is_not_encoded_again_and_gives_the_same_result(
    engine: AdaINEngine, reference, monkeypatch
) -> None:
    content, style, other = rgb((47, 31), 8), rgb((33, 33), 9), rgb((33, 33), 10)
    engine.unload()  # an empty cache
    encoded: list[tuple[int, ...]] = []
    real_encode = engine.encode
    monkeypatch.setattr(engine, "encode", lambda batch: encoded.append(batch.shape) or real_encode(batch))
    first = engine.stylize_array(content, [style])
    again = engine.stylize_array(content, [style.copy()])  # the same pixels in another array
    assert len(encoded) == 3  # content, style, content: the style's statistics came from the cache
    assert np.array_equal(first, again)
    assert np.abs(again - reference(content, [style], [1.0], 1.0)).max() < 1e-4
    engine.stylize_array(content, [other])  # other pixels of the same size are encoded
    assert len(encoded) == 5
    engine.unload()  # unloading forgets them
    engine.stylize_array(content, [style])
    assert len(encoded) == 7


def test_strength_zero_is_the_decoded_content(engine: AdaINEngine, adain_checkpoints) -> None:
    vgg, dec = _reference_networks(adain_checkpoints)
    content = rgb((48, 32), 8)
    with torch.inference_mode():
        want = dec(vgg(torch.from_numpy(content.transpose(2, 0, 1)[None].copy()))).clamp(0, 1)
    got = engine.stylize_array(content, [rgb((30, 30), 9)], strength=0.0)
    assert np.abs(got - want[0].permute(1, 2, 0).numpy()).max() < 1e-4


def test_blend_is_the_weighted_sum_of_adains() -> None:
    """The engine blends through weighted statistics; that equals the contract's Σ wᵢ·AdaIN(fc, fsᵢ)."""
    rng = np.random.default_rng(0)
    fc, fs1, fs2 = (
        rng.exponential(1.0, (1, 512, h, w)).astype(np.float32) for h, w in ((5, 7), (4, 4), (6, 3))
    )
    got = blend(fc, [fs1, fs2], [0.25, 0.75], 0.6)
    torch_fc = torch.from_numpy(fc)
    mix = 0.25 * _adain(torch_fc, torch.from_numpy(fs1)) + 0.75 * _adain(torch_fc, torch.from_numpy(fs2))
    want = (0.6 * mix + 0.4 * torch_fc).numpy()
    assert np.abs(got - want).max() < 1e-4
    mean, std = mean_std(fs1)
    assert np.allclose(std[:, 0, 0], np.sqrt(fs1[0].reshape(512, -1).var(axis=1, ddof=1) + 1e-5), rtol=1e-5)
    assert np.allclose(mean[:, 0, 0], fs1[0].reshape(512, -1).mean(axis=1), rtol=1e-5)


def test_images_keep_their_size_and_styles_take_the_contents_area(engine: AdaINEngine, monkeypatch) -> None:
    seen: list[tuple[int, ...]] = []
    encode = engine.encode
    monkeypatch.setattr(engine, "encode", lambda batch: seen.append(batch.shape) or encode(batch))
    content = random_image((61, 43), seed=1)
    same_size = random_image((61, 43), seed=2)
    large = random_image((244, 172), seed=3)  # 16× the area, the same aspect
    result = engine.stylize(content, [same_size, large])
    assert result.size == (61, 43)
    assert seen == [(1, 3, 48, 64), (1, 3, 43, 61), (1, 3, 43, 61)]
    # max_side fits the content first; the styles follow the fitted content's area.
    seen.clear()
    assert engine.stylize(content, [large], max_side=30).size == (30, 21)
    assert seen[1] == (1, 3, 21, 30)


def test_preserve_colors_keeps_the_contents_chroma(engine: AdaINEngine) -> None:
    content = random_image((40, 40), seed=4)
    style = Image.new("RGB", (40, 40), (250, 20, 20))
    plain = engine.stylize(content, [style])
    kept = engine.stylize(content, [style], preserve_colors=True)
    chroma = lambda image: np.asarray(image.convert("YCbCr"), dtype=float)[..., 1:]  # noqa: E731
    assert np.abs(chroma(kept) - chroma(content)).mean() < 2
    assert np.abs(chroma(plain) - chroma(content)).mean() > np.abs(chroma(kept) - chroma(content)).mean() + 2
    luma = lambda image: np.asarray(image.convert("YCbCr"), dtype=float)[..., 0]  # noqa: E731
    # The result's own luminance, but for rounding and the odd pixel the content's chroma takes out of gamut.
    assert np.abs(luma(kept) - luma(plain)).mean() < 1.5


def test_a_cancel_discards_the_run(engine: AdaINEngine) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        engine.stylize(random_image((32, 32)), [random_image((32, 32), seed=1)], cancel=cancel)


# --- refusals, each one line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": 1.5}, "strength must be a number from 0 to 1 (got 1.5)"),
        ({"strength": float("nan")}, "strength must be a number from 0 to 1 (got nan)"),
        ({"weights": [1, 2, 3]}, "got 3 style weights for 1 style image;"),
        ({"weights": [-1]}, "style weights must be non-negative numbers with a positive sum"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(engine: AdaINEngine, kwargs: dict, message: str) -> None:
    with pytest.raises(NstdError) as caught:
        engine.stylize_array(rgb((32, 32), 1), [rgb((32, 32), 2)], **kwargs)
    assert message in caught.value.message and "\n" not in caught.value.message


def test_too_small_an_image_is_refused(engine: AdaINEngine) -> None:
    with pytest.raises(NstdError, match=r"too small \(8×20 px\); each side needs at least 9 px"):
        engine.stylize_array(rgb((8, 20), 1), [rgb((32, 32), 2)])
    assert engine.stylize_array(rgb((9, 9), 1), [rgb((9, 9), 2)]).shape == (9, 9, 3)


VGG_LAYOUT = "not the pytorch-AdaIN vgg_normalised.pth layout"
DECODER_LAYOUT = "not the pytorch-AdaIN decoder.pth layout"


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("adain_vgg", lambda s: s.pop("29.weight"), f"{VGG_LAYOUT}: key 29.weight is missing"),
        (
            "adain_vgg",
            lambda s: s.update({"0.weight": torch.zeros(3, 3, 3, 3)}),
            f"{VGG_LAYOUT}: 0.weight has shape (3, 3, 3, 3), expected (3, 3, 1, 1)",
        ),
        (
            "adain_decoder",
            lambda s: s.update({"30.weight": torch.zeros(1)}),
            f"{DECODER_LAYOUT}: unexpected key 30.weight",
        ),
        ("adain_decoder", lambda s: s.pop("1.bias"), f"{DECODER_LAYOUT}: key 1.bias is missing"),
    ],
)
def test_a_bad_checkpoint_names_its_first_bad_key(tmp_path: Path, name: str, change, message: str) -> None:
    state = make_adain_vgg_state_dict() if name == "adain_vgg" else make_adain_decoder_state_dict()
    change(state)
    path = save_checkpoint(state, tmp_path / "bad.pth")
    with FileServer() as server:
        settings = adain_settings(tmp_path, server)
        with pytest.raises(NstdError) as caught:
            catalog.import_file(settings, name, path, console=Console(file=io.StringIO()))
    assert message in caught.value.message and "\n" not in caught.value.message
    assert caught.value.message.endswith("nothing was installed")
    assert not (tmp_path / "models" / f"{name}.onnx").exists()


def test_verify_rechecks_both_models(adain_models: Path, tmp_path: Path) -> None:
    with FileServer() as server:
        settings = adain_settings(tmp_path, server, models_dir=adain_models)
    out = io.StringIO()
    assert catalog.verify_all(settings, Console(file=out, width=200)) == 0
    assert "adain_vgg: ok" in out.getvalue() and "adain_decoder: ok" in out.getvalue()
    listing = io.StringIO()
    catalog.print_list(settings, Console(file=listing, width=80))
    rows = [line.split() for line in listing.getvalue().splitlines() if line.startswith("adain_")]
    assert [row[:3] for row in rows] == [
        ["adain_vgg", "(AdaIN)", "yes,"],
        ["adain_decoder", "(AdaIN)", "yes,"],
    ]
