"""The one way nstd opens an ONNX Runtime session: provider order and options, threads, and the check of
which provider really loaded. Free of torch (importing torch takes seconds), so `nstd stylize` with an ONNX
engine and the engine process pay only for ONNX Runtime."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nst_daemon.engines import CheckpointError, ConversionError, DeviceError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver exposes a device here (/dev/nvidiactl; /dev/dxg under WSL2)."""
    return Path("/dev/nvidiactl").exists() or Path("/dev/dxg").exists()


def provider_list(device: str, device_id: int = 0) -> list[str | tuple[str, dict[str, object]]]:
    """Providers in preference order, limited to those this onnxruntime build has."""
    import onnxruntime as ort

    device = (device or "auto").strip().lower()
    if device.startswith("cuda:") and device[5:].isdigit():
        device, device_id = "cuda", int(device[5:])
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}; expected auto, cpu or cuda")
    available = ort.get_available_providers()
    providers: list[str | tuple[str, dict[str, object]]] = []
    # onnxruntime-gpu lists CUDA even on a machine with no NVIDIA card; under "auto", try it only where a
    # driver is present, so CPU-only boxes do not get a "CUDA could not start" warning at every load.
    wants_cuda = device == "cuda" or (device == "auto" and nvidia_driver_present())
    if wants_cuda and "CUDAExecutionProvider" in available:
        providers.append(
            (
                "CUDAExecutionProvider",
                {
                    "device_id": device_id,
                    # Exhaustive search re-runs (~0.5 s) for every new image shape; the heuristic is instant.
                    "cudnn_conv_algo_search": "HEURISTIC",
                    # Grow the arena by what is asked, not by powers of two: a 4 GB card has no slack.
                    "arena_extend_strategy": "kSameAsRequested",
                },
            )
        )
    providers.append("CPUExecutionProvider")
    return providers


def parse_device(device: str, device_id: int = 0) -> tuple[str, int]:
    """("auto" | "cpu" | "cuda", device id) from a setting such as "CUDA:1" (the id then comes from it)."""
    device = (device or "auto").strip().lower()
    if device.startswith("cuda:"):
        device, _, index = device.partition(":")
        device_id = int(index) if index.isdigit() else device_id
    return device, device_id


def staging_file(onnx_path: Path) -> Path:
    """An empty temporary file beside `onnx_path` for an export to fill before it is renamed into place;
    ConversionError when the folder cannot take it."""
    try:
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{onnx_path.name}-", suffix=".tmp", dir=onnx_path.parent)
        os.close(fd)
    except OSError as exc:
        raise ConversionError(f"cannot write {onnx_path}: {exc.strerror or exc}") from None
    return Path(name)


# The largest difference from PyTorch an ONNX export may show on the check inputs to be installed.
EXPORT_CHECK_TOLERANCE = 1e-4


def publish_export(staged: Path, onnx_path: Path, diff: float, source: str) -> None:
    """Move a checked export from its staging file into place, readable by all (mkstemp makes it 0600; a
    model is no secret) and synced; ConversionError when `diff` reaches the tolerance or the folder
    refuses."""
    if not diff < EXPORT_CHECK_TOLERANCE:
        raise ConversionError(
            f"ONNX export of {source} differs from PyTorch by {diff:.2e} "
            f"(limit {EXPORT_CHECK_TOLERANCE:.0e}); not installing it"
        )
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o666 & ~umask)
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staged, onnx_path)
    except OSError as exc:
        raise ConversionError(f"cannot write {onnx_path}: {exc.strerror or exc}") from None


def device_label(provider: str, device_id: int = 0) -> str:
    """What a job report calls the device a session's first provider runs on ("cuda:0", "cpu")."""
    labels = {"CUDAExecutionProvider": f"cuda:{device_id}", "CPUExecutionProvider": "cpu"}
    return labels.get(provider, provider)


def open_session(onnx_path: Path, device: str, device_id: int = 0, cpu_threads: int = 0) -> InferenceSession:
    """An ONNX Runtime session on the preferred provider (CUDA first under auto), checked with
    `get_providers()`: DeviceError when cuda was asked for and did not load, a logged warning when auto fell
    back to the CPU. `cpu_threads` 0 means one intra-op thread per physical core. Every ONNX engine
    (CycleGAN, AdaIN) opens its sessions here."""
    import onnxruntime as ort

    from nst_daemon.engines.cores import physical_cores

    if not onnx_path.is_file():
        raise CheckpointError(f"ONNX model {onnx_path} does not exist")
    providers = provider_list(device, device_id)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = cpu_threads or physical_cores()
    quiet = device == "auto" and len(providers) > 1
    if quiet:
        # A CUDA provider that cannot load is reported by ORT's global logger as several coloured
        # error lines; with "auto" that is an expected outcome, logged once below instead. An
        # explicit --device cuda keeps ORT's own explanation (missing CUDA/cuDNN libraries).
        ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    except Exception as exc:
        raise CheckpointError(f"ONNX Runtime cannot load {onnx_path.name}: {exc}") from None
    finally:
        if quiet:
            ort.set_default_logger_severity(2)  # ORT's default
    actual = session.get_providers()[0]
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if device.startswith("cuda") and actual != "CUDAExecutionProvider":
        raise DeviceError(
            f"device {device} was requested but ONNX Runtime runs {onnx_path.name} on "
            f"{actual} (is the CUDA provider installed with matching CUDA and cuDNN?); "
            "use --device auto or cpu, or run `nstd doctor`"
        )
    if actual != wanted:
        log.warning(
            "%s: %s could not start, running on %s (`nstd doctor` shows why)", onnx_path.name, wanted, actual
        )
    else:
        log.info("%s runs on %s", onnx_path.name, actual)
    return session


def check_session(model: Path, *, log_severity: int = 3) -> InferenceSession:
    """A plain CPU session for a check: an export's parity with PyTorch, `nstd models verify`. ONNX Runtime's
    own error propagates (the caller words it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    return ort.InferenceSession(str(model), options, providers=provider_list("cpu"))


def probe_session(model: bytes) -> InferenceSession:
    """`nstd doctor`'s probe: the providers a `cuda` engine would ask for, with the same options, so its
    answer (which provider loads, and why not) is the engines'. ONNX Runtime's error propagates."""
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=provider_list("cuda"))
