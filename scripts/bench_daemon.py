"""Daemon overhead: jobs through the real daemon and the loopback fake Bot API, idle memory, event-loop lag.

    .venv/bin/python scripts/bench_daemon.py            # all six parts
    .venv/bin/python scripts/bench_daemon.py --smoke    # tiny, for CI

1. Throughput and added latency: an in-process `Daemon` with a no-op runner (it returns the content image
   at once) and the bot pointed at tests/fake_telegram.py on 127.0.0.1. Users send photos captioned with a
   style; a job's latency runs from its update becoming available to getUpdates until its result photo
   reaches the fake server (`sendPhoto`), minus the runner's own time. The fake server runs twice: in a
   child process, as Telegram runs elsewhere (the target's measure), and in a thread of this process, where
   its CPU and its hold on the GIL count against nstd (an upper bound). `--fake-server` picks one.
2. Idle memory: `nstd --config <tmp> run` in a subprocess, bot polling the fake server, no job yet. VmRSS
   once "nstd is running" is logged, and whether torch or onnxruntime is mapped into the process.
3. Event-loop lag: a probe task in the daemon's loop sleeps 10 ms over and over while a REAL job runs
   (random-init models installed in a temporary models dir). First in the engine process, as the daemon
   runs jobs (`ProcessRunner`), then with the engines in the daemon's own process, as before
   (`EngineRunner` in the worker thread), for comparison. Neither place has imported torch or onnxruntime
   before its first job, so each cold job includes the import and model load as a fresh `nstd run` would.
4. Large photos: what the engine process does with a camera-size JPEG before its engine starts (the decode
   and the engine's fit to its max_side), in full as before and at the reduced JPEG scale that the fit
   needs (`runner.decode_inputs(..., max_side=...)`). Each in a fresh interpreter, for its peak memory;
   the PSNR compares the two fitted images.
5. Live preview: what a painted NST job pays for its preview snapshots. Real NST jobs (random-init VGG19,
   the same work as the real one) through the engine process, as the daemon runs them, alternately with
   and without `preview` (pairs in alternating order, so a drift in the box's load hits both alike); the
   job time is `ProcessRunner.run`'s, the frames are what reached the parent. Also the snapshot's own
   cost (`preview_jpeg` on a tensor of the job's size), which the load of the box does not blur.
6. Instant jobs through the watched folder (scripts/bench_daemon_instant.py): a real `nstd run` with
   random-init AdaIN models and a named AdaIN style; a 512-px photo dropped into inbox/NAME/, timed until
   its result is in outbox/NAME/ (a cold job, then warm ones), cut into stages by the job's own record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bench_common as bc
from bench_daemon_instant import bench_instant_jobs, running_daemon

STYLE = "monet"

# What `nstd run` imports up front, in an order where each step adds its own dependencies only.
IMPORT_STEPS = (
    "numpy",
    "PIL.Image",
    "pillow_heif",
    "pydantic",
    "botocore.exceptions",
    "sqlite_utils",
    "rich",
    "typer",
    "aiohttp",
    "nst_daemon.cli",
    "nst_daemon.daemon",
    # Imports aiogram with its types unbuilt (nst_daemon/bot/lazy_types.py), as `nstd run` does.
    "nst_daemon.bot",
)


def jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    """A smooth random photo-like JPEG. Not tests/checkpoints.random_image: that module imports torch, and
    this process must not have torch loaded before the first real job (part 3)."""
    import numpy as np
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 32 + 2, width // 32 + 2, 3))
    image = Image.fromarray((coarse * 255).astype(np.uint8), "RGB").resize(size, Image.Resampling.BICUBIC)
    if width * height > 4_000_000:  # part 4: float64 grain would take gigabytes
        grain = rng.standard_normal((height, width, 3), dtype=np.float32) * 3
    else:  # parts 1-3 keep the same photos as earlier rounds
        grain = rng.normal(0, 3, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8), "RGB").save(
        buffer, "JPEG", quality=90
    )
    return buffer.getvalue()


def settings_dict(root: Path, models: Path, server: Any | None, users: list[int]) -> dict[str, Any]:
    from fake_telegram import DEFAULT_TOKEN

    settings: dict[str, Any] = {
        "paths": {"state_dir": str(root / "state"), "models_dir": str(models)},
        "queue": {"max_pending": 10_000, "per_user": 10_000},
        "nst": {"preset": "fast", "max_side": 128},
        "cyclegan": {"max_side": 512},
        "watch": {"enabled": False, "dir": str(root / "watch")},
        "daemon": {"grace_period_s": 2, "log_level": "info"},
        "models": {"idle_unload_s": 3600},
    }
    if server is not None:
        settings["telegram"] = {
            "token": DEFAULT_TOKEN,
            "api_base": server.base_url,
            "allowed_users": users,
            "rate_limit_per_minute": 100_000,
        }
    return settings


class NoOpRunner:
    """An engine that returns the content image at once, timing itself so its share can be subtracted.

    It runs wherever the benchmark puts it: in this process, or in the daemon's engine process (built
    there from the settings, as `ProcessRunner` builds runners), so its time travels in the report.
    The decode of the stored photo is the daemon's work, as for a real engine: it is outside the timing,
    so it counts as overhead."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.loaded: list[str] = []

    def run(self, job: Any, content: Any, styles: Any, progress: Callable[[float], None], cancel: Any) -> Any:
        from nst_daemon.jobs import RunResult
        from nst_daemon.runner import decode_inputs

        content, *styles = decode_inputs([content, *styles], self.settings)
        started = time.perf_counter()
        progress(1.0)
        return RunResult(
            content, {"device": "none", "model": "no-op", "noop_s": time.perf_counter() - started}
        )

    def unload_idle(self, idle_s: float) -> list[str]:
        return []


class EngineSeconds:
    """Records each job's no-op time from its report, whichever process ran it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: dict[int, float] = {}

    def run(self, job: Any, content: Any, styles: Any, progress: Callable[[float], None], cancel: Any) -> Any:
        result = self.inner.run(job, content, styles, progress, cancel)
        self.seconds[job.id] = result.report["noop_s"]
        return result

    def unload_idle(self, idle_s: float) -> list[str]:
        return self.inner.unload_idle(idle_s)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


# --- 1. throughput and latency through the bot --------------------------------------------------------------

RESULT_METHODS = ("sendPhoto", "sendDocument")


def call_summary(call: Any) -> dict[str, Any]:
    """What the benchmark reads of one Bot API call; plain data, so it can cross a process boundary."""
    return {"method": call.method, "chat_id": call.chat_id, "ok": call.ok, "at": call.at, "text": call.text}


class FakeServerHere:
    """tests/fake_telegram.py in a thread of this process: its CPU and its GIL time count against nstd."""

    in_this_process = True

    def __init__(self, server: Any) -> None:
        self.server = server
        self.base_url = server.base_url

    def mark(self) -> int:
        return self.server.mark()

    def prepare_photo(self, photo: bytes) -> list[dict[str, Any]]:
        """Telegram's thumbnails of a photo, made ahead so they stay off the clock and off the CPU count."""
        return self.server.photo_sizes(photo)

    def send(self, user: int, sizes: list[dict[str, Any]]) -> float:
        """A user sends the prepared photo; returns when (monotonic) the update became available."""
        self.server.user_message(user, photo=sizes, caption=STYLE)
        return time.monotonic()

    def wait_result(self, user: int, since: int, wait_s: float = 60) -> dict[str, Any]:
        call = self.server.wait_for(
            lambda c: c.method in RESULT_METHODS and c.chat_id == user and c.ok, wait_s, since
        )
        return call_summary(call)

    def calls(self, since: int) -> list[dict[str, Any]]:
        return [call_summary(call) for call in self.server.find(None, since)]

    def results(self, since: int) -> int:
        return len(self.server.find(lambda c: c.method in RESULT_METHODS and c.ok, since))

    def cpu_s(self) -> float:
        """CPU seconds of the server's own thread (Linux: a per-thread CPU clock)."""
        thread = self.server.thread
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


class FakeServerProcess:
    """The same server in a child process, as Telegram is another machine: its work no longer takes this
    process's GIL. Every method is a round trip over a pipe to a FakeServerHere in the child; the times
    are CLOCK_MONOTONIC, which both processes share."""

    in_this_process = False

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_fake_server, args=(child,), daemon=True)
        self._lock = threading.Lock()
        self.base_url = ""

    def __enter__(self) -> FakeServerProcess:
        self._process.start()
        self.base_url = self._call("base_url")
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._conn.send(("stop",))
        self._process.join(15)
        if self._process.is_alive():
            self._process.kill()

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            self._conn.send((name, *args))
            ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"fake server: {name} failed: {value}")
        return value

    def mark(self) -> int:
        return self._call("mark")

    def prepare_photo(self, photo: bytes) -> list[dict[str, Any]]:
        return self._call("prepare_photo", photo)

    def send(self, user: int, sizes: list[dict[str, Any]]) -> float:
        return self._call("send", user, sizes)

    def wait_result(self, user: int, since: int, wait_s: float = 60) -> dict[str, Any]:
        return self._call("wait_result", user, since, wait_s)

    def calls(self, since: int) -> list[dict[str, Any]]:
        return self._call("calls", since)

    def results(self, since: int) -> int:
        return self._call("results", since)

    def cpu_s(self) -> float:
        return self._call("cpu_s")


def _serve_fake_server(conn: Any) -> None:
    from fake_telegram import FakeTelegram

    with FakeTelegram() as server:
        here = FakeServerHere(server)
        while True:
            name, *args = conn.recv()
            if name == "stop":
                return
            try:
                value = here.base_url if name == "base_url" else getattr(here, name)(*args)
            except Exception as exc:  # reported to the parent, which raises it there
                conn.send((False, f"{type(exc).__name__}: {exc}"))
            else:
                conn.send((True, value))


@contextlib.contextmanager
def fake_server(where: str) -> Iterator[Any]:
    if where == "process":
        with FakeServerProcess() as remote:
            yield remote
        return
    from fake_telegram import FakeTelegram

    with FakeTelegram() as server:
        yield FakeServerHere(server)


async def settle(server: Any, quiet_s: float = 3.5, limit_s: float = 60) -> None:
    """Wait until the bot has made no Bot API call (getUpdates aside) for `quiet_s`: longer than a status
    message's edit interval, so every edit still pending from earlier jobs has gone out."""
    deadline = time.monotonic() + limit_s
    last, quiet_since = await asyncio.to_thread(server.mark), time.monotonic()
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = await asyncio.to_thread(server.mark)
        if now != last:
            last, quiet_since = now, time.monotonic()


async def bench_bot(
    photo_sizes: list[tuple[int, int]], jobs: int, users: int, burst: int, where: str, engines: str = "daemon"
) -> list[dict[str, Any]]:
    """`engines`: where the no-op engine runs, "engine process" (as the daemon runs engines: the stored
    photo goes there to be decoded, and the JPEG comes back, through pipes) or "daemon" (the queue's
    worker thread)."""
    from nst_daemon.config import Settings
    from nst_daemon.daemon import Daemon

    results = []
    ids = list(range(7001, 7001 + max(users, 1)))
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp, fake_server(where) as server:
        root = Path(tmp)
        (root / "models").mkdir()
        settings = Settings.model_validate(settings_dict(root, root / "models", server, ids))
        if engines == "engine process":
            from nst_daemon.engine_process import ProcessRunner

            runner = EngineSeconds(ProcessRunner(settings, make_runner=NoOpRunner))
        else:
            runner = EngineSeconds(NoOpRunner(settings))
        daemon = Daemon(settings, runner=runner)
        await daemon.start()
        try:
            for size in photo_sizes:
                photo = jpeg(size)
                # Warm-up: the bot's first update, the first job, first encodes; off the clock.
                sizes = await asyncio.to_thread(server.prepare_photo, photo)
                mark = await asyncio.to_thread(server.mark)
                await asyncio.to_thread(server.send, ids[0], sizes)
                await asyncio.to_thread(server.wait_result, ids[0], mark)
                # The previous burst's status edits go out up to seconds after its results; measured
                # jobs start on a quiet daemon, as one job at a time would find it.
                await settle(server)

                latencies, timelines = [], []
                prepared = [await asyncio.to_thread(server.prepare_photo, photo) for _ in range(jobs)]
                cpu_before = (time.process_time(), await asyncio.to_thread(server.cpu_s))
                for n, sizes in enumerate(prepared):
                    user = ids[n % len(ids)]
                    mark = await asyncio.to_thread(server.mark)
                    available = await asyncio.to_thread(server.send, user, sizes)
                    result = await asyncio.to_thread(server.wait_result, user, mark)
                    latencies.append(result["at"] - available)
                    # Every Bot API call of this job (one job at a time), as ms after the update arrived.
                    calls = await asyncio.to_thread(server.calls, mark)
                    timelines.append(
                        [
                            [c["method"], round((c["at"] - available) * 1000, 1)]
                            for c in calls
                            if c["at"] <= result["at"]
                        ]
                    )
                process_cpu = time.process_time() - cpu_before[0]
                server_cpu = await asyncio.to_thread(server.cpu_s) - cpu_before[1]
                engine_s = sorted(runner.seconds.values())[-jobs:] if runner.seconds else []
                engine_median = bc.median(engine_s)

                # Throughput: `burst` photos from `users` users pushed at once, until the results stop coming.
                prepared = [await asyncio.to_thread(server.prepare_photo, photo) for _ in range(burst)]
                mark = await asyncio.to_thread(server.mark)
                started = time.monotonic()
                for n, sizes in enumerate(prepared):
                    await asyncio.to_thread(server.send, ids[n % len(ids)], sizes)
                done, last_change, finished = 0, time.monotonic(), started
                while done < burst and time.monotonic() - last_change < 20:
                    await asyncio.sleep(0.005)
                    now_done = await asyncio.to_thread(server.results, mark)
                    if now_done != done:
                        done, last_change, finished = now_done, time.monotonic(), time.monotonic()
                burst_s = finished - started
                calls = await asyncio.to_thread(server.calls, mark)
                # What the users were told, so a job with no result explains itself (errors, "busy"...).
                told = collections.Counter(
                    c["text"][:80] for c in calls if c["method"] == "sendMessage" and c["ok"]
                )
                added = [latency - engine_median for latency in latencies]
                row = {
                    "photo": list(size),
                    "photo_bytes": len(photo),
                    "fake_server": where,
                    "engines": engines,
                    "jobs": jobs,
                    "latency_median_s": bc.median(latencies),
                    "latency_p90_s": bc.percentile(latencies, 90),
                    "latency_max_s": max(latencies),
                    "engine_median_s": engine_median,
                    "added_latency_median_s": bc.median(added),
                    "added_latency_p90_s": bc.percentile(added, 90),
                    # CPU per job, over the one-at-a-time jobs: the fake Bot API server's thread (serving
                    # the photo download, parsing the result upload), and everything else in this process
                    # (nstd's loop and worker threads, plus this script's waiting).
                    "fake_server_cpu_ms_per_job": server_cpu * 1000 / jobs,
                    "rest_cpu_ms_per_job": (process_cpu - (server_cpu if server.in_this_process else 0))
                    * 1000
                    / jobs,
                    "burst_jobs": burst,
                    "burst_users": min(users, burst),
                    "burst_s": burst_s,
                    "burst_completed": done,
                    # Jobs whose result never came (an error reply instead): see the log above the tables.
                    "burst_failed": burst - done,
                    "burst_messages": dict(told.most_common(10)),
                    # Bot API calls during the burst, by method: status edits grow with the queue's length.
                    "burst_calls": dict(collections.Counter(c["method"] for c in calls)),
                    "jobs_per_s": done / burst_s if burst_s > 0 else None,
                    **codec_ms(photo),
                    "median_job_calls_ms": timelines[
                        sorted(range(jobs), key=latencies.__getitem__)[jobs // 2]
                    ],
                }
                results.append(row)
                bc.log(
                    f"{size[0]}x{size[1]}, fake server in {where}, engines in {engines}: added latency "
                    "median "
                    f"{row['added_latency_median_s'] * 1000:.1f} ms, "
                    f"{row['jobs_per_s']:.1f} jobs/s"
                )
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()
    return results


def codec_ms(photo: bytes, repeats: int = 5) -> dict[str, float]:
    """nstd's own full decode and JPEG encode of this photo. A job decodes it in full once, where its engine
    runs (before that, intake checks a JPEG at an eighth of its size), and encodes once (the result); a
    JPEG upload is stored as sent, without a re-encode."""
    from nst_daemon import imaging

    decode, encode = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        image = imaging.load_image(photo)
        middle = time.perf_counter()
        imaging.encode_image(image, "jpeg")
        decode.append((middle - started) * 1000)
        encode.append((time.perf_counter() - middle) * 1000)
    return {"decode_ms": bc.median(decode), "encode_ms": bc.median(encode)}


# --- 2. idle memory of `nstd run` ---------------------------------------------------------------------------


def bench_idle_rss(settle_s: float, import_steps: tuple[str, ...] = IMPORT_STEPS) -> dict[str, Any]:
    """`nstd run` idle with the bot polling the fake server; then again without a token (no bot)."""
    from fake_telegram import FakeTelegram

    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, FakeTelegram() as server:
        root = Path(tmp)
        (root / "models").mkdir()
        config = bc.write_config(root / "config.toml", settings_dict(root, root / "models", server, [7001]))
        result = idle_daemon(config, settle_s)
        config = bc.write_config(root / "no-bot.toml", settings_dict(root, root / "models", None, []))
        result["no_bot"] = idle_daemon(config, settle_s)
    result["imports"] = import_memory(import_steps)
    return result


def idle_daemon(config: Path, settle_s: float) -> dict[str, Any]:
    started = time.monotonic()
    with running_daemon(config) as (proc, _lines):
        startup_s = time.monotonic() - started
        time.sleep(settle_s)  # the bot's first getUpdates, the status loop: a settled idle daemon
        maps = Path(f"/proc/{proc.pid}/maps").read_text(encoding="utf-8", errors="replace")
        result: dict[str, Any] = {
            "startup_s": startup_s,
            "vm_rss_mb": bc.proc_status_mb("VmRSS", proc.pid),
            "vm_hwm_mb": bc.proc_status_mb("VmHWM", proc.pid),
            # Native libraries mapped into the process: the truth about what was imported.
            "torch_loaded": bool(re.search(r"libtorch|/torch/", maps)),
            "onnxruntime_loaded": "onnxruntime" in maps,
            "numpy_loaded": "numpy" in maps,
        }
    result["exit_code"] = proc.returncode
    return result


def import_memory(steps: tuple[str, ...] = IMPORT_STEPS) -> list[dict[str, Any]]:
    """RSS added by each import step, in a fresh interpreter: where the idle daemon's memory goes."""
    code = f"""
import importlib, json, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
rows = [{{"module": "python", "rss_mb": rss(), "seconds": 0.0}}]
for name in {list(steps)!r}:
    started = time.perf_counter()
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    rows.append({{"module": name, "rss_mb": rss(), "seconds": time.perf_counter() - started}})
print(json.dumps(rows))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for before, row in itertools.pairwise(rows):
        row["added_mb"] = row["rss_mb"] - before["rss_mb"]
    rows[0]["added_mb"] = rows[0]["rss_mb"]
    return rows


# --- 3. event-loop lag while a real job runs ----------------------------------------------------------------


def make_models(models: Path) -> None:
    """Random-init VGG19 and one CycleGAN generator installed as `nstd models` would; run in a subprocess,
    so this process has not imported torch when the first job starts."""
    code = f"""
import sys
sys.path.insert(0, {str(bc.REPO / "tests")!r})
from pathlib import Path
from checkpoints import install_random_models
install_random_models(Path({str(models)!r}), 'bench')
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


async def _lag_probe(samples: list[float], stop: asyncio.Event, interval: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(interval)
        samples.append(loop.time() - before - interval)


async def bench_loop_lag(phases: list[dict[str, Any]], photo: tuple[int, int]) -> list[dict[str, Any]]:
    from nst_daemon.config import Settings
    from nst_daemon.daemon import Daemon
    from nst_daemon.jobs import JobRequest

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-lag-") as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        bc.log("installing random-init models (subprocess)")
        make_models(root / "models")
        if "torch" in sys.modules or "onnxruntime" in sys.modules:
            bc.log("note: torch/onnxruntime already imported here; cold phases are not cold")
        settings = Settings.model_validate(settings_dict(root, root / "models", None, []))
        runner = PlaceRunner(settings)
        daemon = Daemon(settings, runner=runner)
        await daemon.start()
        assert daemon.queue is not None
        states: dict[int, asyncio.Event] = {}
        running: dict[int, asyncio.Event] = {}

        def listener(job: Any) -> None:
            if job.state == "running" and job.id in running:
                running[job.id].set()
            if job.state in ("done", "failed", "cancelled") and job.id in states:
                states[job.id].set()

        daemon.queue.add_listener(listener)
        content, style = jpeg(photo, seed=3), jpeg(photo, seed=4)
        try:
            for phase in phases:
                runner.place = phase["place"]
                runner.here.threads = phase.get("torch_threads")
                request = JobRequest(
                    source="cli",
                    owner="bench",
                    engine=phase["engine"],
                    content=content,
                    styles=[STYLE] if phase["engine"] == "cyclegan" else [],
                    style_images=[style] if phase["engine"] == "nst" else [],
                    params=phase.get("params", {}),
                )
                samples: list[float] = []
                stop = asyncio.Event()
                job = await daemon.queue.submit(request)
                states[job.id], running[job.id] = asyncio.Event(), asyncio.Event()
                if daemon.queue.get(job.id).state == "running":  # type: ignore[union-attr]
                    running[job.id].set()
                await running[job.id].wait()
                started = time.monotonic()
                probe = asyncio.create_task(_lag_probe(samples, stop))
                await states[job.id].wait()
                seconds = time.monotonic() - started
                stop.set()
                await probe
                final = daemon.queue.get(job.id)
                assert final is not None
                lag_ms = [sample * 1000 for sample in samples]
                row = {
                    "phase": phase["label"],
                    "place": phase["place"],
                    "engine": phase["engine"],
                    "state": final.state,
                    "error": final.error,
                    "job_s": seconds,
                    "samples": len(lag_ms),
                    "lag_p50_ms": bc.percentile(lag_ms, 50),
                    "lag_p99_ms": bc.percentile(lag_ms, 99),
                    "lag_max_ms": max(lag_ms) if lag_ms else None,
                    "torch_threads_in_worker": (
                        runner.here.seen_threads if phase["place"] == "daemon" else None
                    ),
                }
                results.append(row)
                bc.log(
                    f"lag {phase['label']}: p99 {row['lag_p99_ms']:.1f} ms "
                    f"over {seconds:.1f} s ({final.state})"
                )
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()
    return results


class PlaceRunner:
    """Runs each job where the phase says: "engine process" (the daemon's own runner) or "daemon" (the
    engines in this process's worker thread, as before the engine process)."""

    def __init__(self, settings: Any) -> None:
        from nst_daemon.engine_process import ProcessRunner
        from nst_daemon.runner import EngineRunner

        self.process = ProcessRunner(settings)
        self.here = ThreadsRunner(EngineRunner(settings))
        self.place = "engine process"

    def run(self, job: Any, content: Any, styles: Any, progress: Any, cancel: Any) -> Any:
        runner = self.process if self.place == "engine process" else self.here
        return runner.run(job, content, styles, progress, cancel)

    def unload_idle(self, idle_s: float) -> list[str]:
        return self.process.unload_idle(idle_s) + self.here.unload_idle(idle_s)

    def close(self) -> None:
        self.process.close()


class ThreadsRunner:
    """The real EngineRunner, with torch's thread count set IN the worker thread before each job.

    torch.set_num_threads called on the event loop's thread does not reach the worker: OpenMP keeps the
    count per thread (measured: a worker stays at 2 threads after the main thread set 1).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.threads: int | None = None
        self.seen_threads: int | None = None

    def run(self, job: Any, content: Any, styles: Any, progress: Any, cancel: Any) -> Any:
        torch = sys.modules.get("torch")
        if self.threads and torch is not None:
            torch.set_num_threads(self.threads)
        result = self.inner.run(job, content, styles, progress, cancel)
        torch = sys.modules.get("torch")  # the first job imports it
        self.seen_threads = torch.get_num_threads() if torch is not None and job.engine == "nst" else None
        return result

    def unload_idle(self, idle_s: float) -> list[str]:
        return self.inner.unload_idle(idle_s)


# --- 5. live preview: what its snapshots cost an NST job --------------------------------------------------


def bench_preview(pairs: int, side: int, preset: str) -> dict[str, Any]:
    sys.path.insert(0, str(bc.REPO / "tests"))
    from engine_stubs import make_job

    from nst_daemon.config import Settings
    from nst_daemon.engine_process import ProcessRunner
    from nst_daemon.engines.nst_plugin import PREVIEW_EVERY_S

    with tempfile.TemporaryDirectory(prefix="nstd-bench-preview-") as tmp:
        root = Path(tmp)
        make_models(root / "models")
        settings = Settings.model_validate(
            {
                "paths": {"state_dir": str(root / "state"), "models_dir": str(root / "models")},
                "nst": {"preset": preset, "max_side": side},
            }
        )
        content, style = jpeg((side * 4 // 3, side), seed=3), jpeg((side, side), seed=4)
        runner = ProcessRunner(settings)
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        try:

            def one(preview: bool, job_id: int) -> dict[str, Any]:
                frames: list[int] = []

                def progress(fraction: float, frame: bytes | None = None) -> None:
                    if frame is not None:
                        frames.append(len(frame))

                job = make_job("nst", [], job_id=job_id, preset=preset, preview=preview)
                started = time.perf_counter()
                runner.run(job, content, [style], progress, threading.Event())
                seconds = time.perf_counter() - started
                return {"seconds": seconds, "frames": len(frames), "frame_kb": sum(frames) / 1024}

            one(False, 0)  # imports torch and loads VGG19 in the engine process: not counted
            for pair in range(pairs):
                order = (False, True) if pair % 2 == 0 else (True, False)
                for preview in order:
                    run = one(preview, len(runs[False]) + len(runs[True]) + 1)
                    runs[preview].append(run)
                    bc.log(
                        f"preview {('off', 'on')[preview]}: {run['seconds']:.1f} s, {run['frames']} frames"
                    )
        finally:
            runner.close()
    off = [run["seconds"] for run in runs[False]]
    on = [run["seconds"] for run in runs[True]]
    frames = sum(run["frames"] for run in runs[True])
    snapshot_ms = preview_snapshot_ms(side)
    return {
        "pairs": pairs,
        "side": side,
        "preset": preset,
        "preview_every_s": PREVIEW_EVERY_S,
        "off_s": off,
        "on_s": on,
        "off_median_s": bc.median(off),
        "on_median_s": bc.median(on),
        "cost_pct": (bc.median(on) / bc.median(off) - 1) * 100,
        "pair_cost_pct": [(b / a - 1) * 100 for a, b in zip(off, on, strict=True)],
        "frames_per_job": frames / max(1, len(on)),
        "frame_kb": sum(run["frame_kb"] for run in runs[True]) / max(1, frames),
        "snapshot_ms": snapshot_ms,
        # The snapshots' own share of a job, from their count and cost: what the timing should show.
        "snapshot_cost_pct": frames / max(1, len(on)) * snapshot_ms / 1000 / bc.median(on) * 100,
    }


def preview_snapshot_ms(side: int, repeats: int = 20) -> float:
    import torch

    from nst_daemon.engines.preview import preview_jpeg

    image = torch.rand(1, 3, side, side * 4 // 3)
    preview_jpeg(image)
    started = time.perf_counter()
    for _ in range(repeats):
        preview_jpeg(image)
    return (time.perf_counter() - started) / repeats * 1000


# --- 4. large photos: the decode before the engine ----------------------------------------------------------

# One way in a fresh interpreter: the stored JPEG to the image the engine starts from (fitted within its
# max_side, as both engines do first), `repeats` times; peak memory over the first. A tiny image first
# takes `load_image`'s one-time setup (pillow-heif's registration, the sRGB profile) out of the timing.
_DECODE_CODE = """
import json, sys, time
sys.path.insert(0, {scripts!r})
import numpy as np
from PIL import Image
import bench_common as bc
from nst_daemon import imaging
from nst_daemon.config import Settings
from nst_daemon.runner import decode_inputs
data = open({photo!r}, "rb").read()
settings = Settings.model_validate({{}})
imaging.load_image(imaging.encode_image(Image.new("RGB", (8, 8))))  # first-use setup (HEIF, colour) out
seconds, decoded = [], None
bc.reset_peak_rss()
before = bc.proc_status_mb("VmRSS")
for _ in range({repeats}):
    started = time.perf_counter()
    (image,) = decode_inputs([data], settings, max_side={hint})
    fitted = imaging.fit_within(image, {side})
    seconds.append(time.perf_counter() - started)
    if decoded is None:
        decoded, peak = image.size, bc.proc_status_mb("VmHWM") - before
    del image
np.save({out!r}, np.asarray(fitted))
print(json.dumps({{"seconds": seconds, "decoded": decoded, "fitted": fitted.size, "peak_added_mb": peak}}))
"""


def psnr(first: Any, second: Any) -> float | None:
    """PSNR in dB of two uint8 arrays; None when their shapes differ, infinity when they are equal."""
    if first.shape != second.shape:
        return None
    error = float(((first.astype("float64") - second) ** 2).mean())
    return math.inf if error == 0 else 10 * math.log10(255**2 / error)


def bench_large_photos(
    photos: list[tuple[int, int]], fits: list[tuple[str, int]], repeats: int
) -> list[dict[str, Any]]:
    """Each photo for each engine's max_side: decoded in full, then at the scale the fit needs."""
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        for size in photos:
            photo = Path(tmp) / f"{size[0]}x{size[1]}.jpg"
            photo.write_bytes(jpeg(size, seed=2))
            for engine, side in fits:
                bc.log(f"large photo {size[0]}x{size[1]} for {engine} at {side}")
                runs = {}
                for way, hint in (("full", None), ("reduced", side)):
                    out = Path(tmp) / f"{way}.npy"
                    code = _DECODE_CODE.format(
                        scripts=str(Path(__file__).parent), photo=str(photo), repeats=repeats, hint=hint,
                        side=side, out=str(out),
                    )  # fmt: skip
                    proc = subprocess.run(
                        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
                    )
                    runs[way] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "array": np.load(out)}
                row: dict[str, Any] = {
                    "photo": list(size),
                    "megapixels": size[0] * size[1] / 1e6,
                    "jpeg_mb": photo.stat().st_size / bc.MB,
                    "engine": engine,
                    "max_side": side,
                    "psnr_db": psnr(runs["full"].pop("array"), runs["reduced"].pop("array")),
                }
                for way, run in runs.items():
                    row[f"{way}_ms"] = bc.median(run["seconds"]) * 1000
                    row[f"{way}_first_ms"] = run["seconds"][0] * 1000
                    row.update({f"{way}_{key}": run[key] for key in ("decoded", "fitted", "peak_added_mb")})
                rows.append(row)
    return rows


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = bc.parser("daemon", __doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=0, help="jobs for the latency median (default 30)")
    parser.add_argument(
        "--burst", type=int, default=0, help="photos sent at once for throughput (default 60)"
    )
    parser.add_argument("--users", type=int, default=10, help="distinct users in the burst")
    parser.add_argument(
        "--parts",
        default="bot,idle,lag,large,preview,instant",
        help="which parts to run (bot, idle, lag, large, preview, instant)",
    )
    parser.add_argument("--instant-jobs", type=int, default=5, help="part 6: warm jobs (default 5)")
    parser.add_argument(
        "--instant-settle",
        default="",
        help="part 6: watch.settle_s values, one round each (comma-separated; default: the config's default)",
    )
    parser.add_argument("--preview-pairs", type=int, default=3, help="part 5: job pairs (default 3)")
    parser.add_argument("--preview-side", type=int, default=256, help="part 5: NST max_side (default 256)")
    parser.add_argument(
        "--fake-server",
        choices=("process", "thread", "both"),
        default="both",
        help="where the fake Bot API runs for part 1: a child process (as Telegram is elsewhere), a thread "
        "of this process (its CPU and GIL time count: an upper bound), or both (default)",
    )
    parser.add_argument(
        "--engines",
        choices=("engine process", "daemon", "both"),
        default="both",
        help="where part 1's no-op engine runs: the engine process, as the daemon runs engines (the "
        "target's measure), the daemon's own worker thread (as before the engine process), or both",
    )
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",")}

    if args.device != "auto":
        # The daemon's engines read their device from the settings; the lag part honours it.
        os.environ["NSTD_NST__DEVICE"] = os.environ["NSTD_CYCLEGAN__DEVICE"] = args.device
    jobs = args.jobs or (3 if args.smoke else 30)
    burst = args.burst or (4 if args.smoke else 60)
    photo_sizes = [(96, 72)] if args.smoke else [(96, 72), (1280, 960)]
    lag_photo = (64, 48) if args.smoke else (1024, 768)  # each engine scales it to its max_side
    nst_params = {"preset": "fast", "max_side": 48 if args.smoke else 192}
    cg_params = {"max_side": 64 if args.smoke else 768}
    cores = bc.physical_cores()
    in_process = [
        {"label": "NST, first job (imports torch, loads VGG19)", "engine": "nst", "params": nst_params},
        {"label": "NST, torch 1 thread", "engine": "nst", "params": nst_params, "torch_threads": 1},
        {
            "label": f"NST, torch {cores} threads",
            "engine": "nst",
            "params": nst_params,
            "torch_threads": cores,
        },
        {
            "label": "CycleGAN, first job (imports onnxruntime, loads)",
            "engine": "cyclegan",
            "params": cg_params,
        },
        {
            "label": f"CycleGAN, ORT {cores} intra-op threads (physical cores)",
            "engine": "cyclegan",
            "params": cg_params,
        },
    ]
    in_engine_process = [
        {"label": "NST, first job (imports torch, loads VGG19)", "engine": "nst", "params": nst_params},
        {"label": "NST", "engine": "nst", "params": nst_params},
        {
            "label": "CycleGAN, first job (imports onnxruntime, loads)",
            "engine": "cyclegan",
            "params": cg_params,
        },
        {"label": "CycleGAN", "engine": "cyclegan", "params": cg_params},
    ]
    if args.smoke:  # the cold jobs only: they cover both engines, both places and the imports
        in_process, in_engine_process = [in_process[0], in_process[3]], [in_engine_process[0]]
    phases = [{**phase, "place": "engine process"} for phase in in_engine_process] + [
        {**phase, "place": "daemon"} for phase in in_process
    ]

    payload: dict[str, Any] = {
        "benchmark": "daemon",
        "smoke": args.smoke,
        "machine": bc.machine_info(),
        "settings": {"jobs": jobs, "burst": burst, "users": args.users, "parts": sorted(parts)},
    }
    if "idle" in parts:
        bc.log("idle RSS of `nstd run`")
        # Smoke: the cheap import steps only.
        steps = IMPORT_STEPS[:4] if args.smoke else IMPORT_STEPS
        payload["idle"] = bench_idle_rss(settle_s=0.5 if args.smoke else 2.0, import_steps=steps)
        bc.write_json(args.json, payload)
    if "bot" in parts:
        bc.log("jobs through the bot and the fake Bot API")
        places = ("process", "thread") if args.fake_server == "both" else (args.fake_server,)
        engine_places = ("engine process", "daemon") if args.engines == "both" else (args.engines,)
        # With both defaults: the engine process only with the fake server in a child process (the
        # target's measure); the thread place is the earlier rounds' upper bound.
        runs = [
            (where, engines)
            for where in places
            for engines in engine_places
            if where == "process" or engines == "daemon" or args.engines != "both"
        ]
        payload["bot"] = [
            row
            for where, engines in runs
            for row in asyncio.run(bench_bot(photo_sizes, jobs, args.users, burst, where, engines))
        ]
        bc.write_json(args.json, payload)
    if "lag" in parts:
        payload["lag"] = asyncio.run(bench_loop_lag(phases, lag_photo))
        bc.write_json(args.json, payload)
    if "preview" in parts:
        bc.log("the live preview's cost in NST job time")
        pairs, side = (1, 64) if args.smoke else (args.preview_pairs, args.preview_side)
        payload["preview"] = bench_preview(pairs, side, "fast" if args.smoke else "balanced")
        bc.write_json(args.json, payload)
    if "large" in parts:
        # 24 and 39 megapixels: phone and camera photos, the latter just under images.max_pixels (40).
        large = [(800, 600)] if args.smoke else [(6000, 4000), (7680, 5120)]
        fits = [("NST", 48), ("CycleGAN", 96)] if args.smoke else [("NST", 512), ("CycleGAN", 1024)]
        payload["large"] = bench_large_photos(large, fits, repeats=1 if args.smoke else 3)
    if "instant" in parts:
        bc.log("instant (AdaIN) jobs through the watched folder of `nstd run`")
        settle_values = [float(v) for v in args.instant_settle.split(",") if v.strip()] or [None]
        payload["instant"] = bench_instant_jobs(
            jpeg((64, 48) if args.smoke else (512, 384), seed=11),
            jpeg((64, 64) if args.smoke else (512, 512), seed=12),
            warm_jobs=1 if args.smoke else args.instant_jobs,
            max_side=64 if args.smoke else 512,
            settle_values=settle_values,
        )
        bc.write_json(args.json, payload)
    payload["machine"] = {
        **payload["machine"],
        **{k: v for k, v in bc.machine_info().items() if k in ("torch", "onnxruntime")},
    }
    payload["targets"] = targets(payload)
    bc.write_json(args.json, payload)

    tables = []
    if "bot" in payload:
        tables.append(
            (
                "No-op jobs through the daemon and the fake Bot API (loopback)",
                [
                    "photo",
                    "fake server's process",
                    "engines in",
                    "jobs/s",
                    "burst failed",
                    "latency median ms",
                    "added median ms",
                    "added p90 ms",
                    "fake server CPU ms/job",
                    "rest CPU ms/job",
                    "engine ms",
                    "decode ms",
                    "encode ms",
                ],
                [
                    [
                        f"{r['photo'][0]}x{r['photo'][1]}",
                        "child" if r["fake_server"] == "process" else "this one",
                        r["engines"],
                        r["jobs_per_s"],
                        f"{r['burst_failed']} of {r['burst_jobs']}",
                        r["latency_median_s"] * 1000,
                        r["added_latency_median_s"] * 1000,
                        r["added_latency_p90_s"] * 1000,
                        r["fake_server_cpu_ms_per_job"],
                        r["rest_cpu_ms_per_job"],
                        r["engine_median_s"] * 1000,
                        r["decode_ms"],
                        r["encode_ms"],
                    ]
                    for r in payload["bot"]
                ],
            )
        )
    if "idle" in payload:
        idle = payload["idle"]
        tables.append(
            (
                "`nstd run`, idle, bot polling, before any model loads",
                ["measure", "value"],
                [
                    ["VmRSS MB", idle["vm_rss_mb"]],
                    ["VmHWM MB", idle["vm_hwm_mb"]],
                    ["startup s", idle["startup_s"]],
                    ["torch loaded", str(idle["torch_loaded"])],
                    ["onnxruntime loaded", str(idle["onnxruntime_loaded"])],
                    ["VmRSS MB without a token (no bot)", idle["no_bot"]["vm_rss_mb"]],
                    [
                        "torch/onnxruntime loaded without a token",
                        str(idle["no_bot"]["torch_loaded"] or idle["no_bot"]["onnxruntime_loaded"]),
                    ],
                ],
            )
        )
        tables.append(
            (
                "Where it goes: RSS added by each import, in a fresh interpreter",
                ["import", "+MB", "RSS MB", "import s"],
                [[r["module"], r["added_mb"], r["rss_mb"], r["seconds"]] for r in idle["imports"]],
            )
        )
    if "lag" in payload:
        tables.append(
            (
                "Event-loop lag (10 ms sleep probe) while a real job runs",
                ["engines in", "phase", "job s", "p50 ms", "p99 ms", "max ms", "state"],
                [
                    [
                        "the engine process" if r["place"] == "engine process" else "the daemon's (before)",
                        r["phase"],
                        r["job_s"],
                        r["lag_p50_ms"],
                        r["lag_p99_ms"],
                        r["lag_max_ms"],
                        r["state"],
                    ]
                    for r in payload["lag"]
                ],
            )
        )
    if "large" in payload:
        tables.append(
            (
                "Large photos: decode and fit before the engine, in full against at the scale the fit needs",
                [
                    "photo",
                    "engine, max_side",
                    "full: decoded",
                    "ms",
                    "peak +MB",
                    "reduced: decoded",
                    "ms",
                    "peak +MB",
                    "speedup",
                    "PSNR dB",
                ],
                [
                    [
                        f"{r['photo'][0]}x{r['photo'][1]} ({r['jpeg_mb']:.1f} MB)",
                        f"{r['engine']}, {r['max_side']}",
                        "x".join(map(str, r["full_decoded"])),
                        r["full_ms"],
                        r["full_peak_added_mb"],
                        "x".join(map(str, r["reduced_decoded"])),
                        r["reduced_ms"],
                        r["reduced_peak_added_mb"],
                        bc.ratio(r["full_ms"], r["reduced_ms"]),
                        r["psnr_db"],
                    ]
                    for r in payload["large"]
                ],
            )
        )
    if "preview" in payload:
        r = payload["preview"]
        tables.append(
            (
                f"Live preview: NST {r['preset']} at {r['side']} px, a frame each {r['preview_every_s']:g} s",
                ["preview", "job s (median)", "runs", "frames per job", "kB per frame"],
                [
                    ["off", r["off_median_s"], " ".join(f"{s:.1f}" for s in r["off_s"]), "-", "-"],
                    [
                        "on",
                        r["on_median_s"],
                        " ".join(f"{s:.1f}" for s in r["on_s"]),
                        r["frames_per_job"],
                        r["frame_kb"],
                    ],
                    [
                        "snapshot",
                        f"{r['snapshot_ms']:.1f} ms",
                        "",
                        "",
                        f"{r['snapshot_cost_pct']:.2f} % of a job",
                    ],
                ],
            )
        )
    for r in payload.get("instant", []):
        tables.append(instant_table(r))
    tables.append(
        (
            "Targets",
            ["target", "value", "limit", "verdict"],
            [[t["label"], t["value"], t["limit_text"], t["verdict"]] for t in payload["targets"]],
        )
    )
    bc.print_tables(tables, args.json)
    return 0


INSTANT_STAGES = (
    ("total", "dropped file -> result in outbox/"),
    ("drop_to_row", "  detected, settle_s wait, read, intake check, row and inputs written"),
    ("row_to_claim", "  the worker claims the job"),
    ("engine", "  engine: inputs read, to the engine process and back (decode, AdaIN, encode)"),
    ("store_and_done", "  result stored, row marked done"),
    ("delivery", "  delivery: result written to outbox/, original moved to done/"),
)
INSTANT_COMPONENTS = (
    ("decode", "    decode of photo and style (runner.decode_inputs)"),
    ("stylize", "    AdaINEngine.stylize (ORT: 2 encoder passes, the decoder)"),
    ("style_encoder_pass", "      of which the style's encoder pass"),
    ("encode", "    JPEG encode of the result"),
    ("session_load", "  (cold only) both ORT sessions opened"),
)


def instant_table(r: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]]:
    median = r["warm_median_ms"]
    rows: list[list[Any]] = [
        [label, r["cold"][key], median[key], " ".join(f"{job[key]:.0f}" for job in r["warm"])]
        for key, label in INSTANT_STAGES
    ]
    parts = r["components_ms"]
    rows += [[label, None, parts[key], "alone, median of 3"] for key, label in INSTANT_COMPONENTS]
    loads = ", ".join(f"{load:.1f}" for load in r["loadavg_1min"])
    width, height = r["result_size"]
    return (
        f"Instant (AdaIN) job through the watched folder, result {width}x{height}, "
        f"watch.settle_s {r['watch_settle_s']:g}; load average {loads}",
        ["stage (ms)", "cold job", "warm median", "warm runs"],
        rows,
    )


def bot_row_label(row: dict[str, Any]) -> str:
    if row["fake_server"] == "thread":
        return "upper bound (fake server in this process)"
    if row["engines"] == "engine process":
        return "as the daemon runs (engine process)"
    return "engines in the daemon's process (before)"


def targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in payload.get("bot", []):
        value = r["added_latency_median_s"] * 1000
        rows.append(
            {
                "label": f"added latency per job, {r['photo'][0]}x{r['photo'][1]} photo, median (ms), "
                + bot_row_label(r),
                "value": value,
                "limit_text": "≤ 50",
                "verdict": bc.verdict(value, 50),
            }
        )
    if "idle" in payload:
        value = payload["idle"]["vm_rss_mb"]
        rows.append(
            {
                "label": "idle RSS of nstd run, bot polling (MB)",
                "value": value,
                "limit_text": "≤ 150",
                "verdict": bc.verdict(value, 150),
            }
        )
        value = payload["idle"]["no_bot"]["vm_rss_mb"]
        rows.append(
            {
                "label": "idle RSS of nstd run, no token (MB)",
                "value": value,
                "limit_text": "≤ 150",
                "verdict": bc.verdict(value, 150),
            }
        )
    if "preview" in payload:
        value = payload["preview"]["cost_pct"]
        rows.append(
            {
                "label": "live preview's cost in NST job time, median on vs off (%)",
                "value": value,
                "limit_text": "≤ 3",
                "verdict": bc.verdict(value, 3),
            }
        )
    for r in payload.get("instant", []):
        value = r["warm_median_ms"]["total"] / 1000
        rows.append(
            {
                "label": "instant job, dropped file to result, warm median (s), watch.settle_s "
                f"{r['watch_settle_s']:g}",
                "value": value,
                "limit_text": "≤ 2",
                "verdict": bc.verdict(value, 2),
            }
        )
    # The target is the daemon as it runs: the engines in their process. The "before" rows are compared in
    # the lag table only.
    for r in payload.get("lag", []):
        if r["place"] != "engine process":
            continue
        rows.append(
            {
                "label": f"loop lag p99, {r['phase']}, engines in their process (ms)",
                "value": r["lag_p99_ms"],
                "limit_text": "≤ 50",
                "verdict": bc.verdict(r["lag_p99_ms"], 50),
            }
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
