"""Runs a job's engine: models load lazily on first use and unload when idle.

This is the only module between the queue and the engines; torch is imported here on first use, so
the daemon starts small and the bot and the folder never import it. The daemon runs it inside its engine
process (engine_process.py); tests and benchmarks also call it in their own process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from PIL import Image

from nst_daemon import imaging
from nst_daemon.config import Settings
from nst_daemon.engines import STYLE_MODELS
from nst_daemon.engines.adain import MODELS as ADAIN_MODELS
from nst_daemon.engines.presets import working_side
from nst_daemon.errors import UnknownStyle
from nst_daemon.jobs import Job, ProgressFn, RunResult
from nst_daemon.manifest import runnable_path

log = logging.getLogger(__name__)

# An NST job with a live preview gets a snapshot this often: the bot shows one at most every 5 s
# (status_messages.PREVIEW_INTERVAL_S), so a faster engine would only encode frames nobody sees.
PREVIEW_EVERY_S = 5.0


def decode_inputs(
    images: list[bytes], settings: Settings, *, max_side: int | None = None
) -> list[Image.Image]:
    """A job's stored images (the content, then the styles), decoded. The queue checked them at intake;
    an error here (the limits were lowered since, or memory ran out) still names the image at fault.

    With `max_side`, the engine's: both engines fit the content within it, and NST scales each style to
    the fitted content's area, so a large JPEG decodes no larger than that needs (`imaging.load_image`'s
    `final_size`). Without it, every image decodes in full."""
    limits = settings.images.limits
    if max_side is None:
        return [imaging.load_job_image(data, index, **limits) for index, data in enumerate(images)]
    content_data, *style_data = images
    content = imaging.load_job_image(content_data, 0, **limits, final_size=imaging.fit_rule(max_side))
    to_area = imaging.same_area_rule(imaging.fitted_size(content.size, max_side))
    styles = [
        imaging.load_job_image(data, index, **limits, final_size=to_area)
        for index, data in enumerate(style_data, start=1)
    ]
    return [content, *styles]


class EngineRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engines: dict[str, Any] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        return sorted(name for name, engine in self._engines.items() if engine.loaded)

    def _engine(self, model: str) -> Any:
        """The loaded engine of `model`: a catalog name, or "adain" for AdaIN's two models."""
        names = ADAIN_MODELS if model == "adain" else (model,)
        models_dir = self.settings.paths.models_dir
        paths = [runnable_path(models_dir, name) for name in names]  # ModelNotInstalled when absent
        with self._lock:
            engine = self._engines.get(model)
            if engine is None:
                engine = self._create(model, *paths)
                self._engines[model] = engine
            if not engine.loaded:
                started = time.monotonic()
                engine.load()
                log.info("loaded %s in %.1f s", model, time.monotonic() - started)
            self._last_used[model] = time.monotonic()
            return engine

    def _create(self, model: str, path: Any, *more: Any) -> Any:
        if model == "adain":
            from nst_daemon.engines.adain import AdaINEngine

            adain = self.settings.adain
            return AdaINEngine(path, *more, device=adain.device, cpu_threads=adain.cpu_threads)
        if model == "vgg19":
            from nst_daemon.engines.nst import NSTEngine

            return NSTEngine(path, device=self.settings.nst.device, cpu_threads=self.settings.nst.cpu_threads)
        from nst_daemon.engines.cyclegan import CycleGANEngine

        return CycleGANEngine(
            path, device=self.settings.cyclegan.device, cpu_threads=self.settings.cyclegan.cpu_threads
        )

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunResult:
        max_side = self._max_side(job)
        content_image, *style_images = decode_inputs([content, *styles], self.settings, max_side=max_side)
        if job.engine == "cyclegan":
            return self._run_cyclegan(job, content_image, max_side, progress, cancel)
        if job.engine == "adain":
            return self._run_adain(job, content_image, style_images, max_side, progress, cancel)
        return self._run_nst(job, content_image, style_images, max_side, progress, cancel)

    def _max_side(self, job: Job) -> int:
        """The longest side of the job's result: its own setting, else its preset's within the cap."""
        preset, explicit = job.params.get("preset"), job.params.get("max_side")
        return working_side(self.settings, job.engine, preset=preset, explicit=explicit)

    def _run_cyclegan(
        self, job: Job, content: Image.Image, max_side: int, progress: ProgressFn, cancel: threading.Event
    ) -> RunResult:
        style = job.styles[0] if job.styles else ""
        model = STYLE_MODELS.get(style)
        if model is None:
            raise UnknownStyle(style, list(STYLE_MODELS))
        engine = self._engine(model)
        # The engine reports estimates while its one ONNX Runtime call runs, this the end.
        image = engine.stylize(content, max_side=max_side, cancel=cancel, progress=progress)
        progress(1.0)
        return RunResult(
            image, {"device": engine.provider, "model": model, "max_side": max_side, "size": list(image.size)}
        )

    def _run_adain(
        self,
        job: Job,
        content: Image.Image,
        styles: list[Image.Image],
        max_side: int,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunResult:
        """Job params: `strength` (0..1, default 1), `style_weights` (one per style image, default equal),
        `preserve_colors`."""
        engine = self._engine("adain")
        progress(0.05)
        given = job.params.get("strength")
        strength = 1.0 if given is None else float(given)
        image = engine.stylize(
            content,
            styles,
            weights=job.params.get("style_weights"),
            strength=strength,
            preserve_colors=bool(job.params.get("preserve_colors", False)),
            max_side=max_side,
            cancel=cancel,
        )
        progress(1.0)
        report = {
            "device": engine.provider,
            "model": "+".join(ADAIN_MODELS),
            "strength": strength,
            "max_side": max_side,
            "size": list(image.size),
        }
        return RunResult(image, report)

    def _run_nst(
        self,
        job: Job,
        content: Image.Image,
        styles: list[Image.Image],
        max_side: int,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunResult:
        from nst_daemon.engines.nst import NSTOptions, NSTProgress

        engine = self._engine("vgg19")
        options = NSTOptions.from_preset(
            job.params.get("preset") or self.settings.nst.preset,
            max_side=max_side,
            preserve_colors=bool(job.params.get("preserve_colors", False)),
            optimizer=self.settings.nst.optimizer,
            seed=self.settings.nst.seed,
            # Only a job that asks (a bot user with the preview on) pays for the snapshots.
            preview_every_s=PREVIEW_EVERY_S if job.params.get("preview") else None,
        )

        def forward(update: NSTProgress) -> None:
            if update.preview is None:
                progress(update.fraction)
            else:
                progress(update.fraction, update.preview)

        result = engine.stylize(
            content,
            styles,
            weights=job.params.get("style_weights"),  # a named style's, one per image
            options=options,
            progress=forward,
            cancel=cancel,
        )
        report = {
            "device": result.device,
            "model": "vgg19",
            "preset": options.preset if hasattr(options, "preset") else job.params.get("preset"),
            "steps": result.steps,
            "scales": result.scales,
            "losses": result.losses,
            "oom_retries": result.oom_retries,
            "size": list(result.image.size),
        }
        return RunResult(result.image, report)

    def unload_idle(self, idle_s: float) -> list[str]:
        now = time.monotonic()
        unloaded = []
        with self._lock:
            for model, engine in self._engines.items():
                if engine.loaded and now - self._last_used.get(model, 0) >= idle_s:
                    engine.unload()
                    unloaded.append(model)
        return unloaded
