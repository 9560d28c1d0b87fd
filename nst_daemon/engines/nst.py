"""Multi-style Gatys neural style transfer on a frozen VGG19: `NSTEngine`.

One content image, any number of weighted style images. The image is optimized directly (L-BFGS by
default, Adam as the low-memory option), coarse to fine over a few scales, stopping each scale when the
loss stops improving. Engines know nothing of Telegram or the queue: progress and cancellation are a
callback and a threading.Event.

The parts live next to this module: `nst_options` (options, presets, reference recipes), `nst_loss` (the
loss), `nst_schedule` (scales, early stopping, progress). Their public names are re-exported here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nst_daemon.engines import Cancelled
from nst_daemon.engines.device import describe_torch_device, resolve_torch_device
from nst_daemon.engines.nst_loss import Objective, gram_matrix, style_mix, total_variation
from nst_daemon.engines.nst_options import (
    DEFAULT_LR,
    GATYS_CONTENT_LAYERS,
    GATYS_STYLE_LAYERS,
    PRESETS,
    REFERENCE_RECIPES,
    LossRecord,
    NSTOptions,
)
from nst_daemon.engines.nst_schedule import (
    MonotonicProgress,
    NSTProgress,
    ProgressCallback,
    RunState,
    converged,
    scale_sizes,
)
from nst_daemon.engines.preview import preview_jpeg
from nst_daemon.engines.vgg import VGG19Features, load_vgg_state_dict, min_input_side
from nst_daemon.errors import NstdError

__all__ = [
    "DEFAULT_LR",
    "GATYS_CONTENT_LAYERS",
    "GATYS_STYLE_LAYERS",
    "PRESETS",
    "REFERENCE_RECIPES",
    "LossRecord",
    "NSTEngine",
    "NSTOptions",
    "NSTProgress",
    "NSTResult",
    "ProgressCallback",
    "gram_matrix",
    "retry_smaller_on_oom",
    "scale_sizes",
    "style_mix",
    "to_image",
    "to_tensor",
    "total_variation",
    "transfer_luminance",
]

log = logging.getLogger(__name__)

OOM_SHRINK = 0.75
_T = TypeVar("_T")


@dataclass
class NSTResult:
    image: Image.Image
    device: str
    losses: list[float]  # total loss at every step, all scales in order
    steps: int
    scales: list[tuple[int, int]]  # (width, height) of each scale that ran
    oom_retries: int
    seconds: float
    history: list[LossRecord] = field(default_factory=list)
    stopped_early: list[bool] = field(default_factory=list)  # per scale


# --- image <-> tensor ---------------------------------------------------------------------------------------


def to_tensor(image: Image.Image, device: torch.device) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor.detach()[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def transfer_luminance(result: Image.Image, content: Image.Image) -> Image.Image:
    """The result's luminance with the content's chroma (YCbCr), so the colours stay the photo's own."""
    luma = result.convert("YCbCr").getchannel("Y")
    if content.size != result.size:
        content = content.resize(result.size, Image.Resampling.LANCZOS)
    _, cb, cr = content.convert("YCbCr").split()
    return Image.merge("YCbCr", (luma, cb, cr)).convert("RGB")


# --- the engine ---------------------------------------------------------------------------------------------


class NSTEngine:
    """Holds the VGG19 weights on one device and runs one stylization at a time."""

    def __init__(self, vgg_path: Path, device: str = "auto", cpu_threads: int = 0) -> None:
        """`cpu_threads` is torch's thread count on the CPU; 0 keeps torch's default (the physical cores)."""
        self.vgg_path = Path(vgg_path)
        self.requested_device = device
        self.cpu_threads = cpu_threads
        self._device: torch.device | None = None
        self._weights: dict[str, torch.Tensor] | None = None
        self._net: VGG19Features | None = None
        self._net_key: tuple[object, ...] = ()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._weights is not None

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_torch_device(self.requested_device)
        return self._device

    @property
    def device_name(self) -> str:
        return describe_torch_device(self.device)

    def load(self) -> None:
        self._set_threads()
        if self._weights is not None:
            return
        device = self.device
        self._weights = load_vgg_state_dict(self.vgg_path)
        # The first optimizer built in a process imports torch._dynamo (2-5 s on a small CPU); pay it at
        # load time rather than inside the first job's progress.
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        log.info("VGG19 loaded from %s for %s", self.vgg_path.name, describe_torch_device(device))

    def _set_threads(self) -> None:
        # OpenMP keeps the count per thread, so it is set in the thread that runs the job, every time.
        if self.cpu_threads and self.device.type == "cpu" and torch.get_num_threads() != self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    def unload(self) -> None:
        self._weights = None
        self._net = None
        self._net_key = ()
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.empty_cache()

    def _free_cuda(self) -> None:
        self._net = None  # rebuilt on the next attempt; its activations' memory goes with it
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _network(self, options: NSTOptions) -> VGG19Features:
        layers = tuple(dict.fromkeys((*options.style_layers, *options.content_layers)))
        key = (layers, options.channels_last)
        if self._net is None or self._net_key != key:
            assert self._weights is not None
            self._net = None  # free the old one first: both at once may not fit on a small card
            net = VGG19Features(layers, self._weights).to(self.device)
            if options.channels_last:
                net = net.to(memory_format=torch.channels_last)
            self._net, self._net_key = net, key
        return self._net

    def stylize(
        self,
        content: Image.Image,
        styles: list[Image.Image],
        *,
        weights: list[float] | None = None,
        options: NSTOptions | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> NSTResult:
        """Stylize `content` with the weighted `styles`; the result has the content's size after
        fit_within(options.max_side). Raises Cancelled (with `.steps`) when `cancel` is set."""
        from nst_daemon.imaging import fit_within

        options = options or NSTOptions()
        if not styles:
            raise NstdError("NST needs at least one style image")
        mix = style_mix(weights, len(styles), options.normalize_style_weights)
        started = time.perf_counter()
        target = fit_within(content.convert("RGB"), options.max_side)
        styles = [style.convert("RGB") for style in styles]
        report = MonotonicProgress(progress)
        with self._lock:
            self.load()

            def attempt(side: int) -> tuple[Image.Image, RunState]:
                return self._run(fit_within(target, side), styles, mix, options, report, cancel)

            (image, run), retries = retry_smaller_on_oom(
                attempt, max(target.size), floor=options.oom_floor, free=self._free_cuda
            )
        if image.size != target.size:
            # A smaller run after OOM is scaled up so callers always get the size they asked for.
            image = image.resize(target.size, Image.Resampling.LANCZOS)
        if options.preserve_colors:
            image = transfer_luminance(image, target)
        losses = [record.total for record in run.history]
        report.finish(run.steps, losses[-1] if losses else float("nan"), run.sizes)
        return NSTResult(
            image=image,
            device=self.device_name,
            losses=losses,
            steps=run.steps,
            scales=run.sizes,
            oom_retries=retries,
            seconds=time.perf_counter() - started,
            history=run.history,
            stopped_early=run.stopped_early,
        )

    def _run(
        self,
        content: Image.Image,
        styles: list[Image.Image],
        mix: list[float],
        options: NSTOptions,
        report: MonotonicProgress,
        cancel: threading.Event | None,
    ) -> tuple[Image.Image, RunState]:
        from nst_daemon.imaging import scale_to_area

        torch.manual_seed(options.seed)
        device = self.device
        thinnest = min_input_side((*options.style_layers, *options.content_layers))
        if min(content.size) < thinnest:
            width, height = content.size
            raise NstdError(
                f"the image is too narrow for NST at this size ({width}×{height} px); "
                f"each side needs at least {thinnest} px"
            )
        net = self._network(options)
        sizes = scale_sizes(content.size, options)
        steps = options.steps_per_scale()[-len(sizes) :]
        state = RunState(sizes=sizes, budgets=[n * w * h for n, (w, h) in zip(steps, sizes, strict=True)])
        # Style images are resampled once to the final area, then per scale from that.
        area = content.size[0] * content.size[1]
        styles = [scale_to_area(style, area) for style in styles]
        image: torch.Tensor | None = None
        for index, (size, max_steps) in enumerate(zip(sizes, steps, strict=True)):
            scaled_content = (
                content if size == content.size else content.resize(size, Image.Resampling.LANCZOS)
            )
            content_t = to_tensor(scaled_content, device)
            style_ts = [
                to_tensor(_at_least(scale_to_area(style, size[0] * size[1]), thinnest), device)
                for style in styles
            ]
            objective = Objective(net, content_t, style_ts, mix, options)
            del style_ts
            if image is None:
                start = content_t.clone()
            else:
                # Coarse-to-fine: the previous scale's result, upsampled, is where this scale starts.
                start = F.interpolate(image, size=(size[1], size[0]), mode="bicubic", align_corners=False)
                start = start.clamp(0, 1)
            image = self._optimize(start, objective, options, index, max_steps, state, report, cancel)
            del objective, content_t
        assert image is not None
        return to_image(image), state

    def _optimize(
        self,
        start: torch.Tensor,
        objective: Objective,
        options: NSTOptions,
        scale: int,
        max_steps: int,
        state: RunState,
        report: MonotonicProgress,
        cancel: threading.Event | None,
    ) -> torch.Tensor:
        """Optimize one scale; returns the best image it evaluated (lowest loss), detached."""
        image = start.detach().clone().requires_grad_(True)

        def new_optimizer() -> torch.optim.Optimizer:
            if options.optimizer == "adam":
                return torch.optim.Adam([image], lr=options.learning_rate)
            # One closure evaluation per .step(): every evaluation is a step we can report and cancel.
            return torch.optim.LBFGS(
                [image],
                lr=options.learning_rate,
                max_iter=1,
                history_size=options.lbfgs_history,
                tolerance_grad=0.0,
                tolerance_change=0.0,
            )

        optimizer = new_optimizer()
        losses: list[float] = []
        best_loss, best = math.inf, image.detach().clone()
        evaluated = 0

        def closure() -> torch.Tensor:
            nonlocal evaluated, best_loss, best
            if cancel is not None and cancel.is_set():
                error = Cancelled(f"cancelled after {state.steps} steps")
                error.steps = state.steps  # type: ignore[attr-defined]
                raise error
            optimizer.zero_grad(set_to_none=True)
            loss, content, style, tv = objective(image)
            total = content + style + tv
            if not math.isfinite(total):
                raise _Diverged()
            loss.backward()
            evaluated += 1
            state.steps += 1
            losses.append(total)
            record = LossRecord(state.steps, scale, total, content, style, tv)
            state.history.append(record)
            if total < best_loss:
                best_loss, best = total, image.detach().clone()
            if options.loss_callback is not None:
                options.loss_callback(record)
            update = state.progress(scale, min(evaluated, max_steps) / max_steps, total)
            if state.preview_due(options.preview_every_s):
                update = replace(update, preview=preview_jpeg(image))
            report(update)
            return loss

        stopped_early = False
        restarted_at = 0  # the step count at the last restart: steps since then count as stalled
        try:
            while evaluated < max_steps:
                optimizer.step(closure)
                with torch.no_grad():
                    # Projected steps keep every pixel a valid colour without a squashing reparametrization.
                    image.clamp_(0, 1)
                    blown = (
                        options.restart_above is not None and losses[-1] > options.restart_above * best_loss
                    )
                    since = len(losses) - 1 - max(losses.index(min(losses)), restarted_at)
                    stalled = options.restart_after is not None and since >= options.restart_after
                    if blown or stalled:
                        image.copy_(best)
                        optimizer = new_optimizer()
                        restarted_at = len(losses)
                if converged(losses, options.window, options.tolerance):
                    stopped_early = evaluated < max_steps
                    break
        except _Diverged:
            log.warning("NST loss became non-finite at scale %d; keeping the best image so far", scale)
            stopped_early = True
        state.stopped_early.append(stopped_early)
        return best


def _at_least(image: Image.Image, side: int) -> Image.Image:
    """Upscale a thin style image (a panorama strip) until the network can take it; aspect is kept."""
    width, height = image.size
    if min(width, height) >= side:
        return image
    factor = side / min(width, height)
    return image.resize(
        (max(side, round(width * factor)), max(side, round(height * factor))), Image.Resampling.LANCZOS
    )


def retry_smaller_on_oom(
    attempt: Callable[[int], _T], side: int, *, floor: int, free: Callable[[], None]
) -> tuple[_T, int]:
    """Run `attempt(side)`; after an out-of-memory error free memory and retry at 0.75x, down to `floor`.

    Returns the result and the number of retries. A 4 GB card fits Gatys at roughly 512-768 px, so a too
    large request degrades to a smaller working size instead of failing the job.
    """
    retries = 0
    while True:
        try:
            return attempt(side), retries
        except torch.OutOfMemoryError:
            free()
            smaller = int(side * OOM_SHRINK)
            if smaller < floor:
                raise NstdError(
                    f"out of GPU memory even at {side} px; use a smaller --max-side or the adam optimizer"
                ) from None
            retries += 1
            log.warning("out of memory at %d px; retrying at %d px", side, smaller)
            side = smaller


class _Diverged(Exception):
    pass
