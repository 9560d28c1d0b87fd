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
NODE_PORTS = (
    "ray-client-server",
    "node-manager",
    "object-manager",
    "dashboard-agent-listen",
    "dashboard-agent-grpc",
    "runtime-env-agent",
    "metrics-export",
)
# Run by `RayCluster.hold_cpus` as its own driver: argv = address, CPUs.
HOLD_CPUS = """
import sys, threading, ray
ray.init(address=sys.argv[1], log_to_driver=False)
holder = ray.remote(num_cpus=float(sys.argv[2]))(type("CpuHolder", (), {"ready": lambda self: True})).remote()
ray.get(holder.ready.remote())
print("holding", flush=True)
threading.Event().wait()
"""
# `ray start --address` on loopback: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which keeps every Ray
# process on 127.0.0.1) the CLI refuses to join a node, and with 1 it swaps 127.0.0.1 in the head's address
# for the machine's own address, where the head does not listen. So the CLI runs here with the first
# check passed and the swap left out; the node's own processes keep the variable at 0.
JOIN_ON_LOOPBACK = [
    sys.executable,
    "-c",
    "import sys; from ray._private import ray_constants, services; "
    "ray_constants.ENABLE_RAY_CLUSTER = True; services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
]
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    return free_ports(1)[0]


_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """`count` free ports, none handed out before by this process: a port let go is often handed out
    again at once (two of a node's servers once got the same one, and `ray start` refused), and a
    cluster's ports are chosen before its servers take them."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:  # held open while choosing: the OS gives each one once
        while len(ports) < count:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                ports.append(port)
    return ports


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


def node_options(num_cpus: int) -> list[str]:
    """Options every node of a test cluster gets: loopback, no GPU, and a free port for each of its servers
    (two nodes on one machine must not both take Ray's fixed defaults)."""
    ports = free_ports(len(NODE_PORTS))
    return [
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--disable-usage-stats",
        *(f"--{name}-port={port}" for name, port in zip(NODE_PORTS, ports, strict=True)),
    ]


def spawn_node(
    options: list[str], env: dict[str, str], log_path: Path, command: list[str] | None = None
) -> subprocess.Popen[bytes]:
    ray = command or [str(Path(sys.executable).with_name("ray"))]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [*ray, "start", *options],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it ends exactly what it started
        )


def session_pids(process: subprocess.Popen[bytes]) -> set[int]:
    listing = subprocess.run(["ps", "-o", "pid=", "-s", str(process.pid)], capture_output=True, text=True)
    return {int(pid) for pid in listing.stdout.split()}


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to every process of a node (the CLI, GCS, raylet, workers, replicas): nothing in a test
    cluster needs a graceful end, and a SIGTERM'd node takes seconds to stop its children."""
    for pid in session_pids(process) - {process.pid}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@dataclass
class ProcessGroup:
    """A worker node (`RayCluster.add_node`) or a driver (`RayCluster.hold_cpus`) in a session of its own."""

    process: subprocess.Popen[bytes]

    def session_pids(self) -> set[int]:
        return session_pids(self.process)

    def wait_joined(self, log_path: Path) -> None:
        """Until `ray start` says the node runs: it has registered with the head by then."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"the worker node did not join:\n{output}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Gone at once: a node as if its machine lost power (its raylet never says goodbye)."""
        if self.process.poll() is None or self.session_pids():
            kill_session(self.process)


@dataclass
class RayCluster:
    """A head node started by `start()`; `address` is HOST:PORT for `cluster.address`."""

    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    num_cpus: int = 4
    process: subprocess.Popen[bytes] | None = None
    temp_dir: Path | None = None
    log_path: Path | None = None
    nodes: list[ProcessGroup] = field(default_factory=list)

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
        head = ["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=false"]
        self.process = spawn_node([*head, *node_options(self.num_cpus)], self.env, self.log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"ray start did not come up:\n{output}")
            time.sleep(0.2)
        return self

    def add_node(self, num_cpus: int = 1) -> ProcessGroup:
        """A worker node joined to this head, in a process group of its own: `ProcessGroup.stop` removes it
        as a machine that is switched off would leave."""
        assert self.temp_dir is not None, "start the head first"
        log_path = self.temp_dir / f"node-{len(self.nodes) + 1}.log"
        options = [f"--address={self.address}", *node_options(num_cpus)]
        node = ProcessGroup(spawn_node(options, self.env, log_path, command=JOIN_ON_LOOPBACK))
        self.nodes.append(node)
        node.wait_joined(log_path)
        return node

    def hold_cpus(self, num_cpus: int) -> ProcessGroup:
        """A driver holding an actor of `num_cpus` CPUs until it is killed (its actor dies with it): with the
        head's CPUs held, a replica has to go to another node."""
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_CPUS, self.address, str(num_cpus)],
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert holder.stdout is not None
        if holder.stdout.readline() != b"holding\n":  # blocks until the actor runs, or the driver fails
            kill_session(holder)
            raise RuntimeError("the CPU holder did not start")
        return ProcessGroup(holder)

    def session_pids(self) -> set[int]:
        """Every process of the head node: all of them stay in the session `ray start` was given."""
        return session_pids(self.process) if self.process is not None else set()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        self._stop_head()

    def _stop_head(self) -> None:
        """SIGKILL to every process of the cluster (the CLI, GCS, raylet, workers, replicas): nothing in a
        test cluster needs a graceful end, and a SIGTERM'd head takes seconds to stop its children."""
        if self.process is not None:
            kill_session(self.process)
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
