"""Config: lookup order, environment overrides, relative paths, errors that name their key, token masking."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from nst_daemon.config import ConfigError, Settings, find_config, load_settings, mask_token
from nst_daemon.logs import RedactSecrets

TOKEN = "123456789:AAHsecretsecretsecretsecretsecret00"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and home with no config, and no NSTD_* variables."""
    for name in list(__import__("os").environ):
        if name.startswith("NSTD_"):
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    return tmp_path


def test_defaults_without_any_file(isolated: Path) -> None:
    if Path("/etc/nstd/config.toml").exists():
        pytest.skip("this machine has /etc/nstd/config.toml")
    settings = load_settings()
    assert settings.source is None
    assert settings.queue.max_pending == 50
    assert settings.paths.state_dir == isolated / "work" / "state"


def test_lookup_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_cfg = isolated / "home" / ".config" / "nstd" / "config.toml"
    home_cfg.parent.mkdir(parents=True)
    home_cfg.write_text("[queue]\nmax_pending = 3\n")
    assert find_config() == home_cfg
    assert load_settings().queue.max_pending == 3

    cwd_cfg = isolated / "work" / "config.toml"
    cwd_cfg.write_text("[queue]\nmax_pending = 4\n")
    assert load_settings().queue.max_pending == 4

    env_cfg = isolated / "env.toml"
    env_cfg.write_text("[queue]\nmax_pending = 5\n")
    monkeypatch.setenv("NSTD_CONFIG", str(env_cfg))
    assert load_settings().queue.max_pending == 5

    explicit = isolated / "explicit.toml"
    explicit.write_text("[queue]\nmax_pending = 6\n")
    assert load_settings(explicit).queue.max_pending == 6


def test_explicit_missing_file_is_an_error(isolated: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(isolated / "nope.toml")


def test_environment_overrides_file(isolated: Path) -> None:
    cfg = isolated / "config.toml"
    cfg.write_text("[queue]\nmax_pending = 7\n[telegram]\nallowed_users = [1]\n")
    settings = load_settings(
        cfg,
        environ={
            "NSTD_QUEUE__MAX_PENDING": "9",
            "NSTD_TELEGRAM__ALLOWED_USERS": "5, 6",
            "NSTD_WATCH__ENABLED": "true",
        },
    )
    assert settings.queue.max_pending == 9
    assert settings.telegram.allowed_users == [5, 6]
    assert settings.watch.enabled is True


def test_relative_paths_are_relative_to_the_file(isolated: Path) -> None:
    folder = isolated / "etc"
    folder.mkdir()
    cfg = folder / "config.toml"
    cfg.write_text('[paths]\nstate_dir = "var/state"\nmodels_dir = "/abs/models"\n[watch]\ndir = "drop"\n')
    settings = load_settings(cfg, environ={})
    assert settings.paths.state_dir == folder / "var" / "state"
    assert settings.paths.models_dir == Path("/abs/models")
    assert settings.watch.dir == folder / "drop"
    # Keys the file leaves out follow the same rule.
    assert settings.store_root == folder / "var" / "state" / "objects"


def test_relative_path_from_environment_is_relative_to_cwd(isolated: Path) -> None:
    cfg = isolated / "config.toml"
    cfg.write_text("")
    settings = load_settings(cfg, environ={"NSTD_PATHS__STATE_DIR": "here"})
    assert settings.paths.state_dir == isolated / "work" / "here"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[queue]\nmax_pending = 'many'\n", "queue.max_pending"),
        ("[queue]\nmax_pending = 0\n", "queue.max_pending"),
        ("[queue]\nmax_pendin = 3\n", "queue.max_pendin: unknown key"),
        ("[nope]\nx = 1\n", "[nope]: unknown section"),
        ("[nst]\npreset = 'slow'\n", "nst.preset"),
        ("[nst]\ndevice = 'tpu'\n", "nst.device"),
        ("[nst]\ncpu_threads = -1\n", "nst.cpu_threads"),
        ("[cyclegan]\ncpu_threads = 'all'\n", "cyclegan.cpu_threads"),
        ("[telegram]\napi_base = 'ftp://x'\n", "telegram.api_base"),
        ("[telegram]\ndefault_style = 'nst'\n", "telegram.default_style"),
        ("[telegram]\nallowed_users = ['bob']\n", "telegram.allowed_users"),
        ("[store]\nbackend = 'gcs'\n", "store.backend"),
        ("[watch]\nenabled = 'maybe'\n", "watch.enabled"),
        ("queue = 3\n", "queue: expected a [queue] table"),
        ("[queue\n", "not valid TOML"),
        ('[cluster]\nbackend = "slurm"\n', "cluster.backend: Input should be 'local' or 'ray'"),
        ('[cluster]\naddress = "head"\n', 'cluster.address: expected "", "auto" or HOST:PORT'),
        ('[cluster]\naddress = "head:99999"\n', 'cluster.address: expected "", "auto" or HOST:PORT'),
        ("[cluster]\nmin_replicas = 3\nmax_replicas = 2\n", "min_replicas (3) is above max_replicas (2)"),
        ("[cluster]\nattempts = 0\n", "cluster.attempts: Input should be greater than or equal to 1"),
    ],
)
def test_config_errors_name_file_and_key(isolated: Path, content: str, expected: str) -> None:
    cfg = isolated / "config.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    message = str(info.value)
    assert "\n" not in message
    assert str(cfg) in message
    assert expected in message


def test_environment_errors_name_the_variable(isolated: Path) -> None:
    cfg = isolated / "config.toml"
    cfg.write_text("")
    with pytest.raises(ConfigError, match=r"environment NSTD_QUEUE__PER_USER: queue.per_user"):
        load_settings(cfg, environ={"NSTD_QUEUE__PER_USER": "x"})
    with pytest.raises(ConfigError, match=r"unknown key queue\.nope"):
        load_settings(cfg, environ={"NSTD_QUEUE__NOPE": "1"})


def test_token_from_file_env_and_masking(isolated: Path) -> None:
    token_file = isolated / "creds" / "telegram_token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    cfg = isolated / "config.toml"
    cfg.write_text('[telegram]\ntoken_file = "${CREDS}/telegram_token"\n')
    import os

    os.environ["CREDS"] = str(token_file.parent)
    try:
        settings = load_settings(cfg, environ={})
        assert settings.telegram_token() == TOKEN
    finally:
        del os.environ["CREDS"]
    settings = load_settings(cfg, environ={"NSTD_TELEGRAM__TOKEN": TOKEN})
    assert settings.telegram_token() == TOKEN
    assert "secret" not in repr(settings) and "secret" not in str(settings.model_dump())
    assert mask_token(TOKEN) == "123456789:********"
    assert "secret" not in mask_token("nocolon-secret")


def test_token_never_in_config_errors(isolated: Path) -> None:
    cfg = isolated / "config.toml"
    cfg.write_text("[telegram]\ntoken = 12345\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert "12345" not in str(info.value)


def test_missing_token_file_is_one_clear_error(isolated: Path) -> None:
    cfg = isolated / "config.toml"
    cfg.write_text('[telegram]\ntoken_file = "missing"\n')
    with pytest.raises(ConfigError, match=r"telegram\.token_file: cannot read"):
        load_settings(cfg, environ={}).telegram_token()


def test_log_redaction_masks_token_everywhere() -> None:
    redactor = RedactSecrets()
    redactor.add(TOKEN)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "GET https://api/bot%s/getMe", (TOKEN,), None)
    redactor.filter(record)
    assert TOKEN not in record.getMessage()
    assert "123456789:********" in record.getMessage()


def test_the_shipped_config_and_the_readme_list_every_key(isolated: Path) -> None:
    """Docs that match the code: config.toml loads, and it and the README's table name every key."""
    root = Path(__file__).resolve().parents[1]
    example = root / "config.toml"
    load_settings(example, environ={})
    text = example.read_text(encoding="utf-8")
    shipped = tomllib.loads(text)
    readme = (root / "README.md").read_text(encoding="utf-8")
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue  # `source`: not a config key
        row = next(line for line in readme.splitlines() if line.startswith(f"| `[{section}]` |"))
        for key in model.model_fields:
            assert f"`{key}`" in row, f"README's config table lacks {section}.{key}"
            commented = re.search(rf"^# {key} = ", text, re.MULTILINE)
            assert key in shipped.get(section, {}) or commented, f"config.toml lacks {section}.{key}"
