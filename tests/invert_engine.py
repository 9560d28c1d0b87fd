"""A throw-away engine for tests, and the example in docs/architecture.md: it inverts the photo's colours.

The whole engine is this file plus one catalog entry (kind "invert", style "invert"). The test registers it
with `registry.register`; a daemon in a subprocess imports it through NSTD_ENGINE_PLUGINS=invert_engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import ImageOps

from nst_daemon.engines.registry import EngineInput, EngineOutput, EnginePlugin, ModelKind, register

CATALOG_ENTRY = """
[[models]]
name = "invert_model"
kind = "invert"
style = "invert"
label = "Negative"
description = "the photo's colours inverted (a test engine)"
url = "https://example.invalid/invert.bin"
file = "invert.bin"
size = 4
"""


class InvertModel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded = False

    def load(self) -> None:
        self.path.read_bytes()  # a real engine reads its weights here
        self.loaded = True

    def unload(self) -> None:
        self.loaded = False


@register
class InvertPlugin(EnginePlugin):
    key = "invert"
    label = "Invert"
    description = "inverts the colours"
    model_kinds = (ModelKind("invert"),)  # no validator, no ONNX export: the engine loads the file as is
    pretrained_styles = True

    def create(self, paths: list[Path], settings: Any, device: str | None) -> InvertModel:
        return InvertModel(paths[0])

    def run(self, model: InvertModel, given: EngineInput) -> EngineOutput:
        given.progress(0.5)
        return EngineOutput(ImageOps.invert(given.content.convert("RGB")), {"device": "cpu"}, "cpu")
