"""Pretrained CycleGAN generators: the resnet_9blocks network, ONNX export, and the ONNX Runtime engine.

The torch network exists only to load an upstream `latest_net_G` checkpoint and export it once; the daemon
runs the exported .onnx through ONNX Runtime (CUDA provider, CPU fallback).

Progress: a translation is one ONNX Runtime call (15-60 s for a photo on a CPU), which reports nothing
while it runs. Tiling would give true progress but not the same picture: every InstanceNorm layer
normalises over the whole image, so tiles come out with their own colours and seams. The engine reports
an estimate instead, from the time per pixel of its earlier runs (at first, of its warm-up run at load,
which overestimates a photo's by about half on a CPU), and never reports 1 before the call returns.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from nst_daemon.engines import Cancelled, CheckpointError
from nst_daemon.engines.checkpoint import check_against, describe_foreign_generator, read_checkpoint
from nst_daemon.engines.ort_session import (  # noqa: F401  (re-exported)
    check_session,
    device_label,
    open_session,
    parse_device,
    provider_list,
    staging_file,
)
from nst_daemon.errors import NstdError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

NGF = 64
N_BLOCKS = 9
MULTIPLE = 4  # two stride-2 downsamplings: H and W must be divisible by 4
MIN_SIDE = 5  # padded to 8, the residual blocks see 2 px: the least their reflect padding accepts
PROGRESS_TICK_S = 0.5  # how often an estimate is reported while a run goes on
WARMUP_SIDE = 64
_LEGACY_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        # Indices 0..6 as upstream (no dropout): the keys are conv_block.1.* and conv_block.5.*.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """pytorch-CycleGAN-and-pix2pix `resnet_9blocks` (ngf 64, instance norm, reflect padding, no dropout).

    Input and output are RGB in [-1, 1], (N, 3, H, W) with H and W divisible by 4.
    """

    def __init__(self, ngf: int = NGF, n_blocks: int = N_BLOCKS) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, kernel_size=7, padding=0, bias=True),
            _norm(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                _norm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=True
                ),
                _norm(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def clean_generator_state_dict(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Drop legacy InstanceNorm buffers, check every key and shape; CheckpointError names the first bad key.

    Old upstream files carry running_mean/running_var/num_batches_tracked for InstanceNorm layers that
    never used them; upstream's own loader deletes them the same way.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"not a CycleGAN generator: expected a mapping of tensors, got {type(state_dict)}"
        )
    if (foreign := describe_foreign_generator(state_dict)) is not None:
        raise CheckpointError(foreign)
    cleaned = {
        key.removeprefix("module."): value
        for key, value in state_dict.items()
        if not (isinstance(key, str) and key.endswith(_LEGACY_SUFFIXES))
    }
    with torch.device("meta"):  # shapes only: no memory, no random init
        expected = ResnetGenerator().state_dict()
    return check_against(cleaned, expected, "not a resnet_9blocks CycleGAN generator")


def load_generator(checkpoint: Path | Mapping[str, torch.Tensor]) -> ResnetGenerator:
    """A frozen generator from an upstream `latest_net_G` file (or an already loaded state dict)."""
    raw = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint, "CycleGAN")
    weights = clean_generator_state_dict(raw)  # type: ignore[arg-type]
    with torch.device("meta"):
        generator = ResnetGenerator()
    generator.load_state_dict(weights, strict=True, assign=True)
    generator.requires_grad_(False)
    return generator.eval()


# --- ONNX export --------------------------------------------------------------------------------------------


def to_model_input(image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB image -> (1, 3, H', W') float32 in [-1, 1], reflect-padded to a multiple of 4; and the (h, w)."""
    from nst_daemon.imaging import reflect_pad_to_multiple

    if min(image.size) < MIN_SIDE:
        width, height = image.size
        raise NstdError(
            f"the image is too small ({width}×{height} px); each side needs at least {MIN_SIDE} px"
        )
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    padded, size = reflect_pad_to_multiple(array, MULTIPLE)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None]), size


def from_model_output(output: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """(1, 3, H', W') in [-1, 1] -> RGB image cropped back to `size` (h, w)."""
    from nst_daemon.imaging import crop_to

    array = crop_to(output[0].transpose(1, 2, 0), size)
    pixels = np.clip((array + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


# --- the ONNX Runtime engine --------------------------------------------------------------------------------


def estimated_fraction(elapsed_s: float, estimate_s: float) -> float:
    """The progress to show `elapsed_s` into a run expected to take `estimate_s`: in step with the estimate
    up to 0.9, then creeping towards 0.99 however long an underestimated run takes. Never 1: only the
    run's end says it is done."""
    if estimate_s <= 0:
        return 0.0
    ratio = elapsed_s / estimate_s
    if ratio <= 1.0:
        return 0.9 * ratio
    return 0.99 - 0.09 * math.exp(1.0 - ratio)


class _ProgressTicker:
    """Reports `estimated_fraction` every PROGRESS_TICK_S from its own thread while the `with` body runs."""

    def __init__(self, progress: Callable[[float], None], estimate_s: float) -> None:
        self._progress = progress
        self._estimate_s = estimate_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="cyclegan-progress", daemon=True)

    def __enter__(self) -> _ProgressTicker:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        # Joined before the caller goes on: the engine process's progress pipe takes one sender at a time.
        self._thread.join()

    def _tick(self) -> None:
        while not self._done.wait(PROGRESS_TICK_S):
            try:
                self._progress(estimated_fraction(time.monotonic() - self._started, self._estimate_s))
            except Exception:  # a failing listener must not end the run; the caller sees its own errors
                log.debug("progress callback failed", exc_info=True)
                return


class CycleGANEngine:
    """One exported generator behind an ONNX Runtime session."""

    def __init__(
        self, onnx_path: Path, device: str = "auto", device_id: int = 0, cpu_threads: int = 0
    ) -> None:
        """`cpu_threads` is ONNX Runtime's intra-op thread count on the CPU; 0 means one per physical core."""
        self.onnx_path = Path(onnx_path)
        self.cpu_threads = cpu_threads
        self.device, self.device_id = parse_device(device, device_id)
        self._session: InferenceSession | None = None
        self._input_name = ""
        self._lock = threading.Lock()  # one run at a time: sessions are thread-safe, memory is not
        self._load_lock = threading.Lock()
        # Seconds per input pixel, from the latest run (the warm-up's until a real one): the estimate.
        self._seconds_per_pixel = 0.0

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def provider(self) -> str:
        """The provider that actually runs the model (ORT falls back to CPU silently); "" when unloaded."""
        return self._session.get_providers()[0] if self._session is not None else ""

    @property
    def device_name(self) -> str:
        return device_label(self.provider, self.device_id)

    def load(self) -> None:
        with self._load_lock:
            if self._session is None:
                self._load()

    def _load(self) -> None:
        session = open_session(self.onnx_path, self.device, self.device_id, self.cpu_threads)
        self._session = session
        self._input_name = session.get_inputs()[0].name
        # The first run allocates the arena and picks kernels; pay it at load, not in the first job.
        warm = np.zeros((1, 3, WARMUP_SIDE, WARMUP_SIDE), dtype=np.float32)
        started = time.perf_counter()
        session.run(None, {self._input_name: warm})
        if not self._seconds_per_pixel:
            self._seconds_per_pixel = (time.perf_counter() - started) / WARMUP_SIDE**2

    def estimate_s(self, height: int, width: int) -> float:
        """How long a run on a (padded) height × width input is expected to take; 0 before any run."""
        return self._seconds_per_pixel * height * width

    def unload(self) -> None:
        self._session = None

    def stylize(
        self,
        image: Image.Image,
        *,
        max_side: int | None = None,
        cancel: threading.Event | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Image.Image:
        """Translate an RGB image; the result has the input's size after fit_within(max_side).

        `progress` gets estimates below 1 while the run goes on (see the module's docstring); the caller
        reports the end. A cancel cannot stop the run itself: the engine process ends the process."""
        from nst_daemon.imaging import fit_within

        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if max_side is not None:
            image = fit_within(image, max_side)
        batch, size = to_model_input(image)
        self.load()  # before the clock starts: a first load is no part of the run's estimate
        height, width = batch.shape[2:]
        ticker = _ProgressTicker(progress, self.estimate_s(height, width)) if progress else None
        started = time.perf_counter()
        with ticker or contextlib.nullcontext():
            output = self.run_array(batch)
        self._seconds_per_pixel = (time.perf_counter() - started) / (height * width)
        # A session run cannot be interrupted; a cancel during it discards the result.
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        return from_model_output(output, size)

    def run_array(self, batch: np.ndarray) -> np.ndarray:
        """The raw generator: (1, 3, H, W) float32 in [-1, 1], H and W divisible by 4 -> same shape."""
        self.load()
        session = self._session  # an idle unload from another thread must not pull it from under us
        assert session is not None
        with self._lock:
            (output,) = session.run(None, {self._input_name: np.ascontiguousarray(batch, np.float32)})
        return output


# The export lives in its own module (cyclegan_export.py); its names stay importable from here.
from nst_daemon.engines.cyclegan_export import check_onnx, export_onnx  # noqa: E402

__all__ = ["CycleGANEngine", "ResnetGenerator", "check_onnx", "export_onnx", "load_generator"]
