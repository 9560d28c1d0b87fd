"""Typed settings: a TOML file plus `NSTD_<SECTION>__<KEY>` environment overrides. The models are here;
reading the file and the environment is config_load.py (`load_settings`, also importable from here).

Lookup order: --config, $NSTD_CONFIG, ./config.toml, ~/.config/nstd/config.toml, /etc/nstd/config.toml.
Relative paths in a file are relative to that file; relative paths from the environment (or from the
built-in defaults when no file exists) are relative to the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from nst_daemon.errors import NstdError
from nst_daemon.style_names import normalize_style

ENV_PREFIX = "NSTD_"
Device = Literal["auto", "cpu", "cuda"]
Preset = Literal["fast", "balanced", "best"]


class ConfigError(NstdError):
    """A configuration problem, worded as one line that names the source and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PathsSettings(_Section):
    state_dir: Path = Path("state")
    models_dir: Path = Path("models")


class TelegramSettings(_Section):
    token: SecretStr | None = None
    token_file: Path | None = None
    api_base: str = "https://api.telegram.org"
    allowed_users: list[int] = Field(default_factory=list)
    default_style: str = ""
    rate_limit_per_minute: int = Field(default=10, ge=1)

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("default_style")
    @classmethod
    def _known_style(cls, value: str) -> str:
        return _known_style(value)


def _known_style(value: str) -> str:
    value = normalize_style(value)
    # A named style (`nstd styles add`) may be the default too: it lives in the database, so the watched
    # folder and the bot check it when they use it. Only the reserved folder names are wrong here.
    if value in ("default", "nst", "instant"):
        from nst_daemon.style_catalog import (
            style_keys,
        )  # the packaged catalog's: models.catalog is not read yet

        raise ValueError(f"expected one of {', '.join(style_keys())}, a named style, or empty")
    return value


class StylesSettings(_Section):
    # The style for a photo that names none: a bot photo without a caption and the folder's inbox/default/.
    # It lives here, not under [telegram], because the folder reads it too.
    default: str = ""

    @field_validator("default")
    @classmethod
    def _known_style(cls, value: str) -> str:
        return _known_style(value)


class ModelsSettings(_Section):
    mirror: str = ""
    catalog: Path | None = None
    idle_unload_s: float = Field(default=600.0, ge=0)
    # Which missing models `nstd run` downloads before it starts serving; see firstrun.py.
    pull_on_start: Literal["auto", "all", "styles", "none"] = "none"

    @field_validator("mirror")
    @classmethod
    def _mirror_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL or empty")
        return value.rstrip("/")


class QueueSettings(_Section):
    max_pending: int = Field(default=50, ge=1)
    per_user: int = Field(default=3, ge=1)


class ImagesSettings(_Section):
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)

    @property
    def limits(self) -> dict[str, int]:
        """The keyword arguments of `imaging.load_image` that enforce these limits."""
        return {"max_pixels": self.max_pixels, "max_bytes": self.max_bytes}


class NstSettings(_Section):
    preset: Preset = "balanced"
    max_side: int = Field(default=512, ge=64, le=4096)
    device: Device = "auto"
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    seed: int = 0
    cpu_threads: int = Field(default=0, ge=0, le=1024)


class CycleganSettings(_Section):
    max_side: int = Field(default=1024, ge=64, le=4096)
    device: Device = "auto"
    cpu_threads: int = Field(default=0, ge=0, le=1024)


class AdainSettings(_Section):
    # 1024: at most about 2 GB for one square photo, so a 4 GB card has room (engines/adain.py).
    max_side: int = Field(default=1024, ge=64, le=4096)
    device: Device = "auto"
    cpu_threads: int = Field(default=0, ge=0, le=1024)


class WatchSettings(_Section):
    enabled: bool = False
    dir: Path = Path("watch")
    settle_s: float = Field(default=1.0, ge=0)


class StoreSettings(_Section):
    backend: Literal["local", "s3"] = "local"
    root: Path | None = None
    bucket: str = "nstd"
    endpoint_url: str = ""
    region: str = "us-east-1"
    retention_days: float = Field(default=30.0, ge=0)


class ClusterSettings(_Section):
    """Where the engines run (docs/cluster.md). Ray is imported only with backend = "ray"."""

    backend: Literal["local", "ray"] = "local"
    # "" starts a private single-node Ray inside nstd; "auto" or "HOST:PORT" joins a running cluster.
    address: str = ""
    # Replicas per engine: with a minimum of 0 an idle cluster holds no GPU, and the first job starts one.
    min_replicas: int = Field(default=0, ge=0, le=64)
    max_replicas: int = Field(default=1, ge=1, le=64)
    gpus_per_replica: float = Field(default=1.0, ge=0, le=8)
    # A job that runs longer than this on a replica is abandoned and costs one attempt.
    timeout_s: float = Field(default=900.0, gt=0)
    # Runs a job may take in all: a replica or node lost mid-job, or a timeout, costs one.
    attempts: int = Field(default=3, ge=1, le=20)
    # A file holding Ray's cluster token (RAY_AUTH_TOKEN_PATH); unset: Ray's own lookup (RAY_AUTH_TOKEN,
    # ~/.ray/auth_token). $CREDENTIALS_DIRECTORY is expanded.
    auth_token_file: Path | None = None
    # Where a replica keeps the models it fetched from the store; "" = ~/.cache/nstd/models.
    model_cache: str = ""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if value in ("", "auto"):
            return value
        host, sep, port = value.removeprefix("ray://").rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('expected "", "auto" or HOST:PORT')
        return value

    @model_validator(mode="after")
    def _replica_range(self) -> ClusterSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class DaemonSettings(_Section):
    grace_period_s: float = Field(default=20.0, ge=0, le=300)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    paths: PathsSettings = Field(default_factory=PathsSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    styles: StylesSettings = Field(default_factory=StylesSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    images: ImagesSettings = Field(default_factory=ImagesSettings)
    nst: NstSettings = Field(default_factory=NstSettings)
    cyclegan: CycleganSettings = Field(default_factory=CycleganSettings)
    adain: AdainSettings = Field(default_factory=AdainSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    # Where the settings came from; not a config key.
    source: Path | None = Field(default=None, exclude=True)

    @property
    def db_path(self) -> Path:
        return self.paths.state_dir / "nstd.sqlite3"

    @property
    def store_root(self) -> Path:
        return self.store.root or self.paths.state_dir / "objects"

    @property
    def default_style(self) -> str:
        """The style for a photo that names none; `telegram.default_style` is its deprecated old home."""
        return self.styles.default or self.telegram.default_style

    def telegram_token(self) -> str | None:
        """The bot token from `telegram.token` or `telegram.token_file`, or None when neither is set."""
        if self.telegram.token is not None and self.telegram.token.get_secret_value():
            return self.telegram.token.get_secret_value().strip()
        if self.telegram.token_file is not None:
            path = Path(os.path.expandvars(str(self.telegram.token_file)))
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"telegram.token_file: cannot read {path}: {exc.strerror}") from None
            return token or None
        return None


def mask_token(token: str | None) -> str:
    """A token as it may appear in output: the public bot id, never the secret part."""
    if not token:
        return "(not set)"
    bot_id, sep, _secret = token.partition(":")
    if sep and bot_id.isdigit():
        return f"{bot_id}:{'*' * 8}"
    return "*" * 8


# Finding and reading the file, the environment overrides and the one-line errors are config_load's, which
# needs the models above first; its functions are offered here too, looked up on first use (PEP 562), so
# that neither module imports the other half-made.
_LOADING = ("candidate_paths", "find_config", "load_settings")
if TYPE_CHECKING:
    from nst_daemon.config_load import candidate_paths as candidate_paths
    from nst_daemon.config_load import find_config as find_config
    from nst_daemon.config_load import load_settings as load_settings


def __getattr__(name: str) -> Any:
    if name in _LOADING:
        from nst_daemon import config_load

        return getattr(config_load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
