"""`nstd stylize`: one image through a pretrained CycleGAN style, or through style images with instant AdaIN
or multi-style NST, from the command line.

torch and onnxruntime are imported only once a run is certain to happen, so argument and model errors
come back at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from nst_daemon import imaging, named_styles, style_catalog
from nst_daemon.config import Settings
from nst_daemon.engines.adain import MODELS as ADAIN_MODELS
from nst_daemon.engines.registry import EngineModel, EngineOutput, EnginePlugin
from nst_daemon.engines.registry import get as get_engine
from nst_daemon.errors import ModelNotInstalled, NstdError, UnknownStyle
from nst_daemon.job_model import RunResult
from nst_daemon.manifest import runnable_path
from nst_daemon.output_file import check_output, resolve_output, write_output
from nst_daemon.pipeline import StylizeRequest, installed_paths, stylize
from nst_daemon.strength import check_strength
from nst_daemon.style_names import normalize_style

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console
    from rich.progress import Progress


def run(
    settings: Settings,
    input: Path,
    output: Path,
    *,
    style: str | None,
    style_images: list[Path],
    preset: str | None,
    max_side: int | None,
    device: str | None,
    preserve_colors: bool,
    console: Console,
    force: bool = False,
    progress_console: Console | None = None,
    engine: str | None = None,
    strength: float | None = None,
    style_weights: list[float] | None = None,
) -> None:
    """`progress_console` (stderr) shows a progress bar or a spinner, only when it is a terminal: stdout
    keeps its plain lines, the last of which is `wrote PATH (W×H) in S s on DEVICE`.

    Style images go to `engine` (adain | nst | another image engine; default: `default_engine`).
    `strength` (0..1): AdaIN's α, a blend with the content for the others; `style_weights`, one per style
    image, are normalised to sum to 1. The run itself is the daemon's pipeline (pipeline.stylize)."""
    from nst_daemon.engines.adain import normalized_weights

    if (style is None) == (not style_images):
        raise NstdError("give exactly one of --style STYLE or --style-image PATH (repeatable)")
    key = normalize_style(style) if style is not None else None
    pretrained = style_catalog.pretrained_styles(settings)
    # The style images: the files given, or a named style's images from the object store.
    sources: list[Path | bytes] = list(style_images)
    label = None
    if key is not None and key not in pretrained:
        named = named_styles.find(settings, key)
        if named is None:
            raise UnknownStyle(style or "", [*pretrained, *_named_names(settings)])
        for given, option in ((engine, "--engine"), (style_weights, "--style-weight")):
            if given is not None:
                raise NstdError(f"{option} does not apply to {key}: a named style has its own")
        engine, style_weights, label = named.engine, named.weights, named.name
        strength = strength if strength is not None else named.strength
        from nst_daemon.store import open_store

        sources = list(named_styles.load_images(settings, open_store(settings), named))
        key = None
    elif key is not None:
        for given, option in ((engine, "--engine"), (style_weights, "--style-weight")):
            if given is not None:
                raise NstdError(f"{option} applies to --style-image only; {key} is a pretrained style")
        if preserve_colors:
            raise NstdError("--preserve-colors applies to --style-image only (NST and AdaIN)")
        engine = pretrained[key].engine
    if key is None:
        chosen = engine is None and _both_installed(settings)  # the machine decided: say which and why
        engine = engine or default_engine(settings, device)
        if style_weights is not None:
            normalized_weights(style_weights, len(sources))
        if chosen and label is None:
            console.print(f"engine: {engine} ({_ENGINE_NOTES[engine]})", style="dim", highlight=False)
    if strength is not None:
        check_strength(strength)
    assert engine is not None
    output = resolve_output(output, _default_name(input, key or label or engine))
    output_format = imaging.format_for_path(output)
    check_output(output, inputs=[input, *style_images], force=force)
    if preset is not None and engine != "nst":
        what = f"{key} is a pretrained style" if key else "AdaIN is a single pass"
        console.print(f"note: --preset applies to NST only; {what}", style="dim")
        preset = None
    options = {
        "preset": preset or (settings.nst.preset if engine == "nst" else None),
        "max_side": max_side,
        "preserve_colors": preserve_colors or None,
        "strength": strength,
        "style_weights": style_weights,
    }
    params = {name: value for name, value in options.items() if value is not None}
    request = StylizeRequest(engine, input, sources, [key] if key else [], params, style_label=label)
    shown = progress_console if progress_console is not None and progress_console.is_terminal else None

    started = time.perf_counter()
    result, output_ = _run(settings, request, device, console, shown)
    image = result.image
    assert image is not None
    write_output(output, imaging.encode_image(image, output_format), force=force)
    elapsed = time.perf_counter() - started
    width, height = image.size
    console.print(
        f"wrote {output} ({width}×{height}) in {elapsed:.1f} s on {output_.device}", highlight=False
    )


def _run(
    settings: Settings, request: StylizeRequest, device: str | None, console: Console, shown: Console | None
) -> tuple[RunResult, EngineOutput]:
    """The pipeline with the models loaded for this one run, behind a bar (NST) or a spinner."""
    loaded: list[EngineModel] = []

    plugin = get_engine(request.engine)
    stepped = plugin.reports_steps
    display = nst_progress(shown) if stepped else cyclegan_spinner(shown)

    def models(plugin: EnginePlugin, names: tuple[str, ...]) -> EngineModel:
        model = plugin.create(installed_paths(settings, plugin, names), settings, device)
        model.load()
        loaded.append(model)
        device_name = getattr(model, "device_name", device)
        if stepped:
            side = plugin.max_side(settings, request.params)
            console.print(
                f"{plugin.key.upper()} on {device_name}: {len(request.style_images)} style image(s), "
                f"preset {request.params.get('preset')}, up to {side} px",
                highlight=False,
            )
        else:
            display.update(task, description=f"stylizing on {getattr(model, 'provider', device_name)}")
        return model

    with display as bar:
        task = bar.add_task(
            "stylizing" if stepped else "loading the model", total=1.0 if stepped else None, step=0
        )

        def progress(fraction: float, preview: bytes | None = None) -> None:
            if stepped:
                bar.update(task, completed=min(fraction, 1.0))

        def detail(line: str, step: int = 0) -> None:
            bar.update(task, description=line, step=step)

        try:
            result, output = stylize(settings, request, models, progress, None, detail)
        finally:
            for model in loaded:
                model.unload()
    for note in output.notes:
        console.print(f"note: {note}")
    return result, output


def _named_names(settings: Settings) -> list[str]:
    from nst_daemon import db

    if not settings.db_path.exists():
        return []
    return [style.name for style in named_styles.list_styles(db.connect(settings.db_path))]


_ENGINE_NOTES = {
    "adain": "instant; --engine nst for the slower, finer Gatys NST",
    "nst": "Gatys NST; --engine adain for an instant result",
}


def default_engine(settings: Settings, device: str | None) -> str:
    """The engine for style images when none is given: the one installed when only one is, else AdaIN on
    a CPU-only machine (NST takes minutes there) and NST where a GPU is."""
    from nst_daemon.engines import NST_BACKBONE
    from nst_daemon.engines.ort_session import nvidia_driver_present

    models_dir = settings.paths.models_dir
    adain = all(_installed(models_dir, name) for name in ADAIN_MODELS)
    nst = _installed(models_dir, NST_BACKBONE)
    if adain != nst:
        return "adain" if adain else "nst"
    gpu = (device or settings.nst.device) != "cpu" and nvidia_driver_present()
    return "nst" if gpu else "adain"


def _both_installed(settings: Settings) -> bool:
    from nst_daemon.engines import NST_BACKBONE

    return all(_installed(settings.paths.models_dir, name) for name in (*ADAIN_MODELS, NST_BACKBONE))


def _installed(models_dir: Path, name: str) -> bool:
    try:
        runnable_path(models_dir, name)
    except ModelNotInstalled:
        return False
    return True


def _default_name(input: Path, label: str) -> str:
    """The file `-o FOLDER` gets: photo.jpg -> photo.monet.jpg (a PNG stays a PNG, all else is a JPEG)."""
    suffix = input.suffix.lower() if input.suffix.lower() in (".jpg", ".jpeg", ".png") else ".jpg"
    return f"{input.stem}.{label}{suffix}"


def nst_progress(shown: Console | None, get_time: Callable[[], float] | None = None) -> Progress:
    """NST's bar: scale, fraction, step and the estimated time left (from the speed so far).

    On `shown` (stderr) only when it is a terminal, else disabled: a pipe or a log gets the plain lines on
    stdout and nothing between them. `get_time` is rich's clock, replaceable for a test."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("step {task.fields[step]}, left"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=shown, transient=True, disable=shown is None, get_time=get_time)


def cyclegan_spinner(shown: Console | None, get_time: Callable[[], float] | None = None) -> Progress:
    """One pass of a CycleGAN generator reports no steps: a spinner with the elapsed time says it works."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    return Progress(*columns, console=shown, transient=True, disable=shown is None, get_time=get_time)
