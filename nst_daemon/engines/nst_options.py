"""What defines an NST run: `NSTOptions`, the presets users get, and the references' loss definitions.

The presets' optimization settings and why they were chosen: docs/engines.md ("Defaults", "Presets") and the
measurements behind them in docs/benchmarks.md ("NST levers").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from nst_daemon.engines.presets import PRESET_MAX_SIDE
from nst_daemon.engines.vgg import layer_index
from nst_daemon.errors import NstdError

GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
GATYS_CONTENT_LAYERS = ("relu4_2",)
# L-BFGS 0.5, not torch's 1: without a line search, lr 1 overshoots more and needed twice the time to
# the references' losses (docs/benchmarks.md, "NST levers").
DEFAULT_LR = {"lbfgs": 0.5, "adam": 0.02}


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
    # What the style term matches per layer: "gram" (Gatys: the Gram matrix F·Fᵀ) or "mean_cov" (the
    # channel means and the covariance apart, as crowsonkb's style-transfer-pytorch does; a lever, measured
    # in docs/benchmarks.md, not a preset's choice).
    style_statistic: Literal["gram", "mean_cov"] = "gram"
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float | None = None  # None: 0.5 for L-BFGS, 0.02 for Adam
    lbfgs_history: int = 20  # curvature pairs kept; each costs two image-sized tensors of memory
    # L-BFGS without a line search can blow up (a step lands far uphill, often off the [0, 1] box). When a
    # loss exceeds `restart_above` x the best so far, the image goes back to the best one and the curvature
    # history is dropped. None: never restart.
    restart_above: float | None = None
    # After this many steps without a new best loss, the same restart: L-BFGS can stay lost uphill for
    # hundreds of steps (docs/benchmarks.md, "Why stock balanced misses (a) at 128²"). None: never.
    restart_after: int | None = 10
    scales: tuple[float, ...] = (0.5, 1.0)
    max_steps: int | tuple[int, ...] = (200, 300)
    # Early stopping (nst_schedule.converged): a scale ends when its best loss improved by less than 1 %
    # over the last 20 steps. The best loss, so L-BFGS's uphill steps do not end a scale that still falls.
    tolerance: float = 1e-2
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
        if self.style_statistic not in ("gram", "mean_cov"):
            fail(f"style_statistic must be gram or mean_cov, got {self.style_statistic!r}")
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
    # Quick previews, and the test suite on a CPU: two small scales, a tight budget, a looser stop.
    "fast": NSTOptions(
        max_side=PRESET_MAX_SIDE["fast"],
        scales=(0.5, 1.0),
        max_steps=(60, 30),
        tolerance=2e-2,
        window=10,
        preset="fast",
    ),
    "balanced": NSTOptions(max_side=PRESET_MAX_SIDE["balanced"], preset="balanced"),
    # Lower loss at any cost: three scales, a stop that waits longer for a new best.
    "best": NSTOptions(
        max_side=PRESET_MAX_SIDE["best"],
        scales=(0.25, 0.5, 1.0),
        max_steps=(300, 300, 600),
        tolerance=2e-3,
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
        restart_after=None,
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
        lr=1.0,  # torch's default, which the tutorial uses
        scales=(1.0,),
        max_steps=300,
        tolerance=0.0,
        restart_after=None,
    ),
}
