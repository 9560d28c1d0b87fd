"""Runs a job's engine: models load lazily on first use and unload when idle.

The daemon runs it inside its engine process (engine_process.py); tests and benchmarks also call it in
their own process. What a job does is the one stylize pipeline's (pipeline.py), which asks the engine
registry; this module only keeps the loaded models between jobs. torch is imported by an engine on its
first use, so the daemon starts small and the bot and the folder never import it.
"""

from __future__ import annotations

import logging
import threading
import time

from nst_daemon.config import Settings
from nst_daemon.engines.registry import EngineModel, EnginePlugin
from nst_daemon.jobs import Job, ProgressFn, RunResult
from nst_daemon.pipeline import StylizeRequest, decode_inputs, installed_paths, stylize

__all__ = ["EngineRunner", "decode_inputs"]

log = logging.getLogger(__name__)


class EngineRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Loaded models by their catalog names joined with "+" ("style_monet", "adain_vgg+adain_decoder").
        self._engines: dict[str, EngineModel] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        return sorted(name for name, engine in self._engines.items() if engine.loaded)

    def _model(self, plugin: EnginePlugin, names: tuple[str, ...]) -> EngineModel:
        """The loaded model of `names` (ModelNotInstalled when one is absent), created on first use."""
        paths = installed_paths(self.settings, plugin, names)
        key = "+".join(names)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = plugin.create(paths, self.settings, None)
                self._engines[key] = engine
            if not engine.loaded:
                started = time.monotonic()
                engine.load()
                log.info("loaded %s in %.1f s", key, time.monotonic() - started)
            self._last_used[key] = time.monotonic()
            return engine

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunResult:
        request = StylizeRequest(job.engine, content, list(styles), list(job.styles), dict(job.params))
        result, _output = stylize(self.settings, request, self._model, progress, cancel)
        return result

    def unload_idle(self, idle_s: float) -> list[str]:
        now = time.monotonic()
        unloaded = []
        with self._lock:
            for model, engine in self._engines.items():
                if engine.loaded and now - self._last_used.get(model, 0) >= idle_s:
                    engine.unload()
                    unloaded.append(model)
        return unloaded
