"""Multi-style Gatys NST on random-init VGG19 weights: the optimization mechanics, not the looks."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import random_image
from PIL import Image

from nst_daemon.engines import Cancelled, DeviceError
from nst_daemon.engines.device import resolve_torch_device
from nst_daemon.engines.nst import (
    PRESETS,
    REFERENCE_RECIPES,
    NSTEngine,
    NSTOptions,
    NSTProgress,
    gram_matrix,
    retry_smaller_on_oom,
    scale_sizes,
    style_mix,
)
from nst_daemon.engines.nst_schedule import converged
from nst_daemon.errors import NstdError

# Shallow layers and tiny images keep every run well under a second of CPU per few steps.
TINY = NSTOptions(
    max_side=40,
    style_layers=("relu1_1", "relu2_1", "relu3_1"),
    content_layers=("relu3_1",),
    scales=(1.0,),
    max_steps=12,
    tolerance=0.0,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny images: OpenMP's fork-join costs more than a second thread gains (10x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(installed_models_dir: Path) -> NSTEngine:
    engine = NSTEngine(installed_models_dir / "vgg19-dcbb9e9d.pth", device="cpu")
    engine.load()
    return engine


@pytest.fixture(scope="module")
def content() -> Image.Image:
    return random_image((48, 36), seed=1)


@pytest.fixture(scope="module")
def styles() -> list[Image.Image]:
    return [random_image((50, 50), seed=2), random_image((30, 44), seed=3)]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_loss_falls_and_result_has_the_fitted_size(engine: NSTEngine, content, styles) -> None:
    result = engine.stylize(content, styles[:1], options=TINY)
    assert result.image.mode == "RGB" and result.image.size == (40, 30)
    assert result.steps == 12 == len(result.losses) == len(result.history)
    assert all(np.isfinite(result.losses))
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.device.startswith("cpu") and result.oom_retries == 0 and result.seconds > 0
    assert result.scales == [(40, 30)]
    record = result.history[-1]
    assert record.total == pytest.approx(record.content + record.style + record.tv, rel=1e-5)


def test_adam_also_lowers_the_loss(engine: NSTEngine, content, styles) -> None:
    result = engine.stylize(content, styles[:1], options=replace(TINY, optimizer="adam", max_steps=10))
    assert result.losses[-1] < result.losses[0]


def test_early_stopping_ends_before_the_cap(engine: NSTEngine, content, styles) -> None:
    options = replace(TINY, max_steps=200, tolerance=0.1, window=3)
    result = engine.stylize(content, styles[:1], options=options)
    assert result.steps < 200
    assert result.stopped_early == [True]


def falling(start: float, rate: float, steps: int) -> list[float]:
    """A loss that falls by `rate` (relative) per step."""
    return [start * (1 - rate) ** n for n in range(steps)]


def test_a_scale_never_stops_while_the_best_loss_still_falls_fast() -> None:
    # 2 % per step is about 18 % over a window of 10: far above a 1 % tolerance at every prefix.
    fast = falling(100.0, 0.02, 60)
    assert not any(converged(fast[:n], window=10, tolerance=0.01) for n in range(1, 61))
    # One uphill step (an L-BFGS step off the [0, 1] box) while the loss still falls fast: the best loss
    # decides, so it does not end the scale. The last-loss rule this replaced stopped here.
    spiked = [*fast[:30], 500.0]
    assert not converged(spiked, window=10, tolerance=0.01)
    # Slow: 0.05 % per step is 0.5 % over the window, under 1 %; flat or chaotic without a new best: stop.
    slow = falling(100.0, 0.0005, 30)
    assert converged(slow, window=10, tolerance=0.01)
    assert converged([*fast[:20], *([fast[19] * 3] * 10)], window=10, tolerance=0.01)
    # Not before a whole window has been seen, and never with tolerance 0.
    assert not converged(slow[:10], window=10, tolerance=0.01)
    assert not converged(slow, window=10, tolerance=0.0)


@pytest.mark.parametrize("preset", ["fast", "balanced", "best"])
def test_a_presets_stop_rule_in_a_real_run_ends_only_where_improvement_fell_under_its_tolerance(
    engine: NSTEngine, content, styles, preset: str
) -> None:
    rule = PRESETS[preset]
    options = replace(TINY, max_steps=400, tolerance=rule.tolerance, window=rule.window)
    result = engine.stylize(content, styles[:1], options=options)
    losses = result.losses
    assert result.stopped_early == [True] and len(losses) < 400
    # Every earlier step still improved by at least the tolerance; the last one did not.
    assert not any(converged(losses[:n], options.window, options.tolerance) for n in range(1, len(losses)))
    assert converged(losses, options.window, options.tolerance)


def test_a_blow_up_restarts_from_the_best_image(engine: NSTEngine, content, styles) -> None:
    # lr 50 makes L-BFGS overshoot; after each loss above 2x the best, the next step starts from the best.
    options = replace(TINY, lr=50.0, max_steps=20, restart_above=2.0)
    result = engine.stylize(content, styles[:1], options=options)
    blown = [n for n, loss in enumerate(result.losses[:-1]) if loss > 2 * min(result.losses[: n + 1])]
    assert blown, "lr 50 should overshoot at least once"
    for n in blown:
        # The step after a restart evaluates the best image so far again: its loss equals the best loss.
        assert result.losses[n + 1] == pytest.approx(min(result.losses[: n + 1]), rel=1e-5)


def test_a_stall_restarts_from_the_best_image(engine: NSTEngine, content, styles) -> None:
    # lr 50 makes L-BFGS wander uphill; after 3 steps without a new best, the next step starts from the best.
    options = replace(TINY, lr=50.0, max_steps=30, restart_after=3)
    losses = engine.stylize(content, styles[:1], options=options).losses
    restarts = 0
    since = 0  # steps since the last new best or restart
    for n in range(1, len(losses)):
        best = min(losses[:n])
        if since >= 3:  # a restart happened before step n: it evaluates the best image again
            assert losses[n] == pytest.approx(best, rel=1e-5)
            restarts, since = restarts + 1, 0
        elif losses[n] < best:
            since = 0
        else:
            since += 1
    assert restarts, "lr 50 should stall at least once"


def test_coarse_to_fine_runs_every_scale(engine: NSTEngine, content, styles) -> None:
    options = replace(TINY, max_side=48, scales=(0.5, 1.0), max_steps=(6, 4), min_side=16)
    seen: list[NSTProgress] = []
    result = engine.stylize(content, styles[:1], options=options, progress=seen.append)
    assert result.scales == [(24, 18), (48, 36)]
    assert result.steps == 10
    assert {p.scale for p in seen} == {0, 1}
    assert result.image.size == (48, 36)


def test_scale_sizes_skip_tiny_coarse_scales() -> None:
    options = replace(TINY, scales=(0.25, 0.5, 1.0), max_steps=5, min_side=64)
    assert scale_sizes((256, 128), options) == [(64, 32), (128, 64), (256, 128)]
    assert scale_sizes((100, 50), options) == [(100, 50)]


def test_thin_images(engine: NSTEngine, content, styles) -> None:
    strip = random_image((400, 6), seed=9)
    result = engine.stylize(content, [strip], options=replace(TINY, max_steps=2))  # upscaled to fit VGG
    assert result.steps == 2
    with pytest.raises(NstdError, match="too narrow"):
        engine.stylize(random_image((200, 3), seed=9), styles[:1], options=replace(TINY, max_side=200))
    assert scale_sizes((512, 40), NSTOptions(scales=(0.25, 1.0), max_steps=2, min_side=16)) == [(512, 40)]


def test_style_weights_normalize() -> None:
    assert style_mix(None, 3, normalize=True) == pytest.approx([1 / 3] * 3)
    assert style_mix([1, 3], 2, normalize=True) == pytest.approx([0.25, 0.75])
    assert style_mix([2, 2], 2, normalize=False) == [2.0, 2.0]
    with pytest.raises(NstdError):
        style_mix([1.0], 2, normalize=True)
    with pytest.raises(NstdError):
        style_mix([0, 0], 2, normalize=True)


def test_normalized_weights_only_matter_relatively(engine: NSTEngine, content, styles) -> None:
    options = replace(TINY, max_steps=5)
    equal = engine.stylize(content, styles, options=options)
    doubled = engine.stylize(content, styles, weights=[2.0, 2.0], options=options)
    assert np.array_equal(pixels(equal.image), pixels(doubled.image))
    merged = engine.stylize(
        content, styles, weights=[2.0, 2.0], options=replace(options, normalize_style_weights=False)
    )
    assert merged.losses[0] == pytest.approx(4 * equal.losses[0], rel=1e-4)  # no content loss at step 1


def test_two_styles_differ_from_either_alone(engine: NSTEngine, content, styles) -> None:
    options = replace(TINY, max_steps=6)
    both = pixels(engine.stylize(content, styles, options=options).image)
    first = pixels(engine.stylize(content, styles[:1], options=options).image)
    second = pixels(engine.stylize(content, styles[1:], options=options).image)
    assert np.abs(both - first).mean() > 0.5
    assert np.abs(both - second).mean() > 0.5


def test_preserve_colors_keeps_the_content_chroma(engine: NSTEngine, content, styles) -> None:
    options = replace(TINY, max_steps=8)
    fitted = content.resize((40, 30), Image.Resampling.LANCZOS)
    plain = engine.stylize(content, styles[:1], options=options).image
    kept = engine.stylize(content, styles[:1], options=replace(options, preserve_colors=True)).image

    def chroma(image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("YCbCr"), dtype=np.float64)[..., 1:]

    def luma(image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("YCbCr"), dtype=np.float64)[..., 0]

    assert np.abs(chroma(kept) - chroma(fitted)).mean() < 1.5
    assert np.abs(chroma(plain) - chroma(fitted)).mean() > 2 * np.abs(chroma(kept) - chroma(fitted)).mean()
    assert np.abs(luma(kept) - luma(plain)).mean() < 2.0


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_cancel_stops_within_one_step(engine: NSTEngine, content, styles, optimizer: str) -> None:
    cancel = threading.Event()
    steps: list[int] = []
    k = 3

    def progress(update: NSTProgress) -> None:
        steps.append(update.step)
        if update.step == k:
            cancel.set()

    options = replace(TINY, max_steps=50, optimizer=optimizer)
    with pytest.raises(Cancelled) as info:
        engine.stylize(content, styles[:1], options=options, progress=progress, cancel=cancel)
    assert max(steps) <= k + 1
    assert info.value.steps <= k + 1  # type: ignore[attr-defined]


def test_cancel_before_start(engine: NSTEngine, content, styles) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        engine.stylize(content, styles[:1], options=TINY, cancel=cancel)


def test_progress_rises_monotonically_to_exactly_one(engine: NSTEngine, content, styles) -> None:
    options = replace(
        TINY, max_side=48, scales=(0.5, 1.0), max_steps=(5, 5), min_side=16, tolerance=0.2, window=2
    )
    seen: list[NSTProgress] = []
    result = engine.stylize(content, styles, options=options, progress=seen.append)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0 and fractions.count(1.0) == 1
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert seen[-1].step == result.steps
    assert [p.step for p in seen[:-1]] == list(range(1, result.steps + 1))


def test_seeded_runs_are_reproducible(engine: NSTEngine, content, styles) -> None:
    options = replace(TINY, max_steps=6, seed=7)
    first = engine.stylize(content, styles, options=options)
    second = engine.stylize(content, styles, options=options)
    assert first.losses == second.losses
    assert np.array_equal(pixels(first.image), pixels(second.image))


def test_total_variation_term_is_reported(engine: NSTEngine, content, styles) -> None:
    result = engine.stylize(content, styles[:1], options=replace(TINY, max_steps=3, tv_weight=10.0))
    assert all(record.tv > 0 for record in result.history)


def test_loss_callback_sees_every_step(engine: NSTEngine, content, styles) -> None:
    records = []
    result = engine.stylize(
        content, styles[:1], options=replace(TINY, max_steps=4, loss_callback=records.append)
    )
    assert [r.total for r in records] == result.losses


def test_reference_recipes_run(engine: NSTEngine, content, styles) -> None:
    bot = REFERENCE_RECIPES["bot"]
    assert bot.style_layers == ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1")
    assert bot.content_layers == ("conv3_1",) and bot.content_weight == 1e-5 and bot.style_weight == 1e4
    assert not bot.normalize_style_weights and bot.optimizer == "adam" and bot.learning_rate == 0.07
    result = engine.stylize(content, styles, options=replace(bot, max_side=32, max_steps=4))
    assert result.losses[-1] < result.losses[0]
    tutorial = REFERENCE_RECIPES["tutorial"]
    result = engine.stylize(content, styles[:1], options=replace(tutorial, max_side=32, max_steps=4))
    assert all(np.isfinite(result.losses))


def test_presets_and_overrides() -> None:
    assert set(PRESETS) == {"fast", "balanced", "best"}
    fast = NSTOptions.from_preset("fast", max_side=96, optimizer=None)
    assert fast.max_side == 96 and fast.optimizer == "lbfgs" and fast.preset == "fast"
    for preset in PRESETS.values():
        assert len(preset.steps_per_scale()) == len(preset.scales) and preset.scales[-1] == 1.0
    assert sum(PRESETS["fast"].steps_per_scale()) < sum(PRESETS["balanced"].steps_per_scale())
    # best waits longer for a new best than balanced, and balanced longer than fast
    assert [PRESETS[name].tolerance for name in ("fast", "balanced", "best")] == sorted(
        (PRESETS[name].tolerance for name in PRESETS), reverse=True
    )
    # The tutorial recipe keeps torch's L-BFGS lr; the presets' lower default does not leak into it.
    assert REFERENCE_RECIPES["tutorial"].learning_rate == 1.0
    with pytest.raises(NstdError, match="unknown NST preset"):
        NSTOptions.from_preset("ultra")
    with pytest.raises(ValueError, match="pool1"):
        NSTOptions(style_layers=("pool1",))
    with pytest.raises(ValueError, match="max_steps"):
        NSTOptions(scales=(0.5, 1.0), max_steps=(10, 10, 10))


def test_bad_inputs(engine: NSTEngine, content, styles) -> None:
    with pytest.raises(NstdError, match="at least one style image"):
        engine.stylize(content, [], options=TINY)
    with pytest.raises(NstdError, match="style weights"):
        engine.stylize(content, styles, weights=[1.0], options=TINY)


def test_gram_matrix_normalization() -> None:
    features = torch.ones(1, 4, 3, 5)
    assert torch.allclose(gram_matrix(features), torch.full((1, 4, 4), 15 / 60))


def test_mean_covariance_matches_a_straightforward_definition() -> None:
    """The mean/covariance style statistic against numpy, written out from its definition."""
    from nst_daemon.engines.nst_loss import mean_covariance

    features = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = mean_covariance(features).numpy()
    for item, array in enumerate(features.numpy()):
        flat = array.reshape(3, 20)
        mean = flat.mean(axis=1)
        covariance = np.cov(flat, bias=True) / 3  # population covariance, then the Gram's 1/C
        assert np.allclose(got[item, :, 0], mean / np.sqrt(3))
        assert np.allclose(got[item, :, 1:], covariance)
    # The Gram matrix is the covariance plus the means' outer product, both scaled alike.
    gram = gram_matrix(features).numpy()
    means = got[:, :, :1]
    assert np.allclose(gram, got[:, :, 1:] + means @ means.transpose(0, 2, 1))


def test_the_mean_covariance_style_loss_runs_and_falls(engine: NSTEngine, content, styles) -> None:
    options = replace(TINY, style_statistic="mean_cov")
    result = engine.stylize(content, styles, options=options)
    assert result.losses[-1] < 0.5 * result.losses[0]
    gram = engine.stylize(content, styles, options=TINY)
    assert result.losses != gram.losses  # another objective, not the Gram one under another name
    with pytest.raises(ValueError, match="style_statistic"):
        NSTOptions(style_statistic="w2")  # type: ignore[arg-type]


def test_oom_retries_shrink_down_to_the_floor() -> None:
    calls: list[int] = []

    def attempt(side: int) -> str:
        calls.append(side)
        if side > 300:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return f"ran at {side}"

    freed: list[bool] = []
    assert retry_smaller_on_oom(attempt, 512, floor=128, free=lambda: freed.append(True)) == ("ran at 288", 2)
    assert calls == [512, 384, 288] and len(freed) == 2
    with pytest.raises(NstdError, match="out of GPU memory"):
        retry_smaller_on_oom(attempt, 512, floor=400, free=lambda: None)


def test_device_selection() -> None:
    assert resolve_torch_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_torch_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="cuda"):
            resolve_torch_device("cuda")
    with pytest.raises(DeviceError):
        resolve_torch_device("tpu")


@pytest.mark.parametrize(("cpu_threads", "expected"), [(1, "cpu (1 thread)"), (0, "cpu (3 threads)")])
def test_cpu_threads_are_set_in_the_thread_that_runs_the_job(
    installed_models_dir: Path, content, styles, cpu_threads: int, expected: str
) -> None:
    """OpenMP keeps the count per thread, so the engine sets it where the job runs; 0 keeps torch's."""
    engine = NSTEngine(installed_models_dir / "vgg19-dcbb9e9d.pth", device="cpu", cpu_threads=cpu_threads)
    seen: dict[str, object] = {}

    def job() -> None:
        torch.set_num_threads(3)  # what a new thread might start with
        result = engine.stylize(content, styles[:1], options=replace(TINY, max_steps=1))
        seen.update(device=result.device, threads=torch.get_num_threads())

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert seen == {"device": expected, "threads": cpu_threads or 3}


def test_unload_and_reload(installed_models_dir: Path, content, styles) -> None:
    engine = NSTEngine(installed_models_dir / "vgg19-dcbb9e9d.pth", device="cpu")
    assert not engine.loaded
    result = engine.stylize(content, styles[:1], options=replace(TINY, max_steps=2))  # loads on demand
    assert engine.loaded and result.steps == 2
    engine.unload()
    assert not engine.loaded
