"""`nstd stylize` end to end, as a user runs it: the console script in a subprocess (one test calls it in
this process instead, to see what it decodes)."""

from __future__ import annotations

import contextlib
import io
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from checkpoints import random_image
from engine_stubs import record_engine_runs
from PIL import Image

NSTD = str(Path(sys.executable).parent / "nstd")


def write_config(path: Path, models_dir: Path, state_dir: Path) -> Path:
    path.write_text(
        f"""
[paths]
models_dir = "{models_dir}"
state_dir = "{state_dir}"

[nst]
preset = "fast"
max_side = 64
device = "cpu"
# One thread: on 32-pixel images OpenMP's fork-join costs more than a second core gains.
cpu_threads = 1

[cyclegan]
max_side = 64
device = "cpu"
cpu_threads = 1
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def config(tmp_path: Path, installed_models_dir: Path) -> Path:
    return write_config(tmp_path / "config.toml", installed_models_dir, tmp_path / "state")


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    random_image((80, 60), seed=11).save(path, quality=95)
    return path


def nstd(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    # As from a script or CI: stdout is a pipe and no COLUMNS says how wide to be.
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [NSTD, "--config", str(config), "stylize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


WROTE = re.compile(r"wrote (?P<path>.+) \((?P<width>\d+)×(?P<height>\d+)\) in [\d.]+ s on (?P<device>.+)")


def wrote_line(result: subprocess.CompletedProcess[str]) -> re.Match[str]:
    """The machine-readable last line of stdout, whole: it must never be wrapped or cut."""
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.rstrip("\n").splitlines()[-1]
    match = WROTE.fullmatch(last)
    assert match, result.stdout
    return match


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def test_cyclegan_style(config: Path, photo: Path, tmp_path: Path) -> None:
    output = tmp_path / "monet.png"
    wrote = wrote_line(nstd(config, photo, "-o", output, "--style", "Monet"))
    assert (wrote["path"], wrote["width"], wrote["height"]) == (str(output), "64", "48")
    assert wrote["device"] == "CPUExecutionProvider"
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (64, 48)


def test_the_last_line_never_wraps_however_long_the_path(config: Path, photo: Path, tmp_path: Path) -> None:
    # rich used to wrap at 80 columns when stdout was not a terminal: a long temp path split this line.
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / ("and-another-one-" * 5)
    deep.mkdir(parents=True)
    output = deep / "monet-with-a-long-file-name-too.png"
    assert len(f"wrote {output} (64×48) in 1.0 s on CPUExecutionProvider") > 200
    wrote = wrote_line(nstd(config, photo, "-o", output, "--style", "monet"))
    assert wrote["path"] == str(output)


@pytest.mark.parametrize("spelling", ["Van-Gogh", "van gogh", "VANGOGH", "Van_Gogh"])
def test_style_names_are_normalised_like_the_bot_does(
    config: Path, photo: Path, tmp_path: Path, spelling: str
) -> None:
    output = tmp_path / "out.jpg"
    wrote = wrote_line(nstd(config, photo, "-o", output, "--style", spelling))
    assert wrote["path"] == str(output)


def test_two_style_nst(config: Path, photo: Path, tmp_path: Path) -> None:
    styles = []
    for seed, size in ((12, (40, 40)), (13, (30, 50))):
        path = tmp_path / f"style{seed}.png"
        random_image(size, seed=seed).save(path)
        styles.append(path)
    output = tmp_path / "out.jpg"
    result = nstd(
        config, photo, "-o", output, "--style-image", styles[0], "--style-image", styles[1],
        "--preset", "fast", "--max-side", "32", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with Image.open(output) as image:
        assert image.format == "JPEG" and image.size == (32, 24)
    assert wrote_line(result)["device"] == "cpu (1 thread)"  # nst.cpu_threads
    # stdout is a pipe: no progress bar between the plain lines.
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("NST on cpu (1 thread): 2 style image(s), preset fast"), (
        lines
    )


def test_unknown_style(config: Path, photo: Path, tmp_path: Path) -> None:
    line = one_error_line(nstd(config, photo, "-o", tmp_path / "x.jpg", "--style", "picasso"))
    assert "unknown style 'picasso'" in line and "monet" in line


def test_missing_model(tmp_path: Path, photo: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    config = write_config(tmp_path / "empty.toml", empty, tmp_path / "state")
    line = one_error_line(nstd(config, photo, "-o", tmp_path / "x.jpg", "--style", "vangogh"))
    assert "nstd models pull style_vangogh" in line
    line = one_error_line(
        nstd(config, photo, "-o", tmp_path / "x.jpg", "--style-image", photo, "--engine", "nst")
    )
    assert "nstd models pull vgg19" in line
    # Nothing installed on a machine without a GPU: the default engine is AdaIN, which needs two models.
    line = one_error_line(
        nstd(config, photo, "-o", tmp_path / "x.jpg", "--style-image", photo, "--device", "cpu")
    )
    assert "run `nstd models pull adain_vgg adain_decoder`" in line
    # A mistyped input is reported before the missing model: pulling one would not have helped.
    line = one_error_line(nstd(config, tmp_path / "typo.jpg", "-o", tmp_path / "x.jpg", "--style", "vangogh"))
    assert "typo.jpg: no such file" in line
    line = one_error_line(
        nstd(config, photo, "-o", tmp_path / "x.jpg", "--style-image", tmp_path / "typo.png")
    )
    assert "typo.png: no such file" in line


def test_bad_image(config: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not an image", encoding="utf-8")
    line = one_error_line(nstd(config, bogus, "-o", tmp_path / "x.jpg", "--style", "cezanne"))
    assert "notes.jpg" in line and "not an image" in line


def test_bad_style_image(config: Path, photo: Path, tmp_path: Path) -> None:
    line = one_error_line(
        nstd(config, photo, "-o", tmp_path / "x.jpg", "--style-image", tmp_path / "absent.png")
    )
    assert "absent.png" in line
    # A broken style image (cut short) is named too, not only described.
    good = tmp_path / "good.png"
    random_image((40, 40), seed=3).save(good)
    broken = tmp_path / "broken-style.jpg"
    broken.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    line = one_error_line(
        nstd(config, photo, "-o", tmp_path / "x.jpg", "--style-image", good, "--style-image", broken)
    )
    assert line == f"error: {broken}: this image is damaged or incomplete"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--style", "monet", "--style-image", "s.png"), "exactly one of"),
        ((), "exactly one of"),
        (("--style", "monet", "--preserve-colors"), "--preserve-colors"),
    ],
)
def test_argument_errors(
    config: Path, photo: Path, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    line = one_error_line(nstd(config, photo, "-o", tmp_path / "x.jpg", *args))
    assert expected in line


def test_output_problems(config: Path, photo: Path, tmp_path: Path) -> None:
    line = one_error_line(nstd(config, photo, "-o", tmp_path / "missing-dir" / "x.jpg", "--style", "monet"))
    assert "cannot write" in line and "missing-dir" in line
    line = one_error_line(nstd(config, photo, "-o", tmp_path / "x.gif", "--style", "monet"))
    assert ".jpg" in line and "x.gif" in line


def test_the_output_is_never_the_input(config: Path, photo: Path, tmp_path: Path) -> None:
    original = photo.read_bytes()
    (tmp_path / "link.jpg").symlink_to(photo)
    os.link(photo, tmp_path / "hard.jpg")
    for output in (photo, tmp_path / "link.jpg", tmp_path / "hard.jpg"):
        for force in ((), ("--force",)):  # not even with --force
            line = one_error_line(nstd(config, photo, "-o", output, "--style", "monet", *force))
            assert (
                line
                == f"error: refusing to write {output}: it is the input {photo}; choose another output file"
            )
    # A style image is an input too.
    style = tmp_path / "style.png"
    random_image((40, 40), seed=4).save(style)
    line = one_error_line(nstd(config, photo, "-o", style, "--style-image", style, "--force"))
    assert f"it is the input {style}" in line
    assert photo.read_bytes() == original
    assert (tmp_path / "link.jpg").resolve() == photo and (tmp_path / "hard.jpg").read_bytes() == original


def test_an_existing_file_is_replaced_only_with_force(config: Path, photo: Path, tmp_path: Path) -> None:
    output = tmp_path / "mine.jpg"
    output.write_bytes(b"the user's own file")
    line = one_error_line(nstd(config, photo, "-o", output, "--style", "monet"))
    assert line == f"error: {output} already exists; choose another output file or add --force to replace it"
    assert output.read_bytes() == b"the user's own file"
    # A dangling symlink is a name that is taken too: writing through it would create a file elsewhere.
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    assert "dangling.jpg already exists" in one_error_line(
        nstd(config, photo, "-o", dangling, "--style", "monet")
    )
    assert not (tmp_path / "nowhere.jpg").exists()

    assert wrote_line(nstd(config, photo, "-o", output, "--style", "monet", "--force"))["path"] == str(output)
    with Image.open(output) as image:
        assert image.size == (64, 48)


def test_an_output_folder_gets_a_file_named_after_the_input_and_style(
    config: Path, photo: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    wrote = wrote_line(nstd(config, photo, "-o", folder, "--style", "Van Gogh"))
    assert wrote["path"] == str(folder / "photo.vangogh.jpg")
    with Image.open(folder / "photo.vangogh.jpg") as image:
        assert image.format == "JPEG"
    # The derived name follows the same rule: it exists now.
    line = one_error_line(nstd(config, photo, "-o", folder, "--style", "vangogh"))
    assert line.startswith(f"error: {folder / 'photo.vangogh.jpg'} already exists")
    # A folder that does not exist is not taken for a file without an extension.
    line = one_error_line(nstd(config, photo, "-o", f"{tmp_path / 'no-such-folder'}/", "--style", "monet"))
    assert line == (
        f"error: cannot write {tmp_path / 'no-such-folder'}: there is no folder of that name, and an output "
        "file needs a .jpg, .jpeg or .png extension"
    )
    # A folder named like an image file is still a folder: the result goes in it.
    (tmp_path / "taken.png").mkdir()
    wrote = wrote_line(nstd(config, photo, "-o", tmp_path / "taken.png", "--style", "monet"))
    assert wrote["path"] == str(tmp_path / "taken.png" / "photo.monet.jpg")


def test_stylize_module_does_not_import_torch() -> None:
    code = "import sys, nst_daemon.stylize, nst_daemon.engines; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_large_photo_decodes_no_larger_than_the_engine_needs(
    config: Path, tmp_path: Path, decoded_sizes: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process, to see what was decoded: the speed and the memory are the point, not the output.
    from rich.console import Console

    from nst_daemon import stylize
    from nst_daemon.config import load_settings

    content, style = tmp_path / "big.jpg", tmp_path / "style.jpg"
    random_image((1600, 1200), seed=1).save(content, quality=90)
    random_image((1600, 1600), seed=2).save(style, quality=90)
    settings = load_settings(config, environ={})
    options = {"preset": None, "device": None, "preserve_colors": False, "console": Console(quiet=True)}
    options["force"] = True  # the second run writes the same output again

    output = tmp_path / "monet.jpg"
    stylize.run(settings, content, output, style="monet", style_images=[], max_side=None, **options)
    assert decoded_sizes == [(400, 300)]  # a quarter keeps 4 × the configured 64 across
    with Image.open(output) as image:
        assert image.size == (64, 48)

    decoded_sizes.clear()
    nst_calls = record_engine_runs(monkeypatch, "nst")
    stylize.run(settings, content, output, style=None, style_images=[style], max_side=200, **options)
    # Fitted within 200 the content is 200 × 150; the style goes to that area, 173 × 173.
    assert decoded_sizes == [(800, 600), (800, 800)]
    assert (
        nst_calls[0].options["options"].max_side == 200
    )  # max_side: the engine runs at the side the decode was sized for


@pytest.mark.parametrize(
    ("cap", "preset", "max_side", "expected"),
    [(512, "fast", None, 256), (512, "best", None, 512), (1024, "best", None, 768), (512, "best", 300, 300)],
)
def test_the_presets_own_size_applies_within_nst_max_side(
    config: Path,
    photo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cap: int,
    preset: str,
    max_side: int | None,
    expected: int,
) -> None:
    from rich.console import Console

    from nst_daemon import stylize
    from nst_daemon.config import load_settings

    settings = load_settings(config, environ={"NSTD_NST__MAX_SIDE": str(cap)})
    calls = record_engine_runs(monkeypatch, "nst")
    stylize.run(
        settings, photo, tmp_path / "out.jpg", style=None, style_images=[photo], preset=preset,
        max_side=max_side, device=None, preserve_colors=False, console=Console(quiet=True),
    )  # fmt: skip
    options = calls[0].options["options"]
    assert (options.preset, options.max_side) == (preset, expected)


def test_nst_progress_shows_the_estimated_time_left() -> None:
    from rich.console import Console

    from nst_daemon.stylize import cyclegan_spinner, nst_progress

    clock = [0.0]
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    with nst_progress(console, get_time=lambda: clock[0]) as bar:
        task = bar.add_task("scale 1/2 32×24", total=1.0, step=0)
        clock[0] = 10.0
        bar.update(task, completed=0.25, step=10)
        clock[0] = 20.0
        bar.update(task, completed=0.5, step=20)
        bar.refresh()
    # Half done in 20 s: 20 s left.
    assert re.search(r"scale 1/2 32×24 \S+ +50% step 20, left 0:00:20", out.getvalue()), out.getvalue()

    out.seek(0)
    out.truncate()
    with cyclegan_spinner(console, get_time=lambda: clock[0]) as spinner:
        spinner.add_task("stylizing on CPUExecutionProvider", total=None)
        clock[0] = 37.0
        spinner.refresh()
    assert re.search(r"stylizing on CPUExecutionProvider 0:00:17", out.getvalue()), out.getvalue()


def run_with_terminal_stderr(args: list[str]) -> tuple[int, str, str]:
    """The command with stderr on a pseudo-terminal (as in an interactive shell) and stdout a pipe."""
    leader, follower = pty.openpty()
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, text=True, env=env)
    os.close(follower)
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes: a full terminal buffer would block the command
        with contextlib.suppress(OSError):  # EIO once the last writer is gone
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = process.communicate(timeout=240)
    reader.join(timeout=30)
    os.close(leader)
    return process.returncode, stdout, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize(("style", "expected"), [("monet", "stylizing on"), ("nst", "left")])
def test_progress_goes_to_a_terminal_stderr_and_never_into_stdout(
    config: Path, photo: Path, tmp_path: Path, style: str, expected: str
) -> None:
    output = tmp_path / f"{style}.jpg"
    chosen = ["--style-image", str(photo)] if style == "nst" else ["--style", style]
    args = [NSTD, "--config", str(config), "stylize", str(photo), "-o", str(output), *chosen]
    code, stdout, stderr = run_with_terminal_stderr(args)
    assert code == 0, stdout + stderr
    assert expected in stderr  # the last frame is drawn when the work ends, so this is never timing luck
    assert WROTE.fullmatch(stdout.splitlines()[-1]), stdout
    assert "━" not in stdout and "left" not in stdout

    # stderr a pipe: no progress at all, only the log.
    piped = nstd(config, photo, "-o", tmp_path / f"{style}-2.jpg", *chosen)
    assert wrote_line(piped) and expected not in piped.stderr and "━" not in piped.stderr


def test_without_hard_links_the_output_is_still_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FAT-formatted USB stick has no hard links: os.link fails with EPERM there.
    import errno

    from nst_daemon.errors import NstdError
    from nst_daemon.output_file import write_output

    def no_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    output = tmp_path / "out.jpg"
    write_output(output, b"first")
    assert output.read_bytes() == b"first"
    with pytest.raises(NstdError, match="already exists"):
        write_output(output, b"second")
    assert output.read_bytes() == b"first"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jpg"]  # no temporary file left


def test_strength_blends_a_pretrained_style_with_the_content(config: Path, tmp_path: Path) -> None:
    """CycleGAN has no strength of its own: the pipeline blends its result with the content in CIELAB."""
    from nst_daemon.strength import blend_with_content

    photo = tmp_path / "photo.png"
    random_image((64, 48), seed=12).save(photo)  # within cyclegan.max_side 64: no resize on the way
    full, half = tmp_path / "full.png", tmp_path / "half.png"
    wrote_line(nstd(config, photo, "-o", full, "--style", "monet"))
    wrote_line(nstd(config, photo, "-o", half, "--style", "monet", "--strength", "0.5"))
    with Image.open(photo) as content, Image.open(full) as styled, Image.open(half) as blended:
        want = blend_with_content(content.convert("RGB"), styled.convert("RGB"), 0.5)
        assert np.array_equal(np.asarray(blended), np.asarray(want))
        assert not np.array_equal(np.asarray(blended), np.asarray(styled))
