"""CycleGAN speed, side by side: the same generator weights in PyTorch eager and through nstd's ONNX Runtime
path (`CycleGANEngine.run_array`), in one process, on the same input and device.

    .venv/bin/python scripts/bench_cyclegan.py                       # CPU default: 256², 512²
    .venv/bin/python scripts/bench_cyclegan.py --sizes 256,512,1024  # the GPU default
    .venv/bin/python scripts/bench_cyclegan.py --levers              # ONNX Runtime session options

Per size: the first call at a shape neither contender has seen (after both were warmed up at 64²), then a
warm-up run, then N runs alternating torch and ORT (so background load hits both alike), reported as the
median. Peak memory is the RSS high-water mark over the first call and warm-up minus the RSS before it; on
CUDA, torch's max allocated (ORT's CUDA arena is invisible to torch: use nvidia-smi for it).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common as bc
import numpy as np


def input_batch(size: int, seed: int = 0) -> np.ndarray:
    """A (1, 3, size, size) float32 batch in [-1, 1] from a smooth random photo-like image."""
    from checkpoints import random_image

    from nst_daemon.engines.cyclegan import to_model_input

    batch, _ = to_model_input(random_image((size, size), seed=seed))
    return batch


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = call()
    return time.perf_counter() - started, out


class TorchContender:
    name = "torch eager"

    def __init__(self, generator: Any, device: Any) -> None:
        self.generator = generator.to(device)
        self.device = device

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.generator(torch.from_numpy(batch).to(self.device))
            return out.cpu().numpy()  # the copy back syncs CUDA, as the ORT path's output copy does


class OrtContender:
    name = "onnxruntime (nstd)"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.run_array(batch)


def bench_size(size: int, contenders: list[Any], runs: int, cuda: bool) -> dict[str, Any]:
    batch = input_batch(size)
    out: dict[str, Any] = {"size": size, "shape": list(batch.shape), "contenders": {}}
    outputs = {}
    for contender in contenders:
        with bc.MemoryProbe(cuda=cuda) as probe:
            first, outputs[contender.name] = timed(lambda c=contender: c(batch))
            warm, _ = timed(lambda c=contender: c(batch))
        out["contenders"][contender.name] = {"first_call_s": first, "warm_up_s": warm, **probe.as_dict()}
        bc.log(f"{size}²: {contender.name} first call {first:.3f} s, second {warm:.3f} s")
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for _ in range(runs):
        for contender in contenders:
            times[contender.name].append(timed(lambda c=contender: c(batch))[0])
    for contender in contenders:
        entry = out["contenders"][contender.name]
        entry["runs_s"] = times[contender.name]
        entry["median_s"] = bc.median(times[contender.name])
        entry["first_call_over_median"] = bc.ratio(entry["first_call_s"], entry["median_s"])
    torch_name, ort_name = contenders[0].name, contenders[1].name
    out["max_abs_diff"] = float(np.abs(outputs[torch_name] - outputs[ort_name]).max())
    out["ort_speedup"] = bc.ratio(
        out["contenders"][torch_name]["median_s"], out["contenders"][ort_name]["median_s"]
    )
    # Each torch run and the ORT run right after it saw about the same background load: the median of
    # these per-pair ratios resists a shared machine's load swings better than the ratio of medians.
    pairs = [t / o for t, o in zip(times[torch_name], times[ort_name], strict=True)]
    out["ort_speedup_paired"] = bc.median(pairs)
    out["ort_speedup_best"] = bc.ratio(min(times[torch_name]), min(times[ort_name]))
    return out


# --- levers: ONNX Runtime session options -------------------------------------------------------------------


def session_variants(device: str, cuda_loads: bool) -> dict[str, tuple[dict[str, Any], list[Any]]]:
    """label -> (SessionOptions attributes, providers). The first is nstd's configuration."""
    import onnxruntime as ort

    from nst_daemon.engines.cores import physical_cores
    from nst_daemon.engines.cyclegan import provider_list

    g = ort.GraphOptimizationLevel
    cores = physical_cores()
    nstd = {"graph_optimization_level": g.ORT_ENABLE_ALL, "intra_op_num_threads": cores}
    # Where the CUDA provider cannot load, asking for it again only repeats ORT's error lines.
    providers = provider_list(device) if cuda_loads else ["CPUExecutionProvider"]
    variants: dict[str, tuple[dict[str, Any], list[Any]]] = {
        f"nstd: ORT_ENABLE_ALL, {cores} intra-op threads": (nstd, providers),
        "graph optimization DISABLE_ALL": (
            {**nstd, "graph_optimization_level": g.ORT_DISABLE_ALL},
            providers,
        ),
        "graph optimization BASIC": ({**nstd, "graph_optimization_level": g.ORT_ENABLE_BASIC}, providers),
        "graph optimization EXTENDED": (
            {**nstd, "graph_optimization_level": g.ORT_ENABLE_EXTENDED},
            providers,
        ),
        "intra_op_num_threads 1": ({**nstd, "intra_op_num_threads": 1}, providers),
        "intra_op_num_threads 0 (ORT default)": ({**nstd, "intra_op_num_threads": 0}, providers),
        "execution mode PARALLEL": ({**nstd, "execution_mode": ort.ExecutionMode.ORT_PARALLEL}, providers),
        "enable_mem_pattern off": ({**nstd, "enable_mem_pattern": False}, providers),
        "enable_cpu_mem_arena off": ({**nstd, "enable_cpu_mem_arena": False}, providers),
        # Idle pool threads spin-wait by default: CPU the daemon's event loop could use on a small box.
        "intra-op spinning off": ({**nstd, "config:session.intra_op.allow_spinning": "0"}, providers),
    }
    cuda = [p for p in providers if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider"]
    if cuda:  # measurable only where the CUDA provider really loads
        name, options = cuda[0]
        exhaustive = [(name, {**options, "cudnn_conv_algo_search": "EXHAUSTIVE"}), "CPUExecutionProvider"]
        variants["cudnn_conv_algo_search EXHAUSTIVE (vs HEURISTIC)"] = (nstd, exhaustive)
    return variants


def bench_levers(
    onnx_path: Path, generator: Any, size: int, runs: int, device: str, cuda_loads: bool
) -> list[dict[str, Any]]:
    """Every variant's session is built first, then the timed runs go round-robin over all variants (and
    torch eager at 1 and N threads), so a burst of background load hits them all alike."""
    import onnxruntime as ort
    import torch

    batch = input_batch(size, seed=1)
    fresh = input_batch(size + 4, seed=2)  # a shape the session has not seen, for the first-call cost
    rows: list[dict[str, Any]] = []
    calls: list[Callable[[], Any]] = []
    for label, (attributes, providers) in session_variants(device, cuda_loads).items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for key, value in attributes.items():
            if key.startswith("config:"):
                options.add_session_config_entry(key.removeprefix("config:"), value)
            else:
                setattr(options, key, value)
        load, session = timed(
            lambda o=options, p=providers: ort.InferenceSession(str(onnx_path), o, providers=p)
        )
        name = session.get_inputs()[0].name
        session.run(None, {name: np.zeros((1, 3, 64, 64), np.float32)})
        first, _ = timed(lambda s=session, n=name: s.run(None, {n: fresh}))
        session.run(None, {name: batch})
        rows.append(
            {
                "lever": label,
                "provider": session.get_providers()[0],
                "load_s": load,
                "first_call_new_shape_s": first,
            }
        )
        calls.append(lambda s=session, n=name: s.run(None, {n: batch}))
    if rows and rows[0]["provider"] == "CUDAExecutionProvider":
        row, call = _io_binding(onnx_path, batch, device)
        rows.append(row)
        calls.append(call)

    threads_before = torch.get_num_threads()
    tensor = torch.from_numpy(batch).to(next(generator.parameters()).device)

    def eager(threads: int) -> Callable[[], Any]:
        def call() -> Any:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return generator(tensor).cpu()  # the copy back syncs CUDA

        return call

    for threads in sorted({1, max(2, threads_before)}):
        rows.append({"lever": f"torch eager, {threads} thread(s)"})
        calls.append(eager(threads))
        calls[-1]()  # warm-up at this shape and thread count

    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for index, call in enumerate(calls):
            times[index].append(timed(call)[0])
    torch.set_num_threads(threads_before)
    for row, samples in zip(rows, times, strict=True):
        row["median_s"] = bc.median(samples)
        bc.log(f"lever {row['lever']}: median {row['median_s']:.3f} s")
    base = rows[0]["median_s"]
    for row in rows:
        row["speed_vs_nstd"] = bc.ratio(base, row["median_s"])
    return rows


def _io_binding(onnx_path: Path, batch: np.ndarray, device: str) -> tuple[dict[str, Any], Callable[[], Any]]:
    """CUDA only: the input copied to the GPU once and the output left there; what IO binding saves."""
    import onnxruntime as ort

    from nst_daemon.engines.cyclegan import provider_list

    session = ort.InferenceSession(str(onnx_path), providers=provider_list(device))
    binding = session.io_binding()
    value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
    binding.bind_output(session.get_outputs()[0].name, "cuda")
    session.run_with_iobinding(binding)

    def call() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    row = {
        "lever": "IO binding (input and output stay on the GPU)",
        "provider": session.get_providers()[0],
        "load_s": None,
        "first_call_new_shape_s": None,
    }
    return row, call


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = bc.parser("cyclegan", __doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=bc.parse_sizes,
        help="square sizes, multiples of 4 (default 256,512 on CPU, 256,512,1024 on GPU)",
    )
    parser.add_argument("--runs", type=int, default=0, help="timed runs per contender and size (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: physical cores)")
    parser.add_argument("--seed", type=int, default=0, help="generator random-init seed")
    parser.add_argument("--levers", action="store_true", help="also measure ONNX Runtime session options")
    parser.add_argument("--lever-size", type=int, default=256)
    args = parser.parse_args(argv)

    import torch
    from checkpoints import make_cyclegan_state_dict, save_checkpoint

    from nst_daemon.engines.cores import physical_cores
    from nst_daemon.engines.cyclegan import CycleGANEngine, export_onnx, load_generator
    from nst_daemon.engines.device import resolve_torch_device

    torch.set_num_threads(args.threads or physical_cores())
    device = resolve_torch_device(args.device)
    runs = args.runs or (2 if args.smoke else 5)
    sizes = args.sizes or ([32] if args.smoke else [256, 512, 1024] if device.type == "cuda" else [256, 512])
    if any(size % 4 for size in sizes):
        parser.error("sizes must be multiples of 4 (two stride-2 downsamplings)")
    lever_size = 32 if args.smoke else args.lever_size

    with tempfile.TemporaryDirectory(prefix="bench-cyclegan-") as tmp:
        checkpoint = save_checkpoint(make_cyclegan_state_dict(seed=args.seed), Path(tmp) / "latest_net_G.pth")
        onnx_path = Path(tmp) / "generator.onnx"
        export_s, diff = timed(lambda: export_onnx(checkpoint, onnx_path))
        bc.log(f"exported in {export_s:.1f} s (max diff {diff:.1e})")
        generator = load_generator(checkpoint)
        engine = CycleGANEngine(onnx_path, device=args.device)
        load_s, _ = timed(engine.load)  # includes nstd's 64² warm-up run
        contenders = [TorchContender(generator, device), OrtContender(engine)]
        contenders[0](np.zeros((1, 3, 64, 64), np.float32))  # the same 64² warm-up for torch
        payload: dict[str, Any] = {
            "benchmark": "cyclegan",
            "smoke": args.smoke,
            "machine": bc.machine_info(torch_device=str(device)),
            "settings": {"sizes": sizes, "runs": runs, "seed": args.seed, "ort_provider": engine.provider},
            "export": {"seconds": export_s, "max_abs_diff": diff},
            "ort_load_s": load_s,
            "results": [],
        }
        for size in sizes:
            payload["results"].append(bench_size(size, contenders, runs, device.type == "cuda"))
            bc.write_json(args.json, payload)
        at_512 = next((r for r in payload["results"] if r["size"] == 512), None)
        payload["targets"] = {
            "ort_speedup_512": {
                "value": at_512["ort_speedup"] if at_512 else None,
                "limit": 1.2,
                "verdict": bc.verdict(at_512["ort_speedup"] if at_512 else None, 1.2, at_most=False),
                "paired": at_512["ort_speedup_paired"] if at_512 else None,
            },
            "first_call_over_median": {
                "value": max(
                    (
                        c["first_call_over_median"]
                        for r in payload["results"]
                        for c in r["contenders"].values()
                        if c["first_call_over_median"] is not None
                    ),
                    default=None,
                ),
                "limit": 2.0,
            },
        }
        worst = payload["targets"]["first_call_over_median"]
        worst["verdict"] = bc.verdict(worst["value"], 2.0)
        if args.levers:
            payload["levers"] = {
                "size": lever_size,
                "rows": bench_levers(
                    onnx_path,
                    generator,
                    lever_size,
                    runs,
                    args.device,
                    engine.provider == "CUDAExecutionProvider",
                ),
            }
        bc.write_json(args.json, payload)

    provider = engine.provider
    rows = []
    for result in payload["results"]:
        for name, c in result["contenders"].items():
            rows.append(
                [
                    f"{result['size']}² {name}",
                    c["median_s"],
                    c["first_call_s"],
                    c["first_call_over_median"],
                    c["peak_rss_mb"],
                    c["rss_delta_mb"],
                    c["cuda_peak_mb"],
                ]
            )
        rows.append([f"{result['size']}² ORT speedup, ratio of medians", result["ort_speedup"], *[None] * 5])
        rows.append(
            [
                f"{result['size']}² ORT speedup, median of paired runs",
                result["ort_speedup_paired"],
                *[None] * 5,
            ]
        )
    tables = [
        (
            f"CycleGAN resnet_9blocks: torch on {device}, ORT on {provider} (median of {runs} runs)",
            [
                "contender",
                "median s",
                "first call s",
                "first / median",
                "peak RSS MB",
                "RSS +MB",
                "CUDA peak MB",
            ],
            rows,
        )
    ]
    targets = payload["targets"]
    tables.append(
        (
            "Targets",
            ["target", "value", "limit", "verdict"],
            [
                [
                    "ORT speedup over torch at 512² (ratio of medians)",
                    targets["ort_speedup_512"]["value"],
                    "≥ 1.2",
                    targets["ort_speedup_512"]["verdict"],
                ],
                [
                    "ORT speedup over torch at 512² (median of paired runs)",
                    targets["ort_speedup_512"]["paired"],
                    "≥ 1.2",
                    bc.verdict(targets["ort_speedup_512"]["paired"], 1.2, at_most=False),
                ],
                ["worst first call / steady state", worst["value"], "≤ 2", worst["verdict"]],
            ],
        )
    )
    if "levers" in payload:
        tables.append(
            (
                f"Levers at {payload['levers']['size']}²",
                ["lever", "median s", "first call (new shape) s", "load s", "speed vs nstd"],
                [
                    [
                        r["lever"],
                        r["median_s"],
                        r.get("first_call_new_shape_s"),
                        r.get("load_s"),
                        r.get("speed_vs_nstd"),
                    ]
                    for r in payload["levers"]["rows"]
                ],
            )
        )
    bc.print_tables(tables, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
