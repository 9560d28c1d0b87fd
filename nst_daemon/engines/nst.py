"""Multi-style Gatys neural style transfer on a frozen VGG19.

One content image, any number of weighted style images. The image is optimized directly (L-BFGS by
default, Adam as the low-memory option), coarse to fine over a few scales, stopping each scale when the
loss stops improving. Engines know nothing of Telegram or the queue: progress and cancellation are a
callback and a threading.Event.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nst_daemon.engines import Cancelled
from nst_daemon.engines.device import describe_torch_device, resolve_torch_device
from nst_daemon.engines.presets import PRESET_MAX_SIDE
from nst_daemon.engines.preview import preview_jpeg
from nst_daemon.engines.vgg import VGG19Features, layer_index, load_vgg_state_dict, min_input_side
from nst_daemon.errors import NstdError

log = logging.getLogger(__name__)

GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
GATYS_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
LBFGS_HISTORY = 20  # curvature pairs kept; each costs two image-sized tensors of GPU memory
OOM_SHRINK = 0.75
_T = TypeVar("_T")


@dataclass(frozen=True)
class LossRecord:
    """One evaluated step: the weighted terms that add up to `total`."""

    step: int
    scale: int
    total: float
    content: float
    style: float
    tv: float


@dataclass(frozen=True)
class NSTOptions:
    """Everything that defines a run. Defaults are the `balanced` preset; see docs/engines.md for why.

    Layer names are VGG19 `convX_Y` (pre-ReLU) or `reluX_Y` (post-ReLU). `max_steps` is a cap per scale
    (one int for all scales, or one per scale); a scale ends earlier when the loss improved by less than
    `tolerance` (relative) over the last `window` steps.
    """

    max_side: int = 512
    style_layers: tuple[str, ...] = GATYS_STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None  # None: 1.0 each
    content_layers: tuple[str, ...] = GATYS_CONTENT_LAYERS
    content_weight: float = 1.0
    style_weight: float = 1e6
    # True: per-style weights are scaled to sum to 1 (a blend). False: each style adds its own full term
    # weighted by its weight (1.0 each by default), the "plain merge" of the original bot.
    normalize_style_weights: bool = True
    tv_weight: float = 0.0
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float | None = None  # None: 1.0 for L-BFGS, 0.02 for Adam
    scales: tuple[float, ...] = (0.5, 1.0)
    max_steps: int | tuple[int, ...] = (150, 150)
    tolerance: float = 2e-3
    window: int = 20
    min_side: int = 64  # coarse scales whose longest side would be smaller are skipped
    oom_floor: int = 128  # on CUDA out-of-memory, retry smaller, but not below this longest side
    preserve_colors: bool = False
    seed: int = 0
    channels_last: bool = False
    preset: str = "custom"  # the preset these options came from, for reports
    # Seconds between previews in the progress updates (NSTProgress.preview); None: no previews.
    preview_every_s: float | None = None
    loss_callback: Callable[[LossRecord], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "style_layers", tuple(self.style_layers))
        set_(self, "content_layers", tuple(self.content_layers))
        set_(self, "scales", tuple(float(s) for s in self.scales))
        if self.style_layer_weights is not None:
            set_(self, "style_layer_weights", tuple(float(w) for w in self.style_layer_weights))
        if not isinstance(self.max_steps, int):
            set_(self, "max_steps", tuple(int(s) for s in self.max_steps))
        self._validate()

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"NSTOptions: {message}")

        if not self.style_layers:
            fail("style_layers is empty")
        for name in (*self.style_layers, *self.content_layers):
            if name.startswith("pool"):
                fail(f"{name} is a pooling layer; use a conv or relu layer")
            layer_index(name)
        if self.style_layer_weights is not None and len(self.style_layer_weights) != len(self.style_layers):
            fail("style_layer_weights must have one weight per style layer")
        if (
            not self.scales
            or any(not 0 < s <= 1 for s in self.scales)
            or list(self.scales) != sorted(self.scales)
        ):
            fail(f"scales must be increasing fractions in (0, 1], got {self.scales}")
        steps = self.steps_per_scale()
        if len(steps) != len(self.scales) or any(s < 1 for s in steps):
            fail("max_steps must be a positive int or one positive int per scale")
        if self.optimizer not in DEFAULT_LR:
            fail(f"optimizer must be lbfgs or adam, got {self.optimizer!r}")
        if self.window < 1 or self.tolerance < 0:
            fail("window must be >= 1 and tolerance >= 0")
        if self.max_side < 16 or self.min_side < 16 or self.oom_floor < 16:
            fail("max_side, min_side and oom_floor must be at least 16")
        if min(self.content_weight, self.style_weight, self.tv_weight) < 0:
            fail("loss weights must not be negative")

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> NSTOptions:
        """A preset (fast, balanced, best) with any field overridden; None overrides are ignored."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise NstdError(f"unknown NST preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown NSTOptions field {unknown[0]!r}")
        return replace(base, **{key: value for key, value in overrides.items() if value is not None})

    def steps_per_scale(self) -> tuple[int, ...]:
        if isinstance(self.max_steps, int):
            return (self.max_steps,) * len(self.scales)
        return tuple(self.max_steps)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


PRESETS: dict[str, NSTOptions] = {
    # Quick previews, and the test suite on a CPU: two small scales, a tight budget.
    "fast": NSTOptions(
        max_side=PRESET_MAX_SIDE["fast"],
        scales=(0.5, 1.0),
        max_steps=(40, 15),
        tolerance=5e-3,
        window=10,
        preset="fast",
    ),
    "balanced": NSTOptions(max_side=PRESET_MAX_SIDE["balanced"], preset="balanced"),
    "best": NSTOptions(
        max_side=PRESET_MAX_SIDE["best"],
        scales=(0.25, 0.5, 1.0),
        max_steps=(300, 300, 300),
        tolerance=5e-4,
        window=30,
        preset="best",
    ),
}

# The loss definitions the benchmark compares against (reference.md). "bot" is the original bot's
# recipe; "tutorial" is the PyTorch tutorial as written: its conv_1..conv_5 count convolutions in order,
# so they are conv1_1, conv1_2, conv2_1, conv2_2, conv3_1, and its content conv_4 is conv2_2.
REFERENCE_RECIPES: dict[str, NSTOptions] = {
    "bot": NSTOptions(
        preset="reference-bot",
        max_side=512,
        style_layers=("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"),
        content_layers=("conv3_1",),
        content_weight=1e-5,
        style_weight=1e4,
        normalize_style_weights=False,
        optimizer="adam",
        lr=0.07,
        scales=(1.0,),
        max_steps=1500,  # 50 epochs of 30 steps
        tolerance=0.0,  # its own stop rule (5 epochs without a new best) is not a relative tolerance
        window=150,
    ),
    "tutorial": NSTOptions(
        preset="reference-tutorial",
        max_side=512,
        style_layers=("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"),
        content_layers=("conv2_2",),
        content_weight=1.0,
        style_weight=1e6,
        optimizer="lbfgs",
        scales=(1.0,),
        max_steps=300,
        tolerance=0.0,
    ),
}


@dataclass(frozen=True)
class NSTProgress:
    fraction: float  # 0..1, never decreasing; exactly 1.0 once, at the end
    step: int  # steps done so far, all scales together
    loss: float
    scale: int  # index of the current scale
    scales: int
    size: tuple[int, int]  # (width, height) being optimized
    # A small JPEG of the image as it stands (engines/preview.py), at most one per
    # NSTOptions.preview_every_s; None on the other updates and when previews are off.
    preview: bytes | None = None


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


ProgressCallback = Callable[[NSTProgress], None]


# --- losses -------------------------------------------------------------------------------------------------


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """F·Fᵀ / (C·H·W) per batch item: (N, C, H, W) -> (N, C, C)."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    # Squared differences keep the loss smooth, which L-BFGS needs.
    dy = image[:, :, 1:, :] - image[:, :, :-1, :]
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


def style_mix(weights: Sequence[float] | None, count: int, normalize: bool) -> list[float]:
    """Per-style weights: equal by default; scaled to sum to 1 when `normalize`."""
    values = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(values) != count:
        raise NstdError(f"got {len(values)} style weights for {count} style images")
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise NstdError("style weights must be non-negative numbers with a positive sum")
    if normalize:
        total = sum(values)
        values = [w / total for w in values]
    return values


class _Objective:
    """The loss at one scale: targets computed once, then evaluated at every step."""

    def __init__(
        self,
        net: VGG19Features,
        content: torch.Tensor,
        styles: list[torch.Tensor],
        style_mix: list[float],
        options: NSTOptions,
    ) -> None:
        self.net = net
        self.options = options
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.style_mix = style_mix
        layer_weights = options.style_layer_weights or (1.0,) * len(options.style_layers)
        self.style_layers = list(zip(options.style_layers, layer_weights, strict=True))
        # inference_mode makes no autograd records; the clones turn the results into ordinary tensors
        # again, which autograd may save for backward.
        with torch.inference_mode():
            content = content.contiguous(memory_format=self.memory_format)
            styles = [style.contiguous(memory_format=self.memory_format) for style in styles]
            content_features = net(content)
            content_targets = {name: content_features[name] for name in options.content_layers}
            del content_features
            style_targets = []
            for style in styles:
                features = net(style)
                style_targets.append({name: gram_matrix(features[name]) for name in options.style_layers})
        self.content_targets = {name: value.clone() for name, value in content_targets.items()}
        self.style_targets = [{name: value.clone() for name, value in t.items()} for t in style_targets]

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
        options = self.options
        # The optimized tensor stays contiguous (L-BFGS flattens its gradient with .view); only the
        # network sees channels_last.
        features = self.net(image.contiguous(memory_format=self.memory_format))
        content = image.new_zeros(())
        for name in options.content_layers:
            content = content + F.mse_loss(features[name], self.content_targets[name])
        style = image.new_zeros(())
        for name, layer_weight in self.style_layers:
            gram = gram_matrix(features[name])
            for mix, targets in zip(self.style_mix, self.style_targets, strict=True):
                if mix:
                    style = style + (mix * layer_weight) * F.mse_loss(gram, targets[name])
        tv = total_variation(image) if options.tv_weight else image.new_zeros(())
        terms = torch.stack(
            [options.content_weight * content, options.style_weight * style, options.tv_weight * tv]
        )
        content_value, style_value, tv_value = terms.detach().tolist()  # one device sync, not three
        return terms.sum(), content_value, style_value, tv_value


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


def scale_sizes(size: tuple[int, int], options: NSTOptions) -> list[tuple[int, int]]:
    """(width, height) per scale; coarse scales under `min_side`, or too thin for the network's
    deepest layer, are dropped; duplicates merged. The last scale is always `size` itself."""
    width, height = size
    thinnest = min_input_side((*options.style_layers, *options.content_layers))
    sizes: list[tuple[int, int]] = []
    for index, scale in enumerate(options.scales):
        last = index == len(options.scales) - 1
        scaled = (width, height) if last else (max(1, round(width * scale)), max(1, round(height * scale)))
        if not last and (max(scaled) < options.min_side or min(scaled) < thinnest):
            continue
        if sizes and sizes[-1] == scaled:
            sizes.pop()
        sizes.append(scaled)
    return sizes


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
        report = _MonotonicProgress(progress)
        with self._lock:
            self.load()

            def attempt(side: int) -> tuple[Image.Image, _RunState]:
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
        report: _MonotonicProgress,
        cancel: threading.Event | None,
    ) -> tuple[Image.Image, _RunState]:
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
        state = _RunState(sizes=sizes, budgets=[n * w * h for n, (w, h) in zip(steps, sizes, strict=True)])
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
            objective = _Objective(net, content_t, style_ts, mix, options)
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
        objective: _Objective,
        options: NSTOptions,
        scale: int,
        max_steps: int,
        state: _RunState,
        report: _MonotonicProgress,
        cancel: threading.Event | None,
    ) -> torch.Tensor:
        """Optimize one scale; returns the best image it evaluated (lowest loss), detached."""
        image = start.detach().clone().requires_grad_(True)
        if options.optimizer == "lbfgs":
            # One closure evaluation per .step(): every evaluation is a step we can report and cancel.
            optimizer: torch.optim.Optimizer = torch.optim.LBFGS(
                [image],
                lr=options.learning_rate,
                max_iter=1,
                history_size=LBFGS_HISTORY,
                tolerance_grad=0.0,
                tolerance_change=0.0,
            )
        else:
            optimizer = torch.optim.Adam([image], lr=options.learning_rate)
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
        try:
            while evaluated < max_steps:
                optimizer.step(closure)
                with torch.no_grad():
                    # Projected steps keep every pixel a valid colour without a squashing reparametrization.
                    image.clamp_(0, 1)
                if _converged(losses, options.window, options.tolerance):
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


def _converged(losses: list[float], window: int, tolerance: float) -> bool:
    """Relative improvement of the loss over the last `window` steps below `tolerance`."""
    if tolerance <= 0 or len(losses) <= window:
        return False
    before, now = losses[-window - 1], losses[-1]
    if before <= 0:
        return True
    return (before - now) / before < tolerance


class _Diverged(Exception):
    pass


@dataclass
class _RunState:
    sizes: list[tuple[int, int]]
    budgets: list[int]  # steps x pixels per scale: what the progress fraction is measured in
    steps: int = 0
    history: list[LossRecord] = field(default_factory=list)
    stopped_early: list[bool] = field(default_factory=list)
    # The first preview comes one interval after the start: before that the image is the content photo.
    last_preview: float = field(default_factory=time.monotonic)

    def preview_due(self, every_s: float | None) -> bool:
        if every_s is None or time.monotonic() - self.last_preview < every_s:
            return False
        self.last_preview = time.monotonic()
        return True

    def progress(self, scale: int, within: float, loss: float) -> NSTProgress:
        done = sum(self.budgets[:scale]) + within * self.budgets[scale]
        # Never 1.0 before the end: the final report (after post-processing) is the one that says "done".
        fraction = min(done / sum(self.budgets), 0.999)
        return NSTProgress(fraction, self.steps, loss, scale, len(self.sizes), self.sizes[scale])


class _MonotonicProgress:
    """Forwards progress without ever going backwards (an OOM retry starts over) and ends at exactly 1.0."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.fraction = 0.0

    def __call__(self, progress: NSTProgress) -> None:
        if self.callback is None:
            return
        self.fraction = max(self.fraction, progress.fraction)
        self.callback(replace(progress, fraction=self.fraction))

    def finish(self, steps: int, loss: float, sizes: list[tuple[int, int]]) -> None:
        if self.callback is not None:
            last = len(sizes) - 1
            self.callback(NSTProgress(1.0, steps, loss, last, len(sizes), sizes[last]))
