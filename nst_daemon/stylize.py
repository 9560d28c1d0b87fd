"""`nstd stylize`: one image through a pretrained CycleGAN style or multi-style NST, from the command line.

torch and onnxruntime are imported only once a run is certain to happen, so argument and model errors
come back at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from nst_daemon.config import CYCLEGAN_STYLES, Settings
from nst_daemon.errors import NstdError, UnknownStyle
from nst_daemon.fsutil import write_atomic
from nst_daemon.manifest import runnable_path

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console


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
) -> None:
    from nst_daemon import imaging
    from nst_daemon.engines import NST_BACKBONE, STYLE_MODELS

    if (style is None) == (not style_images):
        raise NstdError("give exactly one of --style STYLE or --style-image PATH (repeatable)")
    output_format = imaging.format_for_path(output)
    _check_output_dir(output)
    models_dir = settings.paths.models_dir
    limits = settings.images.limits

    started = time.perf_counter()
    if style is not None:
        key = style.strip().lower()
        if key not in STYLE_MODELS:
            raise UnknownStyle(style, CYCLEGAN_STYLES)
        if preserve_colors:
            raise NstdError("--preserve-colors applies to NST (--style-image) only")
        side = max_side or settings.cyclegan.max_side
        # The inputs first: a mistyped path should not send the user to pull a model before saying so.
        # A large photo decodes no larger than the engine's fit needs (see runner.decode_inputs).
        content = imaging.load_image_file(input, **limits, final_size=imaging.fit_rule(side))
        model = runnable_path(models_dir, STYLE_MODELS[key])
        if preset is not None:
            console.print(f"note: --preset applies to NST only; {key} is a pretrained style", style="dim")
        result, used = _cyclegan(
            model, content, side, device or settings.cyclegan.device, settings.cyclegan.cpu_threads
        )
    else:
        side = max_side or settings.nst.max_side
        content = imaging.load_image_file(input, **limits, final_size=imaging.fit_rule(side))
        to_area = imaging.same_area_rule(imaging.fitted_size(content.size, side))
        styles = [imaging.load_image_file(path, **limits, final_size=to_area) for path in style_images]
        model = runnable_path(models_dir, NST_BACKBONE)
        result, used = _nst(settings, model, content, styles, preset, side, device, preserve_colors, console)

    _write(output, imaging.encode_image(result, output_format))
    elapsed = time.perf_counter() - started
    width, height = result.size
    console.print(f"wrote {output} ({width}×{height}) in {elapsed:.1f} s on {used}", highlight=False)


def _cyclegan(
    model: Path, content: Image.Image, max_side: int, device: str, cpu_threads: int
) -> tuple[Image.Image, str]:
    from nst_daemon.engines.cyclegan import CycleGANEngine

    engine = CycleGANEngine(model, device=device, cpu_threads=cpu_threads)
    engine.load()
    try:
        return engine.stylize(content, max_side=max_side), engine.provider
    finally:
        engine.unload()


def _nst(
    settings: Settings,
    model: Path,
    content: Image.Image,
    styles: list[Image.Image],
    preset: str | None,
    max_side: int | None,
    device: str | None,
    preserve_colors: bool,
    console: Console,
) -> tuple[Image.Image, str]:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from nst_daemon.engines.nst import NSTEngine, NSTOptions, NSTProgress

    options = NSTOptions.from_preset(
        preset or settings.nst.preset,
        max_side=max_side or settings.nst.max_side,
        optimizer=settings.nst.optimizer,
        seed=settings.nst.seed,
        preserve_colors=preserve_colors,
    )
    engine = NSTEngine(model, device=device or settings.nst.device, cpu_threads=settings.nst.cpu_threads)
    engine.load()
    console.print(
        f"NST on {engine.device_name}: {len(styles)} style image(s), preset {preset or settings.nst.preset}"
    )
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("step {task.fields[step]}  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("stylizing", total=1.0, step=0, loss="-")

        def report(progress: NSTProgress) -> None:
            width, height = progress.size
            bar.update(
                task,
                completed=progress.fraction,
                step=progress.step,
                loss=f"{progress.loss:.4g}",
                description=f"scale {progress.scale + 1}/{progress.scales} {width}×{height}",
            )

        try:
            result = engine.stylize(content, styles, options=options, progress=report)
        finally:
            engine.unload()
    if result.oom_retries:
        console.print(f"note: ran out of GPU memory {result.oom_retries} time(s); worked at a smaller size")
    return result.image, result.device


def _check_output_dir(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise NstdError(f"cannot write {output}: directory {parent} does not exist")
    if output.is_dir():
        raise NstdError(f"cannot write {output}: it is a directory")


def _write(output: Path, data: bytes) -> None:
    try:
        write_atomic(output, data)
    except OSError as exc:
        raise NstdError(f"cannot write {output}: {exc.strerror or exc}") from None
