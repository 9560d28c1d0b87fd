"""The Gatys NST engine's declaration: style images optimised onto the content over VGG19 features (one
catalog model, kind `vgg19`, loaded as the checkpoint itself). The engine is `nst.py`; its presets bring
their own working size (presets.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nst_daemon.engines.presets import working_side
from nst_daemon.engines.registry import EngineInput, EngineOutput, EnginePlugin, ModelKind, register

if TYPE_CHECKING:
    from nst_daemon.config import Settings
    from nst_daemon.engines.nst import NSTEngine

# A job with a live preview gets a snapshot this often: the bot shows one at most every 5 s
# (status_messages.PREVIEW_INTERVAL_S), so a faster engine would only encode frames nobody sees.
PREVIEW_EVERY_S = 5.0


def _validate(kind: str, state_dict: object) -> object:
    from nst_daemon.engines.vgg import validate_vgg_state_dict

    return validate_vgg_state_dict(state_dict)  # type: ignore[arg-type]


@register
class NSTPlugin(EnginePlugin):
    key = "nst"
    label = "Multi-style NST"
    description = "your own style images (one or more) painted onto your photo; slower, finer"
    model_kinds = (ModelKind("vgg19", validate=_validate, serves="(NST)"),)
    reports_steps = True

    def max_side(self, settings: Settings, params: dict[str, Any]) -> int:
        return working_side(settings, "nst", preset=params.get("preset"), explicit=params.get("max_side"))

    def options(self, settings: Settings, params: dict[str, Any], max_side: int) -> dict[str, Any]:
        from nst_daemon.engines.nst import NSTOptions

        options = NSTOptions.from_preset(
            params.get("preset") or settings.nst.preset,
            max_side=max_side,
            preserve_colors=bool(params.get("preserve_colors", False)),
            optimizer=settings.nst.optimizer,
            seed=settings.nst.seed,
            # Only a job that asks (a bot user with the preview on) pays for the snapshots.
            preview_every_s=PREVIEW_EVERY_S if params.get("preview") else None,
        )
        return {"options": options, "weights": params.get("style_weights")}

    def create(self, paths: list[Path], settings: Settings, device: str | None) -> NSTEngine:
        from nst_daemon.engines.nst import NSTEngine

        return NSTEngine(paths[0], device=device or settings.nst.device, cpu_threads=settings.nst.cpu_threads)

    def run(self, model: NSTEngine, given: EngineInput) -> EngineOutput:
        from nst_daemon.engines.nst import NSTProgress

        def forward(update: NSTProgress) -> None:
            width, height = update.size
            detail = f"scale {update.scale + 1}/{update.scales} {width}×{height}"
            given.progress(update.fraction, update.preview, detail=detail, step=update.step)

        nst_options, weights = given.options["options"], given.options["weights"]
        result = model.stylize(
            given.content,
            given.styles,
            weights=weights,
            options=nst_options,
            progress=forward,
            cancel=given.cancel,
        )
        report = {
            "device": result.device,
            "preset": getattr(nst_options, "preset", None),
            "steps": result.steps,
            "scales": result.scales,
            "losses": result.losses,
            "oom_retries": result.oom_retries,
        }
        notes = []
        if result.oom_retries:
            notes.append(f"ran out of GPU memory {result.oom_retries} time(s); worked at a smaller size")
        return EngineOutput(result.image, report, result.device, notes)
