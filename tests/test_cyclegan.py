"""CycleGAN generators: upstream checkpoint format, ONNX export and the ONNX Runtime engine."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from checkpoints import (
    CYCLEGAN_PARAMETERS,
    cyclegan_shapes,
    make_cyclegan_state_dict,
    random_image,
    save_checkpoint,
)

from nst_daemon.engines import Cancelled, CheckpointError, ConversionError, DeviceError, cyclegan_export
from nst_daemon.engines import cyclegan as cg
from nst_daemon.engines.cores import physical_cores
from nst_daemon.engines.cyclegan import (
    CycleGANEngine,
    ResnetGenerator,
    clean_generator_state_dict,
    export_onnx,
    from_model_output,
    load_generator,
    provider_list,
    to_model_input,
)
from nst_daemon.errors import NstdError


@pytest.fixture(scope="module")
def checkpoint(installed_models_dir: Path) -> Path:
    return installed_models_dir / "generator.pth"  # seed 1, exported by the conftest fixture


@pytest.fixture(scope="module")
def generator(checkpoint: Path) -> ResnetGenerator:
    return load_generator(checkpoint)


@pytest.fixture(scope="module")
def engine(installed_models_dir: Path) -> CycleGANEngine:
    engine = CycleGANEngine(installed_models_dir / "generator.onnx", device="cpu")
    engine.load()
    return engine


def test_architecture_matches_upstream_keys_and_size() -> None:
    net = ResnetGenerator()
    assert sum(p.numel() for p in net.parameters()) == CYCLEGAN_PARAMETERS == 11_378_179
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == cyclegan_shapes()
    assert "model.10.conv_block.1.weight" in net.state_dict() and "model.26.bias" in net.state_dict()


def test_legacy_norm_keys_are_dropped() -> None:
    legacy = make_cyclegan_state_dict(seed=3, legacy_norm_keys=True)
    assert "model.2.running_mean" in legacy and "model.12.conv_block.6.num_batches_tracked" in legacy
    plain = make_cyclegan_state_dict(seed=3)
    assert clean_generator_state_dict(legacy).keys() == plain.keys()
    sample = torch.rand(1, 3, 32, 36) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(load_generator(legacy)(sample), load_generator(plain)(sample))


def test_legacy_checkpoint_file_loads(tmp_path: Path) -> None:
    path = save_checkpoint(make_cyclegan_state_dict(seed=4, legacy_norm_keys=True), tmp_path / "old.pth")
    net = load_generator(path)
    assert not net.training and all(not p.requires_grad for p in net.parameters())


def test_wrong_shape_is_refused_naming_the_key() -> None:
    broken = make_cyclegan_state_dict(seed=0)
    broken["model.13.conv_block.5.weight"] = torch.zeros(128, 256, 3, 3)
    with pytest.raises(CheckpointError, match=r"model\.13\.conv_block\.5\.weight.*\(128, 256, 3, 3\)"):
        load_generator(broken)


def test_missing_and_unexpected_keys_are_named() -> None:
    missing = make_cyclegan_state_dict(seed=0)
    del missing["model.22.bias"]
    with pytest.raises(CheckpointError, match=r"model\.22\.bias"):
        clean_generator_state_dict(missing)
    extra = make_cyclegan_state_dict(seed=0)
    extra["model.27.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"model\.27\.weight"):
        clean_generator_state_dict(extra)


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"junk\.pth"):
        load_generator(junk)


def test_export_has_dynamic_height_and_width(installed_models_dir: Path) -> None:
    model = onnx.load(str(installed_models_dir / "generator.onnx"), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param and not dims[1].dim_param


@pytest.mark.parametrize("size", [(250, 333), (67, 45), (9, 12), (5, 7)])
def test_ort_matches_torch_through_pad_and_crop(
    engine: CycleGANEngine,
    generator: ResnetGenerator,
    size: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = random_image(size, seed=sum(size))
    seen: dict[str, np.ndarray] = {}
    run_array = engine.run_array

    def spy(batch: np.ndarray) -> np.ndarray:
        seen["batch"], seen["output"] = batch, run_array(batch)
        return seen["output"]

    monkeypatch.setattr(engine, "run_array", spy)
    result = engine.stylize(image)
    assert result.size == image.size and result.mode == "RGB"

    batch, crop = to_model_input(image)
    assert np.array_equal(seen["batch"], batch) and crop == (size[1], size[0])
    assert batch.shape[2] % 4 == 0 and batch.shape[3] % 4 == 0
    with torch.inference_mode():
        expected = generator(torch.from_numpy(batch)).numpy()
    assert np.abs(seen["output"] - expected).max() < 1e-4
    reference = np.asarray(from_model_output(expected, crop), dtype=np.int16)
    assert np.abs(np.asarray(result, dtype=np.int16) - reference).max() <= 1


def test_too_small_is_a_clear_error(engine: CycleGANEngine) -> None:
    with pytest.raises(NstdError, match="too small"):
        engine.stylize(random_image((4, 50)))


def test_max_side_is_applied_before_the_model(engine: CycleGANEngine) -> None:
    result = engine.stylize(random_image((120, 90), seed=5), max_side=64)
    assert result.size == (64, 48)


def test_output_uses_the_whole_range(engine: CycleGANEngine) -> None:
    values = np.asarray(engine.stylize(random_image((64, 64), seed=6)))
    assert values.min() < 40 and values.max() > 215  # a healthy random generator, not a grey square


def test_provider_is_reported(engine: CycleGANEngine) -> None:
    assert engine.loaded
    assert engine.provider == "CPUExecutionProvider"
    assert engine.device_name == "cpu"


def test_cpu_threads_set_onnx_runtimes_intra_op_pool(
    engine: CycleGANEngine, installed_models_dir: Path
) -> None:
    assert engine._session.get_session_options().intra_op_num_threads == physical_cores()  # 0: the default
    one = CycleGANEngine(installed_models_dir / "generator.onnx", device="cpu", cpu_threads=1)
    one.load()
    assert one._session.get_session_options().intra_op_num_threads == 1


def test_provider_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from nst_daemon.engines import ort_session as device  # where the driver check lives now

    assert provider_list("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(device, "nvidia_driver_present", lambda: False)
    assert provider_list("auto") == ["CPUExecutionProvider"]  # no driver: CUDA is not even tried
    monkeypatch.setattr(device, "nvidia_driver_present", lambda: True)
    auto = provider_list("auto", device_id=1)
    assert auto[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        name, options = auto[0]
        assert name == "CUDAExecutionProvider"
        assert options == {
            "device_id": 1,
            "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kSameAsRequested",
        }
    with pytest.raises(DeviceError):
        provider_list("tpu")


def test_auto_falls_back_to_cpu_and_cuda_is_checked(installed_models_dir: Path) -> None:
    onnx_path = installed_models_dir / "generator.onnx"
    auto = CycleGANEngine(onnx_path, device="auto")
    auto.load()
    provider = auto.provider
    assert provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    auto.unload()
    assert not auto.loaded and auto.provider == ""
    if provider != "CUDAExecutionProvider":
        with pytest.raises(DeviceError, match="cuda"):
            CycleGANEngine(onnx_path, device="cuda").load()


def test_cancel(engine: CycleGANEngine) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        engine.stylize(random_image((16, 16)), cancel=cancel)


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        CycleGANEngine(tmp_path / "absent.onnx").load()


def test_failed_check_refuses_and_leaves_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cyclegan_export, "check_onnx", lambda generator, path: 3e-3)
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(ConversionError, match="differs from PyTorch"):
        export_onnx(checkpoint, target)
    assert list(target.parent.iterdir()) == []


def test_export_refuses_a_wrong_checkpoint(tmp_path: Path) -> None:
    broken = make_cyclegan_state_dict(seed=0)
    broken["model.1.weight"] = torch.zeros(64, 3, 3, 3)
    path = save_checkpoint(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"model\.1\.weight"):
        export_onnx(path, tmp_path / "broken.onnx")
    assert not (tmp_path / "broken.onnx").exists()


def test_physical_cores() -> None:
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_estimated_progress_stays_below_one() -> None:
    """In step with the estimate up to 0.9, then creeping: never 1, never backwards, whatever the error."""
    assert cg.estimated_fraction(0.0, 10.0) == 0.0
    assert cg.estimated_fraction(5.0, 10.0) == pytest.approx(0.45)
    assert cg.estimated_fraction(10.0, 10.0) == pytest.approx(0.9)
    fractions = [cg.estimated_fraction(seconds / 10, 10.0) for seconds in range(0, 10_000)]
    assert fractions == sorted(fractions) and max(fractions) <= 0.99
    assert cg.estimated_fraction(3.0, 0.0) == 0.0  # no estimate yet: no guess


def test_progress_is_reported_while_the_onnx_runtime_call_runs(
    installed_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: 15-60 s of silence during a CycleGAN job. The run below cannot return before the engine
    has reported progress from inside it, so the test does not depend on how fast this machine is."""
    monkeypatch.setattr(cg, "PROGRESS_TICK_S", 0.01)
    engine = CycleGANEngine(installed_models_dir / "generator.onnx", device="cpu")
    engine.load()
    assert engine.estimate_s(64, 64) > 0, "the warm-up run at load gives a first estimate"
    assert engine.estimate_s(128, 128) == pytest.approx(4 * engine.estimate_s(64, 64))
    reported_during_run = threading.Event()
    fractions: list[float] = []

    class WaitsForProgress:
        def __init__(self, session: object) -> None:
            self.session = session

        def run(self, *args: object) -> object:
            assert reported_during_run.wait(30), "no progress while the run went on"
            return self.session.run(*args)

    engine._session = WaitsForProgress(engine._session)  # type: ignore[assignment]

    def progress(fraction: float) -> None:
        fractions.append(fraction)
        reported_during_run.set()

    result = engine.stylize(random_image((64, 48), seed=3), progress=progress)
    assert result.size == (64, 48)
    assert fractions and all(0 < fraction < 1 for fraction in fractions)
    assert fractions == sorted(fractions)
