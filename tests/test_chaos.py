"""The chaos suite (scripts/chaos.py): its books, its flood limits, and a small crash loop against the real
daemon that must lose nothing and duplicate nothing (apart from a kill inside the delivery window)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_telegram import Call

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

from chaos_ledger import COLUMNS, Photo, TelegramLimits, answer_kind, count, markdown_table  # noqa: E402

CHAT = 42


def sent(method: str, message_id: int, at: float, text: str = "", reply_to: int | None = None,
         status: int = 200) -> Call:  # fmt: skip
    params: dict[str, Any] = {"chat_id": CHAT, "caption" if method != "sendMessage" else "text": text}
    if reply_to is not None:
        params["reply_parameters"] = {"message_id": reply_to, "allow_sending_without_reply": True}
    response = {"ok": True, "result": {"message_id": message_id}} if status == 200 else {"ok": False}
    return Call(method, params, {}, {}, status, response, at)


def edit(message_id: int, at: float, text: str) -> Call:
    params = {"chat_id": CHAT, "message_id": message_id, "text": text}
    return Call("editMessageText", params, {}, {}, 200, {"ok": True, "result": {}}, at)


def photos(*message_ids: int) -> list[Photo]:
    return [Photo(CHAT, message_id, message_id, 0.0) for message_id in message_ids]


def test_results_duplicates_and_lost_photos_are_counted_from_replies() -> None:
    calls = [
        sent("sendPhoto", 10, 1.0, "Monet · 1 s", reply_to=1),
        sent("sendPhoto", 11, 2.0, "Monet · 1 s", reply_to=2),
        sent("sendDocument", 12, 3.0, "Monet · 1 s", reply_to=2),  # photo 2 answered twice
        sent("sendMessage", 13, 4.0, "Sorry, that didn't work: x.\nSend again.", reply_to=3),
        sent("sendPhoto", 14, 5.0, "Monet · 1 s", reply_to=4, status=429),  # a 429: never received
    ]
    ledger = count(photos(1, 2, 3, 4), calls)
    assert (ledger.results, ledger.result_messages, ledger.duplicates) == (2, 3, 1)
    assert (ledger.send_again, ledger.refused, ledger.lost) == (1, 0, 1)
    assert ledger.lost_photos == [(CHAT, 4)]
    assert ledger.outcomes == {
        (CHAT, 1): "result",
        (CHAT, 2): "result",
        (CHAT, 3): "send_again",
        (CHAT, 4): "lost",
    }


def test_a_refusal_in_a_status_message_answers_one_photo_and_a_stuck_one_none() -> None:
    calls = [
        sent("sendMessage", 10, 1.0, "Monet: got it, preparing…"),
        edit(10, 1.5, "Monet: Busy: the queue is full."),
        sent("sendMessage", 11, 2.0, "Monet: got it, preparing…"),  # never edited again
        sent("sendMessage", 12, 3.0, "Monet: got it, preparing…"),
        edit(12, 9.0, "Monet: done in 1.0 s on cpu."),  # a job state: its result answers, not this
    ]
    ledger = count(photos(1, 2, 3), calls)
    assert (ledger.refused, ledger.lost, ledger.stuck_status) == (1, 2, 1)


def test_answer_kinds() -> None:
    assert answer_kind("the server is out of disk space; try again later") == "send_again"
    assert answer_kind("The bot is restarting; please send that again in a minute.") == "send_again"
    assert answer_kind("Monet: Busy: the queue is full.") == "refused"
    assert answer_kind("Monet: queued, position 3 of 9.") is None
    assert answer_kind("Monet: failed.") is None


def test_a_second_result_is_the_delivery_window_only_when_a_kill_follows_the_first_closely() -> None:
    def duplicates(kills: list[float]) -> tuple[int, int]:
        calls = [sent("sendPhoto", 10, 10.0, reply_to=1), sent("sendPhoto", 11, 20.0, reply_to=1)]
        ledger = count(photos(1), calls, kills)
        return ledger.duplicates, ledger.duplicates_in_window

    assert duplicates([10.4]) == (1, 1)
    assert duplicates([13.0]) == (1, 0)  # the kill came 3 s after the first send: the commit had time
    assert duplicates([]) == (1, 0)
    assert duplicates([25.0]) == (1, 0)  # after both sends


def test_flood_limits_per_chat_and_global() -> None:
    limits = TelegramLimits(chat_per_s=1.0, chat_burst=3, global_per_s=5.0)
    assert [limits.check("sendMessage", 1, now=100.0) for _ in range(4)] == [0, 0, 0, 1]
    assert limits.check("getFile", 1, now=100.0) == 0  # not a message
    assert limits.check("editMessageText", 1, now=101.0) == 0  # a token back after a second
    assert limits.check("sendPhoto", 2, now=101.0) == 0
    assert [limits.check("sendMessage", 3 + n, now=101.0) for n in range(4)] == [0, 0, 0, 1]  # 5 a second
    assert limits.refused == 2


def test_unknown_scenario_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "chaos.py"), "--scenarios", "crash_loop,meteor"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown scenario 'meteor'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(300)
def test_small_crash_loop_loses_nothing(installed_models_dir: Path, tmp_path: Path) -> None:
    """Three SIGKILLs while 30 photos arrive from three users: every photo gets exactly one result or a
    clear answer, and the daemon is up at the end. A second result counts only when a kill fell right
    after the first one was sent (the documented delivery window, docs/reliability.md)."""
    out = tmp_path / "chaos.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            *(sys.executable, str(SCRIPTS / "chaos.py"), "--small", "--scenarios", "crash_loop"),
            *("--models", str(installed_models_dir), "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = json.loads(out.read_text(encoding="utf-8"))["scenarios"]["crash_loop"]
    assert "error" not in row, row
    assert row["photos"] == 30 and row["kills"] == 3 and row["daemon_starts"] >= 4, row
    assert row["results"] + row["send_again"] + row["refused"] + row["lost"] == row["photos"], row
    assert row["lost"] == 0, row
    assert row["duplicates"] - row["duplicates_in_window"] == 0, row
    assert row["alive"] is True and row["unexpected_exits"] == [], row


def test_markdown_table_marks_a_dead_daemon_and_a_skipped_scenario() -> None:
    row = {key: 0 for _, key in COLUMNS} | {"photos": 100, "lost": 100, "alive": False}
    table = markdown_table({"disk_full": row, "burst": {"skipped": "needs root and mount: denied"}})
    lines = table.splitlines()
    assert lines[2].startswith("| disk_full | 100 | 0 |") and lines[2].endswith("| **no** |")
    assert lines[3].startswith("| burst | needs root and mount: denied |")
    assert len({line.count("|") for line in lines}) == 1  # every row has the header's columns
