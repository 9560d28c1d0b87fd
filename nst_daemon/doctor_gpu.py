"""`nstd doctor`'s GPU rows: driver and cards, PyTorch's CUDA build, ONNX Runtime's providers, VRAM, and what
NST costs on a CPU. The probes are nst_daemon.gpu's; doctor.py runs these and re-exports them."""

from __future__ import annotations

from nst_daemon import gpu
from nst_daemon.config import Settings
from nst_daemon.doctor_check import Check, error, ok, warning
from nst_daemon.wording import plural

LOW_VRAM_MIB = 1536  # Gatys NST at 512 px needs about this much on a 4 GB card
# CPU seconds of one multi-style NST photo with `nstd stylize --device cpu` on one thread (random-init VGG19:
# the same compute as the real weights; a 1200 x 900 photo), at each preset's own size: one core's time.
# Two quiet cores take about 3/4 of it. fast, balanced and best at 512 px were measured (README, "NST on a
# CPU-only machine"); best at 768 px is best at 512 scaled by its pixel-steps (2.25x).
CPU_NST_COST_S: dict[str, tuple[int, float]] = {
    "fast": (256, 17.0),
    "balanced": (512, 431.0),
    "best": (768, 1600.0),
}
CPU_NST_MEASURED_ON = "on one core; 2 quiet cores take about 3/4 of it, a busy machine longer"


def check_gpu_stack(settings: Settings | None) -> list[Check]:
    checks: list[Check] = []
    torch = gpu.torch_facts()
    try:
        gpus = gpu.query_gpus()
    except gpu.GpuProbeError as exc:
        checks.append(
            error(
                "NVIDIA GPU",
                str(exc),
                "the driver is not working: after a driver upgrade reboot; otherwise reinstall the NVIDIA "
                "driver until `nvidia-smi` works",
            )
        )
        gpus = []
        smi_failed = True
    else:
        smi_failed = False
    cc: gpu.CC | None = None
    if gpus:
        cc = min((g.compute_cap for g in gpus if g.compute_cap), default=None) or (
            torch.device_caps[0] if torch.device_caps else None
        )
        described = "; ".join(
            f"{g.name}, compute capability {format_cc_or(g.compute_cap, cc)}, "
            f"{g.memory_total_mib or '?'} MiB, driver {g.driver_version}"
            for g in gpus
        )
        checks.append(ok("NVIDIA GPU", described))
        if not gpu.uvm_device_present():
            checks.append(
                warning(
                    "CUDA device nodes",
                    f"{gpu.UVM_DEVICE} is missing (no CUDA program has run as root since boot)",
                    "`sudo nvidia-modprobe -u -c=0` (the service's ExecStartPre does this at each start)",
                )
            )
    elif torch.device_caps:  # no nvidia-smi on PATH, but torch sees a GPU
        cc = min(torch.device_caps)
        checks.append(
            ok(
                "NVIDIA GPU",
                f"{torch.device_names[0]}, compute capability {gpu.format_cc(cc)} (seen by torch)",
            )
        )
    elif not smi_failed and settings is not None and cpu_by_choice(settings):
        # Both engines are set to the CPU: a missing GPU is what the owner asked for, not a problem.
        checks.append(ok("NVIDIA GPU", "none found; none needed: nst.device and cyclegan.device are cpu"))
    elif not smi_failed:
        checks.append(
            warning(
                "NVIDIA GPU",
                "no NVIDIA GPU found (nvidia-smi is missing or lists none): nstd runs on the CPU, slowly",
                "install the NVIDIA driver so that `nvidia-smi` works, then run `nstd doctor` again; "
                "on a machine without one, set nst.device and cyclegan.device to cpu",
            )
        )
    has_gpu = bool(gpus) or bool(torch.device_caps)
    configured_threads = settings.nst.cpu_threads if settings is not None else 0
    checks.append(check_torch(torch, cc if has_gpu else None, has_gpu, configured_threads))
    checks.append(check_onnxruntime(gpu.ort_facts(), cc if has_gpu else None, has_gpu))
    if gpus and gpus[0].memory_free_mib is not None:
        checks.append(check_vram(gpus, settings))
    if settings is not None and (not has_gpu or settings.nst.device == "cpu"):
        checks.append(check_cpu_nst(settings))
    return checks


def cpu_by_choice(settings: Settings) -> bool:
    return settings.nst.device == "cpu" and settings.cyclegan.device == "cpu"


def check_cpu_nst(settings: Settings) -> Check:
    """What a multi-style NST photo costs on the CPU at each preset, and the settings that finish."""
    name = "NST on the CPU"
    costs = ", ".join(
        f"{preset} ({side} px) {_duration(seconds)}" for preset, (side, seconds) in CPU_NST_COST_S.items()
    )
    detail = (
        f"one photo takes about {costs} ({CPU_NST_MEASURED_ON}); the CycleGAN styles take seconds; "
        f"now: nst.preset = {settings.nst.preset}, nst.max_side = {settings.nst.max_side}"
    )
    suggestion = (
        'for a result in minutes set nst.preset = "fast" (and, on a busy machine, nst.cpu_threads to the '
        "cores nstd may use), or use the CycleGAN styles"
    )
    if settings.nst.preset == "best":  # three scales of 300 steps: the one that does not finish in time
        return warning(name, detail, suggestion)
    if settings.nst.preset == "balanced":
        return ok(name, f"{detail}; {suggestion}")
    return ok(name, detail)


def _duration(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.0f} min"


def format_cc_or(cc: gpu.CC | None, fallback: gpu.CC | None) -> str:
    chosen = cc or fallback
    return gpu.format_cc(chosen) if chosen else "unknown"


def check_torch(
    facts: gpu.TorchFacts, cc: gpu.CC | None, has_gpu: bool, configured_threads: int = 0
) -> Check:
    name = "PyTorch"
    if facts.version is None:
        return error(
            name,
            f"PyTorch is not importable: {facts.error}",
            "reinstall the environment: `scripts/bootstrap` (service: `sudo scripts/install-service`)",
        )
    if not has_gpu:
        build = "CPU build" if facts.cpu_build else f"CUDA {facts.cuda} build"
        count = configured_threads or facts.cpu_threads
        source = "nst.cpu_threads" if configured_threads else "torch's default; nst.cpu_threads sets it"
        threads = f"{count} thread{plural(count)} ({source})"
        return ok(name, f"torch {facts.version} ({build}); no GPU to use, running on the CPU with {threads}")
    cc_text = gpu.format_cc(cc) if cc else "unknown"
    if facts.cpu_build:
        fix = gpu.torch_install_hint(cc, facts.version) if cc else "install a CUDA build of PyTorch"
        return error(
            name,
            f"this PyTorch is a CPU build (torch {facts.version}): the GPU (compute capability {cc_text}) "
            "goes unused",
            fix,
        )
    if cc is not None:
        matching = gpu.matching_archs(facts.arch_list, cc)
        if facts.arch_list and not matching:
            shown = ", ".join(facts.arch_list)
            return error(
                name,
                f"torch {facts.version} (CUDA {facts.cuda}) has kernels for {shown}, none for this GPU "
                f"(compute capability {cc_text}, sm_{cc[0]}{cc[1]})",
                gpu.torch_install_hint(cc, facts.version),
            )
    if not facts.cuda_available:
        return error(
            name,
            f"torch {facts.version} (CUDA {facts.cuda}) cannot use the GPU: "
            "torch.cuda.is_available() is False",
            "the driver is probably too old for this CUDA: CUDA 12.x builds need driver 525 or newer, "
            "CUDA 13 builds 580 or newer; update the driver or pick an older build "
            f"({'NSTD_TORCH_BUILD=cu126 ' if cc and cc < gpu.MODERN_MIN_CC else ''}scripts/bootstrap)",
        )
    kernels = ", ".join(gpu.matching_archs(facts.arch_list, cc)) if cc else "?"
    return ok(
        name, f"torch {facts.version} (CUDA {facts.cuda}) runs on compute capability {cc_text} ({kernels})"
    )


def ort_fix(cc: gpu.CC | None) -> str:
    if cc is not None and cc < gpu.MODERN_MIN_CC:
        return (
            f"`pip install onnxruntime-gpu=={gpu.ORT_LAST_SM52}` in nstd's venv (it needs CUDA 12 and "
            "cuDNN 9, which PyTorch's cu126 build brings), or re-run "
            "`NSTD_TORCH_BUILD=cu126 scripts/bootstrap` "
            "(service: `sudo NSTD_TORCH_BUILD=cu126 scripts/install-service`)"
        )
    return "install an onnxruntime-gpu that matches your CUDA: 1.19-1.26 need CUDA 12, 1.27 and later CUDA 13"


def check_onnxruntime(facts: gpu.OrtFacts, cc: gpu.CC | None, has_gpu: bool) -> Check:
    name = "ONNX Runtime"
    if facts.version is None:
        return error(
            name,
            f"onnxruntime is not importable: {facts.error}",
            "reinstall the environment: `scripts/bootstrap` (service: `sudo scripts/install-service`)",
        )
    label = f"onnxruntime {facts.version}"
    if facts.error:
        return error(name, f"{label}: the probe session failed: {facts.error}", ort_fix(cc))
    if not has_gpu:
        return ok(name, f"{label}: CPU provider (no GPU)")
    if cc is not None and not gpu.ort_supports_cc(facts.version, cc):
        return error(
            name,
            f"{label} has no kernels for compute capability {gpu.format_cc(cc)}; "
            f"{gpu.ORT_LAST_SM52} is the last release for Maxwell (sm_52)"
            if cc < (6, 0)
            else f"{label} needs CUDA 13, which has no kernels below compute capability 7.5",
            ort_fix(cc),
        )
    if not facts.cuda_built:
        return error(
            name,
            f"{label} has no CUDA provider (the CPU-only onnxruntime package?)",
            "`pip uninstall onnxruntime` and install onnxruntime-gpu; " + ort_fix(cc),
        )
    if not facts.cuda_active:
        reason = f": {facts.load_error}" if facts.load_error else ""
        return error(
            name,
            f"{label}: the CUDA provider did not load{reason}; CycleGAN styles run on the CPU",
            f"{label} needs {gpu.ort_cuda_requirement(facts.version)} libraries; " + ort_fix(cc),
        )
    if facts.run_error:
        return error(
            name, f"{label}: the CUDA provider cannot run on this GPU: {facts.run_error}", ort_fix(cc)
        )
    return ok(name, f"{label}: CUDA provider active")


def check_vram(gpus: list[gpu.GpuInfo], settings: Settings | None) -> Check:
    card = gpus[0]
    free, total = card.memory_free_mib or 0, card.memory_total_mib or 0
    detail = f"{free} MiB free of {total} MiB on {card.name}"
    if free < LOW_VRAM_MIB:
        max_side = f" (now {settings.nst.max_side})" if settings else ""
        return warning(
            "free VRAM",
            detail,
            f"close games and other GPU programs, or lower nst.max_side{max_side} and cyclegan.max_side",
        )
    return ok("free VRAM", detail)
