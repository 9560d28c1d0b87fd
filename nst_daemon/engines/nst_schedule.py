"""How a run moves through its scales: the scale sizes, when a scale stops early, and progress reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from nst_daemon.engines.nst_options import LossRecord, NSTOptions
from nst_daemon.engines.vgg import min_input_side


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


ProgressCallback = Callable[[NSTProgress], None]


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


def converged(losses: list[float], window: int, tolerance: float) -> bool:
    """True when the best loss so far improved by less than `tolerance` (relative) over the last `window`
    steps. The best, not the last, loss: one uphill L-BFGS step must not end a scale that still falls fast."""
    if tolerance <= 0 or len(losses) <= window:
        return False
    before, now = min(losses[:-window]), min(losses)
    if before <= 0:
        return True
    return (before - now) / before < tolerance


@dataclass
class RunState:
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


class MonotonicProgress:
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
