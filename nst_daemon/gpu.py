"""Facts about the NVIDIA GPU, its driver, and the installed PyTorch and ONNX Runtime builds.

Every probe is a plain function returning a frozen dataclass, so `nstd doctor` (and its tests) can use or
replace each one on its own. nvidia-smi is found through PATH. torch and onnxruntime are imported inside
the probes: a broken install is something to report, not a reason for the report itself to crash.

Build facts (see scripts/lib/gpu.sh, which picks the same builds at install time):
- PyTorch's cu128 and newer wheels dropped Maxwell and Pascal (compute capability below 7.5) in 2.8;
  the cu126 build keeps them (in 2.14 it is the "legacy" build).
- onnxruntime-gpu 1.19-1.26 need CUDA 12 and cuDNN 9, 1.27 and later CUDA 13, which cannot build for
  compute capability below 7.5; the last release with sm_52 kernels is 1.20.x.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

NVIDIA_SMI_FIELDS = "name,compute_cap,memory.total,memory.free,driver_version"
LEGACY_TORCH_BUILD = "cu126"  # the last PyTorch CUDA build with Maxwell and Pascal kernels
MODERN_TORCH_BUILD = "cu130"
MODERN_MIN_CC = (7, 5)  # CUDA 13 and PyTorch's cu128+ wheels start here
TORCH_INDEX = "https://download.pytorch.org/whl/{build}"
ORT_LAST_SM52 = "1.20.1"  # onnxruntime-gpu 1.20.x is the last release with sm_52 kernels
ORT_FIRST_CUDA13 = (1, 27)
UVM_DEVICE = "/dev/nvidia-uvm"

CC = tuple[int, int]


class GpuProbeError(Exception):
    """nvidia-smi exists but failed: usually a driver problem (kernel module and libraries disagree)."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_cap: CC | None  # None when the driver's nvidia-smi cannot report it
    memory_total_mib: int | None
    memory_free_mib: int | None
    driver_version: str

    @property
    def cc_text(self) -> str:
        return format_cc(self.compute_cap) if self.compute_cap else "unknown"


@dataclass(frozen=True)
class TorchFacts:
    version: str | None  # None: torch is not importable
    cuda: str | None = None  # torch.version.cuda; None on a CPU build
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): empty on a CPU build
    cuda_available: bool = False
    device_caps: tuple[CC, ...] = ()  # what torch sees, a fallback without nvidia-smi
    device_names: tuple[str, ...] = ()
    cpu_threads: int = 0  # torch.get_num_threads(): what NST uses on the CPU unless nst.cpu_threads says
    error: str | None = None  # why torch could not be imported

    @property
    def cpu_build(self) -> bool:
        return self.version is not None and self.cuda is None


@dataclass(frozen=True)
class OrtFacts:
    version: str | None  # None: onnxruntime is not importable
    available: tuple[str, ...] = ()  # get_available_providers(): what the package was built with
    active: tuple[str, ...] = ()  # get_providers() of a tiny session that asked for CUDA first
    load_error: str = ""  # what ONNX Runtime printed while the CUDA provider failed to load
    run_error: str | None = None  # the tiny session failed to run, e.g. no kernel image for this GPU
    error: str | None = None  # import or session creation failed

    @property
    def cuda_active(self) -> bool:
        return "CUDAExecutionProvider" in self.active

    @property
    def cuda_built(self) -> bool:
        return "CUDAExecutionProvider" in self.available


# --- nvidia-smi ---


def nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def query_gpus(timeout: float = 15.0) -> list[GpuInfo]:
    """The NVIDIA GPUs nvidia-smi reports; [] without nvidia-smi. GpuProbeError when it fails."""
    exe = nvidia_smi()
    if exe is None:
        return []
    fields = NVIDIA_SMI_FIELDS
    output = _run_smi(exe, fields, timeout)
    if output is None:  # drivers before ~510 do not know compute_cap
        fields = fields.replace("compute_cap,", "")
        output = _run_smi(exe, fields, timeout)
        if output is None:
            raise GpuProbeError("nvidia-smi rejected the query")
    return parse_nvidia_smi(output, has_compute_cap="compute_cap" in fields)


def _run_smi(exe: str, fields: str, timeout: float) -> str | None:
    try:
        done = subprocess.run(
            [exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GpuProbeError(f"nvidia-smi did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise GpuProbeError(f"cannot run nvidia-smi: {exc.strerror}") from None
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        if "compute_cap" in fields and "not a valid field" in text:
            return None
        if "No devices were found" in text:  # a driver without a GPU: nothing to report, not a failure
            return ""
        first = text.splitlines()[0] if text else f"exit status {done.returncode}"
        raise GpuProbeError(f"nvidia-smi failed: {first}")
    return done.stdout


def parse_nvidia_smi(text: str, has_compute_cap: bool = True) -> list[GpuInfo]:
    """Parse `--format=csv,noheader[,nounits]` lines; unit suffixes and [N/A] are tolerated."""
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if not line.strip():
            continue
        if not has_compute_cap:
            parts.insert(1, "")
        if len(parts) < 5:
            raise GpuProbeError(f"unexpected nvidia-smi output: {line.strip()!r}")
        name, cap, total, free, driver = parts[:5]
        gpus.append(
            GpuInfo(
                index=len(gpus),
                name=name,
                compute_cap=parse_cc(cap),
                memory_total_mib=_mib(total),
                memory_free_mib=_mib(free),
                driver_version=driver,
            )
        )
    return gpus


def _mib(text: str) -> int | None:
    match = re.match(r"^\s*(\d+)", text)
    return int(match.group(1)) if match else None


def parse_cc(text: str) -> CC | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def format_cc(cc: CC) -> str:
    return f"{cc[0]}.{cc[1]}"


def uvm_device_present() -> bool:
    """/dev/nvidia-uvm appears only after the nvidia_uvm module is loaded and a node was made for it."""
    return os.path.exists(UVM_DEVICE)


# --- PyTorch ---


def torch_facts() -> TorchFacts:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken CUDA library raising OSError on import
        return TorchFacts(version=None, error=f"{type(exc).__name__}: {exc}")
    cuda = torch.version.cuda
    arch_list: tuple[str, ...] = ()
    available = False
    caps: list[CC] = []
    names: list[str] = []
    if cuda is not None:
        with contextlib.suppress(Exception):
            arch_list = tuple(torch.cuda.get_arch_list())
        with contextlib.suppress(Exception):
            available = bool(torch.cuda.is_available())
        if available:
            with contextlib.suppress(Exception):
                for index in range(torch.cuda.device_count()):
                    caps.append(tuple(torch.cuda.get_device_capability(index)))  # type: ignore[arg-type]
                    names.append(torch.cuda.get_device_name(index))
    return TorchFacts(
        version=torch.__version__,
        cuda=cuda,
        arch_list=arch_list,
        cuda_available=available,
        device_caps=tuple(caps),
        device_names=tuple(names),
        cpu_threads=torch.get_num_threads(),
    )


def arch_runs_on(arch: str, cc: CC) -> bool:
    """Whether code built for `arch` (sm_XY machine code or compute_XY PTX) runs on a `cc` device.

    Machine code runs on the same major version with an equal or higher minor (sm_50 runs on 5.2);
    PTX is compiled by the driver for any equal or newer device. sm_90a-style codes run only on their own.
    """
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
    if not match:
        return False
    kind, major, minor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if suffix:
        return (major, minor) == cc
    if kind == "sm":
        return major == cc[0] and minor <= cc[1]
    return (major, minor) <= cc


def matching_archs(arch_list: tuple[str, ...] | list[str], cc: CC) -> list[str]:
    return [arch for arch in arch_list if arch_runs_on(arch, cc)]


def recommended_torch_build(cc: CC) -> str:
    """Same rule as scripts/lib/gpu.sh `nstd_torch_build`."""
    return LEGACY_TORCH_BUILD if cc < MODERN_MIN_CC else MODERN_TORCH_BUILD


def torch_install_hint(cc: CC, torch_version: str | None) -> str:
    build = recommended_torch_build(cc)
    version = (torch_version or "2.13.0").split("+", 1)[0]
    return (
        f"install PyTorch's {build} build: `NSTD_TORCH_BUILD={build} scripts/bootstrap` "
        f"(service: `sudo NSTD_TORCH_BUILD={build} scripts/install-service`), or "
        f"`pip install torch=={version} --index-url {TORCH_INDEX.format(build=build)}`"
    )


# --- ONNX Runtime ---


def version_tuple(version: str | None) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", (version or "").split("+", 1)[0])[:3]
    return tuple(int(number) for number in numbers)


def ort_cuda_requirement(version: str | None) -> str:
    numbers = version_tuple(version)
    if numbers[:2] >= ORT_FIRST_CUDA13:
        return "CUDA 13 and cuDNN 9"
    if numbers[:2] >= (1, 19):
        return "CUDA 12 and cuDNN 9"
    return "CUDA 11.8 or 12 and cuDNN 8"


def ort_supports_cc(version: str | None, cc: CC) -> bool:
    """False when this onnxruntime-gpu release has no kernels for the GPU at all."""
    numbers = version_tuple(version)
    if cc < (6, 0) and numbers[:2] > (1, 20):
        return False
    return not (cc < MODERN_MIN_CC and numbers[:2] >= ORT_FIRST_CUDA13)


def ort_facts(run: bool = True) -> OrtFacts:
    """Build a one-node model in memory and ask for the CUDA provider; the session says what it got.

    ONNX Runtime falls back to the CPU silently when the CUDA provider cannot load, so only
    `session.get_providers()` tells the truth; running the session also catches a provider that loads
    but has no kernels for this GPU.
    """
    # The daemon imports torch first; its CUDA wheels carry the CUDA and cuDNN libraries that the ORT
    # CUDA provider then finds already loaded. Do the same so the answer matches the daemon's.
    with contextlib.suppress(Exception):
        import torch  # noqa: F401
    try:
        import onnxruntime as ort
    except Exception as exc:
        return OrtFacts(version=None, error=f"{type(exc).__name__}: {exc}")
    version = getattr(ort, "__version__", "?")
    available = tuple(ort.get_available_providers())
    try:
        model = _probe_model()
    except Exception as exc:
        return OrtFacts(version=version, available=available, error=f"cannot build the probe model: {exc}")
    from nst_daemon.engines.ort_session import probe_session

    with capture_stderr() as captured:
        try:
            session = probe_session(model)
        except Exception as exc:
            session = None
            error = f"{type(exc).__name__}: {exc}"
    load_error = _summarise_ort_log(captured.text)
    if session is None:
        return OrtFacts(version=version, available=available, load_error=load_error, error=error)
    active = tuple(session.get_providers())
    run_error = None
    if run:
        import numpy as np

        with capture_stderr() as run_log:
            try:
                result = session.run(None, {"x": np.ones(4, dtype=np.float32)})[0]
                if not np.allclose(result, 2.0):
                    run_error = f"wrong result {result.tolist()}"
            except Exception as exc:
                run_error = f"{type(exc).__name__}: {exc}"
        if run_error and run_log.text:
            run_error = f"{run_error} ({_summarise_ort_log(run_log.text)})"
    return OrtFacts(
        version=version, available=available, active=active, load_error=load_error, run_error=run_error
    )


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "nstd_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    # New onnx writes an IR version that older runtimes (1.20.1 for sm_52) refuse; 8 is enough here.
    model.ir_version = 8
    return model.SerializeToString()


def _summarise_ort_log(text: str) -> str:
    """The useful part of ONNX Runtime's log: the library that failed to load, else the first error."""
    clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
    for pattern in (r"([\w.+-]+\.so[.\d]*: cannot open shared object file)", r"(Require [^.]+\.)"):
        if found := re.findall(pattern, clean):
            return "; ".join(dict.fromkeys(found))
    lines = [line.strip() for line in clean.splitlines() if line.strip()]
    for line in lines:
        if "[E:" in line or "error" in line.lower():
            return line.split("] ", 1)[-1][:300]
    return lines[0][:300] if lines else ""


class _Captured:
    text = ""


@contextlib.contextmanager
def capture_stderr() -> Iterator[_Captured]:
    """Capture file descriptor 2: ONNX Runtime's C++ logger writes there, not to sys.stderr."""
    captured = _Captured()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a detached process): nothing to capture
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
