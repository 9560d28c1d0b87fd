"""The watched folder, driven through the real daemon in-process with real CycleGAN models."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from conftest import wait_until
from PIL import Image

from nst_daemon import imaging
from nst_daemon.config import load_settings
from nst_daemon.daemon import Daemon
from nst_daemon.watch import is_temporary


def photo(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    data = imaging.encode_image(Image.new("RGB", size, color), "jpeg")
    path.write_bytes(data)
    return data


def test_temporary_names() -> None:
    for name in (
        ".hidden.jpg",
        "a.jpg.part",
        "b.crdownload",
        "c.tmp",
        "d.download",
        "e.partial",
        ".f.jpg.Xa81Kz",
    ):
        assert is_temporary(name), name
    assert not is_temporary("holiday.jpg")


def test_twenty_files_at_once(tmp_path: Path, daemon_config) -> None:
    config = daemon_config(
        watch={"enabled": True, "settle_s": 0.3}, queue={"max_pending": 50, "per_user": 50}
    )
    settings = load_settings(config)
    watch = settings.watch.dir
    # Files already there at start are processed too (catch-up).
    (watch / "inbox" / "monet").mkdir(parents=True)
    photo(watch / "inbox" / "monet" / "early.jpg", (10, 200, 10))

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            inbox = watch / "inbox"
            good = {"early.jpg": "monet"}
            for n in range(14):
                style = ("monet", "cezanne", "vangogh")[n % 3]
                photo(inbox / style / f"p{n:02}.jpg", (n * 15, 80, 200 - n * 10))
                good[f"p{n:02}.jpg"] = style
            # Duplicate events for one file must not create two jobs. Right after the writes: within
            # settle_s, so the file is surely still in the inbox (a second later it may be done already).
            for _ in range(3):
                daemon.watcher.consider(inbox / "monet" / "p00.jpg")
                os.utime(inbox / "monet" / "p00.jpg")
            (inbox / "ukiyoe" / "notes.jpg").write_text("not an image at all")
            (inbox / "ukiyoe" / "doc.pdf").write_bytes(b"%PDF-1.4")
            # Temporary names are ignored until renamed.
            photo(inbox / "monet" / "incoming.jpg.part", (1, 2, 3))
            photo(inbox / "monet" / ".rsync.jpg.a8Xk2q", (1, 2, 3))
            # A file written slowly in chunks is claimed only once it is complete.
            slow = inbox / "cezanne" / "slow.png"
            data = imaging.encode_image(Image.new("RGB", (48, 48), (250, 120, 0)), "png")
            with slow.open("wb") as handle:
                for start in range(0, len(data), max(1, len(data) // 4)):
                    handle.write(data[start : start + max(1, len(data) // 4)])
                    handle.flush()
                    await asyncio.sleep(0.15)
            good["slow.png"] = "cezanne"
            await asyncio.sleep(1.0)
            assert not list((watch / "outbox" / "monet").glob("incoming*"))
            os.rename(inbox / "monet" / "incoming.jpg.part", inbox / "monet" / "incoming.jpg")
            good["incoming.jpg"] = "monet"

            def all_done() -> bool:
                return all(
                    (watch / "outbox" / style / f"{Path(name).stem}.{style}.jpg").exists()
                    and (watch / "done" / style / name).exists()
                    for name, style in good.items()
                ) and (
                    (watch / "failed" / "ukiyoe" / "doc.pdf.error.txt").exists()
                    and (watch / "failed" / "ukiyoe" / "notes.jpg.error.txt").exists()
                )

            deadline = time.monotonic() + 90
            while not all_done() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert all_done(), sorted(str(p.relative_to(watch)) for p in watch.rglob("*") if p.is_file())
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()
        jobs = list(daemon.queue.db["jobs"].rows)
        assert len(jobs) == len(good), [j["owner"] for j in jobs]
        assert all(j["state"] == "done" and j["delivery"] == "delivered" for j in jobs)
        for name, style in good.items():
            result = Image.open(watch / "outbox" / style / f"{Path(name).stem}.{style}.jpg")
            original = Image.open(watch / "done" / style / name)
            assert result.size == original.size
        assert "not an image" in (watch / "failed" / "ukiyoe" / "notes.jpg.error.txt").read_text()
        assert "not an image type" in (watch / "failed" / "ukiyoe" / "doc.pdf.error.txt").read_text()
        assert (watch / "inbox" / "monet" / ".rsync.jpg.a8Xk2q").exists()
        assert not list((watch / "inbox").glob("*/*.jpg"))

    asyncio.run(scenario())


def test_nst_folder_uses_style_images_and_escape_is_rejected(tmp_path: Path, daemon_config) -> None:
    config = daemon_config(watch={"enabled": True, "settle_s": 0.1})
    settings = load_settings(config)
    watch = settings.watch.dir

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            # No style images yet: the drop fails with a reason naming the styles folder.
            photo(watch / "inbox" / "nst" / "first.jpg", (0, 90, 200))
            reason = watch / "failed" / "nst" / "first.jpg.error.txt"
            await asyncio.to_thread(wait_until, reason.exists, 20, message="failed/nst reason")
            assert "styles" in reason.read_text()
            photo(watch / "styles" / "a.jpg", (200, 0, 0), (32, 32))
            photo(watch / "styles" / "b.png", (0, 0, 200), (32, 32))
            photo(watch / "inbox" / "nst" / "second.jpg", (0, 90, 200))
            outbox = watch / "outbox" / "nst" / "second.nst.jpg"
            await asyncio.to_thread(wait_until, outbox.exists, 60, message="nst result")
            job = next(daemon.queue.db["jobs"].rows_where("owner like ?", ["%second.jpg"]))
            assert len(__import__("json").loads(job["input_keys"])) == 3  # content + two styles
            # A symlink pointing outside the folder is never read.
            secret = tmp_path / "secret.jpg"
            photo(secret, (9, 9, 9))
            (watch / "inbox" / "monet" / "link.jpg").symlink_to(secret)
            reason = watch / "failed" / "monet" / "link.jpg.error.txt"
            await asyncio.to_thread(wait_until, reason.exists, 20, message="symlink refused")
            assert "symbolic links" in reason.read_text()
            assert secret.exists()
            assert daemon.watcher._style_of(watch / "inbox" / "monet" / ".." / ".." / "x.jpg") is None
            assert daemon.watcher._style_of(watch / "inbox" / "monet" / "sub" / "x.jpg") is None
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()

    asyncio.run(scenario())


def test_a_file_outside_the_style_folders_fails_with_where_to_put_it(tmp_path: Path, daemon_config) -> None:
    config = daemon_config(watch={"enabled": True, "settle_s": 0.1})
    settings = load_settings(config)
    inbox = settings.watch.dir / "inbox"
    failed = settings.watch.dir / "failed"
    (inbox / "picasso").mkdir(parents=True)
    photo(inbox / "picasso" / "before.jpg", (10, 20, 30))  # there at start: found by the scan

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            photo(inbox / "loose.jpg", (40, 50, 60))  # found by its event
            (inbox / "Picasso2").mkdir()
            photo(inbox / "Picasso2" / "after.jpg", (70, 80, 90))
            reasons = {
                failed / "picasso" / "before.jpg.error.txt": "inbox/picasso/ is not a style folder",
                failed / "loose.jpg.error.txt": "inbox/ itself is not a style folder",
                failed / "Picasso2" / "after.jpg.error.txt": "inbox/Picasso2/ is not a style folder",
            }
            for reason, expected in reasons.items():
                await asyncio.to_thread(wait_until, reason.exists, 20, message=str(reason))
                text = reason.read_text()
                assert expected in text and "one of: monet, cezanne" in text, text
            assert (failed / "loose.jpg").exists() and not (inbox / "loose.jpg").exists()
            assert (failed / "picasso" / "before.jpg").exists()
            assert daemon.queue.db["jobs"].count == 0
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()

    asyncio.run(scenario())
