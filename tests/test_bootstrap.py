"""scripts/bootstrap's choices (scripts/lib/gpu.sh), checked with a fake python and nvidia-smi: nothing is
installed, the pip command lines are recorded instead."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [[ "$1 $2" == "-m venv" ]]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
if [[ "$*" == *--dry-run* ]]; then exit "${FAKE_PROBE_RC:-0}"; fi
if [[ "$*" == *"pip show"* ]]; then exit "${FAKE_SHOW_RC:-1}"; fi
exit 0
"""


class Box:
    """A copy of the repository's scripts and pyproject, a fake interpreter and a fake nvidia-smi."""

    def __init__(self, root: Path, compute_cap: str | None) -> None:
        self.root = root / "repo"
        shutil.copytree(REPO / "scripts", self.root / "scripts")
        shutil.copy(REPO / "pyproject.toml", self.root / "pyproject.toml")
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.log"
        python = self.bin / "fake-python"
        python.write_text(FAKE_PYTHON)
        smi = self.bin / "nvidia-smi"
        # Without a GPU, nvidia-smi is absent; a stub that fails stands for that on any machine.
        smi.write_text(f"#!/usr/bin/env bash\necho {compute_cap}\n" if compute_cap else "#!/bin/sh\nexit 9\n")
        for tool in (python, smi):
            tool.chmod(0o755)
        self.env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(root),
            "FAKE_LOG": str(self.log),
            "NSTD_PYTHON": str(python),
            "NSTD_VENV": str(root / "venv"),
        }

    def bootstrap(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        return subprocess.run(
            [self.root / "scripts" / "bootstrap", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    @property
    def installs(self) -> list[str]:
        return [
            line
            for line in self.log.read_text().splitlines()
            if "pip install" in line and "--dry-run" not in line
        ]


def test_cpu_machine_gets_the_cpu_wheels_from_the_configured_index_when_it_has_them(tmp_path: Path) -> None:
    box = Box(tmp_path, None)
    done = box.bootstrap()
    assert done.returncode == 0, done.stderr
    torch, ort, package = box.installs
    # Here a local wheel (pip's find-links) or a mirror has torch+cpu: no unreachable index is tried.
    assert torch.endswith("torch==2.13.0+cpu") and "--index-url" not in torch
    assert ort.endswith("onnxruntime>=1.20")
    assert "-e ." in package and "onnxruntime>=1.20" in package
    assert not any("onnxruntime-gpu" in line for line in box.installs)
    assert not any("--quiet" in line for line in box.installs)  # pip's progress is shown
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert f"bootstrap: {step}" in done.stderr


def test_cpu_machine_on_the_standard_index_gets_pytorchs_cpu_index(tmp_path: Path) -> None:
    box = Box(tmp_path, None)
    done = box.bootstrap(FAKE_PROBE_RC="1")  # the configured index has no +cpu wheel (plain PyPI)
    assert done.returncode == 0, done.stderr
    torch = box.installs[0]
    assert "torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu" in torch
    assert "--extra-index-url https://pypi.org/simple" in torch


@pytest.mark.parametrize(
    ("compute_cap", "build", "ort"),
    [("5.2", "cu126", "onnxruntime-gpu==1.20.1"), ("8.6", "cu130", "onnxruntime-gpu>=1.20")],
)
def test_nvidia_machines_keep_their_cuda_builds(
    tmp_path: Path, compute_cap: str, build: str, ort: str
) -> None:
    box = Box(tmp_path, compute_cap)
    done = box.bootstrap()
    assert done.returncode == 0, done.stderr
    torch, ort_line, _ = box.installs
    assert f"torch==2.13.0 --index-url https://download.pytorch.org/whl/{build}" in torch
    assert ort_line.endswith(ort)


def test_stamp_makes_a_second_run_a_no_op_and_dev_satisfies_a_plain_run(tmp_path: Path) -> None:
    box = Box(tmp_path, None)
    assert box.bootstrap("--dev").returncode == 0
    # The dev venv has Ray too, so that scripts/test (and CI) run the cluster tests.
    assert any(".[dev,ray]" in line for line in box.installs), box.installs
    # scripts/run (plain) on a venv that scripts/test made: nothing to do, nothing probed.
    assert box.bootstrap().returncode == 0
    assert box.log.read_text() == ""
    assert box.bootstrap("--check").returncode == 0
    assert box.bootstrap("--dev").returncode == 0 and box.log.read_text() == ""


def test_check_installs_nothing_and_says_so(tmp_path: Path) -> None:
    box = Box(tmp_path, None)
    done = box.bootstrap("--check")
    assert done.returncode == 1
    assert "would be installed" in done.stderr
    assert box.log.read_text() == "" and not (tmp_path / "venv").exists()
    assert box.bootstrap().returncode == 0  # a plain venv ...
    assert box.bootstrap("--dev", "--check").returncode == 1  # ... lacks the dev extras


def test_switching_onnxruntime_packages_removes_the_other_one(tmp_path: Path) -> None:
    box = Box(tmp_path, None)
    done = box.bootstrap(FAKE_SHOW_RC="0")  # onnxruntime-gpu from an earlier install is present
    assert done.returncode == 0, done.stderr
    assert "replacing onnxruntime-gpu with onnxruntime" in done.stderr
    assert any(
        "pip uninstall --yes --quiet onnxruntime-gpu onnxruntime" in line
        for line in box.log.read_text().splitlines()
    )


def test_pyproject_leaves_onnxruntime_to_the_installer() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith("onnxruntime")]
    assert project["optional-dependencies"]["cpu"] == ["onnxruntime>=1.20"]
    assert project["optional-dependencies"]["gpu"] == ["onnxruntime-gpu>=1.20"]
