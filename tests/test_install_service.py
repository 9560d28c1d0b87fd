"""scripts/install-service: dry runs change nothing, real runs under --prefix write the right files once.

No test builds the venv (torch makes that minutes long): dry runs show that step, and real runs use
--skip-venv, a user-facing option that writes only the config, token, unit and the `nstd` command.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from nst_daemon.config import load_settings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-service"
TOKEN = "987654:AAE_secret-Token_value"


def run(
    *args: str, prefix: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NSTD_")}
    environment.update(env or {})
    command = ["bash", str(SCRIPT), *args]
    if prefix is not None:
        command += ["--prefix", str(prefix)]
    return subprocess.run(
        command, capture_output=True, text=True, env=environment, stdin=subprocess.DEVNULL, timeout=60
    )


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root with its mode and, for files, its content."""
    tree = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        tree[str(path.relative_to(root))] = (info.st_mode, content)
    return tree


def output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A real install under a prefix (without the venv), as an upgrade or uninstall starts from."""
    prefix = tmp_path / "root"
    prefix.mkdir()
    done = run("--skip-venv", prefix=prefix, env={"NSTD_TELEGRAM_TOKEN": TOKEN})
    assert done.returncode == 0, output(done)
    (prefix / "opt" / "nstd" / ".venv" / "bin").mkdir(parents=True)  # stands in for the real venv
    return prefix


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck") is None:
        print("shellcheck is not installed; skipped the lint")
        return
    done = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout


def test_fresh_install_dry_run_lists_every_step_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    prefix.mkdir()
    done = run("--dry-run", prefix=prefix)
    text = output(done)
    assert done.returncode == 0, text
    assert f"would copy the nstd source from {REPO} to {prefix}/opt/nstd/src" in text
    assert f"would install nstd into {prefix}/opt/nstd/.venv" in text
    assert "scripts/bootstrap" in text
    assert f"would write config {prefix}/etc/nstd/config.toml" in text
    assert f"would ask for the bot token and write it to {prefix}/etc/nstd/telegram_token (mode 0600)" in text
    assert f"would write unit {prefix}/etc/systemd/system/nstd.service" in text
    assert "systemctl daemon-reload" in text
    assert "systemctl enable nstd.service" in text
    assert "dry run: nothing was changed" in text
    assert list(prefix.iterdir()) == []


def test_dry_run_on_the_running_system_would_call_systemctl() -> None:
    watched = [Path(p) for p in ("/etc/nstd", "/opt/nstd", "/etc/systemd/system/nstd.service")]
    before = [p.exists() for p in watched]
    done = run("--dry-run", env={"NSTD_TELEGRAM_TOKEN": TOKEN})
    text = output(done)
    assert done.returncode == 0, text
    assert "[dry-run] would run systemctl daemon-reload" in text
    assert "[dry-run] would run systemctl enable nstd.service" in text
    assert [p.exists() for p in watched] == before
    assert TOKEN.split(":")[1] not in text


def test_install_writes_config_token_and_unit(installed: Path) -> None:
    config = installed / "etc" / "nstd" / "config.toml"
    token = installed / "etc" / "nstd" / "telegram_token"
    unit = installed / "etc" / "systemd" / "system" / "nstd.service"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.read_text().strip() == TOKEN
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert unit.read_bytes() == (REPO / "systemd" / "nstd.service").read_bytes()
    assert stat.S_IMODE((installed / "var" / "lib" / "nstd").stat().st_mode) == 0o750
    assert "/opt/nstd/.venv/bin/nstd" in (installed / "usr" / "local" / "bin" / "nstd").read_text()

    settings = load_settings(config, environ={})
    assert settings.paths.state_dir == Path("/var/lib/nstd")
    assert settings.paths.models_dir == Path("/var/lib/nstd/models")
    assert settings.watch.dir == Path("/var/lib/nstd/watch")
    assert settings.telegram.token_file == Path("/etc/nstd/telegram_token")


def test_install_never_prints_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    prefix = tmp_path / "root"
    done = run("--skip-venv", "--token-file", str(token_file), prefix=prefix)
    assert done.returncode == 0, output(done)
    assert TOKEN not in output(done) and "secret" not in output(done)
    assert "bot 987654" in done.stdout
    assert (prefix / "etc" / "nstd" / "telegram_token").read_text().strip() == TOKEN


def test_install_without_a_token_fails_before_changing_anything(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    prefix.mkdir()
    done = run("--skip-venv", prefix=prefix)
    assert done.returncode == 1
    assert "no bot token" in done.stderr
    assert list(prefix.iterdir()) == []

    done = run("--skip-venv", prefix=prefix, env={"NSTD_TELEGRAM_TOKEN": "not a token"})
    assert done.returncode == 1
    assert "does not look like a bot token" in done.stderr
    assert "not a token" not in output(done)


def test_upgrade_dry_run_keeps_the_config(installed: Path) -> None:
    config = installed / "etc" / "nstd" / "config.toml"
    config.write_text(config.read_text() + "\n# my own edit\n")
    before = snapshot(installed)

    done = run("--dry-run", prefix=installed)
    text = output(done)
    assert done.returncode == 0, text
    assert f"keep {config}: it exists and is never overwritten" in text
    assert "would write config" not in text
    assert "keep token" in text
    assert "keep unit" in text
    assert "would install nstd into" in text  # an upgrade re-installs the package
    assert snapshot(installed) == before


def test_upgrade_keeps_config_and_token(installed: Path) -> None:
    config = installed / "etc" / "nstd" / "config.toml"
    config.write_text(config.read_text() + "\n# my own edit\n")
    token = installed / "etc" / "nstd" / "telegram_token"
    edited, kept_token = config.read_bytes(), token.read_bytes()
    unit = installed / "etc" / "systemd" / "system" / "nstd.service"
    unit.write_text("stale unit from an older release\n")

    done = run("--skip-venv", prefix=installed)
    assert done.returncode == 0, output(done)
    assert config.read_bytes() == edited
    assert token.read_bytes() == kept_token
    assert unit.read_bytes() == (REPO / "systemd" / "nstd.service").read_bytes()
    assert f"keep {config}: it exists and is never overwritten" in done.stdout


def test_uninstall_dry_run_keeps_state(installed: Path) -> None:
    before = snapshot(installed)
    done = run("--uninstall", "--dry-run", prefix=installed)
    text = output(done)
    assert done.returncode == 0, text
    assert "systemctl disable --now nstd.service" in text
    assert f"would remove {installed}/etc/systemd/system/nstd.service" in text
    assert f"would remove {installed}/opt/nstd" in text
    assert f"keep {installed}/etc/nstd (config, token) and {installed}/var/lib/nstd" in text
    assert f"would remove {installed}/etc/nstd\n" not in text
    assert snapshot(installed) == before


def test_uninstall_purge_dry_run_lists_state(installed: Path) -> None:
    before = snapshot(installed)
    done = run("--uninstall", "--purge", "--dry-run", prefix=installed)
    text = output(done)
    assert done.returncode == 0, text
    for path in ("etc/systemd/system/nstd.service", "opt/nstd", "etc/nstd", "var/lib/nstd", "var/cache/nstd"):
        assert f"would remove {installed}/{path}\n" in text
    assert snapshot(installed) == before


def test_uninstall_then_purge(installed: Path) -> None:
    done = run("--uninstall", prefix=installed)
    assert done.returncode == 0, output(done)
    assert not (installed / "etc" / "systemd" / "system" / "nstd.service").exists()
    assert not (installed / "opt" / "nstd").exists()
    assert not (installed / "usr" / "local" / "bin" / "nstd").exists()
    assert (installed / "etc" / "nstd" / "config.toml").exists()
    assert (installed / "var" / "lib" / "nstd").is_dir()

    done = run("--uninstall", "--purge", prefix=installed)
    assert done.returncode == 0, output(done)
    for path in ("etc/nstd", "var/lib/nstd", "var/cache/nstd"):
        assert not (installed / path).exists()


def test_purge_needs_uninstall(tmp_path: Path) -> None:
    done = run("--purge", "--dry-run", prefix=tmp_path)
    assert done.returncode == 1
    assert "--purge only goes with --uninstall" in done.stderr
