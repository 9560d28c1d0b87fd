"""NST speed, side by side: the original bot's recipe (a), PyTorch's tutorial recipe (b), and nstd's engine
set to each of their loss definitions (c), in one process, on the same images, weights and device.

    .venv/bin/python scripts/bench_nst.py                  # CPU default: 128 px, about 4 min
    .venv/bin/python scripts/bench_nst.py --sizes 256      # the issue's CPU size: about 16 min on 2 cores
    .venv/bin/python scripts/bench_nst.py --sizes 256,512  # the GPU default
    .venv/bin/python scripts/bench_nst.py --levers         # also the per-lever measurements
    .venv/bin/python scripts/bench_nst.py --presets fast,best  # stock rows for fast and best too

(a) and (b) are standalone re-implementations with their own network and loop, written from the original
bot's recipe and the tutorial's `run_style_transfer` (docs/benchmarks.md); they share nothing with nstd's
engine except the weights and the images. "Size N" means a square N x N content and style image: the bot
resized the shorter side to 300 and the tutorial used a square `imsize`, so a square of side N is both
recipes at "shorter side N", and no contender has to resize or crop the style image (cover-crop, squash and
scale-to-area are all the identity), which keeps the three loss functions identical.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bench_common as bc
import numpy as np
from PIL import Image, ImageDraw

# The bot's and the tutorial's layers, by torchvision's module index in vgg19().features (conv outputs).
CONV_INDEX = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10}
_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LossDefinition:
    """One reference's loss: conv-output layers, Gram / (C·H·W), MSE, weights per style image."""

    name: str
    style_layers: tuple[str, ...]
    content_layers: tuple[str, ...]
    style_weight: float
    content_weight: float


BOT_LOSS = LossDefinition(
    "bot", ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"), ("conv3_1",), 1e4, 1e-5
)
TUTORIAL_LOSS = LossDefinition(
    "tutorial", ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"), ("conv2_2",), 1e6, 1.0
)

# nstd's optimization, applied to each reference's loss definition (contender c), in two settings:
# - "stock": a preset's optimization exactly as users get it (`preset_levers`, read from the engine's
#   PRESETS, so the benchmark follows the preset); `balanced` is the default and the one the targets use;
# - "tuned": what the first benchmark found best before the presets used it (docs/benchmarks.md): L-BFGS lr
#   0.5 and a fixed 100 steps at half size, then full size until the reference's final loss is reached (or
#   the reference's own wall time has passed).
# The fields of NSTOptions that say how the loss is optimized; everything else is the reference's loss.
OPTIMIZATION_FIELDS = (
    "optimizer",
    "lr",
    "lbfgs_history",
    "restart_above",
    "restart_after",
    "scales",
    "max_steps",
    "tolerance",
    "window",
    "min_side",
)
NSTD_TUNED: dict[str, Any] = {
    "optimizer": "lbfgs",
    "lr": 0.5,
    "scales": (0.5, 1.0),
    "max_steps": (100, 100_000),
    "tolerance": 0.0,
    "restart_above": None,
    "restart_after": None,
}


def preset_levers(preset: str) -> dict[str, Any]:
    """The optimization settings of an nstd preset, as the daemon runs it."""
    from nst_daemon.engines.nst import PRESETS

    return {name: getattr(PRESETS[preset], name) for name in OPTIMIZATION_FIELDS}


# --- synthetic images ---------------------------------------------------------------------------------------


def content_image(size: int, seed: int = 0) -> Image.Image:
    """A 'photo': sky and ground gradients, a sun, a house and trees, mild grain; deterministic per seed."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, size)[:, None, None]
    sky = np.array([0.35, 0.55, 0.9]) * (1 - y) + np.array([0.85, 0.9, 1.0]) * y
    ground = np.array([0.3, 0.55, 0.2]) * (1 - y) + np.array([0.15, 0.3, 0.1]) * y
    horizon = int(size * 0.62)
    pixels = np.where(np.arange(size)[:, None, None] < horizon, sky, ground) * np.ones((1, size, 1))
    image = Image.fromarray((pixels * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    s = size / 100
    draw.ellipse([72 * s, 8 * s, 88 * s, 24 * s], fill=(250, 220, 90))
    draw.rectangle([20 * s, 45 * s, 48 * s, 70 * s], fill=(180, 70, 50))
    draw.polygon([(17 * s, 46 * s), (34 * s, 30 * s), (51 * s, 46 * s)], fill=(110, 40, 30))
    draw.rectangle([30 * s, 56 * s, 37 * s, 70 * s], fill=(70, 45, 30))
    for x in (60, 70, 82):
        draw.rectangle([(x + 2) * s, 52 * s, (x + 4) * s, 66 * s], fill=(90, 60, 30))
        draw.ellipse([(x - 3) * s, 38 * s, (x + 9) * s, 56 * s], fill=(40, 110, 40))
    grain = rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8), "RGB")


def style_image(size: int, seed: int = 1) -> Image.Image:
    """A 'painting': swirling saturated bands with random brush dabs; a Gram very unlike the content's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = np.arctan2(yy - 0.5, xx - 0.5)
    radius = np.hypot(yy - 0.5, xx - 0.5)
    phase = 14 * radius + 3 * angle
    pixels = np.stack(
        [0.5 + 0.5 * np.sin(phase), 0.5 + 0.5 * np.sin(phase + 2.1), 0.5 + 0.5 * np.sin(1.7 * phase + 4.2)],
        axis=-1,
    )
    image = Image.fromarray((pixels * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = rng.uniform(0, size, 2)
        length = size * rng.uniform(0.03, 0.1)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([x, y, x + length, y + length * rng.uniform(-1, 1)], fill=color, width=max(1, size // 60))
    return image


# --- the references' own network and loss (shared by (a), (b) and the final-loss evaluator) ----------------


def reference_network(state_dict: dict[str, Any], deepest: int) -> Any:
    """torchvision's vgg19().features layout with the checkpoint's weights, cut after module `deepest`,
    ReLUs not in place (the tutorial's fix, so conv outputs survive), ImageNet normalization in front."""
    import torch
    from torch import nn

    modules: list[nn.Module] = []
    channels = 3
    for item in _VGG_CFG:
        if item == "M":
            modules.append(nn.MaxPool2d(2, 2))
            continue
        conv = nn.Conv2d(channels, int(item), 3, padding=1)
        index = len(modules)
        with torch.no_grad():
            conv.weight.copy_(state_dict[f"features.{index}.weight"])
            conv.bias.copy_(state_dict[f"features.{index}.bias"])
        modules += [conv, nn.ReLU(inplace=False)]
        channels = int(item)
    net = nn.Sequential(*modules[: deepest + 1])
    net.requires_grad_(False)
    return net.eval()


class ReferenceLoss:
    """The loss of one reference on fixed content and style images: targets computed once, detached."""

    def __init__(
        self, definition: LossDefinition, state_dict: dict[str, Any], content: Any, styles: list[Any]
    ):
        import torch

        self.definition = definition
        self.capture = {CONV_INDEX[n] for n in (*definition.style_layers, *definition.content_layers)}
        self.net = reference_network(state_dict, max(self.capture)).to(content.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=content.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=content.device).view(1, 3, 1, 1)
        with torch.no_grad():
            features = self.features(content)
            self.content_targets = [features[CONV_INDEX[n]].detach() for n in definition.content_layers]
            self.style_targets = []
            for style in styles:
                features = self.features(style)
                self.style_targets.append(
                    [gram(features[CONV_INDEX[n]]).detach() for n in definition.style_layers]
                )

    def features(self, image: Any) -> dict[int, Any]:
        x = (image - self.mean) / self.std
        out = {}
        for index, module in enumerate(self.net):
            x = module(x)
            if index in self.capture:
                out[index] = x
        return out

    def terms(self, image: Any) -> tuple[Any, Any]:
        """(weighted content loss, weighted style loss) as tensors; every style adds its own term."""
        import torch.nn.functional as F

        d = self.definition
        features = self.features(image)
        content = sum(
            F.mse_loss(features[CONV_INDEX[n]], t)
            for n, t in zip(d.content_layers, self.content_targets, strict=True)
        )
        style = sum(
            F.mse_loss(gram(features[CONV_INDEX[n]]), t)
            for targets in self.style_targets
            for n, t in zip(d.style_layers, targets, strict=True)
        )
        return d.content_weight * content, d.style_weight * style

    def value(self, image: Any) -> float:
        import torch

        with torch.no_grad():
            content, style = self.terms(image)
            return float(content + style)


def gram(features: Any) -> Any:
    # The tutorial's gram_matrix: (a·b, c·d) features, F·Fᵀ divided by a·b·c·d.
    a, b, c, d = features.size()
    flat = features.view(a * b, c * d)
    return (flat @ flat.t()).div(a * b * c * d)


@dataclass
class Trace:
    """Loss after every evaluation, with its time since the start of the run."""

    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def time_to_reach(self, threshold: float) -> float | None:
        for at, loss in zip(self.times, self.losses, strict=True):
            if loss <= threshold:
                return at
        return None


def run_bot(
    state_dict: dict[str, Any], content: Any, styles: list[Any], max_epochs: int = 50
) -> dict[str, Any]:
    """(a) The original bot: Adam lr 0.07 on the image from the content, clamped after each step, epochs of 30
    steps, stop after 5 epochs without a new best loss, at most 50 epochs. Returns the last image."""
    import torch

    started = time.perf_counter()
    loss_fn = ReferenceLoss(BOT_LOSS, state_dict, content, styles)
    image = content.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.07)
    trace = Trace()
    best, stale, epochs = math.inf, 0, 0
    for _ in range(max_epochs):
        epochs += 1
        improved = False
        for _ in range(30):
            optimizer.zero_grad()
            content_loss, style_loss = loss_fn.terms(image)
            loss = content_loss + style_loss
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                image.clamp_(0, 1)
            value = loss.item()
            trace.times.append(time.perf_counter() - started)
            trace.losses.append(value)
            if value < best:
                best, improved = value, True
        stale = 0 if improved else stale + 1
        if stale >= 5:
            break
    _sync(content)
    seconds = time.perf_counter() - started
    return {
        "image": image.detach(),
        "seconds": seconds,
        "trace": trace,
        "steps": len(trace.losses),
        "epochs": epochs,
    }


def run_tutorial(
    state_dict: dict[str, Any], content: Any, styles: list[Any], num_steps: int = 300
) -> dict[str, Any]:
    """(b) PyTorch's tutorial `run_style_transfer`: L-BFGS with its defaults on the image from the content,
    clamped at the start of each closure, `while run[0] <= num_steps` counted in closure evaluations."""
    import torch

    started = time.perf_counter()
    loss_fn = ReferenceLoss(TUTORIAL_LOSS, state_dict, content, styles)
    input_img = content.clone()
    input_img.requires_grad_(True)
    optimizer = torch.optim.LBFGS([input_img])
    trace = Trace()
    run = [0]
    while run[0] <= num_steps:

        def closure() -> Any:
            with torch.no_grad():
                input_img.clamp_(0, 1)
            optimizer.zero_grad()
            content_score, style_score = loss_fn.terms(input_img)
            loss = style_score + content_score
            loss.backward()
            run[0] += 1
            trace.times.append(time.perf_counter() - started)
            trace.losses.append(float(loss.detach()))
            return style_score + content_score

        optimizer.step(closure)
    with torch.no_grad():
        input_img.clamp_(0, 1)
    _sync(content)
    seconds = time.perf_counter() - started
    return {"image": input_img.detach(), "seconds": seconds, "trace": trace, "steps": run[0]}


def _sync(tensor: Any) -> None:
    import torch

    if tensor.device.type == "cuda":
        torch.cuda.synchronize()


# --- nstd ---------------------------------------------------------------------------------------------------


def nstd_options(recipe: str, size: int, levers: dict[str, Any], **overrides: Any) -> Any:
    from nst_daemon.engines.nst import REFERENCE_RECIPES

    return replace(REFERENCE_RECIPES[recipe], max_side=size, **{**levers, **overrides})


def run_nstd(
    engine: Any,
    content: Image.Image,
    style: Image.Image,
    options: Any,
    *,
    stop_at: float | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """nstd's engine with a loss callback that timestamps every evaluation; final-scale ones form the trace
    (losses at coarser scales are on smaller images and not comparable). With `stop_at`, the run is
    cancelled once a final-scale loss is at or below it; with `budget_s`, once that much time has passed."""
    import threading

    from nst_daemon.engines import Cancelled
    from nst_daemon.engines.nst import scale_sizes

    final_scale = len(scale_sizes(content.size, options)) - 1
    records: list[tuple[float, Any]] = []
    cancel = threading.Event()
    started = time.perf_counter()

    def on_loss(record: Any) -> None:
        at = time.perf_counter() - started
        records.append((at, record))
        reached = stop_at is not None and record.scale == final_scale and record.total <= stop_at
        if reached or (budget_s is not None and at > budget_s):
            cancel.set()

    result, stopped = None, ""
    try:
        result = engine.stylize(
            content, [style], options=replace(options, loss_callback=on_loss), cancel=cancel
        )
    except Cancelled:
        stopped = "reached" if records and records[-1][1].total <= (stop_at or -math.inf) else "budget"
    seconds = time.perf_counter() - started
    trace = Trace()
    for at, record in records:
        if record.scale == final_scale:
            trace.times.append(at)
            trace.losses.append(record.total)
    return {
        "result": result,
        "seconds": seconds,
        "trace": trace,
        "steps": len(records),
        "coarse_steps": sum(1 for _, record in records if record.scale < final_scale),
        "stopped": stopped or "finished",
    }


# --- one size -----------------------------------------------------------------------------------------------


def to_tensor(image: Image.Image, device: Any) -> Any:
    import torch

    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def measured(run: Callable[[], dict[str, Any]], cuda: bool) -> dict[str, Any]:
    with bc.MemoryProbe(cuda=cuda) as probe:
        outcome = run()
    outcome["memory"] = probe.as_dict()
    return outcome


def bench_size(size: int, engine: Any, state_dict: dict[str, Any], device: Any, args: Any) -> dict[str, Any]:
    cuda = device.type == "cuda"
    content_pil, style_pil = content_image(size), style_image(size)
    content, style = to_tensor(content_pil, device), to_tensor(style_pil, device)
    evaluators = {
        "bot": ReferenceLoss(BOT_LOSS, state_dict, content, [style]),
        "tutorial": ReferenceLoss(TUTORIAL_LOSS, state_dict, content, [style]),
    }

    # The same loss, two implementations: nstd's first evaluation is the loss of the content image.
    check = {}
    for recipe, evaluator in evaluators.items():
        options = nstd_options(recipe, size, preset_levers("balanced"), scales=(1.0,), max_steps=1)
        theirs, ours = (
            evaluator.value(content),
            run_nstd(engine, content_pil, style_pil, options)["trace"].losses[0],
        )
        check[recipe] = {"reference": theirs, "nstd": ours, "rel_diff": abs(theirs - ours) / abs(theirs)}

    out: dict[str, Any] = {"size": size, "image": [size, size], "definition_check": check, "contenders": {}}
    contenders = out["contenders"]

    def record(key: str, recipe: str, outcome: dict[str, Any]) -> dict[str, Any]:
        trace: Trace = outcome["trace"]
        evaluator = evaluators[recipe]
        if "result" in outcome:  # nstd: the best evaluated image, as an 8-bit image, or none if cancelled
            final = min(trace.losses) if trace.losses else math.nan
            image = outcome["result"].image if outcome["result"] is not None else None
            delivered = evaluator.value(to_tensor(image, device)) if image is not None else None
        else:
            final = evaluator.value(outcome["image"])
            delivered = evaluator.value(to_tensor(_to_pil(outcome["image"]), device))
        entry = {
            "recipe": recipe,
            "seconds": outcome["seconds"],
            "final_loss": final,
            "delivered_loss": delivered,
            "best_loss": min(trace.losses) if trace.losses else None,
            "steps": outcome["steps"],
            **{k: outcome[k] for k in ("epochs", "coarse_steps", "stopped") if k in outcome},
            **outcome["memory"],
        }
        if "result" in outcome:
            entry["trace"] = {"times": trace.times, "losses": trace.losses}
        contenders[key] = entry
        bc.log(f"  {key}: {outcome['seconds']:.1f} s, final loss {final:.4g}, {outcome['steps']} steps")
        return entry

    bc.log(f"{size} px: (a) the bot's recipe")
    record("a_bot", "bot", measured(lambda: run_bot(state_dict, content, [style], args.bot_max_epochs), cuda))
    bc.log(f"{size} px: (b) the tutorial's recipe")
    record(
        "b_tutorial",
        "tutorial",
        measured(lambda: run_tutorial(state_dict, content, [style], args.tutorial_steps), cuda),
    )

    targets: dict[str, Any] = {}
    for recipe, reference, limit in (("bot", "a_bot", 1 / 3), ("tutorial", "b_tutorial", 1 / 2)):
        ref = contenders[reference]
        bc.log(f"{size} px: (c) nstd on the {recipe} loss")
        for preset in args.presets:
            stock = nstd_options(recipe, size, {**preset_levers(preset), **args.stock})
            suffix = "stock" if preset == "balanced" else preset
            entry = record(
                f"c_nstd_{recipe}_{suffix}",
                recipe,
                measured(lambda o=stock: run_nstd(engine, content_pil, style_pil, o), cuda),
            )
            reach = Trace(**entry["trace"]).time_to_reach(ref["final_loss"])
            entry["time_to_reach_reference_s"] = reach
            if preset == "balanced":
                targets[recipe] = _target(reach, ref["seconds"], limit, "stock balanced")
        tuned = nstd_options(recipe, size, {**NSTD_TUNED, **args.tuned})
        entry = record(
            f"c_nstd_{recipe}",
            recipe,
            measured(
                lambda o=tuned, r=ref: run_nstd(
                    engine, content_pil, style_pil, o, stop_at=r["final_loss"], budget_s=r["seconds"]
                ),
                cuda,
            ),
        )
        reach = Trace(**entry["trace"]).time_to_reach(ref["final_loss"])
        entry["time_to_reach_reference_s"] = reach
        targets[f"{recipe} (tuned)"] = _target(reach, ref["seconds"], limit, "tuned")
    out["targets"] = targets
    return out


def _target(reach: float | None, reference_s: float, limit: float, setting: str) -> dict[str, Any]:
    value = bc.ratio(reach, reference_s)
    return {
        "setting": setting,
        "ratio": value,
        "limit": limit,
        # Not reached (stopped early, or within the reference's own wall time) is a miss, not a gap.
        "verdict": bc.verdict(value, limit) if reach is not None else "not met (not reached)",
    }


def _to_pil(tensor: Any) -> Image.Image:
    array = tensor.detach()[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


# --- levers -------------------------------------------------------------------------------------------------


def step_seconds(step: Callable[[], Any], repeats: int) -> float:
    step()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return bc.median(times)


def bench_levers(
    size: int, engine: Any, state_dict: dict[str, Any], device: Any, args: Any
) -> list[dict[str, Any]]:
    """Each lever against its absence, one at a time, all on the bot's loss definition at `size`."""
    import torch

    from nst_daemon.engines.nst import gram_matrix
    from nst_daemon.engines.vgg import VGG19Features

    results: list[dict[str, Any]] = []
    content_pil, style_pil = content_image(size), style_image(size)
    content, style = to_tensor(content_pil, device), to_tensor(style_pil, device)
    layers = BOT_LOSS.style_layers
    repeats = args.lever_repeats

    def objective_step(net: Any, recompute_targets: bool, channels_last: bool = False) -> Callable[[], Any]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        with torch.no_grad():
            targets = {
                n: gram_matrix(t) for n, t in net(style.contiguous(memory_format=fmt)).items() if n in layers
            }
        image = content.clone().requires_grad_(True)

        def step() -> Any:
            grams = targets
            if recompute_targets:  # the naive loop: the style image goes through the network every step
                with torch.no_grad():
                    grams = {
                        n: gram_matrix(t)
                        for n, t in net(style.contiguous(memory_format=fmt)).items()
                        if n in layers
                    }
            features = net(image.contiguous(memory_format=fmt))
            loss = sum(torch.nn.functional.mse_loss(gram_matrix(features[n]), grams[n]) for n in layers)
            loss.backward()
            _sync(image)
            return loss

        return step

    truncated = VGG19Features(layers, state_dict).to(device)
    full = VGG19Features((*layers, "relu5_1"), state_dict).to(device)  # computes through relu5_1, unused
    base = step_seconds(objective_step(truncated, False), repeats)
    results.append(
        _lever(
            "truncate VGG at the deepest layer in use (conv3_1 vs relu5_1)",
            step_seconds(objective_step(full, False), repeats),
            base,
            "s/step",
        )
    )
    results.append(
        _lever(
            "style Grams computed once (vs every step)",
            step_seconds(objective_step(truncated, True), repeats),
            base,
            "s/step",
        )
    )
    truncated_cl = VGG19Features(layers, state_dict).to(device).to(memory_format=torch.channels_last)
    results.append(
        _lever(
            "channels_last (on vs off)",
            base,
            step_seconds(objective_step(truncated_cl, False, channels_last=True), repeats),
            "s/step",
        )
    )

    def targets_under(context: Callable[[], Any]) -> Callable[[], Any]:
        def step() -> Any:
            with context():
                out = {n: gram_matrix(t) for n, t in truncated(style).items()}
            _sync(style)
            return out

        return step

    grad_on = step_seconds(targets_under(torch.enable_grad), repeats)
    results.append(
        _lever(
            "target Grams under inference_mode (vs autograd on)",
            grad_on,
            step_seconds(targets_under(torch.inference_mode), repeats),
            "s/target pass",
        )
    )
    results.append(
        _lever(
            "target Grams under no_grad (vs autograd on)",
            grad_on,
            step_seconds(targets_under(torch.no_grad), repeats),
            "s/target pass",
        )
    )

    threads_before = torch.get_num_threads()
    if device.type == "cpu" and bc.machine_info().get("logical_cpus", 1) > 1:
        per_thread = {}
        for threads in (1, threads_before if threads_before > 1 else 2):
            torch.set_num_threads(threads)
            per_thread[threads] = step_seconds(objective_step(truncated, False), repeats)
        torch.set_num_threads(threads_before)
        (one, t1), (many, tn) = sorted(per_thread.items())
        results.append(_lever(f"torch threads {many} (vs {one})", t1, tn, "s/step"))

    if args.lever_reference is not None:
        results += whole_run_levers(size, engine, state_dict, device, args)
    return results


# Whole-run levers: the stock `balanced` optimization on the bot's loss with one lever changed. Each entry is
# (label, NSTOptions overrides, whether it changes the loss being optimized). Runs on the bot's own loss stop
# at (a)'s final loss or at a third of (a)'s wall time (the target); a lever that changes the loss cannot be
# timed on nstd's own trace, so it runs to the preset's own stop and its result is scored with the bot's loss
# (the "delivered loss", against the stock row's in the main table).
WHOLE_RUN_LEVERS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("stock balanced", {}, False),
    ("L-BFGS lr 1 (the old stock lr)", {"lr": 1.0}, False),
    ("restart from the best image after a loss above 2x the best", {"restart_above": 2.0}, False),
    ("no restart after 10 steps without a new best", {"restart_after": None}, False),
    ("L-BFGS history 100 (neural-style-pt; stock 20)", {"lbfgs_history": 100}, False),
    ("sizes growing by sqrt 2 (crowsonkb): scales 0.5, 0.71, 1.0", {"scales": (0.5, 0.7071, 1.0)}, False),
    ("Adam lr 0.02 (crowsonkb, without the EMA)", {"optimizer": "adam", "lr": 0.02}, False),
    ("stop at 0.2 % over 20 steps (the old tolerance)", {"tolerance": 2e-3, "window": 20}, False),
    (
        "style layer weights 256:64:16:4:1 (crowsonkb), same sum",
        {"style_layer_weights": (*(5 * w / 341 for w in (256, 64, 16, 4, 1)),)},
        True,
    ),
    ("TV term, weight 1e-2 (neural-style-pt)", {"tv_weight": 1e-2}, True),
    ("mean/covariance style loss (crowsonkb's statistics)", {"style_statistic": "mean_cov"}, True),
)


def whole_run_levers(
    size: int, engine: Any, state_dict: dict[str, Any], device: Any, args: Any
) -> list[dict[str, Any]]:
    content_pil, style_pil = content_image(size), style_image(size)
    reference = args.lever_reference
    evaluator = ReferenceLoss(
        BOT_LOSS, state_dict, to_tensor(content_pil, device), [to_tensor(style_pil, device)]
    )
    base = preset_levers("balanced")
    results = []
    for label, overrides, changes_loss in WHOLE_RUN_LEVERS:
        bc.log(f"lever run at {size} px: {label}")
        levers = {**base, **overrides}
        if len(levers["scales"]) != len(base["scales"]) and not isinstance(levers["max_steps"], int):
            # More scales: every coarse scale gets the stock coarse cap.
            coarse, final = base["max_steps"][0], base["max_steps"][-1]
            levers["max_steps"] = (*(coarse,) * (len(levers["scales"]) - 1), final)
        options = nstd_options("bot", size, {**levers, **args.stock})
        budget = reference["seconds"] / 3
        if changes_loss:
            run = run_nstd(engine, content_pil, style_pil, options)
            delivered = evaluator.value(to_tensor(run["result"].image, device))
            results.append(
                {
                    "lever": label,
                    "seconds": run["seconds"],
                    "final_loss": None,
                    "delivered_bot_loss": delivered,
                    "steps": run["steps"],
                    "time_to_bot_loss_s": None,
                    "ratio_to_bot_wall": None,
                    "unit": f"run to its own stop; delivered bot loss {delivered:.3g}",
                }
            )
            continue
        run = run_nstd(
            engine, content_pil, style_pil, options, stop_at=reference["final_loss"], budget_s=budget
        )
        reach = run["trace"].time_to_reach(reference["final_loss"])
        if reach is not None:
            note = "run"
        elif run["stopped"] == "finished":
            note = "run, stopped early before (a)'s loss"
        else:
            note = f"run, not reached in {budget:.0f} s"
        results.append(
            {
                "lever": label,
                "seconds": run["seconds"],
                "final_loss": min(run["trace"].losses) if run["trace"].losses else None,
                "steps": run["steps"],
                "time_to_bot_loss_s": reach,
                "ratio_to_bot_wall": bc.ratio(reach, reference["seconds"]),
                "unit": note,
            }
        )
    return results


def _lever(label: str, without: float, with_: float, unit: str) -> dict[str, Any]:
    return {
        "lever": label,
        "without": without,
        "with": with_,
        "speedup": bc.ratio(without, with_),
        "unit": unit,
    }


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = bc.parser("nst", __doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=bc.parse_sizes,
        help="square sizes (default 128 on CPU, 256,512 on GPU; 256 on a 2-core CPU takes about 16 min)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: physical cores)")
    parser.add_argument("--seed", type=int, default=0, help="VGG19 random-init seed")
    parser.add_argument("--bot-max-epochs", type=int, default=50, help="(a)'s epoch cap (the bot's is 50)")
    parser.add_argument(
        "--tutorial-steps", type=int, default=300, help="(b)'s num_steps (the tutorial's is 300)"
    )
    parser.add_argument("--levers", action="store_true", help="also measure each lever (at the first size)")
    parser.add_argument(
        "--presets",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=["balanced"],
        help="nstd presets run as stock rows, e.g. fast,balanced,best (balanced always: the targets use it)",
    )
    args = parser.parse_args(argv)

    import torch
    from checkpoints import make_vgg19_state_dict, save_checkpoint

    from nst_daemon.engines.cores import physical_cores
    from nst_daemon.engines.device import resolve_torch_device
    from nst_daemon.engines.nst import NSTEngine

    # Smoke images are tiny: OpenMP's fork-join costs more there than a second core gains.
    torch.set_num_threads(args.threads or (1 if args.smoke else physical_cores()))
    device = resolve_torch_device(args.device)
    args.stock, args.tuned, args.lever_repeats = {}, {}, 5
    args.presets = ["balanced", *(p for p in args.presets if p != "balanced")]  # the targets use balanced
    if args.smoke:
        args.sizes = args.sizes or [32]
        args.bot_max_epochs, args.tutorial_steps = 1, 10
        args.stock = {"max_steps": 8, "min_side": 16}
        args.tuned = {"max_steps": (8, 100_000), "min_side": 16}
        args.lever_repeats = 1
    # The CPU default is the largest size that runs in a few minutes on a 2-core box: at 256 the bot's
    # recipe alone runs its 1440 Adam steps for about 10 minutes (docs/benchmarks.md, "How to run").
    sizes = args.sizes or ([256, 512] if device.type == "cuda" else [128])

    state_dict = make_vgg19_state_dict(seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-nst-") as tmp:
        engine = NSTEngine(save_checkpoint(state_dict, Path(tmp) / "vgg19-dcbb9e9d.pth"), device=args.device)
        engine.load()  # also pays torch's one-time optimizer import (torch._dynamo), for everyone
        state_dict = {key: value.to(device) for key, value in state_dict.items()}
        # Warm-up off the clock: kernels, allocator and the first backward, for every contender alike.
        warm = max(16, min(sizes) // 4)
        run_bot(state_dict, to_tensor(content_image(warm), device), [to_tensor(style_image(warm), device)], 1)

        payload: dict[str, Any] = {
            "benchmark": "nst",
            "smoke": args.smoke,
            "machine": bc.machine_info(torch_device=engine.device_name),
            "settings": {
                "sizes": sizes,
                "seed": args.seed,
                "bot_max_epochs": args.bot_max_epochs,
                "tutorial_steps": args.tutorial_steps,
                "nstd_stock": {p: {**preset_levers(p), **args.stock} for p in args.presets},
                "nstd_tuned": {**NSTD_TUNED, **args.tuned},
                "styles": 1,
            },
            "results": [],
        }
        for size in sizes:
            payload["results"].append(bench_size(size, engine, state_dict, device, args))
            bc.write_json(args.json, payload)  # a long run keeps what it has so far
        if args.levers:
            first = payload["results"][0]
            args.lever_reference = first["contenders"]["a_bot"]
            rows = bench_levers(first["size"], engine, state_dict, device, args)
            payload["levers"] = {"size": first["size"], "rows": rows}
        bc.write_json(args.json, payload)

    bc.print_tables(tables(payload), args.json)
    return 0


def tables(payload: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    rows = []
    for result in payload["results"]:
        for key, c in result["contenders"].items():
            rows.append(
                [
                    f"{result['size']}² {key}",
                    c["seconds"],
                    c["final_loss"],
                    c["delivered_loss"],
                    c["best_loss"],
                    c["steps"],
                    c.get("time_to_reach_reference_s"),
                    c["peak_rss_mb"],
                    c["rss_delta_mb"],
                    c["cuda_peak_mb"],
                ]
            )
    out = [
        (
            f"NST on {payload['machine']['device']}: wall time and final loss (same images, weights, device)",
            [
                "contender",
                "wall s",
                "final loss",
                "delivered loss",
                "best loss",
                "steps",
                "s to ref loss",
                "peak RSS MB",
                "RSS +MB",
                "CUDA peak MB",
            ],
            rows,
        )
    ]
    target_rows = [
        [f"{result['size']}² nstd vs {recipe}", t["ratio"], f"≤ {t['limit']:.2f}", t["verdict"]]
        for result in payload["results"]
        for recipe, t in result["targets"].items()
    ]
    out.append(
        (
            "Targets: nstd's time to the reference's final loss / the reference's wall time",
            ["comparison", "ratio", "target", "verdict"],
            target_rows,
        )
    )
    if "levers" in payload:
        size = payload["levers"]["size"]
        per_step = [r for r in payload["levers"]["rows"] if "speedup" in r]
        whole = [r for r in payload["levers"]["rows"] if "speedup" not in r]
        out.append(
            (
                f"Levers at {size}², per step or pass (bot loss)",
                ["lever", "without", "with", "speedup", "unit"],
                [[r["lever"], r["without"], r["with"], r["speedup"], r["unit"]] for r in per_step],
            )
        )
        out.append(
            (
                f"Levers at {size}², whole runs to (a)'s final loss (bot loss)",
                ["nstd setting", "s to (a) loss", "/ (a) wall", "steps", "best loss", "note"],
                [
                    [
                        r["lever"],
                        r["time_to_bot_loss_s"],
                        r["ratio_to_bot_wall"],
                        r["steps"],
                        r["final_loss"],
                        r["unit"],
                    ]
                    for r in whole
                ],
            )
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
