"""Issue 21 in the bot, against the fake Bot API (the real JobQueue and BotService, a fake engine runner):
Instant vs Painted, strength in /settings, weight captions, named styles (captions, buttons, /styles, the
default), users' own styles (/savestyle, "Save as style…") and every refusal on the way.

The models dir holds AdaIN only (stand-in files in a manifest: the fake runner loads nothing), so the
default engine for style images is Instant on any machine, and Painted's vgg19 is "missing".
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fake_telegram import Call, FakeTelegram
from PIL import Image
from test_bot_flows import BotHarness, MemoryStore, jpeg, result_call

from nst_daemon import named_styles
from nst_daemon.config import Settings
from nst_daemon.engines.adain import MODELS as ADAIN_MODELS
from nst_daemon.manifest import InstalledModel, write_manifest


def install_stand_ins(models: Path, names: tuple[str, ...]) -> None:
    """Manifest entries with small files: enough for runnable_path, nothing an engine could load."""
    models.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name in names:
        (models / f"{name}.bin").write_bytes(b"stand-in")
        entries[name] = InstalledModel(
            name=name, kind=name, sha256="0" * 64, size=8, source="test", installed_at=0.0,
            files=[f"{name}.bin"], runnable=f"{name}.bin", pinned="import",
        )  # fmt: skip
    write_manifest(models, entries)


class S3LikeStore(MemoryStore):
    """A missing key is S3's NoSuchKey, as from the local store and boto3 (the sheet cache asks for it)."""

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            error = {"Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."}}
            raise ClientError(error, "GetObject")
        return super().get_object(Bucket, Key)

    def delete_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return self.delete_objects(Bucket, {"Objects": [{"Key": Key}]})


class StylesHarness(BotHarness):
    def __init__(self, server: FakeTelegram, state_dir: Path, default_style: str = "") -> None:
        super().__init__(server, state_dir)
        self.store = S3LikeStore()
        self.default_style = default_style
        install_stand_ins(state_dir / "models", tuple(ADAIN_MODELS))

    def settings(self, **queue: Any) -> Settings:
        settings = super().settings(**queue)
        settings.styles.default = self.default_style
        return settings

    def add_shared_style(self, name: str, tmp: Path, **options: Any) -> named_styles.NamedStyle:
        """`nstd styles add NAME IMAGE...` into the harness's database and store."""
        paths = []
        for index, color in enumerate(((200, 0, 0), (0, 0, 200))[: options.pop("count", 1)]):
            path = tmp / f"{name}{index}.png"
            Image.new("RGB", (40, 30), color).save(path)
            paths.append(path)
        conn = self._own_connection()
        try:
            return named_styles.add(self.settings(), conn, self.store, name, paths, **options)
        finally:
            conn.conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def own_server() -> Iterator[FakeTelegram]:
    """For a test that runs its own bot: two bots polling one server would split its updates."""
    with FakeTelegram() as fake:
        yield fake


@pytest.fixture(scope="module")
def harness(server: FakeTelegram, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StylesHarness]:
    bot = StylesHarness(server, tmp_path_factory.mktemp("bot21")).start()
    yield bot
    bot.close()


_next_user = iter(range(21001, 100000))


@pytest.fixture
def user(harness: StylesHarness) -> int:
    user_id = next(_next_user)
    harness.allow(user_id)
    return user_id


def last_job(harness: BotHarness, user: int) -> dict[str, Any]:
    job = harness.jobs_of(user)[-1]
    return {**job, "params": json.loads(job["params"]), "input_keys": json.loads(job["input_keys"])}


def button_texts(call: Call) -> list[str]:
    return [button["text"] for row in call.params["reply_markup"]["inline_keyboard"] for button in row]


def start_nst(server: FakeTelegram, user: int, mark: int, *captions: str | None) -> Call:
    """/nst, a content photo, then one style image per caption; the last acknowledgement."""
    server.send_text(user, "/nst")
    server.send_photo(user, jpeg(100, 80))
    server.wait_text(user, "Step 2 of 2", since=mark)
    for index, caption in enumerate(captions, start=1):
        server.send_photo(user, jpeg(color=(index * 20, 0, 0)), caption=caption)
        call = server.wait_text(user, f"Got {index} style image", since=mark)
    return call


def sheet_call(server: FakeTelegram, user: int, since: int) -> Call:
    return server.wait_for(
        lambda c: c.method == "sendPhoto" and c.chat_id == user and c.text.startswith("Every style"),
        since=since,
    )


def choose_in_settings(server: FakeTelegram, user: int, mark: int, button: str, shown: str) -> None:
    """/settings, press `button`, wait until the message shows `shown`."""
    server.send_text(user, "/settings")
    server.wait_text(user, "^Your settings", since=mark)
    server.press(user, button)
    server.wait_text(user, shown, since=mark)


# --- Instant vs Painted ---


def test_nst_flow_offers_instant_and_painted_and_remembers(
    server: FakeTelegram, harness: StylesHarness, user: int
) -> None:
    mark = server.mark()
    ack = start_nst(server, user, mark, None)
    assert {"run:adain", "run:nst", "saveas"} <= set(ack.button_data)
    assert "✓ Instant" in button_texts(ack)  # AdaIN installed, vgg19 not: Instant, as `nstd stylize`
    server.press(user, "run:nst")
    assert result_call(server, user, mark).text.startswith("Multi-style NST (1 style image) · ")
    assert last_job(harness, user)["engine"] == "nst"

    mark = server.mark()
    server.send_text(user, "/settings")
    settings = server.wait_text(user, "Your own style images: Painted", since=mark)
    assert "✓ Painted (slower, finer)" in button_texts(settings)
    ack = start_nst(server, user, mark, None)
    assert "✓ Painted (slower, finer)" in button_texts(ack)
    server.send_text(user, "/go")  # the remembered choice
    result_call(server, user, mark)
    assert last_job(harness, user)["engine"] == "nst"

    mark = server.mark()
    choose_in_settings(server, user, mark, "engine:adain", "Your own style images: Instant")
    start_nst(server, user, mark, None)
    server.send_text(user, "/go")
    assert result_call(server, user, mark).text.startswith("Instant (1 style image) · ")
    assert last_job(harness, user)["engine"] == "adain"


def test_default_is_instant_for_a_new_user(server: FakeTelegram, harness: StylesHarness, user: int) -> None:
    mark = server.mark()
    start_nst(server, user, mark, None)
    server.send_text(user, "/go")
    result_call(server, user, mark)
    assert last_job(harness, user)["engine"] == "adain"


# --- strength ---


def test_strength_in_settings_goes_to_every_job(
    server: FakeTelegram, harness: StylesHarness, user: int
) -> None:
    mark = server.mark()
    server.send_text(user, "/settings")
    call = server.wait_text(user, "Strength: 100%", since=mark)
    assert "strength:50" in call.button_data and "✓ 100%" in button_texts(call)
    server.press(user, "strength:50")
    call = server.wait_text(user, "Strength: 50%", since=mark)
    out_of_range = server.press(user, "strength:250", server.last_bot_message_with(user, "strength:50"))
    server.wait_for(
        lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == out_of_range
    )
    server.send_photo(user, jpeg(), caption="monet")
    result_call(server, user, mark)
    assert last_job(harness, user)["params"]["strength"] == 0.5
    mark = server.mark()
    start_nst(server, user, mark, None)
    server.press(user, "run:nst")
    result_call(server, user, mark)
    assert last_job(harness, user)["params"]["strength"] == 0.5
    assert not server.find(lambda c: c.method == "sendMessage" and "Strength: 250" in c.text, mark)


# --- weights ---


def test_weight_captions_on_style_images(server: FakeTelegram, harness: StylesHarness, user: int) -> None:
    mark = server.mark()
    start_nst(server, user, mark, "x2", None)
    ack = server.wait_text(user, r"Got 2 style images \(weights 2, 1\)", since=mark)
    assert "run:adain" in ack.button_data
    server.send_album(user, [jpeg(color=(0, 90, 0)), jpeg(color=(0, 0, 90))], caption="0.5")
    server.wait_text(user, r"Got 4 style images \(weights 2, 1, 0.5, 0.5\)", since=mark)
    for bad in ("blue", "0", "x"):
        server.send_photo(user, jpeg(), caption=bad)
        server.wait_text(user, f'"{bad}" is not one', since=mark)
    server.send_text(user, "/go")
    result_call(server, user, mark)
    job = last_job(harness, user)
    assert job["params"]["style_weights"] == [2.0, 1.0, 0.5, 0.5] and len(job["input_keys"]) == 5


def test_equal_weights_send_none(server: FakeTelegram, harness: StylesHarness, user: int) -> None:
    mark = server.mark()
    start_nst(server, user, mark, "3", "x3")
    server.send_text(user, "/go")
    result_call(server, user, mark)
    assert "style_weights" not in last_job(harness, user)["params"]


# --- named styles ---


def test_a_caption_names_a_named_style(
    server: FakeTelegram, harness: StylesHarness, user: int, tmp_path: Path
) -> None:
    style = harness.add_shared_style("Sunset Glow", tmp_path, count=2, strength=0.3, weights=[3, 1])
    mark = server.mark()
    server.send_photo(user, jpeg(300, 200), caption="sunset glow")
    result = result_call(server, user, mark)
    assert result.text.startswith("sunsetglow · ")
    assert Image.open(io.BytesIO(result.files["photo"])).size == (300, 200)
    job = last_job(harness, user)
    assert job["engine"] == "adain" and json.loads(job["styles"]) == ["sunsetglow"]
    assert job["params"]["style_name"] == "sunsetglow"
    assert job["params"]["strength"] == 0.3 and job["params"]["style_weights"] == [3, 1]
    # The job's style images are the style's own, as stored.
    stored = [harness.store.objects[key] for key in style.image_keys]
    assert [harness.store.objects[key] for key in job["input_keys"][1:]] == stored


def test_named_styles_in_buttons_and_styles(
    server: FakeTelegram, harness: StylesHarness, user: int, tmp_path: Path
) -> None:
    harness.add_shared_style("Ink", tmp_path)
    mark = server.mark()
    server.send_text(user, "/styles")
    call = server.wait_text(user, "^Styles", since=mark)
    assert "• ink: named style (Instant)" in call.text and "style:ink" in call.button_data
    sheet_call(server, user, mark)
    mark = server.mark()
    server.press(user, "style:ink", server.last_bot_message_with(user, "style:ink"))
    server.wait_text(user, "ink it is", since=mark)
    server.send_photo(user, jpeg())
    assert result_call(server, user, mark).text.startswith("ink · ")
    # A photo without a caption asks with buttons that include it; pressing it runs the style.
    mark = server.mark()
    server.send_photo(user, jpeg())
    question = server.wait_text(user, "Which style", since=mark)
    assert "style:ink" in question.button_data
    server.press(user, "style:ink")
    assert result_call(server, user, mark).text.startswith("ink · ")
    assert last_job(harness, user)["params"]["style_name"] == "ink"


def test_a_style_removed_after_its_button_is_refused(
    server: FakeTelegram, harness: StylesHarness, user: int, tmp_path: Path
) -> None:
    harness.add_shared_style("Ghost", tmp_path)
    mark = server.mark()
    server.send_text(user, "/start")
    server.wait_text(user, "turn photos into paintings", since=mark)
    server.press(user, "style:ghost")
    server.wait_text(user, "ghost it is", since=mark)
    conn = harness._own_connection()
    try:
        named_styles.remove(harness.settings(), conn, harness.store, "ghost")
    finally:
        conn.conn.close()
    jobs = len(harness.jobs_of(user))
    server.send_photo(user, jpeg())
    server.wait_text(user, 'don\'t know the style "ghost"', since=mark)
    assert len(harness.jobs_of(user)) == jobs


def test_unknown_caption_lists_named_styles(
    server: FakeTelegram, harness: StylesHarness, user: int, tmp_path: Path
) -> None:
    harness.add_shared_style("Chalk", tmp_path)
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="crayon")
    call = server.wait_text(user, 'don\'t know the style "crayon"', since=mark)
    assert "chalk" in call.text and "monet" in call.text


def test_a_named_default_style_runs(own_server: FakeTelegram, tmp_path: Path) -> None:
    harness = StylesHarness(own_server, tmp_path / "state", default_style="charcoal")
    harness.start()
    try:
        harness.add_shared_style("charcoal", tmp_path, strength=0.8)
        user = 21999
        harness.allow(user)
        mark = own_server.mark()
        own_server.send_text(user, "/help")
        own_server.wait_text(user, "default style, charcoal", since=mark)
        own_server.send_photo(user, jpeg())
        assert result_call(own_server, user, mark).text.startswith("charcoal · ")
        assert last_job(harness, user)["params"]["strength"] == 0.8
    finally:
        harness.close()


# --- users' own styles ---


def test_savestyle_saves_a_private_style(server: FakeTelegram, harness: StylesHarness, user: int) -> None:
    mark = server.mark()
    choose_in_settings(server, user, mark, "strength:75", "Strength: 75%")
    server.send_text(user, "/savestyle My Cat")
    server.wait_text(user, 'style image\\(s\\) for "mycat"', since=mark)
    server.send_text(user, "/done")
    server.wait_text(user, "at least one style image", since=mark)
    server.send_photo(user, jpeg(color=(0, 200, 0)), caption="x2")
    server.send_photo(user, jpeg(color=(0, 0, 200)))
    call = server.wait_text(user, r'Got 2 images \(weights 2, 1\) for "mycat"', since=mark)
    assert "savestyle" in call.button_data
    server.press(user, "savestyle")
    server.wait_text(user, 'Saved your style "mycat" \\(Instant, 2 images\\)', since=mark)
    conn = harness._own_connection()
    try:
        saved = named_styles.get(conn, "mycat", str(user))
        assert named_styles.get(conn, "mycat") is None  # not everyone's
    finally:
        conn.conn.close()
    assert saved is not None and saved.strength == 0.75 and saved.weights == [2.0, 1.0]
    assert all(key.startswith(f"styles/user-{user}/mycat/") for key in saved.image_keys)

    server.send_photo(user, jpeg(), caption="mycat")
    assert result_call(server, user, mark).text.startswith("mycat · ")
    assert last_job(harness, user)["params"]["style_weights"] == [2.0, 1.0]
    server.send_text(user, "/styles")
    assert "• mycat: named style" in server.wait_text(user, "^Styles", since=mark).text
    sheet_call(server, user, mark)

    # Private: another user does not have it, and may save a style of the same name.
    other = next(_next_user)
    harness.allow(other)
    mark = server.mark()
    server.send_photo(other, jpeg(), caption="mycat")
    server.wait_text(other, 'don\'t know the style "mycat"', since=mark)
    server.send_text(other, "/savestyle mycat")
    server.wait_text(other, 'for "mycat"', since=mark)


def test_savestyle_refusals(server: FakeTelegram, harness: StylesHarness, user: int, tmp_path: Path) -> None:
    harness.add_shared_style("Shared", tmp_path)
    mark = server.mark()
    server.send_text(user, "/savestyle")
    server.wait_text(user, "^Send /savestyle NAME", since=mark)
    server.send_text(user, "/savestyle Van Gogh")
    server.wait_text(user, "^Can't save that style: 'vangogh' is a built-in style", since=mark)
    server.send_text(user, "/savestyle shared")
    server.wait_text(user, "^Can't save that style: 'shared' is the name of a shared style", since=mark)
    server.send_text(user, "/savestyle instant")
    server.wait_text(user, "^Can't save that style: 'instant' is reserved", since=mark)
    server.send_text(user, "/savestyle !!!")
    server.wait_text(user, "^Can't save that style: '!!!' is not a usable style name", since=mark)
    server.send_text(user, "/done")
    server.wait_text(user, "^Nothing to save", since=mark)

    server.send_text(user, "/savestyle doodle")
    server.wait_text(user, 'for "doodle"', since=mark)
    server.send_document(user, b"hello", file_name="notes.txt", mime_type="text/plain")
    server.wait_text(user, r"^That file is not an image \(text/plain\)", since=mark)
    server.send_document(user, b"not really a png", file_name="fake.png", mime_type="image/png")
    server.wait_text(user, "Got 1 image", since=mark)
    server.send_text(user, "/done")
    refused = server.wait_text(user, "^Can't save that style: image 1: ", since=mark)
    assert "\n" not in refused.text
    server.send_photo(user, jpeg(), caption="2")  # the flow goes on; the bad file is still in it
    server.wait_text(user, "Got 2 images", since=mark)
    server.send_text(user, "/cancel")
    server.wait_text(user, "dropped the style you were saving", since=mark)

    # Painted needs vgg19, not installed here: refused at once, in one line.
    choose_in_settings(server, user, mark, "engine:nst", "Your own style images: Painted")
    server.send_text(user, "/savestyle doodle")
    server.wait_text(user, "^Can't save that style: engine nst needs model vgg19, not installed", since=mark)


def test_save_as_style_from_the_nst_flow(server: FakeTelegram, harness: StylesHarness, user: int) -> None:
    mark = server.mark()
    start_nst(server, user, mark, "x3", None)
    server.press(user, "saveas")
    server.wait_text(user, "What name for this style", since=mark)
    server.send_text(user, "Monet")
    server.wait_text(user, "^Can't save that style: 'monet' is a built-in style", since=mark)
    server.send_text(user, "Dusk")
    server.wait_text(user, 'Saved your style "dusk" \\(Instant, 2 images\\)', since=mark)
    server.send_photo(user, jpeg(), caption="Dusk")
    assert result_call(server, user, mark).text.startswith("dusk · ")
    assert last_job(harness, user)["params"]["style_weights"] == [3.0, 1.0]
    # The same name again is refused for this user.
    start_nst(server, user, mark, None)
    server.press(user, "saveas")
    server.send_text(user, "dusk")
    server.wait_text(user, "^Can't save that style: you already have a style 'dusk'", since=mark)


# --- the style sheet ---


@contextlib.contextmanager
def sheet_harness(server: FakeTelegram, state: Path, sheet_s: float | None = None) -> Iterator[StylesHarness]:
    """A started bot with AdaIN and monet installed (one built-in style for the sheet); `sheet_s` makes
    drawing each tile take that long."""
    harness = StylesHarness(server, state)
    install_stand_ins(state / "models", (*ADAIN_MODELS, "style_monet"))
    if sheet_s is not None:
        harness.runner.slow["style-sheet"] = sheet_s
    harness.start()
    try:
        yield harness
    finally:
        harness.close()


def ask_for_styles(server: FakeTelegram, user: int) -> int:
    """/styles, then its list; the mark before it."""
    mark = server.mark()
    server.send_text(user, "/styles")
    server.wait_text(user, "^Styles", since=mark)
    return mark


def test_styles_sends_a_cached_style_sheet(own_server: FakeTelegram, tmp_path: Path) -> None:
    server = own_server
    with sheet_harness(server, tmp_path / "state") as harness:

        def sheet_jobs() -> list[str]:
            return [job.styles[0] for job in harness.runner.seen if job.owner == "style-sheet"]

        def sheet_keys() -> list[str]:
            return [key for key in harness.store.objects if key.startswith("sheets/")]

        user = 21998
        harness.allow(user)
        mark = ask_for_styles(server, user)
        sheet = sheet_call(server, user, mark)
        # The sample photo, then monet (the one built-in installed): two labelled tiles.
        assert Image.open(io.BytesIO(sheet.files["photo"])).size == (2 * 256, 256 + 22)
        assert sheet_jobs() == ["monet"] and len(sheet_keys()) == 1
        assert harness.runner.seen[-1].params["max_side"] == 256

        mark = server.mark()
        server.send_text(user, "/styles")
        again = sheet_call(server, user, mark)
        assert again.files["photo"] == sheet.files["photo"]
        assert sheet_jobs() == ["monet"]  # from the store: nothing ran

        harness.add_shared_style("Moss", tmp_path)
        mark = server.mark()
        server.send_text(user, "/styles")
        rebuilt = sheet_call(server, user, mark)
        assert Image.open(io.BytesIO(rebuilt.files["photo"])).size == (2 * 256, 2 * (256 + 22))
        assert sheet_jobs() == ["monet", "monet", "moss"] and len(sheet_keys()) == 2
        moss = harness.runner.seen[-1]
        assert moss.engine == "adain" and moss.params["style_name"] == "moss"


def test_a_sheet_being_drawn_never_holds_up_the_users_next_message(
    own_server: FakeTelegram, tmp_path: Path
) -> None:
    """Drawing runs the engines, which a painted job can hold for minutes; meanwhile the user's next
    message (here /help) is answered, and the sheet still arrives."""
    server = own_server
    with sheet_harness(server, tmp_path / "state", sheet_s=6.0) as harness:
        user = 21997
        harness.allow(user)
        mark = ask_for_styles(server, user)
        server.send_text(user, "/help")
        helped = server.wait_text(user, "^How to use me", since=mark)
        assert not server.sent(user, "sendPhoto", since=mark), "/help was answered only after the sheet"
        sheet = sheet_call(server, user, mark)
        assert sheet.at > helped.at
