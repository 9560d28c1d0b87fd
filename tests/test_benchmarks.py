"""The benchmark scripts still run: each in a subprocess with --smoke (tiny sizes and steps).

Speed targets are not asserted here: they are ratios from one run on one machine, reported in
docs/benchmarks.md. These tests check that each script exits 0, writes its JSON with the expected keys and
sane numbers, and prints its rich tables last.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

pytestmark = pytest.mark.timeout(300)


def run_smoke(name: str, tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / f"{name}.json"
    # One OpenMP thread: on 32-pixel images fork-join costs more than a second core gains.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / f"bench_{name}.py"),
            "--smoke",
            "--device",
            "cpu",
            "--json",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.is_file(), proc.stdout[-2000:]
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["smoke"] is True
    assert payload["machine"]["cpu"] and payload["machine"]["logical_cpus"] >= 1
    # The table is the last thing printed: its bottom border closes stdout.
    assert proc.stdout.rstrip().splitlines()[-1].startswith("└"), proc.stdout[-2000:]
    return payload, proc.stdout


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_nst_smoke(tmp_path: Path) -> None:
    payload, stdout = run_smoke("nst", tmp_path, "--levers")
    assert "NST on cpu" in stdout and "Targets" in stdout
    (result,) = payload["results"]
    for recipe in ("bot", "tutorial"):
        assert result["definition_check"][recipe]["rel_diff"] < 1e-4  # one loss, two implementations
        assert result["targets"][recipe]["verdict"] in ("met", "not met", "not met (not reached)")
    expected = {
        "a_bot",
        "b_tutorial",
        "c_nstd_bot_stock",
        "c_nstd_bot",
        "c_nstd_tutorial_stock",
        "c_nstd_tutorial",
    }
    assert set(result["contenders"]) == expected
    for contender in result["contenders"].values():
        assert positive(contender["seconds"]) and contender["steps"] >= 1
        assert positive(contender["final_loss"]), contender
        assert positive(contender["peak_rss_mb"])
    assert payload["levers"]["rows"]


def test_bench_cyclegan_smoke(tmp_path: Path) -> None:
    payload, stdout = run_smoke("cyclegan", tmp_path)
    assert "CycleGAN resnet_9blocks" in stdout
    (result,) = payload["results"]
    assert result["max_abs_diff"] < 1e-3  # the same weights through both paths
    for name in ("torch eager", "onnxruntime (nstd)"):
        contender = result["contenders"][name]
        assert positive(contender["median_s"]) and positive(contender["first_call_s"])
        assert positive(contender["peak_rss_mb"])
    assert positive(result["ort_speedup"])
    assert set(payload["targets"]) == {"ort_speedup_512", "first_call_over_median"}


def test_bench_daemon_smoke(tmp_path: Path) -> None:
    payload, stdout = run_smoke("daemon", tmp_path)
    assert "Event-loop lag" in stdout
    # Both places for the fake Bot API: a child process (the target's measure) and a thread of this one.
    # ... and the no-op engine in the engine process (as the daemon runs engines) or the daemon's own.
    assert [(bot["fake_server"], bot["engines"]) for bot in payload["bot"]] == [
        ("process", "engine process"),
        ("process", "daemon"),
        ("thread", "daemon"),
    ]
    for bot in payload["bot"]:
        assert positive(bot["jobs_per_s"]) and positive(bot["latency_median_s"])
        assert bot["median_job_calls_ms"][-1][0] in ("sendPhoto", "sendDocument")
        assert positive(bot["fake_server_cpu_ms_per_job"]) and positive(bot["rest_cpu_ms_per_job"])
    idle = payload["idle"]
    assert positive(idle["vm_rss_mb"]) and idle["exit_code"] == 0
    assert idle["torch_loaded"] is False and idle["onnxruntime_loaded"] is False
    assert {row["state"] for row in payload["lag"]} == {"done"}
    # The daemon's engine process, and the engines in the daemon's own process for comparison.
    assert {row["place"] for row in payload["lag"]} == {"engine process", "daemon"}
    assert [t for t in payload["targets"] if "loop lag" in t["label"]], "the lag target is judged"
    assert all(positive(row["lag_p99_ms"]) for row in payload["lag"])
    # Part 4: a large JPEG decodes smaller where the engine's fit allows it, to the same picture.
    assert [(row["engine"], row["max_side"]) for row in payload["large"]] == [("NST", 48), ("CycleGAN", 96)]
    for row in payload["large"]:
        assert row["full_decoded"] == [800, 600] and row["reduced_decoded"] in ([200, 150], [400, 300])
        assert row["full_fitted"] == row["reduced_fitted"]
        assert positive(row["full_ms"]) and positive(row["reduced_ms"]) and row["psnr_db"] > 40
    assert "Large photos" in stdout
    # Part 6: instant jobs through the watched folder of a real `nstd run`, cut into stages that add up.
    (instant,) = payload["instant"]
    assert instant["result_size"] == [64, 48] and len(instant["warm"]) == 1
    for job in (instant["cold"], *instant["warm"]):
        stages = [job[key] for key in ("drop_to_row", "row_to_claim", "engine", "store_and_done", "delivery")]
        assert all(positive(stage) for stage in stages), job
        assert math.isclose(sum(stages), job["total"], rel_tol=1e-6)
        # No bound on drop_to_row: a file its writer closed is claimed without waiting out settle_s.
    assert all(positive(value) for value in instant["components_ms"].values())
    assert "Instant (AdaIN) job through the watched folder" in stdout


def test_bench_instant_smoke(tmp_path: Path) -> None:
    payload, stdout = run_smoke("instant", tmp_path)
    assert "AdaIN: torch eager vs ORT" in stdout and "Targets" in stdout
    (result,) = payload["results"]
    assert result["max_abs_diff"] < 1e-4  # the two contenders compute the same picture
    for contender in result["contenders"].values():
        assert positive(contender["median_s"]) and positive(contender["first_call_s"])
    cli = payload["cli"]
    assert positive(cli["median_s"]) and cli["output_size"] == cli["photo"]  # full size, as the target says
    assert set(payload["targets"]) == {"ort_speedup_512", "cli_vs_peer"}
    assert payload["memory"][0]["rss_delta_mb"] is not None
    assert stdout.rstrip().splitlines()[-1].startswith("└")
