"""The instant path stays free of torch, whose import alone costs seconds on a small CPU. (bench_instant.py's
smoke run is in test_benchmarks.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import test_adain
from checkpoints import random_image

adain_checkpoints = test_adain.adain_checkpoints
adain_models = test_adain.adain_models


def test_nstd_stylize_with_adain_never_imports_torch(adain_models: Path, tmp_path: Path) -> None:
    photo, style = tmp_path / "photo.png", tmp_path / "style.png"
    random_image((40, 30), seed=1).save(photo)
    random_image((30, 30), seed=2).save(style)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\nmodels_dir = "{adain_models}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[adain]\ndevice = "cpu"\ncpu_threads = 1\n',
        encoding="utf-8",
    )
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
        "from nst_daemon import cli\n"
        f"sys.argv = ['nstd', '--config', {str(config)!r}, 'stylize', {str(photo)!r}, '-o', "
        f"{str(tmp_path / 'out.png')!r}, '--style-image', {str(style)!r}, '--engine', 'adain']\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.png").is_file()
    assert "torch imported: False" in proc.stderr
