"""The AdaIN engine's declaration: instant arbitrary style from style images, two catalog models (the
encoder and the decoder, each run as an ONNX graph). The engine is `adain.py`; its strength is α."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nst_daemon.engines.registry import EngineInput, EngineOutput, EnginePlugin, ModelKind, register

if TYPE_CHECKING:
    from nst_daemon.config import Settings
    from nst_daemon.engines.adain import AdaINEngine


def _validate(kind: str, state_dict: object) -> object:
    from nst_daemon.engines.adain_net import clean_state_dict

    return clean_state_dict(kind, state_dict)


def _export(kind: str, checkpoint: Path, onnx_path: Path) -> float:
    from nst_daemon.engines.adain_net import export_onnx

    return export_onnx(kind, checkpoint, onnx_path)


@register
class AdaINPlugin(EnginePlugin):
    key = "adain"
    label = "Instant"
    description = "AdaIN: your own style images in one pass, in seconds"
    model_kinds = (
        ModelKind("adain_vgg", validate=_validate, export=_export, serves="(AdaIN)"),
        ModelKind("adain_decoder", validate=_validate, export=_export, serves="(AdaIN)"),
    )
    native_strength = True

    def options(self, settings: Settings, params: dict[str, Any], max_side: int) -> dict[str, Any]:
        return {
            "weights": params.get("style_weights"),
            "strength": 1.0 if params.get("strength") is None else float(params["strength"]),
            "preserve_colors": bool(params.get("preserve_colors", False)),
            "max_side": max_side,
        }

    def create(self, paths: list[Path], settings: Settings, device: str | None) -> AdaINEngine:
        from nst_daemon.engines.adain import AdaINEngine

        section = settings.adain
        return AdaINEngine(*paths, device=device or section.device, cpu_threads=section.cpu_threads)

    def run(self, model: AdaINEngine, given: EngineInput) -> EngineOutput:
        given.progress(0.05)
        options = given.options
        image = model.stylize(given.content, given.styles, cancel=given.cancel, **options)
        report = {"device": model.provider, "strength": options["strength"], "max_side": options["max_side"]}
        return EngineOutput(image, report, model.provider)
