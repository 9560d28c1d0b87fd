"""One stylize pipeline, from a job's images to the result, for the daemon's runner and `nstd stylize`.

decode (the content fitted to the engine's working side, each style image scaled to that area) ->
the engine's catalog models -> options from the job's params -> the engine's run -> strength (a blend
with the content for an engine without a native one) -> RunResult. Where the models come from is the
caller's: the runner keeps them loaded between jobs, the CLI loads them for one run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nst_daemon import imaging
from nst_daemon.engines import registry
from nst_daemon.engines.registry import EngineModel, EnginePlugin
from nst_daemon.errors import NstdError
from nst_daemon.job_model import ProgressFn, RunResult
from nst_daemon.strength import blend_with_content, check_strength

if TYPE_CHECKING:
    from PIL import Image

    from nst_daemon.config import Settings

# A stored image (bytes, as a job holds it) or a file the user named (the CLI's).
ImageSource = bytes | Path
# (plugin, catalog names) -> the engine's loaded model.
ModelProvider = Callable[[EnginePlugin, tuple[str, ...]], EngineModel]


@dataclass
class StylizeRequest:
    engine: str
    content: ImageSource
    style_images: list[ImageSource] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)  # a pretrained style: [its key]
    params: dict[str, Any] = field(default_factory=dict)
    # A named style's stored images are named after it in an error ("style cubist image 2: ...").
    style_label: str | None = None


def decode_inputs(
    images: list[ImageSource], settings: Settings, *, max_side: int | None = None, label: str | None = None
) -> list[Image.Image]:
    """A job's images (the content, then the styles), decoded; an error names the image at fault.

    With `max_side`, the engine's: engines fit the content within it and NST and AdaIN scale each style
    to the fitted content's area, so a large JPEG decodes no larger than that needs (`imaging.load_image`'s
    `final_size`). Without it, every image decodes in full."""
    limits = settings.images.limits
    if max_side is None:
        return [_decode(source, index, limits, None, label) for index, source in enumerate(images)]
    content_source, *style_sources = images
    content = _decode(content_source, 0, limits, imaging.fit_rule(max_side), label)
    to_area = imaging.same_area_rule(imaging.fitted_size(content.size, max_side))
    styles = [
        _decode(source, index, limits, to_area, label) for index, source in enumerate(style_sources, start=1)
    ]
    return [content, *styles]


def _decode(source: ImageSource, index: int, limits: dict, final_size: Any, label: str | None) -> Image.Image:
    if isinstance(source, Path):
        return imaging.load_image_file(source, **limits, final_size=final_size)
    if label is not None and index > 0:
        try:
            return imaging.load_image(source, **limits, final_size=final_size)
        except imaging.ImageError as exc:
            raise NstdError(f"style {label} image {index}: {exc.message}") from None
    return imaging.load_job_image(source, index, **limits, final_size=final_size)


def installed_paths(settings: Settings, plugin: EnginePlugin, names: tuple[str, ...]) -> list[Path]:
    """The runnable files of `names`; one line naming every missing one (ModelNotInstalled for one)."""
    from nst_daemon.manifest import read_manifest, runnable_path

    models_dir = settings.paths.models_dir
    installed = read_manifest(models_dir)
    missing = [name for name in names if name not in installed]
    if len(missing) > 1:
        raise NstdError(
            f"models {' and '.join(missing)} are not installed: run `nstd models pull {' '.join(missing)}` "
            f"({plugin.label} needs {'all' if len(names) > 2 else 'both'})"
        )
    return [runnable_path(models_dir, name) for name in names]


def catalog_models(settings: Settings, plugin: EnginePlugin, styles: list[str]) -> tuple[str, ...]:
    """The catalog names a job of `plugin` needs (its style's model for a pretrained style)."""
    from nst_daemon.style_catalog import current_catalog  # imports the catalog file's reader

    return plugin.models(styles[0] if styles else None, current_catalog(settings))


def stylize(
    settings: Settings,
    request: StylizeRequest,
    models: ModelProvider,
    progress: ProgressFn,
    cancel: threading.Event | None = None,
    on_detail: Callable[..., None] | None = None,
) -> tuple[RunResult, registry.EngineOutput]:
    """Run one request; `on_detail(text, step=N)` gets an engine's status (NST's scale and step) for a
    terminal."""
    plugin = registry.get(request.engine)
    params = request.params
    strength = params.get("strength")
    if strength is not None:
        check_strength(strength)
    max_side = plugin.max_side(settings, params)
    # The inputs first: a bad image should not send the user to pull a model before saying so.
    content, *styles = decode_inputs(
        [request.content, *request.style_images], settings, max_side=max_side, label=request.style_label
    )
    names = catalog_models(settings, plugin, request.styles)
    model = models(plugin, names)
    options = plugin.options(settings, params, max_side)
    reported = [0.0]  # the latest fraction: the end is reported once, by the engine or below

    def forward(
        fraction: float, preview: bytes | None = None, *, detail: str | None = None, **more: Any
    ) -> None:
        if on_detail is not None and detail is not None:
            on_detail(detail, **more)
        reported[0] = fraction
        if preview is None:
            progress(fraction)
        else:
            progress(fraction, preview)

    output = plugin.run(model, registry.EngineInput(content, styles, options, forward, cancel))
    image = output.image
    if strength is not None and not plugin.native_strength:
        image = blend_with_content(content, image, float(strength))
        output.report["strength"] = float(strength)
    if reported[0] < 1.0:
        progress(1.0)
    report = {"engine": plugin.key, "model": "+".join(names), **output.report, "size": list(image.size)}
    output.image = image
    return RunResult(image, report), output
