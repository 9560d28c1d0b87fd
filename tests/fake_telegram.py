"""A fake Telegram Bot API server on 127.0.0.1, and helpers that play the users.

The server runs its own event loop in a background thread, so both plain (sync) pytest tests and
in-process asyncio tests can drive it, and a subprocess daemon can reach it as `telegram.api_base`
(`server.base_url`). It speaks the parts of the Bot API the bot uses, with the real error shapes:

    with FakeTelegram() as server:                       # or the `fake_telegram` fixture
        mark = server.mark()
        server.send_photo(5, jpeg_bytes, caption="monet")  # user 5 sends a photo
        call = server.wait_for(lambda c: c.method == "sendPhoto" and c.chat_id == 5, since=mark)
        call.files["photo"]                              # the uploaded result bytes

Faults: `server.fail("sendPhoto", times=3, status=429, retry_after=1)`, `server.delay("sendMessage", 1.0)`,
`server.go_down()` /
`server.come_up()` (every request answers 502, or with mode="drop" the connection is closed),
`server.block(chat_id)` (403 "bot was blocked by the user").

Telegram's flood limits hold by default, as on the real service: messages and edits to one chat beyond
about one a second (a burst of `per_chat_burst`), or beyond 30 a second overall, answer 429 with
`retry_after`. `server.flood_refusals()` lists them. Only a benchmark that measures something else may
pass `rate_limits=False`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

DEFAULT_TOKEN = "123456789:AAFakeTokenForTestsOnly_abcdefghijkl"
DOWNLOAD_LIMIT = 20 * 1024 * 1024
PHOTO_UPLOAD_LIMIT = 10 * 1024 * 1024
SEND_METHODS = ("sendMessage", "sendPhoto", "sendDocument")
# The calls Telegram's flood control counts: anything that posts or changes a message in a chat.
LIMITED_METHODS = (
    *SEND_METHODS,
    "editMessageText",
    "editMessageReplyMarkup",
    "editMessageCaption",
    "editMessageMedia",
    "deleteMessage",
)
PER_CHAT_RATE = 1.0  # per second
PER_CHAT_BURST = 4.0
GLOBAL_RATE = 30.0
GLOBAL_BURST = 30.0


@dataclass
class Call:
    """One Bot API request the bot made, as the server saw it."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    filenames: dict[str, str]
    status: int
    response: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None and str(value).lstrip("-").isdigit() else None

    @property
    def text(self) -> str:
        """The text of a message or edit, or the caption of a photo or document (or of new media)."""
        media = self.params.get("media")
        caption = media.get("caption") if isinstance(media, dict) else None
        return str(self.params.get("text") or self.params.get("caption") or caption or "")

    @property
    def message_id(self) -> int | None:
        """The id of the message this call created (sends) or targeted (edits)."""
        result = self.response.get("result")
        if isinstance(result, dict) and "message_id" in result:
            return int(result["message_id"])
        value = self.params.get("message_id")
        return int(value) if value is not None else None

    @property
    def buttons(self) -> list[dict[str, Any]]:
        markup = self.params.get("reply_markup") or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]

    @property
    def button_data(self) -> list[str]:
        return [button.get("callback_data", "") for button in self.buttons]

    def __repr__(self) -> str:
        summary = self.text[:60].replace("\n", " / ")
        return f"<Call {self.method} {self.status} chat={self.chat_id} {summary!r}>"


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int  # what getFile and the message report; may be faked larger than data


@dataclass
class Fault:
    method: str | None
    times: int
    status: int
    description: str
    retry_after: int | None
    chat_id: int | None


def _parse_value(value: str) -> Any:
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _image_size(data: bytes) -> tuple[int, int]:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return (1, 1)


class _Bucket:
    """Tokens that refill at `rate` a second up to `burst`; a call takes one."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, time.monotonic()

    def wait(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class FakeTelegram:
    def __init__(
        self, token: str = DEFAULT_TOKEN, *, poll_timeout_cap: float = 30.0, rate_limits: bool = True
    ) -> None:
        self.token = token
        self.rate_limits = rate_limits
        self._chat_buckets: dict[int, _Bucket] = {}
        self.floods: list[tuple[str, int | None]] = []
        # Called (in the server's thread) with the new offset just before updates below it are confirmed.
        self.on_confirm: Callable[[int], None] | None = None
        self._global_bucket = _Bucket(GLOBAL_RATE, GLOBAL_BURST)
        self.bot_id = int(token.split(":", 1)[0])
        self.poll_timeout_cap = poll_timeout_cap
        self.port = 0
        self.calls: list[Call] = []
        self.updates: list[dict[str, Any]] = []
        self.confirmed_offset = 0
        self.files: dict[str, StoredFile] = {}
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.faults: list[Fault] = []
        self.delays: list[list[Any]] = []  # [method, seconds, times left]
        self.blocked: set[int] = set()
        self.down_mode: str | None = None
        self.commands: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._update_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._message_ids: dict[int, Iterator[int]] = {}
        self._callback_ids = itertools.count(1)
        self._media_groups = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._update_event: asyncio.Event | None = None
        self._poll_generation = 0
        self._handling = 0  # Bot API calls (not getUpdates) received and not yet recorded

    # --- lifecycle ---

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeTelegram:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-telegram", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._update_event = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._outage_middleware])
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def thread(self) -> threading.Thread | None:
        """The server's own thread (benchmarks read its CPU clock)."""
        return self._thread

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            self.down_mode = "stopping"
            self._wake_pollers()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ---

    def fail(
        self,
        method: str | None,
        times: int = 1,
        *,
        status: int = 429,
        retry_after: int | None = 1,
        description: str | None = None,
        chat_id: int | None = None,
    ) -> None:
        """The next `times` calls of `method` (None: any method but getUpdates) answer with an error."""
        if description is None:
            description = {
                429: f"Too Many Requests: retry after {retry_after}",
                400: "Bad Request: something is wrong",
                403: "Forbidden: bot was blocked by the user",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(status, "Error")
        with self._lock:
            self.faults.append(
                Fault(method, times, status, description, retry_after if status == 429 else None, chat_id)
            )

    def delay(self, method: str, seconds: float, times: int = 1) -> None:
        """The next `times` calls of `method` are answered `seconds` late, as over a slow network."""
        with self._lock:
            self.delays.append([method, seconds, times])

    def _take_delay(self, method: str) -> float:
        with self._lock:
            for entry in self.delays:
                if entry[0] == method and entry[2] > 0:
                    entry[2] -= 1
                    return float(entry[1])
        return 0.0

    def go_down(self, mode: str = "502") -> None:
        """Simulate an outage: every request answers 502 ("502") or has its connection closed ("drop")."""
        assert mode in ("502", "drop")
        with self._lock:
            self.down_mode = mode
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_pollers)

    def come_up(self) -> None:
        with self._lock:
            self.down_mode = None

    def block(self, chat_id: int) -> None:
        with self._lock:
            self.blocked.add(chat_id)

    # --- the server side ---

    @web.middleware
    async def _outage_middleware(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        mode = self.down_mode
        if mode == "drop" and request.transport is not None:
            request.transport.close()
            raise web.HTTPBadGateway()
        if mode in ("502", "drop", "stopping"):
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>")
        return await handler(request)

    def _reply(self, result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return web.json_response(body, status=status)

    async def _read_params(
        self, request: web.Request
    ) -> tuple[dict[str, Any], dict[str, bytes], dict[str, str]]:
        params: dict[str, Any] = dict(request.query)
        parts: dict[str, bytes] = {}
        names: dict[str, str] = {}
        content_type = request.content_type
        if content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if part.filename is not None:
                    parts[part.name] = bytes(await part.read())
                    names[part.name] = part.filename
                else:
                    params[part.name] = _parse_value(await part.text())
        elif content_type == "application/json":
            body = await request.json()
            params.update(body if isinstance(body, dict) else {})
        elif request.can_read_body:
            params.update({key: _parse_value(str(value)) for key, value in (await request.post()).items()})
        files: dict[str, bytes] = {}
        filenames: dict[str, str] = {}
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://"):
                name = value[len("attach://") :]
                files[key] = parts.get(name, b"")
                filenames[key] = names.get(name, name)
        for name, data in parts.items():
            if name not in params:  # a file sent directly as the parameter
                files[name] = data
                filenames[name] = names[name]
        return params, files, filenames

    async def _handle_method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method == "getUpdates":
            return await self._handle_call(request, method)
        with self._changed:
            self._handling += 1
        try:
            return await self._handle_call(request, method)
        finally:
            with self._changed:
                self._handling -= 1
                self._changed.notify_all()

    async def _handle_call(self, request: web.Request, method: str) -> web.Response:
        params, files, filenames = await self._read_params(request)
        if request.match_info["token"] != self.token:
            response = self._error(401, "Unauthorized")
        else:
            if wait := self._take_delay(method):
                await asyncio.sleep(wait)
            response = await self._dispatch(method, params, files)
        try:
            body = json.loads(response.body) if isinstance(response.body, bytes) else {}
        except ValueError:
            body = {}
        if method != "getUpdates" or response.status != 200:
            with self._changed:
                self.calls.append(Call(method, params, files, filenames, response.status, body))
                self._changed.notify_all()
        return response

    def _take_fault(self, method: str, params: dict[str, Any]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times <= 0:
                    continue
                if fault.method is None and method == "getUpdates":
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.chat_id is not None and str(params.get("chat_id")) != str(fault.chat_id):
                    continue
                fault.times -= 1
                return fault
        return None

    async def _dispatch(self, method: str, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        fault = self._take_fault(method, params)
        if fault is not None:
            return self._error(fault.status, fault.description, fault.retry_after)
        if (retry_after := self._flood_wait(method, params)) is not None:
            return self._error(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        chat_id = params.get("chat_id")
        if chat_id is not None and int(chat_id) in self.blocked and method != "getUpdates":
            return self._error(403, "Forbidden: bot was blocked by the user")
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(404, "Not Found")
        return await handler(params, files)

    def _flood_wait(self, method: str, params: dict[str, Any]) -> int | None:
        """None when the call is within the limits (and counts it), else the whole seconds to wait."""
        if not self.rate_limits or method not in LIMITED_METHODS:
            return None
        raw = str(params.get("chat_id", ""))
        chat_id = int(raw) if raw.lstrip("-").isdigit() else None
        now = time.monotonic()
        with self._lock:
            buckets = [self._global_bucket]
            if chat_id is not None:
                buckets.append(self._chat_buckets.setdefault(chat_id, _Bucket(PER_CHAT_RATE, PER_CHAT_BURST)))
            wait = max(bucket.wait(now) for bucket in buckets)
            if wait > 0:
                self.floods.append((method, chat_id))
                return max(1, math.ceil(wait))
            for bucket in buckets:
                bucket.tokens -= 1
        return None

    async def _m_getMe(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        return self._reply(self.bot_user())

    async def _m_setMyCommands(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        self.commands = list(params.get("commands") or [])
        return self._reply(True)

    async def _m_deleteWebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        return self._reply(True)

    async def _m_sendChatAction(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        return self._reply(True)

    async def _m_answerCallbackQuery(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        return self._reply(True)

    async def _m_getUpdates(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), self.poll_timeout_cap)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + timeout
        if offset > self.confirmed_offset and self.on_confirm is not None:
            self.on_confirm(offset)
        with self._changed:
            if offset > 0:
                # Updates below the offset are confirmed and forgotten, as the real API does.
                self.updates = [update for update in self.updates if update["update_id"] >= offset]
                self.confirmed_offset = max(self.confirmed_offset, offset)
                self._changed.notify_all()
        assert self._update_event is not None
        # Like the real API, a newer getUpdates ends an older one still waiting with 409 Conflict, so two
        # bots polling one token show up in the log instead of silently splitting the updates.
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake_pollers()
        while True:
            with self._lock:
                if self.down_mode is not None:
                    return web.Response(status=502, text="502 Bad Gateway")
                if generation != self._poll_generation:
                    return self._error(
                        409,
                        "Conflict: terminated by other getUpdates request; "
                        "make sure that only one bot instance is running",
                    )
                pending = [update for update in self.updates if update["update_id"] >= offset][:limit]
            remaining = deadline - time.monotonic()
            if pending or remaining <= 0:
                return self._reply(pending)
            self._update_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._update_event.wait(), remaining)

    def _wake_pollers(self) -> None:
        if self._update_event is not None:
            self._update_event.set()

    def _bot_message(self, chat_id: int, **fields: Any) -> dict[str, Any]:
        message = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": f"user{chat_id}"},
            "from": self.bot_user(),
            **{key: value for key, value in fields.items() if value not in (None, "")},
        }
        with self._lock:
            self.messages[(chat_id, message["message_id"])] = message
        return message

    async def _m_sendMessage(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        text = str(params.get("text") or "")
        if not text.strip():
            return self._error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return self._error(400, "Bad Request: message is too long")
        message = self._bot_message(
            int(params["chat_id"]), text=text, reply_markup=params.get("reply_markup")
        )
        return self._reply(message)

    async def _m_sendPhoto(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        data = files.get("photo")
        if data is None:
            return self._error(400, "Bad Request: there is no photo in the request")
        if len(data) > PHOTO_UPLOAD_LIMIT:
            return self._error(413, "Request Entity Too Large")
        width, height = _image_size(data)
        if width + height > 10000 or max(width, height) > 20 * min(width, height):
            return self._error(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        stored = self._store_file(data, "photos", ".jpg")
        size = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "width": width,
            "height": height,
            "file_size": len(data),
        }
        message = self._bot_message(
            int(params["chat_id"]),
            photo=[size],
            caption=params.get("caption"),
            reply_markup=params.get("reply_markup"),
        )
        return self._reply(message)

    async def _m_sendDocument(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        data = files.get("document")
        if data is None:
            return self._error(400, "Bad Request: there is no document in the request")
        stored = self._store_file(data, "documents", "")
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(data),
        }
        message = self._bot_message(int(params["chat_id"]), document=document, caption=params.get("caption"))
        return self._reply(message)

    async def _m_editMessageText(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        key = (int(params.get("chat_id") or 0), int(params.get("message_id") or 0))
        with self._lock:
            message = self.messages.get(key)
            if message is None:
                return self._error(400, "Bad Request: message to edit not found")
            text = str(params.get("text") or "")
            markup = params.get("reply_markup")
            if not text.strip():
                return self._error(400, "Bad Request: message text is empty")
            if message.get("text") == text and message.get("reply_markup") == markup:
                return self._error(
                    400,
                    "Bad Request: message is not modified: specified new message content and reply markup "
                    "are exactly the same as a current content and reply markup of the message",
                )
            message["text"] = text
            if markup:
                message["reply_markup"] = markup
            else:
                message.pop("reply_markup", None)
            return self._reply(dict(message))

    async def _m_editMessageReplyMarkup(
        self, params: dict[str, Any], files: dict[str, bytes]
    ) -> web.Response:
        key = (int(params.get("chat_id") or 0), int(params.get("message_id") or 0))
        with self._lock:
            message = self.messages.get(key)
            if message is None:
                return self._error(400, "Bad Request: message to edit not found")
            markup = params.get("reply_markup")
            if message.get("reply_markup") == markup:
                return self._error(400, "Bad Request: message is not modified")
            if markup:
                message["reply_markup"] = markup
            else:
                message.pop("reply_markup", None)
            return self._reply(dict(message))

    async def _m_editMessageCaption(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        key = (int(params.get("chat_id") or 0), int(params.get("message_id") or 0))
        with self._lock:
            message = self.messages.get(key)
            if message is None:
                return self._error(400, "Bad Request: message to edit not found")
            if "photo" not in message and "document" not in message:
                return self._error(400, "Bad Request: there is no caption in the message to edit")
            caption, markup = params.get("caption"), params.get("reply_markup")
            if message.get("caption") == caption and message.get("reply_markup") == markup:
                return self._error(400, "Bad Request: message is not modified")
            message["caption"] = caption
            if markup:
                message["reply_markup"] = markup
            else:
                message.pop("reply_markup", None)
            return self._reply(dict(message))

    async def _m_editMessageMedia(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        key = (int(params.get("chat_id") or 0), int(params.get("message_id") or 0))
        media = params.get("media")
        if not isinstance(media, dict) or media.get("type") != "photo":
            return self._error(400, "Bad Request: can't parse InputMedia")
        reference = str(media.get("media") or "")
        data = files.get(reference.removeprefix("attach://")) if reference.startswith("attach://") else None
        if data is None:
            return self._error(400, "Bad Request: there is no photo in the request")
        with self._lock:
            message = self.messages.get(key)
            if message is None:
                return self._error(400, "Bad Request: message to edit not found")
            if "photo" not in message:
                return self._error(400, "Bad Request: there is no media in the message to edit")
            stored = self._store_file(data, "photos", ".jpg")
            width, height = _image_size(data)
            message["photo"] = [
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "width": width,
                    "height": height,
                    "file_size": len(data),
                }
            ]
            message["caption"] = media.get("caption")
            markup = params.get("reply_markup")
            if markup:
                message["reply_markup"] = markup
            else:
                message.pop("reply_markup", None)
            return self._reply(dict(message))

    async def _m_deleteMessage(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        key = (int(params.get("chat_id") or 0), int(params.get("message_id") or 0))
        with self._lock:
            if self.messages.pop(key, None) is None:
                return self._error(400, "Bad Request: message to delete not found")
        return self._reply(True)

    async def _m_getFile(self, params: dict[str, Any], files: dict[str, bytes]) -> web.Response:
        with self._lock:
            stored = self.files.get(str(params.get("file_id")))
        if stored is None:
            return self._error(400, "Bad Request: invalid file_id")
        if stored.file_size > DOWNLOAD_LIMIT:
            return self._error(400, "Bad Request: file is too big")
        return self._reply(
            {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": stored.file_size,
                "file_path": stored.file_path,
            }
        )

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        with self._changed:
            self.calls.append(Call("download", {"file_path": path}, {}, {}, 200, {}))
            self._changed.notify_all()
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        with self._lock:
            stored = next((item for item in self.files.values() if item.file_path == path), None)
        if stored is None:
            return self._error(404, "Not Found")
        return web.Response(body=stored.data, content_type="application/octet-stream")

    # --- shared helpers ---

    def bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "nstd test",
            "username": "nstd_test_bot",
            "can_join_groups": False,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _next_message_id(self, chat_id: int) -> int:
        with self._lock:
            counter = self._message_ids.setdefault(chat_id, itertools.count(1))
            return next(counter)

    def _store_file(self, data: bytes, folder: str, suffix: str, file_size: int | None = None) -> StoredFile:
        with self._lock:
            number = next(self._file_ids)
            stored = StoredFile(
                file_id=f"FILE{number:06d}-{'x' * 20}",
                file_unique_id=f"U{number:06d}",
                file_path=f"{folder}/file_{number}{suffix}",
                data=data,
                file_size=len(data) if file_size is None else file_size,
            )
            self.files[stored.file_id] = stored
        return stored

    # --- playing the users ---

    @staticmethod
    def user(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": f"user{user_id}", "language_code": "en"}

    def push_update(self, **payload: Any) -> int:
        """Queue one update (e.g. message={...}); returns its update_id."""
        with self._changed:
            update = {"update_id": next(self._update_ids), **payload}
            self.updates.append(update)
            self._changed.notify_all()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_pollers)
        return update["update_id"]

    def user_message(self, user_id: int, **fields: Any) -> dict[str, Any]:
        """Send any message from a user (fields as in the Bot API: text, sticker, voice, ...)."""
        message = {
            "message_id": self._next_message_id(user_id),
            "date": int(time.time()),
            "chat": {"id": user_id, "type": "private", "first_name": f"user{user_id}"},
            "from": self.user(user_id),
            **{key: value for key, value in fields.items() if value is not None},
        }
        update_id = self.push_update(message=message)
        return {**message, "update_id": update_id}  # a copy: the queued update must not change

    def send_text(self, user_id: int, text: str) -> dict[str, Any]:
        entities = None
        if match := re.match(r"/\w+(@\w+)?", text):
            entities = [{"type": "bot_command", "offset": 0, "length": match.end()}]
        return self.user_message(user_id, text=text, entities=entities)

    def photo_sizes(self, data: bytes) -> list[dict[str, Any]]:
        """A PhotoSize array as Telegram makes it: small thumbnails first, the full size last."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            sizes = []
            for side in (90, 320, 800):
                if side >= max(width, height):
                    break
                thumb = image.convert("RGB")
                thumb.thumbnail((side, side))
                buffer = io.BytesIO()
                thumb.save(buffer, "JPEG", quality=80)
                sizes.append((thumb.size, buffer.getvalue()))
        sizes.append(((width, height), data))
        result = []
        for (w, h), blob in sizes:
            stored = self._store_file(blob, "photos", ".jpg")
            result.append(
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "width": w,
                    "height": h,
                    "file_size": len(blob),
                }
            )
        return result

    def send_photo(
        self, user_id: int, data: bytes, caption: str | None = None, media_group_id: str | None = None
    ) -> dict[str, Any]:
        return self.user_message(
            user_id, photo=self.photo_sizes(data), caption=caption, media_group_id=media_group_id
        )

    def send_album(
        self, user_id: int, images: list[bytes], caption: str | None = None
    ) -> list[dict[str, Any]]:
        """Several photos with one media_group_id; like Telegram, only the first carries the caption."""
        group = f"{next(self._media_groups)}{user_id}"
        return [
            self.send_photo(user_id, data, caption=caption if index == 0 else None, media_group_id=group)
            for index, data in enumerate(images)
        ]

    def send_document(
        self,
        user_id: int,
        data: bytes,
        *,
        file_name: str = "image.png",
        mime_type: str | None = "image/png",
        file_size: int | None = None,
        caption: str | None = None,
    ) -> dict[str, Any]:
        """A file; `file_size` may claim more than `data` holds, to test the 20 MB download limit."""
        folder = "documents"
        stored = self._store_file(data, folder, "", file_size=file_size)
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": stored.file_size,
        }
        return self.user_message(
            user_id,
            document={key: value for key, value in document.items() if value is not None},
            caption=caption,
        )

    def send_sticker(self, user_id: int) -> dict[str, Any]:
        stored = self._store_file(b"RIFF....WEBP", "stickers", ".webp")
        sticker = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
        }
        return self.user_message(user_id, sticker=sticker)

    def send_voice(self, user_id: int) -> dict[str, Any]:
        stored = self._store_file(b"OggS", "voice", ".oga")
        return self.user_message(
            user_id, voice={"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "duration": 2}
        )

    def last_bot_message_with(self, chat_id: int, data: str) -> dict[str, Any]:
        with self._lock:
            candidates = [
                message
                for (chat, _), message in self.messages.items()
                if chat == chat_id
                and any(
                    button.get("callback_data") == data
                    for row in (message.get("reply_markup") or {}).get("inline_keyboard", [])
                    for button in row
                )
            ]
        if not candidates:
            raise AssertionError(f"no bot message in chat {chat_id} has a button {data!r}")
        return max(candidates, key=lambda message: message["message_id"])

    def press(self, user_id: int, data: str, message: dict[str, Any] | None = None) -> str:
        """Press an inline button (by callback data) on the bot's latest message carrying it."""
        message = message or self.last_bot_message_with(user_id, data)
        query_id = f"cq{next(self._callback_ids)}"
        self.push_update(
            callback_query={
                "id": query_id,
                "from": self.user(user_id),
                "message": dict(message),
                "chat_instance": f"ci{user_id}",
                "data": data,
            }
        )
        return query_id

    # --- inspecting what the bot did ---

    def mark(self) -> int:
        """A position in the call log; pass it as `since` to look only at later calls."""
        with self._lock:
            return len(self.calls)

    def find(self, predicate: Callable[[Call], bool] | None = None, since: int = 0) -> list[Call]:
        with self._lock:
            calls = self.calls[since:]
        return [call for call in calls if predicate is None or predicate(call)]

    def sent(self, chat_id: int, method: str | None = None, since: int = 0) -> list[Call]:
        """Successful messages, photos and documents the bot sent to a chat."""
        methods = (method,) if method else SEND_METHODS
        return self.find(lambda call: call.method in methods and call.chat_id == chat_id and call.ok, since)

    def flood_refusals(self) -> list[tuple[str, int | None]]:
        """(method, chat id) of each call the flood limits answered 429 (not a scripted `fail`)."""
        with self._lock:
            return list(self.floods)

    def texts(self, chat_id: int, since: int = 0) -> list[str]:
        """Every text the chat saw: messages, captions and edits, in order."""
        return [
            call.text
            for call in self.find(
                lambda call: (
                    call.chat_id == chat_id and call.ok and call.method in (*SEND_METHODS, "editMessageText")
                ),
                since,
            )
        ]

    def wait_for(self, predicate: Callable[[Call], bool], timeout: float = 30, since: int = 0) -> Call:
        """Block until a call matching `predicate` (made at or after `since`) is seen; return it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for call in self.calls[since:]:
                    if predicate(call):
                        return call
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    recent = "\n  ".join(repr(call) for call in self.calls[-25:])
                    raise AssertionError(f"timed out after {timeout} s; last calls:\n  {recent}")
                self._changed.wait(remaining)

    async def await_for(
        self,
        predicate: Callable[[Call], bool],
        timeout: float = 30,  # noqa: ASYNC109 (the same signature as wait_for)
        since: int = 0,
    ) -> Call:
        """`wait_for` for asyncio tests (the wait runs in a thread, so the test's loop keeps running)."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout, since)

    def wait_text(self, chat_id: int, pattern: str, timeout: float = 30, since: int = 0) -> Call:
        """Wait for a message, caption or edit in a chat whose text matches a regex (case-insensitive)."""
        regex = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        return self.wait_for(
            lambda call: (
                call.chat_id == chat_id
                and call.ok
                and call.method in (*SEND_METHODS, "editMessageText")
                and bool(regex.search(call.text))
            ),
            timeout,
            since,
        )

    @property
    def polls(self) -> int:
        """How many getUpdates calls have come (a bot polls once its start-up and replay are done)."""
        return self._poll_generation

    def wait_handled(self, timeout: float = 30) -> None:
        """Wait until every Bot API call that reached the server is in `calls` (a killed bot's last request
        is recorded once the server has handled it, which may be a moment after the kill)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._handling:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self._handling} calls still being handled after {timeout} s")
                self._changed.wait(remaining)

    def wait_confirmed(self, update_id: int, timeout: float = 30) -> None:
        """Wait until the bot confirmed an update (a getUpdates with a higher offset arrived)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.confirmed_offset <= update_id:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"update {update_id} was not confirmed within {timeout} s")
                self._changed.wait(remaining)


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A running fake Bot API server; import this fixture into a test module to use it."""
    server = FakeTelegram().start()
    try:
        yield server
    finally:
        server.stop()
