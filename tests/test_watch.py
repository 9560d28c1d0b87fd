"""The watched folder, driven through the real daemon in-process with real CycleGAN models."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

from conftest import wait_until
from PIL import Image

from nst_daemon import imaging
from nst_daemon.config import load_settings
from nst_daemon.daemon import Daemon
from nst_daemon.errors import NstdError
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


def name_of_255_bytes(char: str, suffix: str) -> str:
    """A name of exactly 255 bytes in UTF-8, mostly `char`: the longest a Linux file system takes."""
    room = 255 - len(suffix)
    count = room // len(char.encode())
    return "a" * (room - count * len(char.encode())) + char * count + suffix


def test_hostile_names_are_delivered_or_refused_and_quoted_in_the_log(
    tmp_path: Path, daemon_config, caplog
) -> None:
    caplog.set_level(logging.INFO)
    settings = load_settings(daemon_config(watch={"enabled": True, "settle_s": 0.1}))
    watch = settings.watch.dir
    forged = "evil\nwatch: 'innocent.jpg' -> job 99.jpg"
    long_photo = name_of_255_bytes("漢", ".jpg")
    long_text = name_of_255_bytes("é", ".txt")
    outbox, failed = watch / "outbox" / "monet", watch / "failed"

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            photo(watch / "inbox" / "monet" / forged, (200, 30, 30))
            photo(watch / "inbox" / "monet" / long_photo, (30, 200, 30))
            (watch / "inbox" / "cezanne" / long_text).write_text("not an image")
            not_utf8 = os.path.join(os.fsencode(watch / "inbox" / "monet"), b"caf\xe9.jpg")  # Latin-1
            with open(not_utf8, "wb") as handle:
                handle.write(imaging.encode_image(Image.new("RGB", (40, 30), (9, 9, 9)), "jpeg"))

            def settled() -> bool:
                return (
                    len([p for p in outbox.iterdir() if not p.name.startswith(".")]) == 2
                    and len(list((failed / "cezanne").glob("*.error.txt"))) == 1
                    and len(list((failed / "monet").glob("*.error.txt"))) == 1
                )

            await asyncio.to_thread(wait_until, settled, 120, 0.1, "two results and two refusals")
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()
        assert not list((watch / "inbox" / "monet").iterdir())
        assert not list((watch / "inbox" / "cezanne").iterdir())

    asyncio.run(scenario())
    results = sorted(p.name for p in outbox.iterdir())
    assert f"{forged.removesuffix('.jpg')}.monet.jpg" in results
    (cut,) = [name for name in results if "漢" in name]
    assert cut.endswith(".monet.jpg") and len(os.fsencode(cut)) <= 255
    assert long_photo.startswith(cut.removesuffix(".monet.jpg"))
    assert (watch / "done" / "monet" / long_photo).exists()
    (reason_file,) = (failed / "cezanne").glob("*.error.txt")
    assert len(os.fsencode(reason_file.name)) <= 255
    assert (failed / "cezanne" / reason_file.name.removesuffix(".error.txt")).read_text() == "not an image"
    assert "not an image type" in reason_file.read_text()
    (reason_file,) = (failed / "monet").glob("*.error.txt")
    assert "not valid UTF-8" in reason_file.read_text()
    # Every name is quoted: no message carries a raw newline, the forged line stays inside its quotes.
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "\n" in m or "\r" in m]
    assert any(repr(f"monet/{forged}") in m and "-> job" in m for m in messages), messages
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]


def test_hostile_files_end_in_failed_with_a_reason_and_never_block(tmp_path: Path, daemon_config) -> None:
    settings = load_settings(daemon_config(watch={"enabled": True, "settle_s": 0.1}))
    watch = settings.watch.dir
    inbox, failed = watch / "inbox", watch / "failed"
    secret = tmp_path / "secret.jpg"
    photo(secret, (1, 2, 3), (32, 32))
    swapped = inbox / "monet" / "swap.jpg"
    relinked, elsewhere = inbox / "cezanne" / "private.jpg", tmp_path / "private"
    elsewhere.mkdir()
    private = photo(elsewhere / "private.jpg", (4, 5, 6))

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        checked = daemon.watcher._problem_with
        seen: set[Path] = set()

        def swap_after_the_checks(path: Path) -> str | None:
            # A FIFO swapped in under a name that passed the checks: the read must not wait for a writer.
            # A folder swapped for a link to another one: neither the read nor the move may follow it.
            problem = checked(path)
            if path == swapped:
                path.unlink()
                os.mkfifo(path)
            if path == relinked:
                seen.add(path)
                (inbox / "cezanne").rename(tmp_path / "cezanne-before")
                (inbox / "cezanne").symlink_to(elsewhere)
            return problem

        daemon.watcher._problem_with = swap_after_the_checks
        try:
            photo(swapped, (10, 10, 10))
            photo(relinked, (7, 8, 9))
            os.mkfifo(inbox / "monet" / "pipe.jpg")
            with (inbox / "monet" / "huge.jpg").open("wb") as handle:
                handle.truncate(200 * 1024 * 1024)  # sparse: 200 MB that take no disk
            photo(watch / "styles" / "a.jpg", (200, 0, 0), (32, 32))
            (watch / "styles" / "shadow.jpg").symlink_to(secret)
            photo(inbox / "nst" / "painted.jpg", (0, 90, 200))
            reasons = {
                failed / "monet" / "swap.jpg.error.txt": "not a regular file",
                failed / "monet" / "pipe.jpg.error.txt": "not a regular file",
                failed
                / "monet"
                / "huge.jpg.error.txt": "file is 200.0 MB; the limit is 50 MB (images.max_bytes)",
                failed / "nst" / "painted.jpg.error.txt": "style image 'shadow.jpg' in",
            }
            try:
                for reason, expected in reasons.items():
                    await asyncio.to_thread(wait_until, reason.exists, 30, 0.1, str(reason))
                    assert expected in reason.read_text(), reason.read_text()
                assert (
                    "symbolic links are not followed"
                    in (failed / "nst" / "painted.jpg.error.txt").read_text()
                )
            finally:
                with contextlib.suppress(OSError):  # a reader blocked on the FIFO gets its end of file
                    os.close(os.open(swapped, os.O_WRONLY | os.O_NONBLOCK))
            # The file behind the link was neither read nor moved: the drop waits, with a line in the log.
            await asyncio.to_thread(
                wait_until,
                lambda: seen and relinked not in daemon.watcher._settling,
                30,
                0.1,
                "the relinked drop",
            )
            assert daemon.queue.db["jobs"].count == 0
            assert (elsewhere / "private.jpg").read_bytes() == private
            assert not (failed / "cezanne").exists() or not list((failed / "cezanne").iterdir())
            # Other files are unaffected.
            photo(inbox / "monet" / "fine.jpg", (90, 90, 90))
            result = watch / "outbox" / "monet" / "fine.monet.jpg"
            await asyncio.to_thread(wait_until, result.exists, 120, 0.1, "fine.jpg's result")
            assert daemon.queue.db["jobs"].count == 1
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()

    asyncio.run(scenario())
    assert not [p for p in inbox.rglob("*") if not p.is_dir()]


def test_errors_that_are_not_the_files_fault_leave_it_in_the_inbox(
    tmp_path: Path, daemon_config, caplog
) -> None:
    """A full disk or a shutdown leaves a file for the next scan; an error that keeps coming back for one
    file moves it to failed/ with the error as its reason. One line each in the log, never a traceback."""
    caplog.set_level(logging.INFO)
    settings = load_settings(daemon_config(watch={"enabled": True, "settle_s": 0.1}))
    inbox, failed = settings.watch.dir / "inbox" / "monet", settings.watch.dir / "failed" / "monet"
    errors = {
        "full.jpg": OSError(errno.ENOSPC, "No space left on device"),
        "closing.jpg": NstdError("nstd is shutting down; try again in a minute"),
        "cursed.jpg": RuntimeError("boom"),
    }

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        attempts: dict[str, int] = {}

        async def failing_submit(request: Any) -> Any:
            name = Path(request.owner).name
            attempts[name] = attempts.get(name, 0) + 1
            raise errors[name]

        daemon.queue.submit = failing_submit
        watcher = daemon.watcher
        try:
            for name in errors:
                photo(inbox / name, (40, 40, 40))
            # Four passes, as four rescans would make them, each once the previous one has ended.
            for passes in range(1, 5):
                await asyncio.to_thread(
                    wait_until,
                    lambda n=passes: (
                        all(attempts.get(name, 0) >= min(n, 3) for name in errors) and not watcher._settling
                    ),
                    30,
                    0.05,
                    f"pass {passes}",
                )
                watcher.scan()
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()
        assert attempts["cursed.jpg"] == 3 and attempts["full.jpg"] >= 4 and attempts["closing.jpg"] >= 4

    asyncio.run(scenario())
    assert sorted(p.name for p in inbox.iterdir()) == ["closing.jpg", "full.jpg"]
    reason = (failed / "cursed.jpg.error.txt").read_text()
    assert reason == "nstd could not take this file: RuntimeError: boom\n"
    assert (failed / "cursed.jpg").exists()
    messages = [r.getMessage() for r in caplog.records if r.name == "nst_daemon.watch"]
    assert any("'monet/full.jpg' waits in the inbox: OSError: [Errno 28]" in m for m in messages), messages
    assert any("'monet/closing.jpg' waits for the next scan: nstd is shutting down" in m for m in messages)
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]


def test_a_file_is_taken_once_its_writer_closes_it_not_a_whole_settle_later(
    tmp_path: Path, daemon_config
) -> None:
    """With a settle time far longer than the test, a photo is taken only because its writer closed it
    (inotify's close-after-write), and a photo still open for writing is never taken half-written."""
    settings = load_settings(daemon_config(watch={"enabled": True, "settle_s": 120}))
    inbox = settings.watch.dir / "inbox" / "monet"
    data = imaging.encode_image(Image.new("RGB", (48, 36), (200, 90, 30)), "jpeg")

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        try:

            def taken(path: Path) -> bool:
                return daemon.queue.job_store.folder_file_taken(str(path))

            async def until_taken(path: Path) -> None:
                deadline = time.monotonic() + 30  # the settle would be 120 s
                while not taken(path):
                    assert time.monotonic() < deadline, f"{path.name} was not taken"
                    await asyncio.sleep(0.05)

            saved_at_once = inbox / "at-once.jpg"
            saved_at_once.write_bytes(data)
            await until_taken(saved_at_once)

            still_open = inbox / "still-open.jpg"
            with still_open.open("wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                # Its writer has not closed it: nothing ends the 120 s settle, however long this takes.
                await asyncio.sleep(1.0)
                assert not taken(still_open)
                handle.write(data[len(data) // 2 :])
            await until_taken(still_open)
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()

    asyncio.run(scenario())
