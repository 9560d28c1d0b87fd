"""Reaching the Ray cluster: the address, the token, and what is wrong when it cannot be reached.

Shared by `RayRunner` (which then connects) and `nstd doctor` (which only probes). Nothing here imports
Ray, and no token is ever written to a log line: only where it comes from.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

from nst_daemon.config import ClusterSettings, Settings
from nst_daemon.errors import ClusterUnavailable

PROBE_TIMEOUT_S = 2.0
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def host_port(address: str) -> tuple[str, int] | None:
    """HOST and PORT of a "HOST:PORT" (or ray://HOST:PORT) address; None for "" and "auto"."""
    if address in ("", "auto"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port)


def token_file(cluster: ClusterSettings) -> Path | None:
    if cluster.auth_token_file is None:
        return None
    return Path(os.path.expandvars(str(cluster.auth_token_file)))


def token_source(cluster: ClusterSettings) -> str:
    """Where Ray will take its token from, in words (never the token)."""
    path = token_file(cluster)
    if path is not None:
        return f"cluster.auth_token_file ({path})"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    if RAY_TOKEN_FILE.is_file():
        return str(RAY_TOKEN_FILE)
    return ""


def apply_token(cluster: ClusterSettings) -> None:
    """Point Ray at the configured token file (Ray reads RAY_AUTH_TOKEN_PATH); the token stays in it."""
    path = token_file(cluster)
    if path is None:
        return
    if not path.is_file():
        raise ClusterUnavailable(f"cluster.auth_token_file: {path} does not exist")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def probe(settings: Settings) -> None:
    """Raise ClusterUnavailable, in one line, when the configured cluster cannot be used at all: Ray
    missing, a token file missing, or nothing listening at HOST:PORT. Cheap; it does not join."""
    cluster = settings.cluster
    if not ray_installed():
        raise ClusterUnavailable('cluster.backend = "ray" needs Ray: pip install "nstd[ray]"')
    path = token_file(cluster)
    if path is not None and not path.is_file():
        raise ClusterUnavailable(f"cluster.auth_token_file: {path} does not exist")
    target = host_port(cluster.address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterUnavailable(f"the Ray cluster at {cluster.address} does not answer ({reason})") from None


def store_problem(settings: Settings, nodes: int | None = None) -> str:
    """Why the store cannot serve replicas on other machines, or "": a local store only works when every
    replica runs on this machine (a private Ray, or a cluster of one node)."""
    if settings.store.backend == "s3":
        return ""
    if nodes is not None and nodes <= 1:
        return ""
    if nodes is None and settings.cluster.address == "":
        return ""
    where = f"the cluster has {nodes} nodes" if nodes else f"the cluster at {settings.cluster.address!r}"
    return (
        f'{where} but store.backend = "local": replicas on other machines cannot read it; '
        'use store.backend = "s3" (S3 or MinIO), see docs/cluster.md'
    )
