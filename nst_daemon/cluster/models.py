"""Models for replicas on other machines: the head publishes them to the store, a replica fetches them.

A worker machine needs no model setup. The head hashes each installed model's files and stores each one
once under its digest (`models/sha256/<hex>`); the digests travel to the replicas with the deployment
(through Ray, not through the store), so a file changed in the store is refused, never run. A replica
keeps what it fetched in a local cache, laid out as a models directory with its own manifest, so the
ordinary `EngineRunner` loads from it unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nst_daemon.errors import ModelNotInstalled, NstdError
from nst_daemon.fsutil import sha256_file as file_digest
from nst_daemon.fsutil import write_temporary
from nst_daemon.manifest import InstalledModel, read_manifest, write_manifest
from nst_daemon.store import object_exists

if TYPE_CHECKING:
    from nst_daemon.config import Settings

log = logging.getLogger(__name__)

MODELS_PREFIX = "models/sha256/"
CHUNK = 1 << 20


class ModelDigestMismatch(NstdError):
    """A model file fetched from the store is not the one the head published."""


def digest_mismatch(name: str, path: str, expected: str, got: str) -> ModelDigestMismatch:
    return ModelDigestMismatch(
        f"model {name}: {path} in the store does not match its digest (expected sha256 {expected[:12]}…, "
        f"got {got[:12]}…); refusing to run it: publish it again from the head (restart nstd)"
    )


@dataclass(frozen=True)
class PublishedModel:
    """What a replica needs to rebuild one manifest entry: the head's entry and each file's digest."""

    entry: dict[str, Any]
    digests: dict[str, str]  # file relative to models_dir -> sha256 hex


def models_for(settings: Settings, engine: str, styles: list[str]) -> list[str]:
    """The catalog names a job of `engine` loads (a pretrained style's job: its style's model)."""
    from nst_daemon.engines import registry
    from nst_daemon.pipeline import catalog_models

    try:
        return list(catalog_models(settings, registry.get(engine), styles))
    except NstdError:  # an unknown engine or style fails in the runner, with its own message
        return []


def publish_models(store: Any, bucket: str, models_dir: Path) -> dict[str, PublishedModel]:
    """Store every installed model's files under their digests (each once: a file already there is
    skipped) and return what the replicas are given."""
    published: dict[str, PublishedModel] = {}
    for name, model in read_manifest(models_dir).items():
        digests = {}
        for relative in model.files:
            path = models_dir / relative
            if not path.is_file():
                log.warning("model %s: %s is missing; not published (`nstd models verify`)", name, path)
                break
            digest = file_digest(path)
            key = MODELS_PREFIX + digest
            if not object_exists(store, bucket, key):
                with path.open("rb") as body:
                    store.put_object(Bucket=bucket, Key=key, Body=body)
                log.info("model %s: published %s (%s)", name, relative, digest[:12])
            digests[relative] = digest
        else:
            published[name] = PublishedModel(asdict(model), digests)
    return published


class ModelCache:
    """A replica's local models directory, filled from the store on first use and checked by digest."""

    def __init__(self, root: Path, store: Any, bucket: str, published: dict[str, PublishedModel]) -> None:
        self.root = root
        self.store = store
        self.bucket = bucket
        self.published = published
        self._checked: set[str] = set()  # digests verified in this process
        self._lock = threading.Lock()

    def ensure(self, names: list[str]) -> None:
        """Make `names` loadable from `root`: fetch what is missing, check every file's digest once."""
        with self._lock:
            for name in names:
                model = self.published.get(name)
                if model is None:
                    raise ModelNotInstalled(name)
                for relative, digest in model.digests.items():
                    self._ensure_file(name, relative, digest)
            installed = read_manifest(self.root)
            missing = [name for name in names if name not in installed]
            if missing:
                for name in missing:
                    installed[name] = InstalledModel(**self.published[name].entry)
                write_manifest(self.root, installed)

    def _ensure_file(self, name: str, relative: str, digest: str) -> None:
        if digest in self._checked:
            return
        path = self.root / relative
        if path.is_file():
            got = file_digest(path)
            if got == digest:
                self._checked.add(digest)
                return
            log.warning("model %s: cached %s changed (%s); fetching it again", name, relative, got[:12])
        path.parent.mkdir(parents=True, exist_ok=True)
        body = self.store.get_object(Bucket=self.bucket, Key=MODELS_PREFIX + digest)["Body"]
        hasher = hashlib.sha256()
        try:
            tmp = write_temporary(path.parent, b"", prefix=f".{path.name}.")
            with tmp.open("wb") as handle:
                while chunk := body.read(CHUNK):
                    hasher.update(chunk)
                    handle.write(chunk)
        finally:
            body.close()
        got = hasher.hexdigest()
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise digest_mismatch(name, relative, digest, got)
        os.replace(tmp, path)
        self._checked.add(digest)
        log.info("model %s: fetched %s (%s)", name, relative, digest[:12])
