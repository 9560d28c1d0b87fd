"""The CycleGAN engine's declaration: one pretrained generator per style, each a catalog model of kind
`cyclegan` whose `style` names it (a new style is one catalog entry). The engine is `cyclegan.py`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nst_daemon.engines.registry import EngineInput, EngineOutput, EnginePlugin, ModelKind, register

if TYPE_CHECKING:
    from nst_daemon.config import Settings
    from nst_daemon.engines.cyclegan import CycleGANEngine


def _validate(kind: str, state_dict: object) -> object:
    from nst_daemon.engines.cyclegan import clean_generator_state_dict

    return clean_generator_state_dict(state_dict)  # type: ignore[arg-type]


def _export(kind: str, checkpoint: Path, onnx_path: Path) -> float:
    from nst_daemon.engines.cyclegan import export_onnx

    return export_onnx(checkpoint, onnx_path)


@register
class CycleGANPlugin(EnginePlugin):
    key = "cyclegan"
    label = "CycleGAN"
    description = "pretrained painters and seasons: one fast pass, no style images"
    model_kinds = (ModelKind("cyclegan", validate=_validate, export=_export),)
    pretrained_styles = True
    cancel_stops_run = False

    def create(self, paths: list[Path], settings: Settings, device: str | None) -> CycleGANEngine:
        from nst_daemon.engines.cyclegan import CycleGANEngine

        section = settings.cyclegan
        return CycleGANEngine(paths[0], device=device or section.device, cpu_threads=section.cpu_threads)

    def run(self, model: CycleGANEngine, given: EngineInput) -> EngineOutput:
        # The engine reports estimates while its one ONNX Runtime call runs; the pipeline reports the end.
        side = given.options["max_side"]
        image = model.stylize(given.content, max_side=side, cancel=given.cancel, progress=given.progress)
        report = {"device": model.provider, "max_side": side}
        return EngineOutput(image, report, model.provider)
