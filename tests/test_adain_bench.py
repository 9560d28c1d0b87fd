"""scripts/bench_instant.py still runs (--smoke: tiny sizes, one run), and the instant path stays free of
torch, whose import alone costs seconds on a small CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import test_adain
from checkpoints import random_image

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
adain_checkpoints = test_adain.adain_checkpoints
adain_models = test_adain.adain_models


def test_bench_instant_smoke(tmp_path: Path) -> None:
    out = tmp_path / "instant.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_instant.py"), "--smoke", "--device", "cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["smoke"] is True
    (result,) = payload["results"]
    for contender in result["contenders"].values():
        assert math.isfinite(contender["median_s"]) and contender["median_s"] > 0
    assert result["max_abs_diff"] < 1e-4  # the two contenders compute the same picture
    assert payload["cli"]["median_s"] > 0 and payload["memory"][0]["rss_delta_mb"] is not None
    assert proc.stdout.rstrip().splitlines()[-1].startswith("└")


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
