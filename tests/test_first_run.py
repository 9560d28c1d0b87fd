"""A newcomer's first run: scripts/run on a fresh clone, models pulled at start, the start-up lines, the log
format, the default style's home, and docs that point at files that exist."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import CYCLEGAN_MODELS, REPO, wait_until, write_config
from http_fixture import FileServer
from PIL import Image

from nst_daemon import firstrun, imaging
from nst_daemon.config import ConfigError, load_settings
from nst_daemon.logs import stream_is_journal

CYCLEGAN_FILES = [f"{name}.pth" for name in CYCLEGAN_MODELS]


@pytest.fixture(scope="module")
def cyclegan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from checkpoints import make_cyclegan_state_dict, save_checkpoint

    return save_checkpoint(make_cyclegan_state_dict(seed=0), tmp_path_factory.mktemp("ckpt") / "g.pth")


@pytest.fixture(scope="module")
def adain_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two AdaIN files as upstream names them, random-init in upstream's layout."""
    from checkpoints import make_adain_decoder_state_dict, make_adain_vgg_state_dict, save_checkpoint

    folder = tmp_path_factory.mktemp("adain")
    return {
        "vgg_normalised.pth": save_checkpoint(make_adain_vgg_state_dict(seed=0), folder / "vgg.pth"),
        "decoder.pth": save_checkpoint(make_adain_decoder_state_dict(seed=0), folder / "decoder.pth"),
    }


def drop_photo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name("." + path.name)  # hidden while it is written; the folder ignores it
    part.write_bytes(imaging.encode_image(Image.new("RGB", (64, 48), (200, 120, 40)), "jpeg"))
    part.rename(path)


class Output:
    """Collects a process's merged stdout and stderr line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                time.sleep(0.3)
                raise AssertionError(f"exited ({self.proc.returncode}) before {text!r}:\n{self.text}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {text!r}:\n{self.text}")


# --- scripts/run on a fresh clone ---------------------------------------------------------------------------


def _test_venv() -> Path:
    # The venv this test suite runs in (scripts/test made it); NSTD_TEST_VENV names another one.
    return Path(os.environ.get("NSTD_TEST_VENV") or sys.prefix)


@pytest.mark.timeout(600)  # the waits below fail first, each with its own message
def test_fresh_clone_scripts_run_then_one_photo_gives_a_result(
    tmp_path: Path, cyclegan_checkpoint: Path, adain_checkpoints: dict[str, Path]
) -> None:
    """The README's promise: clone, `scripts/run`, drop a photo, get a painting. Nothing else."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "nstd"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    # No settings from the environment (the clone's config.toml rules); install choices such as
    # NSTD_TORCH_BUILD stay.
    env = {key: value for key, value in os.environ.items() if not (key.startswith("NSTD_") and "__" in key)}
    env.pop("NSTD_CONFIG", None)
    env.update(NSTD_VENV=str(_test_venv()), PYTHONUNBUFFERED="1")
    # scripts/run must not reinstall anything here: the test's venv has to satisfy a plain run already.
    check = subprocess.run(
        [clone / "scripts" / "bootstrap", "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        pytest.skip(
            f"{_test_venv()} was not made by this checkout's scripts/bootstrap: {check.stderr.strip()}"
        )

    with FileServer() as mirror:
        for name in CYCLEGAN_FILES:
            mirror.add_file(f"/{name}", cyclegan_checkpoint)
        for name, path in adain_checkpoints.items():
            mirror.add_file(f"/{name}", path)
        env["NSTD_MODELS__MIRROR"] = mirror.base_url  # the loopback mirror stands in for the internet
        proc = subprocess.Popen(
            [clone / "scripts" / "run"],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output = Output(proc)
            output.wait_for("ready: drop a photo into watch/inbox/monet/", timeout=360)
            assert "pull_on_start" in output.text and "installed style_monet.onnx" in output.text
            assert "adain_decoder" in output.text and "failed" not in output.text.lower()
            drop_photo(clone / "watch" / "inbox" / "monet" / "beach.jpg")
            results = wait_until(
                lambda: list((clone / "watch" / "outbox" / "monet").glob("*.jpg")), 120, 0.2, "a result"
            )
            with Image.open(results[0]) as result:
                assert result.size == (64, 48)
            proc.send_signal(signal.SIGTERM)  # the daemon itself: scripts/run execs it
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert "Traceback" not in output.text
    assert "bootstrap:" not in output.text  # nothing was installed


# --- pull on start ------------------------------------------------------------------------------------------


def _pull_config(tmp_path: Path, mirror: str, pull: str = "styles") -> Path:
    return write_config(
        tmp_path / "config.toml",
        {
            "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(tmp_path / "models")},
            "models": {"pull_on_start": pull, "mirror": mirror},
            "watch": {"enabled": True, "dir": str(tmp_path / "watch")},
        },
    )


def test_stopping_during_the_first_download_ends_it_at_once(
    tmp_path: Path, daemon_process, cyclegan_checkpoint: Path
) -> None:
    with FileServer() as mirror:
        mirror.add_file("/style_monet.pth", cyclegan_checkpoint)
        gate = mirror.hold("/style_monet.pth")
        try:
            daemon = daemon_process(_pull_config(tmp_path, mirror.base_url)).start(
                wait_for="style_monet: downloading", timeout=120
            )
            wait_until(lambda: mirror.requests_for("/style_monet.pth"), 60, message="the download request")
            started = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
            assert time.monotonic() - started < 30
        finally:
            gate.set()
    match = re.search(r"ending the model download \(pid (\d+)\)", daemon.log)
    assert match, daemon.log
    with pytest.raises(ProcessLookupError):
        os.kill(int(match.group(1)), 0)
    assert "Traceback" not in daemon.log


def test_offline_first_start_says_how_to_install_and_keeps_running(tmp_path: Path, daemon_process) -> None:
    with FileServer() as mirror:  # serves nothing: every file is a 404
        daemon = daemon_process(_pull_config(tmp_path, mirror.base_url)).start(timeout=180)
        assert daemon.stop() == 0
    text = daemon.log
    assert "could not download" in text
    assert "--mirror URL" in text and "nstd models import NAME FILE" in text
    for name in CYCLEGAN_FILES:
        assert name in text
    assert "no style is ready yet" in text
    assert "Traceback" not in text


def test_wanted_models_fit_the_machine(tmp_path: Path) -> None:
    def names(choice: str, has_gpu: bool) -> list[str]:
        settings = load_settings(_pull_config(tmp_path, "", choice), environ={})
        return [entry.name for entry in firstrun.wanted_models(settings, has_gpu=has_gpu)]

    # Without a GPU: the six styles and AdaIN (seconds per photo on a CPU), not the 575 MB VGG19.
    assert sorted(names("auto", False)) == sorted([*CYCLEGAN_MODELS, "adain_vgg", "adain_decoder"])
    # With one: VGG19 too, last, so that the small models are ready first.
    assert names("auto", True)[-1] == "vgg19" and len(names("auto", True)) == 9
    assert names("all", False)[-1] == "vgg19"
    assert sorted(names("styles", True)) == sorted(CYCLEGAN_MODELS)
    assert names("none", True) == []


def test_the_shipped_config_pulls_and_watches_but_the_built_in_defaults_do_not(tmp_path: Path) -> None:
    shipped = load_settings(REPO / "config.toml", environ={})
    assert shipped.models.pull_on_start == "auto" and shipped.watch.enabled
    # A service or a test with its own config never downloads at start unless asked.
    bare = load_settings(write_config(tmp_path / "c.toml", {"queue": {"per_user": 2}}), environ={})
    assert bare.models.pull_on_start == "none" and not bare.watch.enabled
    no_pull = load_settings(REPO / "config.toml", environ={"NSTD_MODELS__PULL_ON_START": "none"})
    assert no_pull.models.pull_on_start == "none"


def test_scripts_run_no_pull_and_mirror_become_settings(tmp_path: Path) -> None:
    # scripts/run turns its own options into the environment; a fake venv shows what nstd would get.
    fake = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", fake / "scripts")
    (fake / "pyproject.toml").write_text("")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/usr/bin/env bash\nenv | grep ^NSTD_MODELS__ | sort\necho "args: $*"\n')
    python.chmod(0o755)
    (fake / "scripts" / "bootstrap").write_text("#!/usr/bin/env bash\nexit 0\n")
    env = {"PATH": os.environ["PATH"], "NSTD_VENV": str(venv)}
    done = subprocess.run(
        [fake / "scripts" / "run", "--no-pull", "--mirror", "http://127.0.0.1:9/m", "--log-level", "debug"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "NSTD_MODELS__PULL_ON_START=none" in done.stdout
    assert "NSTD_MODELS__MIRROR=http://127.0.0.1:9/m" in done.stdout
    assert "args: -m nst_daemon --config ./config.toml --log-level debug run" in done.stdout


# --- the last start-up lines --------------------------------------------------------------------------------


def test_ready_lines_say_where_to_drop_a_photo(
    tmp_path: Path, installed_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path / "config.toml",
        {"paths": {"models_dir": str(installed_models_dir)}, "watch": {"enabled": True, "dir": "watch"}},
    )
    lines = firstrun.ready_lines(load_settings(config, environ={}))
    assert lines[0].startswith("ready: drop a photo into watch/inbox/monet/ (or cezanne, ukiyoe, vangogh,")
    assert "the result appears in watch/outbox/monet/" in lines[0]
    assert "watch/styles/" in lines[1] and "watch/inbox/nst/" in lines[1]


def test_ready_lines_say_how_to_use_the_instant_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "config.toml", {"watch": {"enabled": True, "dir": "watch"}})
    installed = [
        SimpleNamespace(kind=kind, style=style, installed=True)
        for kind, style in (("cyclegan", "monet"), ("adain_vgg", ""), ("adain_decoder", ""))
    ]
    monkeypatch.setattr(firstrun, "installed_status", lambda settings: installed)
    lines = firstrun.ready_lines(load_settings(config, environ={}))
    assert lines[1] == (
        "any picture as a style in seconds: `nstd styles add NAME picture.jpg`, "
        "then drop photos into watch/inbox/NAME/"
    )
    monkeypatch.setattr(firstrun, "installed_status", lambda settings: installed[:2])  # half of AdaIN
    assert not any("styles add" in line for line in firstrun.ready_lines(load_settings(config, environ={})))


def test_ready_lines_without_models_or_folder(tmp_path: Path) -> None:
    empty = write_config(tmp_path / "a.toml", {"paths": {"models_dir": str(tmp_path / "none")}})
    assert (
        "no style is ready yet: run `nstd models pull`"
        in firstrun.ready_lines(load_settings(empty, environ={}))[0]
    )


# --- log lines ----------------------------------------------------------------------------------------------

LOGGING_SNIPPET = (
    "import logging; from nst_daemon.logs import setup_logging; setup_logging(); "
    "logging.getLogger('nstd.test').info('hello')"
)


def _log_line(tmp_path: Path, journal: bool) -> str:
    target = tmp_path / "stderr.txt"
    with target.open("w") as stderr:
        env = {**os.environ}
        env.pop("JOURNAL_STREAM", None)
        if journal:  # what systemd sets when stderr is the journal's stream
            status = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        subprocess.run(
            [sys.executable, "-c", LOGGING_SNIPPET], stderr=stderr, env=env, check=True, timeout=60
        )
    return target.read_text().strip()


def test_log_lines_have_timestamps_except_in_the_journal(tmp_path: Path) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO nstd.test: hello", _log_line(tmp_path, False))
    assert _log_line(tmp_path, True) == "INFO nstd.test: hello"


def test_journal_stream_must_be_this_stream(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        status = os.fstat(a.fileno())
        value = f"{status.st_dev}:{status.st_ino}"
        assert stream_is_journal(a, {"JOURNAL_STREAM": value})
        # Inherited by a child whose stderr went elsewhere: not the journal.
        assert not stream_is_journal(b, {"JOURNAL_STREAM": value})
        assert not stream_is_journal(a, {})
        assert not stream_is_journal(a, {"JOURNAL_STREAM": "garbage"})


# --- the default style --------------------------------------------------------------------------------------


def test_default_style_lives_in_styles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = write_config(tmp_path / "c.toml", {"styles": {"default": "Monet "}})
    with caplog.at_level(logging.WARNING):
        assert load_settings(config, environ={}).default_style == "monet"
    assert "deprecated" not in caplog.text
    with pytest.raises(ConfigError, match=r"styles\.default: expected one of monet"):
        load_settings(write_config(tmp_path / "d.toml", {"styles": {"default": "nst"}}), environ={})


def test_old_telegram_default_style_still_works_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path / "c.toml", {"telegram": {"default_style": "cezanne"}})
    with caplog.at_level(logging.WARNING):
        assert load_settings(config, environ={}).default_style == "cezanne"
    assert "telegram.default_style is deprecated: move it to [styles] default = 'cezanne'" in caplog.text
    caplog.clear()
    both = write_config(
        tmp_path / "b.toml", {"telegram": {"default_style": "cezanne"}, "styles": {"default": "ukiyoe"}}
    )
    with caplog.at_level(logging.WARNING):
        assert load_settings(both, environ={}).default_style == "ukiyoe"
    assert "deprecated and ignored" in caplog.text


def test_inbox_default_uses_styles_default(daemon_config, daemon_process) -> None:
    config = daemon_config(watch={"enabled": True, "settle_s": 0.1}, styles={"default": "vangogh"})
    settings = load_settings(config, environ={})
    daemon = daemon_process(config).start()
    drop_photo(settings.watch.dir / "inbox" / "default" / "photo.jpg")
    outbox, failed = settings.watch.dir / "outbox" / "default", settings.watch.dir / "failed"
    wait_until(lambda: list(outbox.glob("*.jpg")) or list(failed.rglob("*.jpg")), 120, 0.2, "a result")
    assert daemon.stop() == 0
    assert not [path.name for path in failed.rglob("*") if path.is_file()]
    assert list(outbox.glob("*.jpg"))


def test_bot_uncaptioned_photo_uses_styles_default(tmp_path: Path) -> None:
    from fake_telegram import FakeTelegram
    from test_bot_flows import OWNER, BotHarness, jpeg, result_call

    from nst_daemon.config import Settings, StylesSettings

    class DefaultStyleHarness(BotHarness):
        def settings(self, **queue: object) -> Settings:
            return super().settings(**queue).model_copy(update={"styles": StylesSettings(default="ukiyoe")})

    with FakeTelegram() as server:
        harness = DefaultStyleHarness(server, tmp_path).start()
        try:
            mark = server.mark()
            server.send_photo(OWNER, jpeg())
            assert "Ukiyo-e" in result_call(server, OWNER, mark).text
        finally:
            harness.close()


def test_bot_asks_when_the_default_is_a_named_style(tmp_path: Path) -> None:
    """A named style as styles.default serves the folder and the CLI; the bot cannot run it yet, so it asks
    with buttons instead of queueing a job that fails as an unknown style."""
    from fake_telegram import FakeTelegram
    from test_bot_flows import OWNER, BotHarness, jpeg

    from nst_daemon.bot import texts
    from nst_daemon.config import Settings, StylesSettings

    class NamedDefaultHarness(BotHarness):
        def settings(self, **queue: object) -> Settings:
            return super().settings(**queue).model_copy(update={"styles": StylesSettings(default="pair")})

    with FakeTelegram() as server:
        harness = NamedDefaultHarness(server, tmp_path).start()
        try:
            mark = server.mark()
            server.send_text(OWNER, "/start")
            welcome = server.wait_text(OWNER, "Hi!", since=mark)
            assert "pick a style with the buttons" in welcome.text
            assert texts.style_name("pair") not in welcome.text
            server.send_photo(OWNER, jpeg())
            server.wait_text(OWNER, "Which style?", since=mark)
        finally:
            harness.close()


# --- docs ---------------------------------------------------------------------------------------------------


def test_references_to_design_md_point_at_a_file_that_exists() -> None:
    """The design document is not in the repository: nothing shipped may send a reader to it."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout
    paths = [REPO / line for line in tracked.splitlines()] or list(REPO.glob("**/*.py"))
    for path in paths:
        if (
            path.suffix not in {".py", ".toml", ".md"}
            or not path.is_file()
            or path.name == Path(__file__).name
        ):
            continue
        for match in re.finditer(r"[\w./-]*design\.md", path.read_text(encoding="utf-8", errors="replace")):
            named = match.group(0)
            assert (REPO / named).exists() or (path.parent / named).exists(), (
                f"{path}: {named} does not exist"
            )
