"""`nstd stylize`: one image through a pretrained CycleGAN style, or through style images with instant AdaIN
or multi-style NST, from the command line.

torch and onnxruntime are imported only once a run is certain to happen, so argument and model errors
come back at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from nst_daemon import imaging, named_styles
from nst_daemon.config import CYCLEGAN_STYLES, Settings
from nst_daemon.engines.adain import MODELS as ADAIN_MODELS
from nst_daemon.engines.presets import working_side
from nst_daemon.errors import ModelNotInstalled, NstdError, UnknownStyle
from nst_daemon.manifest import runnable_path
from nst_daemon.output_file import check_output, resolve_output, write_output
from nst_daemon.style_names import normalize_style

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image
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

    Style images go to `engine` (adain | nst; default: `default_engine`). `strength` (0..1) is AdaIN's α;
    `style_weights`, one per style image, are normalised to sum to 1."""
    from nst_daemon.engines import NST_BACKBONE, STYLE_MODELS
    from nst_daemon.engines.adain import check_strength, normalized_weights

    if (style is None) == (not style_images):
        raise NstdError("give exactly one of --style STYLE or --style-image PATH (repeatable)")
    key = normalize_style(style) if style is not None else None
    # The style images: the files given, or a named style's images from the object store.
    sources: list[Path | bytes] = list(style_images)
    label = None
    if key is not None and key not in STYLE_MODELS:
        named = named_styles.find(settings, key)
        if named is None:
            raise UnknownStyle(style or "", [*CYCLEGAN_STYLES, *_named_names(settings)])
        for given, option in ((engine, "--engine"), (style_weights, "--style-weight")):
            if given is not None:
                raise NstdError(f"{option} does not apply to {key}: a named style has its own")
        if strength is not None and named.engine != "adain":
            raise NstdError(f"--strength applies to AdaIN styles only; {key} uses NST")
        engine, style_weights, label = named.engine, named.weights, named.name
        strength = strength if strength is not None else named.strength
        from nst_daemon.store import open_store

        sources = list(named_styles.load_images(settings, open_store(settings), named))
        key = None
    elif key is not None:
        for given, option in (
            (engine, "--engine"),
            (strength, "--strength"),
            (style_weights, "--style-weight"),
        ):
            if given is not None:
                raise NstdError(f"{option} applies to --style-image only; {key} is a pretrained style")
    if key is None:
        chosen = engine is None and _both_installed(settings)  # the machine decided: say which and why
        engine = engine or default_engine(settings, device)
        if strength is not None:
            check_strength(strength)
            if engine != "adain":
                # NST and CycleGAN have no strength yet (a blend with the content comes in a later round).
                raise NstdError("--strength applies to --engine adain only")
        if style_weights is not None:
            normalized_weights(style_weights, len(sources))
        if chosen and label is None:
            console.print(f"engine: {engine} ({_ENGINE_NOTES[engine]})", style="dim", highlight=False)
    output = resolve_output(output, _default_name(input, key or label or engine or "nst"))
    output_format = imaging.format_for_path(output)
    check_output(output, inputs=[input, *style_images], force=force)
    models_dir = settings.paths.models_dir
    limits = settings.images.limits
    shown = progress_console if progress_console is not None and progress_console.is_terminal else None

    started = time.perf_counter()
    if key is not None:
        if preserve_colors:
            raise NstdError("--preserve-colors applies to --style-image only (NST and AdaIN)")
        side = working_side(settings, "cyclegan", explicit=max_side)
        # The inputs first: a mistyped path should not send the user to pull a model before saying so.
        # A large photo decodes no larger than the engine's fit needs (see runner.decode_inputs).
        content = imaging.load_image_file(input, **limits, final_size=imaging.fit_rule(side))
        model = runnable_path(models_dir, STYLE_MODELS[key])
        if preset is not None:
            console.print(f"note: --preset applies to NST only; {key} is a pretrained style", style="dim")
        result, used = _cyclegan(
            model, content, side, device or settings.cyclegan.device, settings.cyclegan.cpu_threads, shown
        )
    elif engine == "adain":
        if preset is not None:
            console.print("note: --preset applies to NST only; AdaIN is a single pass", style="dim")
        side = working_side(settings, "adain", explicit=max_side)
        content = imaging.load_image_file(input, **limits, final_size=imaging.fit_rule(side))
        to_area = imaging.same_area_rule(imaging.fitted_size(content.size, side))
        styles = _load_styles(sources, limits, to_area, label)
        missing = [name for name in ADAIN_MODELS if not _installed(models_dir, name)]
        if len(missing) > 1:
            raise NstdError(
                f"models {' and '.join(missing)} are not installed: run "
                f"`nstd models pull {' '.join(missing)}` (AdaIN needs both; --engine nst uses vgg19)"
            )
        models = [runnable_path(models_dir, name) for name in ADAIN_MODELS]  # names the one missing
        result, used = _adain(
            settings, models, content, styles, style_weights, strength, side, device, preserve_colors, shown
        )
    else:
        preset = preset or settings.nst.preset
        side = working_side(settings, "nst", preset=preset, explicit=max_side)
        content = imaging.load_image_file(input, **limits, final_size=imaging.fit_rule(side))
        to_area = imaging.same_area_rule(imaging.fitted_size(content.size, side))
        styles = _load_styles(sources, limits, to_area, label)
        model = runnable_path(models_dir, NST_BACKBONE)
        result, used = _nst(
            settings,
            model,
            content,
            styles,
            preset,
            side,
            device,
            preserve_colors,
            console,
            shown,
            style_weights,
        )

    write_output(output, imaging.encode_image(result, output_format), force=force)
    elapsed = time.perf_counter() - started
    width, height = result.size
    console.print(f"wrote {output} ({width}×{height}) in {elapsed:.1f} s on {used}", highlight=False)


def _load_styles(
    sources: list[Path | bytes], limits: dict, to_area: imaging.SizeRule, label: str | None
) -> list[Image.Image]:
    """Style files, or a named style's stored images (an error names the style and the image)."""
    styles = []
    for index, source in enumerate(sources, start=1):
        if isinstance(source, Path):
            styles.append(imaging.load_image_file(source, **limits, final_size=to_area))
            continue
        try:
            styles.append(imaging.load_image(source, **limits, final_size=to_area))
        except imaging.ImageError as exc:
            raise NstdError(f"style {label} image {index}: {exc.message}") from None
    return styles


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


def _adain(
    settings: Settings,
    models: list[Path],
    content: Image.Image,
    styles: list[Image.Image],
    weights: list[float] | None,
    strength: float | None,
    max_side: int,
    device: str | None,
    preserve_colors: bool,
    shown: Console | None,
) -> tuple[Image.Image, str]:
    from nst_daemon.engines.adain import AdaINEngine

    engine = AdaINEngine(
        *models, device=device or settings.adain.device, cpu_threads=settings.adain.cpu_threads
    )
    with cyclegan_spinner(shown) as spinner:
        spinner.add_task("loading the model", total=None)
        engine.load()
        try:
            spinner.update(spinner.task_ids[0], description=f"stylizing on {engine.provider}")
            image = engine.stylize(
                content,
                styles,
                weights=weights,
                strength=1.0 if strength is None else strength,
                preserve_colors=preserve_colors,
                max_side=max_side,
            )
            return image, engine.provider
        finally:
            engine.unload()


def _default_name(input: Path, label: str) -> str:
    """The file `-o FOLDER` gets: photo.jpg -> photo.monet.jpg (a PNG stays a PNG, all else is a JPEG)."""
    suffix = input.suffix.lower() if input.suffix.lower() in (".jpg", ".jpeg", ".png") else ".jpg"
    return f"{input.stem}.{label}{suffix}"


def _cyclegan(
    model: Path, content: Image.Image, max_side: int, device: str, cpu_threads: int, shown: Console | None
) -> tuple[Image.Image, str]:
    from nst_daemon.engines.cyclegan import CycleGANEngine

    engine = CycleGANEngine(model, device=device, cpu_threads=cpu_threads)
    with cyclegan_spinner(shown) as spinner:
        spinner.add_task("loading the model", total=None)
        engine.load()
        try:
            spinner.update(spinner.task_ids[0], description=f"stylizing on {engine.provider}")
            return engine.stylize(content, max_side=max_side), engine.provider
        finally:
            engine.unload()


def _nst(
    settings: Settings,
    model: Path,
    content: Image.Image,
    styles: list[Image.Image],
    preset: str,
    max_side: int,
    device: str | None,
    preserve_colors: bool,
    console: Console,
    shown: Console | None,
    weights: list[float] | None = None,
) -> tuple[Image.Image, str]:
    from nst_daemon.engines.nst import NSTEngine, NSTOptions, NSTProgress

    options = NSTOptions.from_preset(
        preset,
        max_side=max_side,
        optimizer=settings.nst.optimizer,
        seed=settings.nst.seed,
        preserve_colors=preserve_colors,
    )
    engine = NSTEngine(model, device=device or settings.nst.device, cpu_threads=settings.nst.cpu_threads)
    engine.load()
    console.print(
        f"NST on {engine.device_name}: {len(styles)} style image(s), preset {preset}, up to {max_side} px",
        highlight=False,
    )
    with nst_progress(shown) as bar:
        task = bar.add_task("stylizing", total=1.0, step=0)

        def report(progress: NSTProgress) -> None:
            width, height = progress.size
            bar.update(
                task,
                completed=progress.fraction,
                step=progress.step,
                description=f"scale {progress.scale + 1}/{progress.scales} {width}×{height}",
            )

        try:
            result = engine.stylize(content, styles, weights=weights, options=options, progress=report)
        finally:
            engine.unload()
    if result.oom_retries:
        console.print(f"note: ran out of GPU memory {result.oom_retries} time(s); worked at a smaller size")
    return result.image, result.device


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
