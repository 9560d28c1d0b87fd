"""Chaos suite: the real daemon (`nstd run`) against the fake Bot API on 127.0.0.1, under faults.

    /work/main/.venv/bin/python scripts/chaos.py                       # every scenario, full size
    /work/main/.venv/bin/python scripts/chaos.py --small --scenarios crash_loop --json out.json

Scenarios (issue 19): crash_loop, disk_full, burst, lock_holder, bad_files. Each runs its own daemon with
its own state dir and config, random-init models in the upstream formats, CycleGAN at max_side 64.
Everything is seeded (`--seed`) and bounded in time. The books (scripts/chaos_ledger.py) are kept from
what the fake server received, never from the daemon's log: per scenario photos sent, results, "send
again" replies, refusals, lost, duplicates (and those a kill right after a delivery explains), stuck status
messages, the daemon's peak memory, whether it is alive at the end, and its SIGTERM exit code and time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common as bc
import chaos_doors as doors
from chaos_harness import STYLE, Daemon, make_models, photo, write_daemon_config
from chaos_ledger import Ledger, Photo, TelegramLimits, count, markdown_table, print_table
from fake_telegram import SEND_METHODS, FakeTelegram

EDIT_METHODS = ("editMessageText", "editMessageCaption", "editMessageMedia")

SCENARIOS = ("crash_loop", "disk_full", "burst", "lock_holder", "bad_files")
FIRST_USER = 7001


class LimitedTelegram(FakeTelegram):
    """The fake Bot API with the harness's Telegram-like flood limits in front of every method."""

    def __init__(self, limits: TelegramLimits | None = None) -> None:
        super().__init__()
        self.limits = limits

    async def _dispatch(self, method: str, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        if self.limits is not None:
            chat = str(params.get("chat_id", ""))
            wait = self.limits.check(method, int(chat) if chat.lstrip("-").isdigit() else None)
            if wait:
                return self._error(429, f"Too Many Requests: retry after {wait}", wait)
        return await super()._dispatch(method, params, files)


class Scene:
    """One scenario's world: a fake server, a supervised daemon, the photos sent and the kills."""

    def __init__(
        self,
        name: str,
        args: argparse.Namespace,
        users: int,
        *,
        limits: TelegramLimits | None = None,
        watch: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.dir = args.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users = list(range(FIRST_USER, FIRST_USER + users))
        self.server = LimitedTelegram(limits).start()
        config = write_daemon_config(
            self.dir, args.models, self.server.base_url, self.users, state_dir=state_dir, watch=watch
        )
        self.db = (state_dir or self.dir / "state") / "nstd.sqlite3"
        self.daemon = Daemon(config, self.dir)
        self.photos: list[Photo] = []
        self.seed = 0

    def send(
        self,
        user: int,
        *,
        document: bytes | None = None,
        mime: str = "image/png",
        size: int | None = None,
        name: str = "image.png",
    ) -> Photo:
        """A captioned photo (distinct bytes each time), or a document when given."""
        self.seed += 1
        if document is None:
            message = self.server.send_photo(user, photo(self.seed), caption=STYLE)
        else:
            message = self.server.send_document(
                user, document, file_name=name, mime_type=mime, file_size=size, caption=STYLE
            )
        sent = Photo(user, message["message_id"], message["update_id"], time.monotonic())
        self.photos.append(sent)
        return sent

    def ledger(self) -> Ledger:
        return count(self.photos, self.server.find(), self.daemon.kills)

    def sends(self) -> int:
        """Messages, photos and documents the bot sent so far: progress (status edits are not)."""
        return len(self.server.find(lambda call: call.method in SEND_METHODS and call.ok))

    def activity(self) -> int:
        """Sends and status edits so far: what settling waits out, so that a status message is counted in
        the state it ends in (edits yield to results, so they can trail the last result by seconds)."""
        return len(
            self.server.find(
                lambda call: (call.method in SEND_METHODS or call.method in EDIT_METHODS) and call.ok
            )
        )

    def drain(self) -> None:
        """Wait until every photo is answered, or nothing was sent for `quiet` seconds, or the limit.
        Edits do not count as progress: a daemon can keep rewriting queue positions with nothing moving."""
        limit, quiet = (90.0, 25.0) if self.args.small else (300.0, 45.0)
        deadline = time.monotonic() + limit
        last, quiet_since = self.sends(), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet:
            if self.ledger().lost == 0:
                # Everything answered: until nothing is sent or edited for 3 s, for a second delivery to
                # show itself and the status messages to reach the state they end in.
                settled = min(deadline, time.monotonic() + 60)
                while time.monotonic() < settled:
                    before = self.activity()
                    time.sleep(3.0)
                    if self.activity() == before:
                        break
                break
            time.sleep(1.0)
            if (now := self.sends()) != last:
                last, quiet_since = now, time.monotonic()

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Count, then SIGTERM the daemon: alive is measured before the harness stops it."""
        ledger = self.ledger()
        calls = self.server.find()
        edits: dict[tuple[int | None, int | None], int] = {}
        for call in calls:
            if call.method == "editMessageText":
                key = (call.chat_id, call.message_id)
                edits[key] = edits.get(key, 0) + 1
        alive = self.daemon.alive()
        code, stop_s = self.daemon.stop(timeout=60)
        return {
            **ledger.as_dict(),
            "alive": alive,
            "sigterm_exit_code": code,
            "sigterm_s": round(stop_s, 1),
            "edits": sum(edits.values()),
            "max_edits_per_message": max(edits.values(), default=0),
            "answered_429": sum(1 for call in calls if call.status == 429),
            **self.daemon.summary(),
            **extra,
        }

    def close(self) -> None:
        self.daemon.close()
        self.server.stop()


# --- the scenarios ------------------------------------------------------------------------------------------


def crash_loop(args: argparse.Namespace) -> dict[str, Any]:
    """A photo every 0.5 s, round robin over several users, while the daemon is SIGKILLed after a seeded
    random uptime and restarted `restart_s` later, as systemd/nstd.service does (Restart=on-failure,
    RestartSec=10): the photos sent meanwhile wait at Telegram and arrive at the next daemon all at once.
    Then it drains.

    With --small the uptime counts from the moment the daemon first confirms updates to Telegram (a
    getUpdates with a higher offset) instead of from "nstd is running": a kill then always falls while
    the restart backlog is being taken in, the moment that loses photos without durable intake. CI must
    catch that every run, not when a random uptime happens to hit it."""
    users, count_, kills, restart_s, uptime = (
        (3, 30, 3, 2.0, (0.0, 0.1)) if args.small else (5, 400, 10, 10.0, (0.5, 8.0))
    )
    interval = 0.5
    rng = random.Random(args.seed)
    scene = Scene("crash_loop", args, users)
    uptimes: list[float] = []
    try:
        scene.daemon.start()
        started = time.monotonic()
        sent, kill_at, restart_at, confirmed = 0, None, None, scene.server.confirmed_offset
        limit = started + count_ * interval + kills * (restart_s + 60)
        while (sent < count_ or len(scene.daemon.kills) < kills) and time.monotonic() < limit:
            now = time.monotonic()
            if sent < count_ and now >= started + sent * interval:
                scene.send(scene.users[sent % users])
                sent += 1
            if restart_at is not None:
                if now >= restart_at:
                    confirmed = scene.server.confirmed_offset
                    scene.daemon.start(wait=False)
                    restart_at = None
            elif len(scene.daemon.kills) < kills:
                # Uptime counts from "nstd is running": a daemon killed while it starts tests nothing new.
                ready = scene.daemon.running() and (
                    not args.small or scene.server.confirmed_offset > confirmed
                )
                if kill_at is None and ready:
                    uptimes.append(round(rng.uniform(*uptime), 2))
                    kill_at = now + uptimes[-1]
                if kill_at is not None and now >= kill_at:
                    scene.daemon.sigkill()
                    kill_at, restart_at = None, now + restart_s
            time.sleep(0.005)
        if restart_at is not None:
            time.sleep(max(0.0, restart_at - time.monotonic()))
            scene.daemon.start(wait=False)
        scene.daemon.wait_running(120)
        scene.drain()
        return scene.finish(interval_s=interval, users=users, restart_s=restart_s, uptimes_s=uptimes)
    finally:
        scene.close()


def disk_full(args: argparse.Namespace) -> dict[str, Any]:
    """The state dir on a small tmpfs. Photos arrive 0.2 s apart throughout: the first fifth with space,
    then the tmpfs is filled while jobs are in flight, and `hold_s` after the fourth fifth it is freed
    (space returns) while the last fifth arrives."""
    count_, hold_s = (20, 5.0) if args.small else (100, 10.0)
    mount = args.workdir / "disk_full-tmpfs"
    mount.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["mount failed"]
        return {"skipped": f"needs root and mount: {reason[0]}"}
    scene = None
    try:
        scene = Scene("disk_full", args, 5, state_dir=mount / "state")
        scene.daemon.start()
        filler, filled = mount / "filler", 0
        for index in range(count_):
            if index == count_ // 5:
                filled = doors.fill_disk(filler)
            if index == 4 * count_ // 5:
                time.sleep(hold_s)
                filler.unlink()  # space returns: intake and the worker should resume by themselves
            scene.send(scene.users[index % 5])
            time.sleep(0.2)
        scene.drain()
        return scene.finish(filled_mb=round(filled / bc.MB, 1), held_full_s=hold_s)
    finally:
        if scene is not None:
            scene.close()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def burst(args: argparse.Namespace) -> dict[str, Any]:
    """150 photos at once from ten users, under Telegram-like flood limits (the harness's, on top of any
    the fake server enforces by default)."""
    users, count_ = (5, 30) if args.small else (10, 150)
    limits = TelegramLimits()
    scene = Scene("burst", args, users, limits=limits)
    try:
        scene.daemon.start()
        for index in range(count_):
            scene.send(scene.users[index % users])
        scene.drain()
        return scene.finish(limits_refused=limits.refused)
    finally:
        scene.close()


def lock_holder(args: argparse.Namespace) -> dict[str, Any]:
    """Another process holds SQLite's write lock (BEGIN IMMEDIATE) for 12 s while photos arrive."""
    count_, hold_s = (16, 12.0) if args.small else (40, 12.0)
    scene = Scene("lock_holder", args, 4)
    holder: subprocess.Popen[str] | None = None
    try:
        scene.daemon.start()
        code = (
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2])); c.execute('COMMIT'); print('released', flush=True)\n"
        )
        started = time.monotonic()
        for index in range(count_):
            if index == 8:  # two seconds in, photos still arriving
                holder = subprocess.Popen(
                    [sys.executable, "-c", code, str(scene.db), str(hold_s)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert holder.stdout is not None
                holder.stdout.readline()  # "locked": the lock is held from here
            scene.send(scene.users[index % 4])
            time.sleep(max(0.0, started + (index + 1) * 0.25 - time.monotonic()))
        if holder is not None:
            holder.wait(hold_s + 30)
        scene.drain()
        return scene.finish(lock_held_s=hold_s)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        scene.close()


def bad_files(args: argparse.Namespace) -> dict[str, Any]:
    """Damaged, huge, sliver and non-image files through Telegram and the watched folder, then concurrent
    40 MP PNG/WebP uploads: the daemon's peak memory for those is measured on its own."""
    uploads = 4 if args.small else 10
    scene = Scene("bad_files", args, 8 + uploads, watch=True)
    try:
        scene.daemon.start()
        cache = args.workdir / "cache"
        files = doors.bad_files(cache)
        telegram = [
            (name, scene.send(scene.users[index % 8], document=data, mime=mime, size=size, name=name))
            for index, (name, data, mime, size) in enumerate(files)
        ]
        watch = scene.dir / "watch"
        dropped = doors.drop_in_watch(watch, cache, files)
        scene.send(scene.users[0])  # a good photo after the bad ones: the daemon still works
        scene.drain()
        doors_outcome = doors.watch_outcome(watch, dropped)
        outcomes = scene.ledger().outcomes
        telegram_doors = {name: outcomes[(sent.chat_id, sent.message_id)] for name, sent in telegram}
        doors_peak = scene.daemon.summary()
        scene.daemon.reset_peaks()
        big = doors.large_images(cache, uploads)
        for index, (name, data, mime) in enumerate(big):
            scene.send(scene.users[8 + index], document=data, mime=mime, name=name)
        scene.drain()
        return scene.finish(
            uploads_40mp=uploads,
            telegram_doors=telegram_doors,
            watch_doors=doors_outcome,
            watch_lost=sum(1 for outcome in doors_outcome.values() if outcome == "lost"),
            doors_peak_daemon_rss_mb=doors_peak["peak_daemon_rss_mb"],
            doors_peak_tree_rss_mb=doors_peak["peak_tree_rss_mb"],
        )
    finally:
        scene.close()


RUNNERS = {
    "crash_loop": crash_loop,
    "disk_full": disk_full,
    "burst": burst,
    "lock_holder": lock_holder,
    "bad_files": bad_files,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chaos.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS)
    )
    parser.add_argument("--small", action="store_true", help="CI size: a few kills, about 30 photos")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", type=Path, default=bc.RESULTS_DIR / "chaos.json")
    parser.add_argument("--models", type=Path, help="an installed models dir to reuse (else made once)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (daemon logs) afterwards")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = parser.parse_args(argv)
    args.names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in args.names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = Path(tempfile.mkdtemp(prefix="nstd-chaos-"))
    payload: dict[str, Any] = {"machine": bc.machine_info(), "small": args.small, "seed": args.seed}
    results: dict[str, dict[str, Any]] = {}
    try:
        args.models = args.models or make_models(args.workdir / "models")
        for name in args.names:
            bc.log(f"{name}: starting")
            started = time.monotonic()
            try:
                results[name] = RUNNERS[name](args)
            except Exception as exc:  # one broken scenario must not hide the others' numbers
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            results[name]["wall_s"] = round(time.monotonic() - started, 1)
            bc.log(f"{name}: {results[name]}")
            payload["scenarios"] = results
            bc.write_json(args.json, payload)
    finally:
        if args.keep:
            bc.log(f"work dir kept: {args.workdir}")
        else:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"results written to {args.json}")
    print_table(results)
    if args.markdown:
        print(markdown_table(results))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    os._exit(130)
