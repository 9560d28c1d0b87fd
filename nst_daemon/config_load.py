"""Loading settings: finding the config file, reading its TOML, resolving relative paths, overlaying
`NSTD_<SECTION>__<KEY>` from the environment, and turning every validation error into one line that names
the file (or variable) and the key. The settings themselves are config.py's models.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from nst_daemon.config import ENV_PREFIX, ConfigError, Settings

log = logging.getLogger("nst_daemon.config")


def candidate_paths(explicit: Path | None = None) -> list[Path]:
    if explicit is not None:
        return [explicit]
    if env := os.environ.get("NSTD_CONFIG"):
        return [Path(env)]
    return [
        Path.cwd() / "config.toml",
        Path.home() / ".config" / "nstd" / "config.toml",
        Path("/etc/nstd/config.toml"),
    ]


def find_config(explicit: Path | None = None) -> Path | None:
    """The config file to use; an explicitly named file must exist, the search list may all be absent."""
    candidates = candidate_paths(explicit)
    if explicit is not None or os.environ.get("NSTD_CONFIG"):
        path = candidates[0]
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    return next((path for path in candidates if path.is_file()), None)


def load_settings(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate settings; every problem is one ConfigError line naming the file and key."""
    environ = os.environ if environ is None else environ
    path = find_config(explicit)
    raw: dict[str, Any] = {}
    origin: dict[tuple[str, str], str] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        _check_shape(raw, path)
        base = path.parent.resolve()
        for section, values in raw.items():
            for key in values:
                origin[(section, key)] = str(path)
        _resolve_relative_paths(raw, base)

    env_values = _environment_overrides(environ, origin)
    for (section, key), value in env_values.items():
        raw.setdefault(section, {})[key] = value
    _resolve_relative_paths(raw, Path.cwd(), only=set(env_values))

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, path)) from None
    settings.source = path
    settings = _resolve_defaults(settings, path.parent.resolve() if path else Path.cwd())
    _note_deprecated(settings, origin)
    return settings


def _note_deprecated(settings: Settings, origin: dict[tuple[str, str], str]) -> None:
    where = origin.get(("telegram", "default_style"))
    if where is None or not settings.telegram.default_style:
        return
    if settings.styles.default:
        log.warning(
            "%s: telegram.default_style is deprecated and ignored: styles.default (%s) is set",
            where,
            settings.styles.default,
        )
    else:
        log.warning(
            "%s: telegram.default_style is deprecated: move it to [styles] default = %r "
            "(it applies to the bot and the folder's inbox/default/)",
            where,
            settings.telegram.default_style,
        )


def _check_shape(raw: dict[str, Any], path: Path) -> None:
    for section, values in raw.items():
        if section not in Settings.model_fields or section == "source":
            known = ", ".join(name for name in Settings.model_fields if name != "source")
            raise ConfigError(f"{path}: [{section}]: unknown section (expected one of {known})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section}: expected a [{section}] table")


def _section_model(section: str) -> type[BaseModel]:
    return Settings.model_fields[section].annotation  # type: ignore[return-value]


def _is_path_field(section: str, key: str) -> bool:
    field = _section_model(section).model_fields.get(key)
    if field is None:
        return False
    annotation = field.annotation
    return annotation is Path or Path in get_args(annotation)


def _is_list_field(section: str, key: str) -> bool:
    field = _section_model(section).model_fields.get(key)
    return field is not None and get_origin(field.annotation) is list


def _resolve_relative_paths(
    raw: dict[str, Any], base: Path, only: set[tuple[str, str]] | None = None
) -> None:
    for section, values in raw.items():
        if not isinstance(values, dict) or section not in Settings.model_fields:
            continue
        for key, value in values.items():
            if only is not None and (section, key) not in only:
                continue
            if isinstance(value, str) and value and _is_path_field(section, key):
                expanded = Path(value).expanduser()
                if "$" in value:
                    # token_file may name $CREDENTIALS_DIRECTORY, which only exists at run time.
                    continue
                values[key] = str(expanded if expanded.is_absolute() else base / expanded)


def _environment_overrides(
    environ: Mapping[str, str], origin: dict[tuple[str, str], str]
) -> dict[tuple[str, str], Any]:
    # Not pydantic-settings (considered in issue 20): its env source merges the variables into the input
    # without saying which variable a value came from, and every line here needs that: an error names the
    # variable ("environment NSTD_QUEUE__PER_USER: queue.per_user ..."), a relative path from the
    # environment is relative to the working directory (one from the file, to the file), and a list is
    # comma-separated (pydantic-settings wants JSON). Wrapping it would mean parsing the names again here.
    overrides: dict[tuple[str, str], Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == "NSTD_CONFIG":
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in Settings.model_fields or section == "source":
            raise ConfigError(f"environment {name}: unknown section {section!r}")
        if key not in _section_model(section).model_fields:
            raise ConfigError(f"environment {name}: unknown key {section}.{key}")
        if _is_list_field(section, key):
            overrides[(section, key)] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            overrides[(section, key)] = value
        origin[(section, key)] = f"environment {name}"
    return overrides


def _resolve_defaults(settings: Settings, base: Path) -> Settings:
    """Built-in relative defaults follow the same rule as values in the file."""
    for section_name in ("paths", "watch", "store", "models", "telegram", "cluster"):
        section = getattr(settings, section_name)
        for key in type(section).model_fields:
            value = getattr(section, key)
            if isinstance(value, Path) and not value.is_absolute() and "$" not in str(value):
                setattr(section, key, base / value.expanduser())
    return settings


def _describe(exc: ValidationError, origin: dict[tuple[str, str], str], path: Path | None) -> str:
    error = exc.errors()[0]
    location = [str(part) for part in error["loc"]]
    dotted = ".".join(location[:2]) if location else "?"
    where = origin.get(tuple(location[:2]), str(path) if path else "defaults")  # type: ignore[arg-type]
    if error["type"] == "extra_forbidden":
        section = location[0]
        known = ", ".join(_section_model(section).model_fields) if section in Settings.model_fields else ""
        return f"{where}: {dotted}: unknown key (known keys in [{section}]: {known})"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    shown = error.get("input")
    if "token" in location:
        shown = "***"
    got = "" if isinstance(shown, dict) else f" (got {shown!r})"
    return f"{where}: {dotted}: {message}{got}"
