"""Shared helpers for the scripts/bench_*.py benchmarks: arguments, machine facts, memory, tables, JSON.

Nothing here imports torch or onnxruntime at module level, so bench_daemon.py can measure a daemon that
has not imported them either.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench-results"
# tests/checkpoints.py (random-init weights in the upstream formats) and tests/fake_telegram.py live there.
sys.path.insert(0, str(REPO / "tests"))

from toml_config import write_config  # noqa: E402, F401  (re-exported: one writer for tests and benchmarks)

from nst_daemon.engines.cores import physical_cores  # noqa: E402  (torch-free; machine_info reports it)
from nst_daemon.fsutil import write_atomic  # noqa: E402

MB = 1024 * 1024


# --- arguments ----------------------------------------------------------------------------------------------


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every benchmark takes."""
    result = argparse.ArgumentParser(prog=f"bench_{name}.py", description=description)
    result.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    result.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        help=f"where to write the results (default bench-results/{name}.json)",
    )
    result.add_argument("--smoke", action="store_true", help="tiny sizes and steps, for CI")
    return result


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    if not sizes or any(size < 16 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be integers >= 16, got {text!r}")
    return sizes


# --- machine ------------------------------------------------------------------------------------------------


def _cpuinfo_field(name: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(*, torch_device: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on. Reports torch/onnxruntime only when already imported."""
    info: dict[str, Any] = {
        "cpu": _cpuinfo_field("model name"),
        "logical_cpus": len(os.sched_getaffinity(0)),
        "physical_cores": physical_cores(),
        "ram_mb": round(_proc_kb_field_mb(Path("/proc/meminfo"), "MemTotal")),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    if "onnxruntime" in sys.modules:
        info["onnxruntime"] = sys.modules["onnxruntime"].__version__
    if torch_device is not None:
        info["device"] = torch_device
    return info


# --- memory -------------------------------------------------------------------------------------------------


def _proc_kb_field_mb(path: Path, field: str) -> float:
    """A "Field:  1234 kB" line of a /proc file in MiB; NaN where unavailable."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def proc_status_mb(field: str, pid: int | str = "self") -> float:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM) in MiB; NaN where unavailable."""
    return _proc_kb_field_mb(Path(f"/proc/{pid}/status"), field)


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0), so each contender gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak RSS over a block (VmHWM after a reset) and, on CUDA, torch's peak allocated memory.

    `peak_rss_mb` is the process's high-water mark during the block; `rss_delta_mb` is that minus the RSS
    at entry, i.e. what the contender itself added. Without clear_refs the peak is the process's lifetime
    peak and `rss_reset` says so.
    """

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.rss_reset = False
        self.start_rss_mb = float("nan")
        self.peak_rss_mb = float("nan")
        self.cuda_peak_mb: float | None = None

    def __enter__(self) -> MemoryProbe:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.rss_reset = reset_peak_rss()
        self.start_rss_mb = proc_status_mb("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_rss_mb = proc_status_mb("VmHWM")
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_peak_mb = torch.cuda.max_memory_allocated() / MB

    @property
    def rss_delta_mb(self) -> float:
        return self.peak_rss_mb - self.start_rss_mb

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "rss_delta_mb": round(self.rss_delta_mb, 1),
            "rss_peak_reset": self.rss_reset,
            "cuda_peak_mb": None if self.cuda_peak_mb is None else round(self.cuda_peak_mb, 1),
        }


# --- numbers ------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not denominator or math.isnan(numerator + denominator):
        return None
    return numerator / denominator


def verdict(value: float | None, limit: float, *, at_most: bool = True) -> str:
    """'met' / 'not met' for a target; 'n/a' when the value could not be measured."""
    if value is None or math.isnan(value):
        return "n/a"
    ok = value <= limit if at_most else value >= limit
    return "met" if ok else "not met"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -(digits - 1)):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


# --- output -------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write the results (again: long runs write after each size); records the load average at the time,
    because on a shared box the numbers are only as good as it was quiet."""
    if isinstance(payload.get("machine"), dict):
        payload["machine"]["loadavg_at_write"] = os.getloadavg()
    path = Path(path)
    write_atomic(path, (json.dumps(_clean(payload), indent=2, allow_nan=False) + "\n").encode())
    return path


def print_tables(
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]], json_path: Path
) -> None:
    """Print the result tables with rich, last thing on stdout (the JSON path goes above them)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))
    console.print(f"results written to {json_path}")
    for title, columns, rows in tables:
        table = Table(title=title, title_justify="left")
        for index, column in enumerate(columns):
            # The first column names the row: never wrapped, so names stay greppable in logs.
            table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index == 0)
        for row in rows:
            table.add_row(*(cell if isinstance(cell, str) else fmt(cell) for cell in row))
        console.print(table)


def log(message: str) -> None:
    """Progress on stderr, so the tables stay the last thing on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
