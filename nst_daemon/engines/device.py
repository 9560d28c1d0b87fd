"""Where the engines run: torch device selection (the CPU core count is in `cores`, free of torch)."""

from __future__ import annotations

import logging

import torch

from nst_daemon.engines import DeviceError
from nst_daemon.engines.ort_session import nvidia_driver_present  # noqa: F401  (moved there)
from nst_daemon.wording import plural

log = logging.getLogger(__name__)


def cuda_usable(index: int = 0) -> bool:
    """True when torch can really run kernels on the GPU, not merely see it.

    A wheel built without kernels for the card's architecture (Maxwell on cu128+ wheels) still reports
    `is_available()`; the first kernel launch then fails. The architecture list answers cheaply; a tiny
    tensor op is the fallback for builds that JIT from PTX.
    """
    if not torch.cuda.is_available():
        return False
    try:
        major, minor = torch.cuda.get_device_capability(index)
        if f"sm_{major}{minor}" in torch.cuda.get_arch_list():
            return True
        probe = torch.ones(8, device=f"cuda:{index}")
        return float((probe * 2).sum().item()) == 16.0
    except Exception as exc:  # any driver or kernel failure means "not usable"
        log.debug("CUDA device %d is not usable: %s", index, exc)
        return False


def resolve_torch_device(name: str) -> torch.device:
    """`auto` -> CUDA when usable, else CPU; `cuda`/`cuda:N` must be usable; `cpu` is always CPU."""
    name = (name or "auto").strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda:0") if cuda_usable(0) else torch.device("cpu")
    if name.startswith("cuda"):
        device = torch.device(name)
        index = device.index or 0
        if not cuda_usable(index):
            raise DeviceError(
                f"device {name} was requested but PyTorch cannot use a GPU here "
                f"(torch {torch.__version__}); use --device auto or cpu, or run `nstd doctor`"
            )
        return torch.device("cuda", index)
    raise DeviceError(f"unknown device {name!r}; expected auto, cpu or cuda")


def describe_torch_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{plural(threads)})"
