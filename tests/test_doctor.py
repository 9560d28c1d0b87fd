"""`nstd doctor`: each check's status and fix, against a loopback Bot API and a fake nvidia-smi on PATH.

torch and ONNX Runtime facts are replaced through `nst_daemon.gpu` where a test needs a GPU build this
machine lacks; one test runs the real ONNX Runtime probe (CPU only here) and one runs `nstd doctor` as a
subprocess with the real, CPU-only torch.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from rich.console import Console

from nst_daemon import doctor, gpu
from nst_daemon.catalog import default_catalog_path, load_catalog
from nst_daemon.doctor import Check

GOOD_TOKEN = "123456:GOODsecretPART_abc-def"
WRONG_TOKEN = "123456:WRONGsecretPART_xyz"
SECRET_PARTS = ("GOODsecretPART", "WRONGsecretPART")
CATALOG = load_catalog(default_catalog_path())
MODEL_NAMES = tuple(CATALOG)
NSTD = str(Path(sys.executable).parent / "nstd")

CU128_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")
CU126_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")


# --- a loopback Bot API ---


@pytest.fixture(scope="module")
def bot_api() -> Iterator[str]:
    """http://127.0.0.1:PORT answering getMe: ok for GOOD_TOKEN, 401 for anything else."""

    async def get_me(request: web.Request) -> web.Response:
        if request.match_info["token"] == GOOD_TOKEN:
            result = {"id": 123456, "is_bot": True, "first_name": "Test", "username": "nstd_test_bot"}
            return web.json_response({"ok": True, "result": result})
        return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)

    app = web.Application()
    app.router.add_route("*", "/bot{token}/getMe", get_me)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- helpers ---


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("NSTD_") or name in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "INVOCATION_ID"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # No nvidia-smi unless a test puts one on PATH; this machine has none anyway.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")


def write_config(
    tmp_path: Path,
    *,
    token: str | None = GOOD_TOKEN,
    api_base: str = "http://127.0.0.1:9",
    allowed_users: tuple[int, ...] = (42,),
    watch_dir: str | None = None,
    extra: str = "",
) -> Path:
    lines = ["[paths]", 'state_dir = "state"', 'models_dir = "models"', "[telegram]"]
    if token is not None:
        (tmp_path / "token").write_text(token + "\n")
        lines.append('token_file = "token"')
    lines += [f'api_base = "{api_base}"', f"allowed_users = {list(allowed_users)}"]
    if watch_dir is not None:
        lines += ["[watch]", "enabled = true", f'dir = "{watch_dir}"']
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def install_models(models_dir: Path, names: tuple[str, ...] | None = None) -> None:
    """Manifest entries matching the catalog, over tiny stand-in files: doctor checks presence and sizes
    (`nstd models verify` checks content)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for entry in CATALOG.values():
        if names is not None and entry.name not in names:
            continue
        for file in entry.files:
            (models_dir / file).write_bytes(b"x")
        entries[entry.name] = {
            "name": entry.name,
            "kind": entry.kind,
            "sha256": "0" * 64,
            "size": 1,
            "source": "test",
            "installed_at": time.time(),
            "files": entry.files,
            "runnable": entry.runnable,
            "pinned": "import",
        }
    (models_dir / "manifest.json").write_text(json.dumps({"version": 1, "models": entries}))


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, exit_status: int = 0) -> None:
    """Put an nvidia-smi on PATH that prints one CSV line as `--format=csv,noheader,nounits` would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nvidia-smi.out").write_text(line + "\n")
    script = bin_dir / "nvidia-smi"
    stream = "" if exit_status == 0 else " >&2"
    script.write_text(f'#!/bin/sh\ncat "$(dirname "$0")/nvidia-smi.out"{stream}\nexit {exit_status}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


GTX_970 = "NVIDIA GeForce GTX 970, 5.2, 4096, 3900, 535.183.01"
RTX_4070 = "NVIDIA GeForce RTX 4070, 8.9, 12282, 11000, 570.86.15"


def torch_cuda(archs: tuple[str, ...], cuda: str = "12.8", version: str = "2.9.0+cu128") -> gpu.TorchFacts:
    return gpu.TorchFacts(version=version, cuda=cuda, arch_list=archs, cuda_available=True)


TORCH_CPU = gpu.TorchFacts(version="2.13.0+cpu", cpu_threads=4)
ORT_CPU_ONLY = gpu.OrtFacts(
    version="1.20.1",
    available=("CUDAExecutionProvider", "CPUExecutionProvider"),
    active=("CPUExecutionProvider",),
    load_error="libcudnn.so.9: cannot open shared object file",
)


def ort_active(version: str) -> gpu.OrtFacts:
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    return gpu.OrtFacts(version=version, available=providers, active=providers)


@pytest.fixture
def facts(monkeypatch: pytest.MonkeyPatch):
    """Set the torch and ONNX Runtime facts doctor sees: facts(torch=..., ort=...)."""

    def set_facts(torch: gpu.TorchFacts = TORCH_CPU, ort: gpu.OrtFacts | None = None) -> None:
        monkeypatch.setattr(gpu, "torch_facts", lambda: torch)
        monkeypatch.setattr(gpu, "ort_facts", lambda: ort or ort_active("1.31.1"))
        monkeypatch.setattr(gpu, "uvm_device_present", lambda: True)

    set_facts()
    return set_facts


def checks_of(config: Path) -> dict[str, Check]:
    return {check.name: check for check in doctor.collect(config)}


def run_doctor(config: Path | None) -> tuple[int, str]:
    buffer = io.StringIO()
    code = doctor.run(config, Console(file=buffer, width=400, color_system=None))
    return code, buffer.getvalue()


def assert_no_secret(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text


# --- config and token ---


def test_all_good_exits_zero_and_hides_the_token(tmp_path: Path, bot_api: str, facts) -> None:
    config = write_config(tmp_path, api_base=bot_api)
    install_models(tmp_path / "models")
    code, text = run_doctor(config)
    assert code == 0, text
    checks = checks_of(config)
    assert checks["config"].status == "ok" and str(config) in checks["config"].detail
    assert checks["telegram token"].status == "ok"
    assert "123456:******** is @nstd_test_bot" in checks["telegram token"].detail
    assert checks["models"].status == "ok"
    assert checks["state folder"].status == "ok"
    assert_no_secret(text)
    assert "123456:********" in text


def test_wrong_token_is_an_error_with_a_botfather_fix(tmp_path: Path, bot_api: str, facts) -> None:
    config = write_config(tmp_path, token=WRONG_TOKEN, api_base=bot_api)
    install_models(tmp_path / "models")
    code, text = run_doctor(config)
    assert code == 1
    check = checks_of(config)["telegram token"]
    assert check.status == "error"
    assert "Telegram refused the token (401 Unauthorized)" in check.detail
    assert "@BotFather" in check.fix
    assert f"the token file {tmp_path / 'token'}" in check.fix
    assert_no_secret(text)


def test_unreachable_bot_api_is_a_warning(tmp_path: Path, facts) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, api_base=f"http://127.0.0.1:{port}")
    check = checks_of(config)["telegram token"]
    assert check.status == "warning"
    assert f"cannot reach http://127.0.0.1:{port}" in check.detail
    assert "network" in check.fix
    assert_no_secret(check.detail + check.fix)


def test_an_exception_quoting_the_url_does_not_leak_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    import aiohttp

    def explode(self, url, **kwargs):
        raise aiohttp.InvalidURL(url)  # its text is the whole URL, token included

    monkeypatch.setattr(aiohttp.ClientSession, "get", explode)
    config = write_config(tmp_path)
    _code, text = run_doctor(config)
    check = checks_of(config)["telegram token"]
    assert check.status == "warning"
    assert "/bot123456:********/getMe" in check.detail
    assert_no_secret(text)


def test_no_token_is_a_warning_and_users_do_not_matter(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path, token=None, allowed_users=())
    checks = checks_of(config)
    assert checks["telegram token"].status == "warning"
    assert "@BotFather" in checks["telegram token"].fix
    assert checks["allowed users"].status == "ok"


def test_unreadable_token_file_is_an_error(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path, token=None, extra="")
    config.write_text(config.read_text().replace("[telegram]", '[telegram]\ntoken_file = "missing-token"'))
    check = checks_of(config)["telegram token"]
    assert check.status == "error"
    assert "cannot read" in check.detail


def test_credentials_directory_token_outside_the_service(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path, token=None)
    text = config.read_text().replace(
        "[telegram]", '[telegram]\ntoken_file = "${CREDENTIALS_DIRECTORY}/telegram_token"'
    )
    config.write_text(text)
    check = checks_of(config)["telegram token"]
    assert check.status == "warning"
    assert "CREDENTIALS_DIRECTORY=/etc/nstd nstd doctor" in check.fix


def test_config_error_still_checks_the_gpu_stack(tmp_path: Path, facts) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[nst]\nmax_sidee = 3\n")
    code, _text = run_doctor(config)
    assert code == 1
    checks = checks_of(config)
    assert checks["config"].status == "error"
    assert "nst.max_sidee: unknown key" in checks["config"].detail
    assert {"NVIDIA GPU", "PyTorch", "ONNX Runtime", "systemd service"} <= set(checks)
    assert "models" not in checks


def test_missing_explicit_config_is_an_error(tmp_path: Path, facts) -> None:
    code, text = run_doctor(tmp_path / "nope.toml")
    assert code == 1
    assert "does not exist" in text


def test_a_crashing_check_becomes_an_error_row_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    def crash(settings):
        raise RuntimeError(f"boom with {GOOD_TOKEN} inside")

    monkeypatch.setattr(doctor, "check_models", crash)
    code, text = run_doctor(write_config(tmp_path))
    assert code == 1
    assert "the check itself failed: RuntimeError: boom with 123456:******** inside" in text
    assert "systemd service" in text  # the checks after it still ran
    assert_no_secret(text)


# --- users ---


def test_no_allowed_users_is_a_warning(tmp_path: Path, bot_api: str, facts) -> None:
    config = write_config(tmp_path, api_base=bot_api, allowed_users=())
    check = checks_of(config)["allowed users"]
    assert check.status == "warning"
    assert "nobody can use the bot" in check.detail
    assert "nstd users add ID" in check.fix
    assert not (tmp_path / "state" / "nstd.sqlite3").exists(), "doctor must not create the database"


def test_users_added_in_the_database_count(tmp_path: Path, bot_api: str, facts) -> None:
    from nst_daemon import db

    config = write_config(tmp_path, api_base=bot_api, allowed_users=())
    database = db.connect(tmp_path / "state" / "nstd.sqlite3")
    db.add_user(database, 7)
    database.conn.close()
    check = checks_of(config)["allowed users"]
    assert check.status == "ok"
    assert "1 added with nstd users" in check.detail


# --- models, folders ---


def test_no_models_is_an_error_with_the_pull_command(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path)
    check = checks_of(config)["models"]
    assert check.status == "error"
    assert "no models installed" in check.detail
    assert "`nstd models pull`" in check.fix


def test_missing_styles_are_a_warning_naming_them(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path)
    install_models(tmp_path / "models", ("vgg19", "style_monet", "style_cezanne"))
    check = checks_of(config)["models"]
    assert check.status == "warning"
    assert "style_ukiyoe" in check.detail and "winter2summer_yosemite" in check.detail
    assert (
        "nstd models pull style_ukiyoe style_vangogh summer2winter_yosemite winter2summer_yosemite"
        in check.fix
    )


def test_missing_vgg19_alone_is_a_warning(tmp_path: Path, facts) -> None:
    # The CycleGAN styles work without it, and a CPU-only first run leaves it out on purpose.
    config = write_config(tmp_path)
    install_models(tmp_path / "models", MODEL_NAMES[1:])
    check = checks_of(config)["models"]
    assert check.status == "warning"
    assert "vgg19 is not installed" in check.detail
    assert "nstd models pull vgg19" in check.fix


def test_model_with_a_missing_file_is_an_error(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path)
    install_models(tmp_path / "models")
    (tmp_path / "models" / CATALOG["style_monet"].runnable).unlink()
    check = checks_of(config)["models"]
    assert check.status == "error"
    assert "style_monet: style_monet.onnx is missing" in check.detail
    assert "nstd models pull --force style_monet" in check.fix


def test_missing_catalog_is_an_error(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path, extra='[models]\ncatalog = "nope.toml"\n')
    check = checks_of(config)["models"]
    assert check.status == "error"
    assert "nope.toml not found" in check.detail


def test_unwritable_watch_folder_is_an_error(tmp_path: Path, facts) -> None:
    # Tests run as root here, so permission bits stop nothing; a path through a regular file is
    # unwritable for everyone, root included.
    (tmp_path / "file.txt").write_text("not a folder")
    config = write_config(tmp_path, watch_dir="file.txt/sub")
    code, _ = run_doctor(config)
    assert code == 1
    check = checks_of(config)["watched folder"]
    assert check.status == "error"
    assert "is not a directory" in check.detail
    assert "ReadWritePaths=" in check.fix and "choose another folder" in check.fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through mode 0500; covered by the file-path test")
def test_read_only_folder_is_an_error(tmp_path: Path, facts) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = write_config(tmp_path, watch_dir="locked")
    check = checks_of(config)["watched folder"]
    assert check.status == "error"
    assert "cannot write in" in check.detail


def test_missing_folder_that_can_be_created_is_ok(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path, watch_dir="watch/deeper")
    check = checks_of(config)["watched folder"]
    assert check.status == "ok"
    assert "does not exist yet" in check.detail
    assert not (tmp_path / "watch").exists(), "doctor must not create folders"


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner check applies when doctor runs as root")
def test_folder_owned_by_root_is_a_warning_next_to_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    monkeypatch.setattr(doctor, "SERVICE_USER", "nobody")
    monkeypatch.setattr(doctor, "_under_service_state", lambda path: True)
    (tmp_path / "state").mkdir()
    config = write_config(tmp_path)
    check = checks_of(config)["state folder"]
    assert check.status == "warning"
    assert "not by the service user nobody" in check.detail
    assert "sudo chown -R nobody:nobody" in check.fix


# --- GPU, PyTorch, ONNX Runtime ---


def test_no_gpu_is_a_warning_and_cpu_libraries_are_fine(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path)
    facts(torch=TORCH_CPU, ort=gpu.OrtFacts(version="1.31.1", available=("CPUExecutionProvider",)))
    checks = checks_of(config)
    assert checks["NVIDIA GPU"].status == "warning"
    assert "runs on the CPU" in checks["NVIDIA GPU"].detail
    assert checks["PyTorch"].status == "ok"
    assert "running on the CPU with 4 threads (torch's default" in checks["PyTorch"].detail
    assert checks["ONNX Runtime"].status == "ok" and "CPU provider" in checks["ONNX Runtime"].detail
    assert "free VRAM" not in checks
    facts(torch=gpu.TorchFacts(version="2.13.0+cpu", cpu_threads=1))
    assert "running on the CPU with 1 thread (torch's default" in checks_of(config)["PyTorch"].detail
    configured = write_config(tmp_path, extra="[nst]\ncpu_threads = 1\n")
    assert "running on the CPU with 1 thread (nst.cpu_threads)" in checks_of(configured)["PyTorch"].detail


def test_gtx_970_with_a_cpu_torch_names_cu126(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, GTX_970)
    facts(torch=TORCH_CPU, ort=ort_active("1.20.1"))
    checks = checks_of(write_config(tmp_path))
    assert checks["NVIDIA GPU"].status == "ok"
    assert "GTX 970, compute capability 5.2, 4096 MiB, driver 535.183.01" in checks["NVIDIA GPU"].detail
    torch = checks["PyTorch"]
    assert torch.status == "error"
    assert "this PyTorch is a CPU build" in torch.detail
    assert "NSTD_TORCH_BUILD=cu126 scripts/bootstrap" in torch.fix
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" in torch.fix


def test_gtx_970_with_a_cu128_torch_names_cu126(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, GTX_970)
    facts(torch=torch_cuda(CU128_ARCHS), ort=ort_active("1.20.1"))
    torch = checks_of(write_config(tmp_path))["PyTorch"]
    assert torch.status == "error"
    assert "none for this GPU (compute capability 5.2, sm_52)" in torch.detail
    assert "pip install torch==2.9.0 --index-url https://download.pytorch.org/whl/cu126" in torch.fix


def test_gtx_970_with_cu126_torch_and_ort_1_20_is_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, GTX_970)
    facts(torch=torch_cuda(CU126_ARCHS, cuda="12.6", version="2.13.0+cu126"), ort=ort_active("1.20.1"))
    config = write_config(tmp_path)
    checks = checks_of(config)
    assert checks["PyTorch"].status == "ok"
    assert "runs on compute capability 5.2 (sm_50)" in checks["PyTorch"].detail
    assert checks["ONNX Runtime"].status == "ok"
    assert "CUDA provider active" in checks["ONNX Runtime"].detail
    assert checks["free VRAM"].status == "ok"


def test_gtx_970_with_new_onnxruntime_names_1_20_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, GTX_970)
    facts(torch=torch_cuda(CU126_ARCHS, cuda="12.6"), ort=ort_active("1.22.0"))
    check = checks_of(write_config(tmp_path))["ONNX Runtime"]
    assert check.status == "error"
    assert "1.20.1 is the last release for Maxwell (sm_52)" in check.detail
    assert "pip install onnxruntime-gpu==1.20.1" in check.fix


def test_cuda_provider_that_does_not_load_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, GTX_970)
    facts(torch=torch_cuda(CU126_ARCHS, cuda="12.6"), ort=ORT_CPU_ONLY)
    check = checks_of(write_config(tmp_path))["ONNX Runtime"]
    assert check.status == "error"
    assert "the CUDA provider did not load: libcudnn.so.9: cannot open shared object file" in check.detail
    assert "needs CUDA 12 and cuDNN 9 libraries" in check.fix
    assert "onnxruntime-gpu==1.20.1" in check.fix


def test_cuda_provider_without_kernels_for_the_gpu_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, GTX_970)
    broken = gpu.OrtFacts(
        version="1.20.1",
        available=("CUDAExecutionProvider", "CPUExecutionProvider"),
        active=("CUDAExecutionProvider", "CPUExecutionProvider"),
        run_error="RuntimeError: CUDA error: no kernel image is available for execution on the device",
    )
    facts(torch=torch_cuda(CU126_ARCHS, cuda="12.6"), ort=broken)
    check = checks_of(write_config(tmp_path))["ONNX Runtime"]
    assert check.status == "error"
    assert "no kernel image" in check.detail


def test_rtx_4070_with_cu128_and_working_cuda_provider_is_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bot_api: str, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, RTX_4070)
    facts(torch=torch_cuda(CU128_ARCHS), ort=ort_active("1.31.1"))
    config = write_config(tmp_path, api_base=bot_api)
    install_models(tmp_path / "models")
    code, text = run_doctor(config)
    assert code == 0, text
    checks = checks_of(config)
    assert checks["PyTorch"].status == "ok" and "(sm_80, sm_86)" in checks["PyTorch"].detail
    assert checks["ONNX Runtime"].status == "ok"


def test_rtx_4070_without_a_working_cuda_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, RTX_4070)
    not_loaded = gpu.OrtFacts(
        version="1.31.1",
        available=("CUDAExecutionProvider", "CPUExecutionProvider"),
        active=("CPUExecutionProvider",),
        load_error="libcublasLt.so.13: cannot open shared object file",
    )
    facts(torch=torch_cuda(CU128_ARCHS), ort=not_loaded)
    check = checks_of(write_config(tmp_path))["ONNX Runtime"]
    assert check.status == "error"
    assert "needs CUDA 13 and cuDNN 9 libraries" in check.fix
    assert "1.27 and later CUDA 13" in check.fix


def test_cpu_only_onnxruntime_package_with_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, RTX_4070)
    facts(
        torch=torch_cuda(CU128_ARCHS), ort=gpu.OrtFacts(version="1.31.1", available=("CPUExecutionProvider",))
    )
    check = checks_of(write_config(tmp_path))["ONNX Runtime"]
    assert check.status == "error"
    assert "pip uninstall onnxruntime" in check.fix


def test_low_vram_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA GeForce GTX 970, 5.2, 4096, 700, 535.183.01")
    facts(torch=torch_cuda(CU126_ARCHS, cuda="12.6"), ort=ort_active("1.20.1"))
    check = checks_of(write_config(tmp_path))["free VRAM"]
    assert check.status == "warning"
    assert "700 MiB free of 4096 MiB" in check.detail
    assert "close games" in check.fix and "nst.max_side (now 512)" in check.fix


def test_broken_driver_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts) -> None:
    message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    fake_nvidia_smi(tmp_path, monkeypatch, message, exit_status=9)
    check = checks_of(write_config(tmp_path))["NVIDIA GPU"]
    assert check.status == "error"
    assert "couldn't communicate with the NVIDIA driver" in check.detail
    assert "reboot" in check.fix


def test_driver_without_a_gpu_is_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "No devices were found", exit_status=6)
    check = checks_of(write_config(tmp_path))["NVIDIA GPU"]
    assert check.status == "warning"
    assert "no NVIDIA GPU found" in check.detail


def test_no_gpu_with_both_devices_on_the_cpu_is_information(tmp_path: Path, facts) -> None:
    config = write_config(tmp_path, extra='[nst]\ndevice = "cpu"\n[cyclegan]\ndevice = "cpu"\n')
    check = checks_of(config)["NVIDIA GPU"]
    assert check.status == "ok"
    assert "none needed" in check.detail and "driver" not in check.detail + check.fix
    # With "auto" a missing GPU may be a missing driver: still worth a warning.
    assert checks_of(write_config(tmp_path))["NVIDIA GPU"].status == "warning"


@pytest.mark.parametrize(("preset", "status"), [("fast", "ok"), ("balanced", "ok"), ("best", "warning")])
def test_cpu_only_says_what_each_preset_costs(tmp_path: Path, facts, preset: str, status: str) -> None:
    config = write_config(tmp_path, extra=f'[nst]\npreset = "{preset}"\n')
    check = checks_of(config)["NST on the CPU"]
    assert check.status == status
    for name, (side, seconds) in doctor.CPU_NST_COST_S.items():
        assert f"{name} ({side} px) ~" in check.detail and seconds > 0
    assert f"nst.preset = {preset}" in check.detail
    # Anything slower than fast is steered towards it: as a warning for best, as advice for balanced.
    advice = check.fix if status == "warning" else check.detail
    assert ('nst.preset = "fast"' in advice) == (preset != "fast")


def test_the_cpu_cost_row_is_only_for_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, RTX_4070)
    facts(torch=torch_cuda(CU128_ARCHS), ort=ort_active("1.31.1"))
    assert "NST on the CPU" not in checks_of(write_config(tmp_path))


def test_missing_uvm_node_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, RTX_4070)
    facts(torch=torch_cuda(CU128_ARCHS), ort=ort_active("1.31.1"))
    monkeypatch.setattr(gpu, "uvm_device_present", lambda: False)
    check = checks_of(write_config(tmp_path))["CUDA device nodes"]
    assert check.status == "warning"
    assert "nvidia-modprobe -u -c=0" in check.fix


def test_torch_not_importable_is_an_error(tmp_path: Path, facts) -> None:
    facts(torch=gpu.TorchFacts(version=None, error="ModuleNotFoundError: No module named 'torch'"))
    check = checks_of(write_config(tmp_path))["PyTorch"]
    assert check.status == "error"
    assert "No module named 'torch'" in check.detail


# --- pure helpers ---


@pytest.mark.parametrize(
    ("arch", "cc", "runs"),
    [
        ("sm_50", (5, 2), True),
        ("sm_52", (5, 0), False),
        ("sm_60", (5, 2), False),
        ("sm_75", (8, 9), False),
        ("sm_86", (8, 9), True),
        ("compute_50", (5, 2), True),
        ("compute_90", (8, 9), False),
        ("sm_120", (12, 0), True),
        ("sm_90a", (9, 0), True),
        ("sm_90a", (10, 0), False),
    ],
)
def test_arch_runs_on(arch: str, cc: gpu.CC, runs: bool) -> None:
    assert gpu.arch_runs_on(arch, cc) is runs


def test_parse_nvidia_smi_with_units_and_without_compute_cap() -> None:
    [card] = gpu.parse_nvidia_smi("GeForce GTX 970, 5.2, 4096 MiB, 3000 MiB, 470.82\n")
    assert card.compute_cap == (5, 2) and card.memory_free_mib == 3000
    [old] = gpu.parse_nvidia_smi("GeForce GTX 970, 4096, 3000, 470.82", has_compute_cap=False)
    assert old.compute_cap is None and old.memory_total_mib == 4096 and old.driver_version == "470.82"


# --- the real probes on this machine ---


def test_real_onnxruntime_probe_says_cpu_only() -> None:
    facts = gpu.ort_facts()
    assert facts.version, facts.error
    assert facts.active == ("CPUExecutionProvider",)
    assert facts.run_error is None
    check = doctor.check_onnxruntime(facts, None, has_gpu=False)
    assert check.status == "ok" and "CPU provider" in check.detail


def test_nstd_doctor_subprocess_with_a_gtx_970(tmp_path: Path, bot_api: str) -> None:
    """End to end: the console script, the real CPU-only torch and onnxruntime, a fake nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{GTX_970}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    config = write_config(tmp_path, api_base=bot_api)
    install_models(tmp_path / "models")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSTD_")}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", COLUMNS="400", NO_COLOR="1")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("INVOCATION_ID", None)
    done = subprocess.run(
        [NSTD, "--config", str(config), "doctor"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "this PyTorch is a CPU build" in text
    assert "https://download.pytorch.org/whl/cu126" in text
    assert "onnxruntime-gpu==1.20.1" in text
    assert "123456:******** is @nstd_test_bot" in text
    assert_no_secret(text)
