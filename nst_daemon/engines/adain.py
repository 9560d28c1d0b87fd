"""Instant arbitrary-style transfer: AdaIN (Huang and Belongie, ICCV 2017) on ONNX Runtime.

The computation is pytorch-AdaIN's `test.py` (the contract in issue 21 and docs/engines.md):
    f = enc(x) for RGB x in [0, 1], enc = normalised VGG to relu4_1
    AdaIN(fc, fs) = (fc - μ(fc)) / σ(fc) · σ(fs) + μ(fs), per channel, σ = sqrt(unbiased var + 1e-5)
    t = α · Σ wᵢ · AdaIN(fc, fsᵢ) + (1 - α) · fc, weights normalised to sum to 1
    out = clamp(dec(t), 0, 1)

Two ONNX graphs, the encoder and the decoder, with AdaIN in numpy between them, because:
- each style image has its own size (scaled to the content's area, aspect kept), so styles cannot share a
  batch with the content or with each other; one encoder run per image handles any number of styles;
- AdaIN needs only 2 × 512 numbers per style (μ and σ), and Σ wᵢ·AdaIN(fc, fsᵢ) is linear in them:
  it equals one AdaIN with σ* = Σ wᵢσᵢ and μ* = Σ wᵢμᵢ, so blending costs nothing however many styles;
- each graph is one catalog model (adain_vgg, adain_decoder), converted and verified on its own.

This module imports neither torch nor onnxruntime at import time: `nstd stylize` and the engine process
pay only for ONNX Runtime. The torch networks live in `adain_net`, used at install only.

Memory (what `adain.max_side` bounds): the largest activations are the 64-channel float32 maps at full
resolution in the encoder's first block and the decoder's last; about three are alive at once, so about
3 × 64 × 4 = 768 bytes per padded pixel. A convolution's workspace comes on top: on the CPU, ONNX Runtime's
peak was measured at about 2 KB per pixel (1.5 GB at 1024×768, 3.5 GB at 1536×1152; docs/benchmarks.md).
Taking that as the bound, the default 1024 px needs at most about 2 GB for a square photo, which leaves a
4 GB card room for the CUDA context (0.3-0.5 GB); 1536 px would not. See docs/engines.md.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from nst_daemon.engines import Cancelled
from nst_daemon.engines.ort_session import device_label, parse_device
from nst_daemon.errors import NstdError
from nst_daemon.strength import check_strength as check_strength  # AdaIN's α, the same rule

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

MODELS = ("adain_vgg", "adain_decoder")  # catalog names: the encoder graph, the decoder graph
EPS = 1e-5
MULTIPLE = 8  # three 2× pools in the encoder, three 2× upsamplings in the decoder
# relu4_1 then sees at least 2 px, the least the next reflection pad accepts; a 9 px side pads to 16.
MIN_SIDE = 9
STYLE_CACHE_SIZE = 64  # styles whose statistics stay cached (two 512-value vectors each)


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Per-style weights summing to 1: equal by default. NstdError in one line for a wrong count or value."""
    values = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(values) != count:
        raise NstdError(
            f"got {len(values)} style weight{'s' if len(values) != 1 else ''} for {count} style "
            f"image{'s' if count != 1 else ''}; give one --style-weight per --style-image, or none"
        )
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise NstdError("style weights must be non-negative numbers with a positive sum")
    total = sum(values)
    return [w / total for w in values]


def mean_std(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and σ = sqrt(unbiased variance + eps) of (1, C, h, w) features, each (C, 1, 1).

    Accumulated in float64: a 1024 px photo has 16,384 values per channel at relu4_1."""
    flat = features.reshape(features.shape[1], -1)
    mean = flat.mean(axis=1, dtype=np.float64)
    var = flat.var(axis=1, ddof=1, dtype=np.float64) if flat.shape[1] > 1 else np.zeros_like(mean)
    std = np.sqrt(var + EPS)
    return mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)


def blend(
    content: np.ndarray, styles: Sequence[np.ndarray], weights: Sequence[float], strength: float
) -> np.ndarray:
    """t = α · Σ wᵢ · AdaIN(fc, fsᵢ) + (1 - α) · fc, with `weights` already normalised."""
    return blend_stats(content, [mean_std(style) for style in styles], weights, strength)


def blend_stats(
    content: np.ndarray,
    style_stats: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: Sequence[float],
    strength: float,
) -> np.ndarray:
    """`blend` from each style's (mean, σ): AdaIN needs nothing else of a style's features.

    Computed as one AdaIN with the weighted style statistics (exact, since AdaIN is linear in them)."""
    c_mean, c_std = mean_std(content)
    s_mean = sum(w * stats[0] for w, stats in zip(weights, style_stats, strict=True))
    s_std = sum(w * stats[1] for w, stats in zip(weights, style_stats, strict=True))
    scale = (s_std / c_std).astype(np.float32)
    shift = (s_mean - c_mean * s_std / c_std).astype(np.float32)
    stylized = content[0] * scale + shift
    if strength >= 1.0:
        return stylized[None]
    return (strength * stylized + (1.0 - strength) * content[0])[None].astype(np.float32)


def to_batch(array: np.ndarray) -> np.ndarray:
    """H×W×3 float32 -> (1, 3, H, W), contiguous."""
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32)


def image_array(image: Image.Image) -> np.ndarray:
    """RGB in [0, 1], H×W×3 float32."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _style_at_least(image: Image.Image, side: int) -> Image.Image:
    """A style scaled to the content's area may be a sliver; the encoder needs `side` px each way."""
    shortest = min(image.size)
    if shortest >= side:
        return image
    scale = side / shortest
    size = (max(side, round(image.size[0] * scale)), max(side, round(image.size[1] * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


class AdaINEngine:
    """The encoder and decoder graphs behind two ONNX Runtime sessions (CUDA first, CPU fallback)."""

    def __init__(
        self,
        encoder: Path,
        decoder: Path,
        device: str = "auto",
        device_id: int = 0,
        cpu_threads: int = 0,
    ) -> None:
        self.encoder_path, self.decoder_path = Path(encoder), Path(decoder)
        self.cpu_threads = cpu_threads
        self.device, self.device_id = parse_device(device, device_id)
        self._sessions: tuple[InferenceSession, InferenceSession] | None = None
        self._lock = threading.Lock()  # one run at a time: sessions are thread-safe, memory is not
        self._load_lock = threading.Lock()
        # A style's statistics by its pixels: a named style or the folder's styles/ come back job after job,
        # and their encoder pass was a quarter of an instant job's time (docs/benchmarks.md, section 4).
        self._style_stats: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def loaded(self) -> bool:
        return self._sessions is not None

    @property
    def provider(self) -> str:
        """The provider that really runs the encoder (ORT may fall back silently); "" when unloaded."""
        return self._sessions[0].get_providers()[0] if self._sessions is not None else ""

    @property
    def device_name(self) -> str:
        return device_label(self.provider, self.device_id)

    def load(self) -> None:
        from nst_daemon.engines.ort_session import open_session

        with self._load_lock:
            if self._sessions is not None:
                return
            encoder = open_session(self.encoder_path, self.device, self.device_id, self.cpu_threads)
            decoder = open_session(self.decoder_path, self.device, self.device_id, self.cpu_threads)
            # The first run allocates the arena and picks kernels; pay it at load, not in the first job.
            features = encoder.run(None, {encoder.get_inputs()[0].name: np.zeros((1, 3, 16, 16), np.float32)})
            decoder.run(None, {decoder.get_inputs()[0].name: features[0]})
            self._sessions = (encoder, decoder)

    def unload(self) -> None:
        self._sessions = None
        self._style_stats.clear()

    def style_statistics(self, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mean_std(encode(style)), from the cache when these exact pixels were encoded before."""
        key = hashlib.sha1(np.ascontiguousarray(style).data, usedforsecurity=False).hexdigest()
        key += str(style.shape)
        cached = self._style_stats.get(key)
        if cached is not None:
            self._style_stats.move_to_end(key)
            return cached
        stats = mean_std(self.encode(to_batch(style)))
        self._style_stats[key] = stats
        while len(self._style_stats) > STYLE_CACHE_SIZE:
            self._style_stats.popitem(last=False)
        return stats

    def _run(self, index: int, batch: np.ndarray) -> np.ndarray:
        self.load()
        sessions = self._sessions  # an idle unload from another thread must not pull it from under us
        assert sessions is not None
        session = sessions[index]
        with self._lock:
            (output,) = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch)})
        return output

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) RGB in [0, 1] -> relu4_1 features (1, 512, ⌈H/8⌉, ⌈W/8⌉)."""
        return self._run(0, batch.astype(np.float32, copy=False))

    def decode(self, features: np.ndarray) -> np.ndarray:
        """(1, 512, h, w) -> (1, 3, 8h, 8w), not clamped."""
        return self._run(1, features.astype(np.float32, copy=False))

    def stylize_array(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        *,
        weights: Sequence[float] | None = None,
        strength: float = 1.0,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """The contract on arrays: H×W×3 RGB in [0, 1] (content, styles of any size) -> H×W×3 in [0, 1].

        The content is reflect-padded at the bottom and right to a multiple of 8 and the result cropped
        back, so any size works; styles are encoded as they are."""
        from nst_daemon.imaging import crop_to, reflect_pad_to_multiple

        if not styles:
            raise NstdError("AdaIN needs at least one style image")
        mix = normalized_weights(weights, len(styles))
        strength = check_strength(strength)
        height, width = content.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise NstdError(
                f"the image is too small ({width}×{height} px); each side needs at least {MIN_SIDE} px"
            )
        padded, size = reflect_pad_to_multiple(content, MULTIPLE)
        content_features = self.encode(to_batch(padded))
        style_stats = []
        for style in styles:
            _raise_if_cancelled(cancel)
            style_stats.append(self.style_statistics(style))
        _raise_if_cancelled(cancel)
        output = self.decode(blend_stats(content_features, style_stats, mix, strength))
        # A session run cannot be interrupted; a cancel during it discards the result.
        _raise_if_cancelled(cancel)
        return np.clip(crop_to(output[0].transpose(1, 2, 0), size), 0.0, 1.0)

    def stylize(
        self,
        content: Image.Image,
        styles: Sequence[Image.Image],
        *,
        weights: Sequence[float] | None = None,
        strength: float = 1.0,
        preserve_colors: bool = False,
        max_side: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Image.Image:
        """Stylize `content`; the result has its size after fit_within(max_side). Each style is scaled to
        the fitted content's pixel area, as NST does (left as it is when it already has that size)."""
        from nst_daemon.imaging import fit_within, scale_to_area

        _raise_if_cancelled(cancel)
        content = content.convert("RGB")
        if max_side is not None:
            content = fit_within(content, max_side)
        area = content.size[0] * content.size[1]
        style_arrays = [
            image_array(_style_at_least(scale_to_area(style.convert("RGB"), area), MIN_SIDE))
            for style in styles
        ]
        array = self.stylize_array(
            image_array(content), style_arrays, weights=weights, strength=strength, cancel=cancel
        )
        pixels = np.round(array * 255.0).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
        if preserve_colors:
            # NST's own colour rule; imported here so that only this option pays for NST's torch import.
            from nst_daemon.engines.nst import transfer_luminance

            image = transfer_luminance(image, content)
        return image


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()
