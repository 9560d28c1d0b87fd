"""A CycleGAN generator checkpoint -> an ONNX file, checked against PyTorch on ONNX Runtime (`nstd models
pull/import` runs it once per model). The network and the engine are cyclegan.py's."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nst_daemon.engines import ConversionError
from nst_daemon.engines.ort_session import check_session, publish_export, staging_file

if TYPE_CHECKING:
    from nst_daemon.engines.cyclegan import ResnetGenerator

log = logging.getLogger(__name__)

EXPORT_CHECK_SIZES = ((68, 84), (64, 48))  # (H, W): an odd multiple of 4 and a non-square one
OPSET = 18


def _export(generator: ResnetGenerator, path: Path, *, dynamo: bool) -> None:
    sample = torch.zeros(1, 3, 64, 64)
    with warnings.catch_warnings():
        # The exporters are chatty about deprecations that do not concern a fixed, traced network.
        warnings.simplefilter("ignore")
        if dynamo:
            height, width = torch.export.Dim("height"), torch.export.Dim("width")
            torch.onnx.export(
                generator,
                (sample,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes={"x": {2: 4 * height, 3: 4 * width}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        else:
            torch.onnx.export(
                generator,
                (sample,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "height", 3: "width"}},
                opset_version=OPSET,
                dynamo=False,
            )


def check_onnx(
    generator: ResnetGenerator, onnx_path: Path, sizes: tuple[tuple[int, int], ...] = EXPORT_CHECK_SIZES
) -> float:
    """Max abs difference between ONNX Runtime (CPU) and torch on seeded random inputs of `sizes`."""
    session = check_session(onnx_path)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    worst = 0.0
    for height, width in sizes:
        sample = rng.uniform(-1.0, 1.0, size=(1, 3, height, width)).astype(np.float32)
        with torch.inference_mode():
            expected = generator(torch.from_numpy(sample)).numpy()
        (actual,) = session.run(None, {name: sample})
        if actual.shape != expected.shape:
            raise ConversionError(
                f"ONNX output shape {actual.shape} != torch {expected.shape} at {height}x{width}"
            )
        worst = max(worst, float(np.abs(actual - expected).max()))
    return worst


def export_onnx(checkpoint: Path, onnx_path: Path, *, dynamo: bool | None = None) -> float:
    """Export a generator checkpoint to ONNX (dynamic H and W), verify it with ONNX Runtime, write atomically.

    `dynamo=None` uses the TorchScript exporter (about 1 s, against about 10 s for the dynamo exporter on
    a 2-core CPU, with identical numerics) and falls back to dynamo when the legacy one fails or is gone.
    Returns the max abs difference against torch; ConversionError when it exceeds 1e-4 or export fails.
    """
    checkpoint = Path(checkpoint)
    from nst_daemon.engines.cyclegan import load_generator  # cyclegan.py re-exports this module

    generator = load_generator(checkpoint)
    onnx_path = Path(onnx_path)
    tmp = staging_file(onnx_path)
    try:
        started = time.perf_counter()
        exporter = _run_exporter(generator, tmp, checkpoint.name, dynamo)
        exported = time.perf_counter()
        try:
            diff = check_onnx(generator, tmp)
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"ONNX Runtime cannot run the export of {checkpoint.name}: {exc}") from exc
        publish_export(tmp, onnx_path, diff, checkpoint.name)
        log.info(
            "exported %s -> %s with the %s exporter in %.1f s (check %.1f s, max diff %.1e)",
            checkpoint.name,
            onnx_path.name,
            exporter,
            exported - started,
            time.perf_counter() - exported,
            diff,
        )
        return diff
    finally:
        tmp.unlink(missing_ok=True)


def _run_exporter(generator: ResnetGenerator, path: Path, name: str, dynamo: bool | None) -> str:
    attempts = [dynamo] if dynamo is not None else [False, True]
    failure: Exception | None = None
    for use_dynamo in attempts:
        label = "dynamo" if use_dynamo else "torchscript"
        try:
            _export(generator, path, dynamo=use_dynamo)
            return label
        except Exception as exc:
            log.warning("ONNX export of %s with the %s exporter failed: %s", name, label, exc)
            failure = exc
    assert failure is not None
    raise ConversionError(f"ONNX export of {name} failed: {type(failure).__name__}: {failure}") from failure


# --- pre/post-processing ------------------------------------------------------------------------------------
