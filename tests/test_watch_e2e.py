"""The watched folder through `nstd run` as a real process: the same name dropped twice keeps both results."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import wait_until
from PIL import Image

from nst_daemon import imaging
from nst_daemon.config import load_settings


def drop(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    """Write a photo under a temporary name and rename it in, as a careful copy would."""
    data = imaging.encode_image(Image.new("RGB", size, color), "jpeg")
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.rename(path)
    return data


def replies(db_path: Path) -> dict[int, dict]:
    with sqlite3.connect(db_path) as conn:
        return {row[0]: json.loads(row[1]) for row in conn.execute("select id, reply from jobs order by id")}


def test_the_same_name_dropped_twice_gets_two_results(daemon_config, daemon_process) -> None:
    config = daemon_config(watch={"enabled": True, "settle_s": 0.1})
    settings = load_settings(config)
    watch = settings.watch.dir
    inbox, outbox, done = (watch / top / "monet" for top in ("inbox", "outbox", "done"))
    daemon = daemon_process(config).start()

    first_photo = drop(inbox / "beach.jpg", (220, 140, 40))
    wait_until((done / "beach.jpg").exists, 90, 0.1, "the first beach.jpg done")
    first_result = (outbox / "beach.monet.jpg").read_bytes()
    second_photo = drop(inbox / "beach.jpg", (40, 140, 220))
    wait_until((done / "beach-1.jpg").exists, 90, 0.1, "the second beach.jpg done")
    assert daemon.stop() == 0

    assert sorted(p.name for p in outbox.iterdir()) == ["beach-1.monet.jpg", "beach.monet.jpg"]
    assert (outbox / "beach.monet.jpg").read_bytes() == first_result  # untouched by the second job
    assert (outbox / "beach-1.monet.jpg").read_bytes() != first_result
    assert (done / "beach.jpg").read_bytes() == first_photo
    assert (done / "beach-1.jpg").read_bytes() == second_photo
    for name in ("beach.monet.jpg", "beach-1.monet.jpg"):
        Image.open(outbox / name).load()
    # Each job's row says where its result went (`nstd jobs show` reads it).
    recorded = replies(settings.db_path)
    assert [(reply["result_path"], reply["original_path"]) for reply in recorded.values()] == [
        (str(outbox / "beach.monet.jpg"), str(done / "beach.jpg")),
        (str(outbox / "beach-1.monet.jpg"), str(done / "beach-1.jpg")),
    ]
