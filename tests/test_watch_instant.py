"""inbox/instant/: every image in styles/ as the style, with instant AdaIN (inbox/nst/ keeps Gatys NST);
the watcher's claim and delivery against a queue that records what it is given."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from test_watch_files import RecordingQueue, folder_job
from toml_config import write_config

from nst_daemon.config import load_settings
from nst_daemon.jobs import JobRequest
from nst_daemon.watch import FolderWatcher


class SubmittingQueue(RecordingQueue):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[JobRequest] = []

    async def submit(self, request: JobRequest) -> Any:
        self.requests.append(request)
        return SimpleNamespace(id=len(self.requests))


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def watcher(tmp_path: Path) -> FolderWatcher:
    config = write_config(tmp_path / "config.toml", {"watch": {"dir": str(tmp_path / "watch")}})
    watcher = FolderWatcher(load_settings(config), SubmittingQueue())  # type: ignore[arg-type]
    watcher.create_folders()
    return watcher


@pytest.mark.parametrize(("folder", "engine"), [("instant", "adain"), ("nst", "nst")])
def test_style_image_folders_pick_their_engine(watcher: FolderWatcher, folder: str, engine: str) -> None:
    for top in ("inbox", "outbox", "done", "failed"):
        assert (watcher.root / top / folder).is_dir()
    (watcher.root / "styles" / "b.png").write_bytes(png((0, 0, 200)))
    (watcher.root / "styles" / "a.png").write_bytes(png((200, 0, 0)))
    photo = watcher.inbox / folder / "beach.png"
    photo.write_bytes(png((0, 120, 0)))
    asyncio.run(watcher._claim(photo, folder))
    (request,) = watcher.queue.requests
    assert request.engine == engine and request.styles == []
    assert request.style_images == [png((200, 0, 0)), png((0, 0, 200))]  # styles/ in name order
    assert request.reply["folder"] == folder


def test_an_instant_result_lands_in_outbox_instant(watcher: FolderWatcher) -> None:
    source = watcher.inbox / "instant" / "beach.jpg"
    source.write_bytes(b"photo")
    job = dataclasses.replace(folder_job(1, source, folder="instant"), engine="adain", styles=[])
    asyncio.run(watcher.outbox.deliver(job, b"result"))
    assert (watcher.root / "outbox" / "instant" / "beach.instant.jpg").read_bytes() == b"result"
    assert (watcher.root / "done" / "instant" / "beach.jpg").read_bytes() == b"photo"


def test_instant_without_style_images_fails_with_a_reason(watcher: FolderWatcher) -> None:
    photo = watcher.inbox / "instant" / "beach.png"
    photo.write_bytes(png((0, 120, 0)))
    asyncio.run(watcher._claim(photo, "instant"))
    assert not watcher.queue.requests
    reason = watcher.root / "failed" / "instant" / "beach.png.error.txt"
    assert "styles" in reason.read_text()
