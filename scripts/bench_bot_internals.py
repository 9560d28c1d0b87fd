"""What the bot's two pydantic workarounds buy: each measured with and without, in fresh interpreters.

- bot/lazy_types.py (aiogram's types built on first use): the import of the bot and its resident memory,
  and the CPU of the first update parsed after it (with the daemon's warm-up, as the bot starts).
- bot/pinned_responses.py (one parsed-response type kept per API method): the time to make
  `Response[Message]` when pydantic's weak cache has let it go, against a pinned (cached) one.

The numbers justify keeping each workaround; they are written at the top of each module. Run:
`.venv/bin/python scripts/bench_bot_internals.py --runs 5` (prints tables, writes
bench-results/bot_internals.json; --smoke: one run).
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench_common import log, machine_info, median, parser, print_tables, write_json

IMPORT_PROBE = r"""
import json, resource, sys, time
eager = sys.argv[1] == "eager"
started = time.perf_counter()
if eager:
    import aiogram  # before nst_daemon.bot: aiogram's own import builds every type, lazy_types is a no-op
import nst_daemon.bot
from nst_daemon.bot.lazy_types import warm_up
imported = time.perf_counter()
warm_up()
warmed = time.perf_counter()
from aiogram.types import Update
Update.model_validate_json(json.dumps({"update_id": 1, "message": {
    "message_id": 5, "date": 0, "chat": {"id": 7, "type": "private"},
    "from": {"id": 7, "is_bot": False, "first_name": "A"},
    "photo": [{"file_id": "f", "file_unique_id": "u", "width": 4, "height": 3}], "caption": "monet"}}))
parsed = time.perf_counter()
print(json.dumps({
    "import_s": imported - started, "warm_up_s": warmed - imported, "first_update_s": parsed - warmed,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

RESPONSE_PROBE = r"""
import gc, json, time
import nst_daemon.bot
from aiogram.methods import SendMessage
from aiogram.methods.base import Response

def make():
    return Response[SendMessage.__returning__]

rebuilt, cached = [], []
for _ in range(20):
    gc.collect()  # what the collector does between two replies: the unpinned type is gone
    started = time.perf_counter(); make(); rebuilt.append(time.perf_counter() - started)
pinned = make()
for _ in range(20):
    gc.collect()
    started = time.perf_counter(); make(); cached.append(time.perf_counter() - started)
rebuilt.sort(); cached.sort()
print(json.dumps({"rebuilt_ms": rebuilt[10] * 1000, "pinned_ms": cached[10] * 1000}))
"""


def probe(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    options = parser("bot_internals", __doc__.splitlines()[0])
    options.add_argument("--runs", type=int, default=5, help="fresh interpreters per variant")
    args = options.parse_args()
    runs = 1 if args.smoke else max(1, args.runs)
    imports: dict[str, list[dict[str, float]]] = {"lazy": [], "eager": []}
    for run in range(runs):
        for mode in imports:
            log(f"import probe {run + 1}/{runs}: {mode}")
            imports[mode].append(probe(IMPORT_PROBE, mode))
    responses = [probe(RESPONSE_PROBE) for _ in range(runs)]
    keys = ("import_s", "warm_up_s", "first_update_s", "max_rss_mb")
    summary = {
        mode: {key: median(r[key] for r in results) for key in keys} for mode, results in imports.items()
    }
    response = {key: median(r[key] for r in responses) for key in ("rebuilt_ms", "pinned_ms")}
    path = write_json(
        args.json,
        {"machine": machine_info(), "runs": runs, "imports": summary, "response_type": response},
    )
    print_tables(
        [
            (
                f"aiogram import, medians of {runs} fresh interpreters",
                ["types", "import s", "warm-up s", "first update s", "max RSS MB"],
                [[mode, *(values[key] for key in keys)] for mode, values in summary.items()],
            ),
            (
                "Response[Message] per reply, median of 20 after gc.collect()",
                ["", "ms"],
                [["rebuilt (unpinned)", response["rebuilt_ms"]], ["pinned", response["pinned_ms"]]],
            ),
        ],
        path,
    )


if __name__ == "__main__":
    main()
