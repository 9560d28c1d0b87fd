"""bench_daemon.py's part 6: an instant (AdaIN) job through the watched folder of a real `nstd run`, from a
dropped file to its result in outbox/, and where the time goes.

The daemon runs as a user runs it: `nstd --config <tmp> run` in a subprocess, with random-init AdaIN models
in pytorch-AdaIN's layout (exported by nstd's own converter: the compute of the real files) and a named
style added with `nstd styles add NAME STYLE --engine adain`, so that inbox/NAME/ exists. Each job is one
photo written into inbox/NAME/ (one write and close, as a copy does); its time runs from just before the
write until the result's name appears in outbox/NAME/ (the result is published by a rename, so a name seen
is a whole file). The first job is cold (the engine process starts, imports ONNX Runtime, opens the
sessions); the later ones are warm, one at a time.

The stages come from the job's own record: its row's `created_at`, `started_at` and `finished_at`, and the
engine time in its report (`seconds`: the inputs read from the store, the trip to the engine process, the
decode, AdaIN, the encode, the trip back). The engine process's share is then split by timing the same
calls alone in a fresh interpreter: `runner.decode_inputs`, `AdaINEngine.stylize` (with the style's own
encoder pass apart) and `RunResult.encoded`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench_common as bc

NSTD = str(Path(sys.executable).parent / "nstd")
STYLE_NAME = "benchstyle"
POLL_S = 0.005  # how often the outbox is looked at: well under the target's resolution


@contextlib.contextmanager
def running_daemon(
    config: Path, start_timeout_s: float = 60
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`nstd --config CONFIG run` until it logs that it is running; its log lines, as they come, with it.
    Terminated (SIGTERM, as systemd stops it) on the way out."""
    proc = subprocess.Popen(
        [NSTD, "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "nstd is running" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(start_timeout_s):
            raise RuntimeError("nstd run did not start:\n" + "".join(lines[-20:]))
        yield proc, lines
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_models(folder: Path) -> Path:
    """folder/models with adain_vgg and adain_decoder (bench_instant.build_models), in a subprocess: it
    imports torch, which this process must not have loaded before part 3's first real job."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from pathlib import Path; "
        f"import bench_instant; bench_instant.build_models(Path({str(folder)!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, capture_output=True)
    return folder / "models"


def instant_settings(root: Path, models: Path, max_side: int, settle_s: float | None) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "paths": {"state_dir": str(root / "state"), "models_dir": str(models)},
        "watch": {"enabled": True, "dir": str(root / "watch")},
        "adain": {"max_side": max_side},
        "daemon": {"log_level": "info"},
    }
    if settle_s is not None:  # None: the default a user gets
        settings["watch"]["settle_s"] = settle_s
    return settings


def drop_and_wait(
    inbox: Path, outbox: Path, name: str, photo: bytes, timeout_s: float
) -> tuple[float, float]:
    """Write `photo` as inbox/NAME and wait for its result in outbox/; (dropped, seen) in time.time(), the
    clock of the job's row."""
    stem = name.rsplit(".", 1)[0] + "."
    dropped = time.time()
    with open(inbox / name, "wb") as file:
        file.write(photo)
    while time.time() - dropped < timeout_s:
        with os.scandir(outbox) as entries:
            if any(entry.name.startswith(stem) for entry in entries):
                return dropped, time.time()
        time.sleep(POLL_S)
    raise RuntimeError(f"no result for {name} in {outbox} after {timeout_s:.0f} s")


def job_records(config: Path) -> dict[str, dict[str, Any]]:
    """Each folder job's row times and report, by its file name."""
    from nst_daemon.config import load_settings
    from nst_daemon.job_model import job_prefix
    from nst_daemon.store.blobs import get_bytes
    from nst_daemon.store.factory import open_store

    settings = load_settings(config)
    store = open_store(settings)
    connection = sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "select id, owner, state, created_at, started_at, finished_at from jobs where source = 'folder'"
        ).fetchall()
    finally:
        connection.close()
    records = {}
    for job_id, owner, state, created, started, finished in rows:
        report = json.loads(get_bytes(store, settings.store.bucket, f"{job_prefix(job_id)}report.json"))
        records[Path(owner).name] = {
            "job": job_id, "state": state, "created_at": created, "started_at": started,
            "finished_at": finished, "engine_s": report.get("seconds"), "size": report.get("size"),
        }  # fmt: skip
    return records


def stages_ms(dropped: float, seen: float, record: dict[str, Any]) -> dict[str, float]:
    """The job's path in ms, from its drop to its result in outbox/, cut at the times its row records."""
    created, started, finished = record["created_at"], record["started_at"], record["finished_at"]
    engine = record["engine_s"]
    return {
        "total": (seen - dropped) * 1000,
        "drop_to_row": (created - dropped) * 1000,
        "row_to_claim": (started - created) * 1000,
        "engine": engine * 1000,
        "store_and_done": (finished - started - engine) * 1000,
        "delivery": (seen - finished) * 1000,
    }


_COMPONENTS_CODE = """
import json, sys, time
from pathlib import Path
import numpy as np
from nst_daemon.config import load_settings
from nst_daemon.engines.adain import AdaINEngine, image_array, to_batch
from nst_daemon.imaging import scale_to_area
from nst_daemon.jobs import RunResult
from nst_daemon.runner import decode_inputs
config, photo, style, max_side, repeats = sys.argv[1:6]
settings = load_settings(Path(config))
models = settings.paths.models_dir
images = [Path(photo).read_bytes(), Path(style).read_bytes()]
engine = AdaINEngine(models / "adain_vgg.onnx", models / "adain_decoder.onnx", device=settings.adain.device,
                     cpu_threads=settings.adain.cpu_threads)
started = time.perf_counter(); engine.load(); load_s = time.perf_counter() - started
times = {"decode": [], "stylize": [], "style_encoder_pass": [], "encode": []}
for _ in range(int(repeats)):
    started = time.perf_counter()
    content, style_image = decode_inputs(images, settings, max_side=int(max_side))
    times["decode"].append(time.perf_counter() - started)
    started = time.perf_counter()
    result = engine.stylize(content, [style_image], max_side=int(max_side))
    times["stylize"].append(time.perf_counter() - started)
    area = result.size[0] * result.size[1]
    batch = to_batch(image_array(scale_to_area(style_image.convert("RGB"), area)))
    started = time.perf_counter()
    engine.encode(batch)
    times["style_encoder_pass"].append(time.perf_counter() - started)
    started = time.perf_counter()
    RunResult(result, {}).encoded()
    times["encode"].append(time.perf_counter() - started)
print(json.dumps({"load_s": load_s, "times_s": times}))
"""


def components_ms(config: Path, photo: Path, style: Path, max_side: int, repeats: int) -> dict[str, float]:
    """The engine process's work for one job, each call alone (median ms) in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", _COMPONENTS_CODE, str(config), str(photo), str(style), str(max_side),
         str(repeats)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"timing the engine's calls failed: {proc.stderr.strip()[-800:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    result = {name: bc.median(values) * 1000 for name, values in measured["times_s"].items()}
    result["session_load"] = measured["load_s"] * 1000
    return result


def bench_instant_jobs(
    photo: bytes, style: bytes, *, warm_jobs: int, max_side: int, settle_values: list[float | None]
) -> list[dict[str, Any]]:
    """One round per settle_s value (None: the default): a cold job, then `warm_jobs` warm ones."""
    import tempfile

    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-instant-job-") as tmp:
        root = Path(tmp)
        bc.log("instant jobs: exporting random-init AdaIN models")
        models = build_models(root)
        (root / "photo.jpg").write_bytes(photo)
        (root / "style.jpg").write_bytes(style)
        for index, settle_s in enumerate(settle_values):
            run_root = root / f"round{index}"
            run_root.mkdir()
            config = bc.write_config(
                run_root / "config.toml", instant_settings(run_root, models, max_side, settle_s)
            )
            subprocess.run(
                [NSTD, "--config", str(config), "styles", "add", STYLE_NAME, str(root / "style.jpg"),
                 "--engine", "adain"],
                check=True, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            inbox = run_root / "watch" / "inbox" / STYLE_NAME
            outbox = run_root / "watch" / "outbox" / STYLE_NAME
            times = []
            loads = []
            with running_daemon(config):
                for job in range(warm_jobs + 1):
                    time.sleep(1.0)  # the previous job's report and the move of its original are written
                    loads.append(os.getloadavg()[0])
                    times.append(drop_and_wait(inbox, outbox, f"photo-{job}.jpg", photo, timeout_s=300))
                    bc.log(f"instant job {job} (settle_s {settle_s}): {times[-1][1] - times[-1][0]:.2f} s")
            records = job_records(config)
            jobs = [
                {"name": f"photo-{job}.jpg", **stages_ms(dropped, seen, records[f"photo-{job}.jpg"])}
                for job, (dropped, seen) in enumerate(times)
            ]
            warm = jobs[1:]
            keys = [key for key in jobs[0] if key != "name"]
            rounds.append(
                {
                    "settle_s": settle_s,
                    "watch_settle_s": settle_s if settle_s is not None else default_settle_s(),
                    "cold": jobs[0],
                    "warm": warm,
                    "warm_median_ms": {key: bc.median(j[key] for j in warm) for key in keys},
                    "loadavg_1min": loads,
                    "result_size": records["photo-0.jpg"]["size"],
                }
            )
        bc.log("instant jobs: the engine process's calls alone")
        components = components_ms(config, root / "photo.jpg", root / "style.jpg", max_side, repeats=3)
    for round_ in rounds:
        round_["components_ms"] = components
    return rounds


def default_settle_s() -> float:
    from nst_daemon.config import WatchSettings

    return WatchSettings().settle_s
