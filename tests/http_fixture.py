"""A loopback HTTP server for checkpoint downloads in tests: Range requests and programmable faults.

    with FileServer() as server:
        server.add("/vgg19-dcbb9e9d.pth", data)          # bytes, or server.add_file(path, Path)
        server.fail("/style_monet.pth", 503, times=2)     # then serves normally; times=None: always
        server.drop("/vgg19-dcbb9e9d.pth", after=1 << 20) # closes the connection mid-body, once
        server.stall(path, after=N, seconds=5)            # goes silent mid-body, once
        server.ignore_range(path)                         # answers 200 to Range requests
        server.omit_length(path)                          # no Content-Length; body ends at close
        server.throttle(path, 50_000_000)                 # bytes per second
        gate = server.hold(path); ...; gate.set()         # bodies wait until the gate opens
        base = server.base_url                            # http://127.0.0.1:PORT
        server.requests                                   # every request: method, path, Range, status

Unregistered paths answer 404; a Range beyond the end answers 416 with `Content-Range: bytes */SIZE`.
It binds 127.0.0.1 on port 0 and runs in a thread (http.server), so it serves in-process tests,
subprocesses and any HTTP client alike.

Also here, for tests that install models: `write_catalog` (a catalog.toml for `models.catalog`) and
`checkpoint_set` (random-init checkpoints in the upstream formats, generated once into a cache directory).
Import with `from http_fixture import FileServer` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_WRITE_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None  # the Range header as sent
    status: int


@dataclass
class _Route:
    data: bytes | Path
    fail_status: int | None = None
    fail_times: int | None = None  # None = every time
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drop_times: int = 0  # ... this many times
    stall_after: int | None = None  # send this many body bytes, then go silent for stall_for seconds
    stall_for: float = 0.0
    stall_times: int = 0
    ignore_range: bool = False  # answer 200 with the whole body even to a Range request
    rate: float | None = None  # bytes per second, for "slow enough to overlap" tests
    omit_length: bool = False  # no Content-Length: the body ends when the connection closes
    gate: threading.Event | None = None  # when set: the body waits for it (after the headers)
    extra_headers: dict[str, str] = field(default_factory=dict)

    def size(self) -> int:
        return self.data.stat().st_size if isinstance(self.data, Path) else len(self.data)

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        if isinstance(self.data, Path):
            with self.data.open("rb") as handle:
                handle.seek(start)
                while start < end and (chunk := handle.read(min(_WRITE_CHUNK, end - start))):
                    start += len(chunk)
                    yield chunk
            return
        view = memoryview(self.data)
        for position in range(start, end, _WRITE_CHUNK):
            yield view[position : min(end, position + _WRITE_CHUNK)]


class FileServer:
    """Serves registered paths; unregistered paths answer 404."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests: list[Request] = []
        self._httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="FileServer", daemon=True)

    # --- lifecycle

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # --- content and faults

    def add(self, path: str, data: bytes) -> None:
        """Serve `data` at `path`; replaces earlier content and clears the faults of that path."""
        with self._lock:
            self._routes[path] = _Route(data=data)

    def add_file(self, path: str, file: Path) -> None:
        """Serve a file from disk (read per request, so large files cost no memory)."""
        with self._lock:
            self._routes[path] = _Route(data=Path(file))

    def fail(self, path: str, status: int, times: int | None = None) -> None:
        """Answer `status` (e.g. 503, 404) the next `times` requests, or always when times is None."""
        with self._lock:
            route = self._routes.setdefault(path, _Route(data=b""))
            route.fail_status, route.fail_times = status, times

    def drop(self, path: str, after: int, times: int = 1) -> None:
        """Send the headers and `after` body bytes, then cut the connection (`times` requests)."""
        with self._lock:
            route = self._routes[path]
            route.drop_after, route.drop_times = after, times

    def stall(self, path: str, after: int, seconds: float, times: int = 1) -> None:
        """Send `after` body bytes, then nothing for `seconds`, then close (`times` requests)."""
        with self._lock:
            route = self._routes[path]
            route.stall_after, route.stall_for, route.stall_times = after, seconds, times

    def ignore_range(self, path: str, value: bool = True) -> None:
        with self._lock:
            self._routes[path].ignore_range = value

    def throttle(self, path: str, bytes_per_second: float | None) -> None:
        with self._lock:
            self._routes[path].rate = bytes_per_second

    def hold(self, path: str) -> threading.Event:
        """Hold every response body of `path` (headers go out) until the returned event is set."""
        with self._lock:
            gate = self._routes[path].gate = threading.Event()
        return gate

    def omit_length(self, path: str, value: bool = True) -> None:
        """Send no Content-Length (HTTP/1.0 style: the body ends when the connection closes)."""
        with self._lock:
            self._routes[path].omit_length = value

    def requests_for(self, path: str, method: str = "GET") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path and r.method == method]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- used by the handler

    def _take(self, path: str) -> tuple[_Route | None, str | None]:
        """The route and the fault to apply to this request (consuming one use of it)."""
        with self._lock:
            route = self._routes.get(path)
            if route is None:
                return None, None
            if route.fail_status is not None and (route.fail_times is None or route.fail_times > 0):
                if route.fail_times is not None:
                    route.fail_times -= 1
                return route, "fail"
            if route.drop_after is not None and route.drop_times > 0:
                route.drop_times -= 1
                return route, "drop"
            if route.stall_after is not None and route.stall_times > 0:
                route.stall_times -= 1
                return route, "stall"
            return route, None

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled handler must not hold up stop()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-body (size caps, drops) are the point of many tests


def _make_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            range_header = self.headers.get("Range")
            route, fault = server._take(path)
            if route is None or fault == "fail":
                status = 404 if route is None else route.fail_status
                assert status is not None
                server._log(Request(self.command, path, range_header, status))
                message = f"HTTP {status}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                if body:
                    self.wfile.write(message)
                return

            size = route.size()
            start, end = 0, size
            status = 200
            match = _RANGE.match(range_header or "")
            if match and not route.ignore_range:
                start = int(match.group(1))
                end = min(int(match.group(2)) + 1, size) if match.group(2) else size
                if start >= size:
                    server._log(Request(self.command, path, range_header, 416))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            server._log(Request(self.command, path, range_header, status))
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if route.omit_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            for name, value in route.extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            if not body:
                return
            if route.gate is not None:
                self.wfile.flush()
                while not route.gate.wait(0.05) and not server._stop.is_set():
                    pass

            limit = end
            if fault == "drop":
                assert route.drop_after is not None
                limit = min(end, start + route.drop_after)
            elif fault == "stall":
                assert route.stall_after is not None
                limit = min(end, start + route.stall_after)
            self._send_range(route, start, limit)
            if fault in ("drop", "stall"):
                if fault == "stall":
                    server._stop.wait(route.stall_for)
                self.close_connection = True
                self.wfile.flush()
                # shutdown (not just close) so the client sees the connection end at once.
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        def _send_range(self, route: _Route, start: int, end: int) -> None:
            position = start
            begun = time.monotonic()
            for chunk in route.chunks(start, end):
                try:
                    self.wfile.write(chunk)
                except OSError:  # the client went away
                    self.close_connection = True
                    return
                position += len(chunk)
                if route.rate:
                    due = begun + (position - start) / route.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)

    return Handler


# --- test catalogs and served checkpoints -------------------------------------------------------------------


def write_catalog(path: Path, entries: list[dict[str, object]]) -> Path:
    """A models catalog.toml with `entries` (dicts of catalog keys), for `models.catalog` in tests."""
    lines = []
    for entry in entries:
        lines.append("[[models]]")
        for key, value in entry.items():
            if value is None:
                continue
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, int):
                rendered = str(value)
            else:
                rendered = json.dumps(str(value))  # a JSON string is a valid TOML basic string
            lines.append(f"{key} = {rendered}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class CheckpointSet:
    vgg19: Checkpoint  # torchvision VGG19 keys, features only (~80 MB)
    cyclegan: Checkpoint  # resnet_9blocks generator (~45.5 MB)
    cyclegan_legacy: Checkpoint  # the same with the old InstanceNorm buffers
    bad_shapes: Checkpoint  # a small "VGG19" whose first conv has the wrong shape


def checkpoint_set(cache_dir: Path) -> CheckpointSet:
    """Random-init checkpoints on disk, generated once into `cache_dir` and reused (pass a session dir)."""
    import torch
    from checkpoints import make_cyclegan_state_dict, make_vgg19_state_dict, save_checkpoint

    cache_dir.mkdir(parents=True, exist_ok=True)
    makers = {
        "vgg19.pth": lambda: make_vgg19_state_dict(seed=0),
        "cyclegan.pth": lambda: make_cyclegan_state_dict(seed=0),
        "cyclegan_legacy.pth": lambda: make_cyclegan_state_dict(seed=1, legacy_norm_keys=True),
        "bad_shapes.pth": lambda: {
            "features.0.weight": torch.zeros(64, 3, 5, 5),
            "features.0.bias": torch.zeros(64),
        },
    }
    done: dict[str, Checkpoint] = {}
    for name, make in makers.items():
        path = cache_dir / name
        if not path.is_file():
            tmp = save_checkpoint(make(), cache_dir / f".{name}.tmp")
            tmp.replace(path)
        done[name] = Checkpoint(path, path.stat().st_size, _sha256(path))
    return CheckpointSet(
        vgg19=done["vgg19.pth"],
        cyclegan=done["cyclegan.pth"],
        cyclegan_legacy=done["cyclegan_legacy.pth"],
        bad_shapes=done["bad_shapes.pth"],
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
