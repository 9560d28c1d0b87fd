"""The engine registry: every style engine is a plugin, and everything else asks this module about it.

Modelled on Frigate's detector plugins (one file per engine: a key, its settings section, its
implementation) and Immich ML's `InferenceModel` (load / unload / run). A plugin is a subclass of
`EnginePlugin` in one module that calls `register()` at import; the built-in ones are imported on first
use from `BUILTIN_MODULES`, extra ones from the modules named in the environment variable
`NSTD_ENGINE_PLUGINS` (comma-separated, e.g. `tests.invert_engine`), and a test may `register()` one
directly. The registry itself imports neither torch nor onnxruntime: a plugin imports its engine inside
`create` and `run`, so the bot, the folder and the catalog can ask for keys, labels and model kinds cheaply.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from nst_daemon.errors import NstdError

if TYPE_CHECKING:
    from PIL import Image

    from nst_daemon.config import Settings

BUILTIN_MODULES = (
    "nst_daemon.engines.nst_plugin",
    "nst_daemon.engines.cyclegan_plugin",
    "nst_daemon.engines.adain_plugin",
)
PLUGINS_ENV = "NSTD_ENGINE_PLUGINS"

# progress(fraction) or progress(fraction, preview_jpeg); `detail=` (and `step=`) add a status line for a
# terminal.
EngineProgress = Callable[..., None]


class UnknownEngine(NstdError):
    def __init__(self, key: str) -> None:
        super().__init__(f"unknown engine {key!r}; this nstd has: {', '.join(engine_keys())}")


@dataclass(frozen=True)
class ModelKind:
    """A catalog `kind`: how `nstd models pull/import` checks a checkpoint of it and what the engine loads.

    validate(kind, state_dict) raises NstdError naming the first bad key; export(kind, checkpoint,
    onnx_path) builds the ONNX file and returns the largest difference from PyTorch. Both import torch
    inside. Without `export` the engine loads the checkpoint itself."""

    name: str
    validate: Callable[[str, object], object] | None = None
    export: Callable[[str, Path, Path], float] | None = None
    serves: str = ""  # `models list`'s style column for a model that is not a style itself: "(NST)"


class EngineModel(Protocol):
    """The loaded half of an engine (Immich's InferenceModel): what the runner keeps and unloads."""

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...


@dataclass
class EngineInput:
    """What one run of an engine gets: the decoded images (the content fitted to the working side, the style
    images scaled to its area), the options `EnginePlugin.options` made, progress and cancel."""

    content: Image.Image
    styles: list[Image.Image]
    options: dict[str, Any]
    progress: EngineProgress
    cancel: threading.Event | None = None


@dataclass
class EngineOutput:
    image: Image.Image
    report: dict[str, Any]
    device: str  # what the user is told it ran on
    notes: list[str] = field(default_factory=list)  # worth a line on a terminal ("ran out of GPU memory")


class EnginePlugin:
    """One engine. Subclass it in one module, set the class attributes, implement `create` and `run`."""

    key: ClassVar[str]  # the job's `engine` ("cyclegan"); also its settings section's name, if any
    label: ClassVar[str]  # user-facing ("CycleGAN")
    description: ClassVar[str]  # one line for the bot's help and the docs
    model_kinds: ClassVar[tuple[ModelKind, ...]] = ()
    # True: each style is a catalog model of this engine's kind, chosen by name (CycleGAN); False: the
    # job brings style images (NST, AdaIN).
    pretrained_styles: ClassVar[bool] = False
    # False: the pipeline blends the result with the content for a `strength` below 1 (pipeline.py).
    native_strength: ClassVar[bool] = False
    # False: a cancel cannot stop a run under way (one ONNX Runtime call): the engine process is ended
    # at once rather than waited for (engine_process.py).
    cancel_stops_run: ClassVar[bool] = True
    reports_steps: ClassVar[bool] = False  # True: progress comes with `detail=` and `step=` (a CLI bar)
    default_max_side: ClassVar[int] = 512  # for a plugin without a settings section of its own

    def section(self, settings: Settings) -> Any:
        """`settings.<key>` (device, cpu_threads, max_side), or None for a plugin without one."""
        return getattr(settings, self.key, None)

    def models(self, style: str | None, catalog: dict[str, Any]) -> tuple[str, ...]:
        """The catalog names this job needs; for pretrained styles, the model whose `style` is `style`."""
        if not self.pretrained_styles:  # one model of each kind, in the order the plugin lists them
            names = []
            for kind in self.model_kinds:
                entry = next((entry for entry in catalog.values() if entry.kind == kind.name), None)
                if entry is None:
                    raise NstdError(f"the model catalog has no {kind.name} model, which {self.label} needs")
                names.append(entry.name)
            return tuple(names)
        for entry in catalog.values():
            if entry.style == style and self.owns_kind(entry.kind):
                return (entry.name,)
        from nst_daemon.errors import UnknownStyle

        raise UnknownStyle(style or "", styles_of(catalog, self))

    def owns_kind(self, kind: str) -> bool:
        return any(model_kind.name == kind for model_kind in self.model_kinds)

    def max_side(self, settings: Settings, params: dict[str, Any]) -> int:
        """The longest side of the result: the job's own `max_side`, else the engine's setting."""
        if params.get("max_side"):
            return int(params["max_side"])
        section = self.section(settings)
        return section.max_side if section is not None else self.default_max_side

    def options(self, settings: Settings, params: dict[str, Any], max_side: int) -> dict[str, Any]:
        """Job params -> what `run` takes. The default passes them on with the working size."""
        return {**params, "max_side": max_side}

    def create(self, paths: list[Path], settings: Settings, device: str | None) -> EngineModel:
        raise NotImplementedError

    def run(self, model: Any, given: EngineInput) -> EngineOutput:
        raise NotImplementedError

    def job_label(self, styles: list[str], style_images: int, style_label: str | None = None) -> str:
        """How a job is named to its owner: its style's name, else the engine with its style images."""
        if self.pretrained_styles:
            return style_label or (styles[0] if styles else self.label)
        return f"{self.label} ({style_images} style image{'' if style_images == 1 else 's'})"

    def file_label(self, styles: list[str]) -> str:
        """The word a result file gets (photo.monet.jpg, photo.nst.jpg): the style key, else the engine's."""
        return styles[0] if self.pretrained_styles and styles else self.key


_plugins: dict[str, EnginePlugin] = {}
_loaded = False
_load_lock = threading.RLock()


def register(plugin: EnginePlugin | type[EnginePlugin]) -> EnginePlugin:
    """Add (or replace) an engine; usable as a class decorator. Returns the instance."""
    instance = plugin() if isinstance(plugin, type) else plugin
    _plugins[instance.key] = instance
    return instance


def unregister(key: str) -> None:
    _plugins.pop(key, None)


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        extra = [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]
        for module in (*BUILTIN_MODULES, *extra):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise NstdError(f"engine plugin {module} ({PLUGINS_ENV}) cannot be imported: {exc}") from None
        _loaded = True


def plugins() -> list[EnginePlugin]:
    _ensure_loaded()
    return list(_plugins.values())


def engine_keys() -> list[str]:
    return [plugin.key for plugin in plugins()]


def get(key: str) -> EnginePlugin:
    _ensure_loaded()
    plugin = _plugins.get(key)
    if plugin is None:
        raise UnknownEngine(key)
    return plugin


def image_engines() -> list[EnginePlugin]:
    """The engines that take style images (NST, AdaIN, ...), in registration order."""
    return [plugin for plugin in plugins() if not plugin.pretrained_styles]


def model_kind(kind: str) -> ModelKind | None:
    for plugin in plugins():
        for model in plugin.model_kinds:
            if model.name == kind:
                return model
    return None


def engine_of_kind(kind: str) -> EnginePlugin | None:
    return next((plugin for plugin in plugins() if plugin.owns_kind(kind)), None)


def styles_of(catalog: dict[str, Any], plugin: EnginePlugin | None = None) -> list[str]:
    """The pretrained styles in a catalog, in file order: its entries with a `style`, of an engine that
    takes pretrained styles (or of `plugin`)."""
    styles = []
    for entry in catalog.values():
        owner = engine_of_kind(entry.kind)
        if entry.style and owner is not None and owner.pretrained_styles and plugin in (None, owner):
            styles.append(entry.style)
    return styles


__all__ = [
    "BUILTIN_MODULES",
    "PLUGINS_ENV",
    "EngineInput",
    "EngineModel",
    "EngineOutput",
    "EnginePlugin",
    "EngineProgress",
    "ModelKind",
    "UnknownEngine",
    "engine_keys",
    "engine_of_kind",
    "get",
    "image_engines",
    "model_kind",
    "plugins",
    "register",
    "styles_of",
    "unregister",
]
