"""The physical core count, without importing torch: ONNX Runtime's threads and the benchmarks use it."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores available to this process; hyper-threads do not help convolution throughput."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return max(1, len(allowed))
    for block in text.split("\n\n"):
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in block.splitlines())
            if key.strip()
        )
        try:
            processor = int(fields["processor"])
        except (KeyError, ValueError):
            continue
        if processor not in allowed:
            continue
        # Without topology fields (some VMs, non-x86) every logical CPU counts as a core.
        cores.add((fields.get("physical id", "0"), fields.get("core id", str(processor))))
    return max(1, len(cores) or len(allowed))
