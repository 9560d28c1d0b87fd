"""The Gatys loss: Gram matrices, total variation, per-style weights, and the objective of one scale."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nst_daemon.engines.nst_options import NSTOptions
from nst_daemon.engines.vgg import VGG19Features
from nst_daemon.errors import NstdError


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """F·Fᵀ / (C·H·W) per batch item: (N, C, H, W) -> (N, C, C)."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def mean_covariance(features: torch.Tensor) -> torch.Tensor:
    """The channel means and the covariance of a layer in one tensor: (N, C, H, W) -> (N, C, C + 1).

    Column 0 is μ / √C and the rest (F − μ)·(F − μ)ᵀ / (C·H·W), scaled like `gram_matrix` (which equals
    cov + μ·μᵀ / C), so one MSE over it weighs the two parts as the Gram loss would and a style weight tuned
    for Gram losses stays in range."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    mean = flat.mean(dim=2, keepdim=True)
    centred = flat - mean
    covariance = torch.bmm(centred, centred.transpose(1, 2)) / (c * h * w)
    return torch.cat([mean / math.sqrt(c), covariance], dim=2)


STYLE_STATISTICS = {"gram": gram_matrix, "mean_cov": mean_covariance}


def total_variation(image: torch.Tensor) -> torch.Tensor:
    # Squared differences keep the loss smooth, which L-BFGS needs.
    dy = image[:, :, 1:, :] - image[:, :, :-1, :]
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


def style_mix(weights: Sequence[float] | None, count: int, normalize: bool) -> list[float]:
    """Per-style weights: equal by default; scaled to sum to 1 when `normalize`."""
    values = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(values) != count:
        raise NstdError(f"got {len(values)} style weights for {count} style images")
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise NstdError("style weights must be non-negative numbers with a positive sum")
    if normalize:
        total = sum(values)
        values = [w / total for w in values]
    return values


class Objective:
    """The loss at one scale: targets computed once, then evaluated at every step."""

    def __init__(
        self,
        net: VGG19Features,
        content: torch.Tensor,
        styles: list[torch.Tensor],
        style_mix: list[float],
        options: NSTOptions,
    ) -> None:
        self.net = net
        self.options = options
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.style_mix = style_mix
        layer_weights = options.style_layer_weights or (1.0,) * len(options.style_layers)
        self.style_layers = list(zip(options.style_layers, layer_weights, strict=True))
        self.statistic = STYLE_STATISTICS[options.style_statistic]
        # inference_mode makes no autograd records; the clones turn the results into ordinary tensors
        # again, which autograd may save for backward.
        with torch.inference_mode():
            content = content.contiguous(memory_format=self.memory_format)
            styles = [style.contiguous(memory_format=self.memory_format) for style in styles]
            content_features = net(content)
            content_targets = {name: content_features[name] for name in options.content_layers}
            del content_features
            style_targets = []
            for style in styles:
                features = net(style)
                style_targets.append({name: self.statistic(features[name]) for name in options.style_layers})
        self.content_targets = {name: value.clone() for name, value in content_targets.items()}
        self.style_targets = [{name: value.clone() for name, value in t.items()} for t in style_targets]

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
        options = self.options
        # The optimized tensor stays contiguous (L-BFGS flattens its gradient with .view); only the
        # network sees channels_last.
        features = self.net(image.contiguous(memory_format=self.memory_format))
        content = image.new_zeros(())
        for name in options.content_layers:
            content = content + F.mse_loss(features[name], self.content_targets[name])
        style = image.new_zeros(())
        for name, layer_weight in self.style_layers:
            statistic = self.statistic(features[name])
            for mix, targets in zip(self.style_mix, self.style_targets, strict=True):
                if mix:
                    style = style + (mix * layer_weight) * F.mse_loss(statistic, targets[name])
        tv = total_variation(image) if options.tv_weight else image.new_zeros(())
        terms = torch.stack(
            [options.content_weight * content, options.style_weight * style, options.tv_weight * tv]
        )
        content_value, style_value, tv_value = terms.detach().tolist()  # one device sync, not three
        return terms.sum(), content_value, style_value, tv_value
