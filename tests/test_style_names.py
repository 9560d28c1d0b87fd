"""One style-name normalisation for the CLI, the bot's captions and the config's default style."""

from __future__ import annotations

import pytest

from nst_daemon.bot import texts
from nst_daemon.config import Settings
from nst_daemon.style_catalog import style_keys
from nst_daemon.style_names import normalize_style


@pytest.mark.parametrize(
    ("typed", "style"),
    [
        ("monet", "monet"),
        ("Van Gogh", "vangogh"),
        ("Van-Gogh", "vangogh"),
        ("  VAN_GOGH ", "vangogh"),
        ("ukiyo-e", "ukiyoe"),
        ("Cézanne", "cezanne"),  # the bot's own button label; the accent used to make it "czanne"
        ("Summer → Winter", "summer2winter"),  # the label the bot shows for it
        ("winter2summer", "winter2summer"),
    ],
)
def test_what_people_type_becomes_the_catalog_style(typed: str, style: str) -> None:
    assert normalize_style(typed) == style
    assert texts.normalize_style(typed) == style  # the bot uses the same function


def test_every_label_the_bot_shows_normalises_to_its_style() -> None:
    assert {normalize_style(texts.style_name(style)) for style in style_keys()} == set(style_keys())


def test_unknown_text_stays_unknown() -> None:
    assert normalize_style("Picasso!") == "picasso"
    assert normalize_style("") == ""


def test_the_config_default_style_is_normalised_the_same_way() -> None:
    assert (
        Settings.model_validate({"telegram": {"default_style": "Van Gogh"}}).telegram.default_style
        == "vangogh"
    )
    assert (
        Settings.model_validate({"telegram": {"default_style": "Cézanne"}}).telegram.default_style
        == "cezanne"
    )
