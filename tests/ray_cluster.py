"""A real Ray cluster for tests: `ray start --head --block` on loopback, in its own process group.

Loopback only: every Ray process gets `--node-ip-address=127.0.0.1` and
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` in its environment (otherwise Ray swaps 127.0.0.1 for the machine's
own address). Token authentication is on (`RAY_AUTH_MODE=token` with a generated `RAY_AUTH_TOKEN`), as Ray
2.60 does by default. The temp dir is a short path under /tmp: Ray's Unix socket paths must stay under
108 bytes. Stopping kills the process group this module started, never `ray stop` (which would end
every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 90.0
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_environment(token: str) -> dict[str, str]:
    """What every Ray process and client of a test cluster needs in its environment."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # The cluster's workers import nst_daemon from this checkout, not from an installed copy.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        "RAY_USAGE_STATS_ENABLED": "0",
        # No GPU here: a replica must never wait for one.
        "CUDA_VISIBLE_DEVICES": "",
    }


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@dataclass
class RayCluster:
    """A head node started by `start()`; `address` is HOST:PORT for `cluster.address`."""

    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    num_cpus: int = 4
    process: subprocess.Popen[bytes] | None = None
    temp_dir: Path | None = None
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return ray_environment(self.token)

    def start(self) -> RayCluster:
        # Short and unique: Ray puts its sockets under <temp_dir>/session_*/sockets/.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.log_path = self.temp_dir / "head.log"
        ray = Path(sys.executable).with_name("ray")
        command = [
            str(ray),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends exactly what it started
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"ray start did not come up:\n{output}")
            time.sleep(0.2)
        return self

    def session_pids(self) -> set[int]:
        """Every process of this cluster: all of them stay in the session `ray start` was given."""
        if self.process is None:
            return set()
        listing = subprocess.run(
            ["ps", "-o", "pid=", "-s", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return {int(pid) for pid in listing.stdout.split()}

    def stop(self) -> None:
        """SIGKILL to every process of the cluster (the CLI, GCS, raylet, workers, replicas): nothing in a
        test cluster needs a graceful end, and a SIGTERM'd head takes seconds to stop its children."""
        if self.process is not None:
            for pid in self.session_pids() - {self.process.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


@contextlib.contextmanager
def ray_cluster(**kwargs: object) -> Iterator[RayCluster]:
    cluster = RayCluster(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.stop()
