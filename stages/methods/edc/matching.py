"""EDC's statistic matching (docs/methods/edc.md#statistic-matching): what an observer's BatchNorm and
convolution layers see, over the real train set and over the images being recovered.

Every BatchNorm2d and Conv2d of an observer is a matched layer, in `named_modules` order (the reference's hook
order; its first one gets `first_multiplier`). A layer's statistics of its input x [B, ch, H, W]:

- BatchNorm2d: the channel mean and variance over (B, H, W). Targets: the layer's running statistics
  (global), and the mean over the batch's labels of each class's average per-image mean and variance.
- Conv2d: the same two, plus the mean and variance of every 4 x 4 patch position (x resized bilinearly to a
  multiple of 4, each position's statistics over (B, ch, 4, 4)). Targets: the real set's values (the mean,
  over batches of the statistics pass, of each batch's values) and per class as for BatchNorm.

Matching a statistic s against targets g (global) and c (class): the reference's "training momentum" α keeps
an EMA of s over the iterations in which the observer runs (starting from 0, as its `dd_var = 0.` does),
and the loss is 0.5 (||g − ŝ|| + ||c − ŝ||) with ŝ = ema + s − s.detach(): the value is the EMA, the gradient
is the current batch's.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

BN_STATS = ("mean", "var")
CONV_STATS = ("mean", "var", "patch_mean", "patch_var")


def matched_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers EDC matches, in the reference's hook order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.Conv2d))]


def _patches(x: torch.Tensor) -> torch.Tensor:
    """[B, positions, ch x 16]: x resized (bilinear) to a multiple of 4 per side, cut into 4 x 4 patches."""
    h, w = (4 * math.ceil(s / 4) for s in x.shape[2:])
    x = F.interpolate(x, [h, w], mode="bilinear")
    b, c = x.shape[:2]
    return x.view(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 4) * (w // 4), c * 16)


def batch_statistics(x: torch.Tensor, conv: bool) -> dict[str, torch.Tensor]:
    """The layer input's statistics over the whole batch (each a vector)."""
    flat = x.transpose(0, 1).flatten(1)
    stats = {"mean": flat.mean(1), "var": flat.var(1, unbiased=False)}
    if conv:
        patches = _patches(x).transpose(0, 1).flatten(1)
        stats |= {"patch_mean": patches.mean(1), "patch_var": patches.var(1, unbiased=False)}
    return stats


def image_statistics(x: torch.Tensor, conv: bool) -> dict[str, torch.Tensor]:
    """The same statistics per image ([B, ...]): what the per-class targets average."""
    flat = x.flatten(2)
    stats = {"mean": flat.mean(2), "var": flat.var(2, unbiased=False)}
    if conv:
        patches = _patches(x)
        stats |= {"patch_mean": patches.mean(2), "patch_var": patches.var(2, unbiased=False)}
    return stats


class StatisticsPass:
    """Accumulates an observer's targets over the real set (the statistics stage): per layer, the running mean
    over batches of the conv layers' batch statistics (each batch weighted by its share of the set, as the
    reference's `x * bs / data_number`), and per class the average of the per-image statistics."""

    def __init__(self, model: nn.Module, num_classes: int, num_images: int):
        self.layers = matched_layers(model)
        self.num_classes, self.num_images = num_classes, num_images
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = torch.zeros(num_classes, dtype=torch.float64)
        self.labels: torch.Tensor | None = None
        self.handles = []

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.double()  # on the device: float64 sums, one transfer at the end
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def _hook(self, index: int, conv: bool):
        def hook(_module, inputs, _output) -> None:
            x = inputs[0].float()
            if conv:
                for stat, value in batch_statistics(x, conv).items():
                    self._add(f"{index:03d}.{stat}", value * len(x) / self.num_images)
            for stat, value in image_statistics(x, conv).items():
                per_class = torch.zeros(self.num_classes, value.shape[1], dtype=torch.float64, device=x.device)
                per_class.index_add_(0, self.labels, value.double())
                self._add(f"{index:03d}.class_{stat}", per_class)
        return hook

    @contextlib.contextmanager
    def hooked(self) -> Iterator["StatisticsPass"]:
        self.handles = [m.register_forward_hook(self._hook(i, isinstance(m, nn.Conv2d)))
                        for i, (_, m) in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in self.handles:
                handle.remove()

    def add_batch(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.labels = labels
        self.counts += torch.bincount(labels.cpu(), minlength=self.num_classes).double()
        with torch.no_grad():
            model(x)

    def result(self) -> dict[str, torch.Tensor]:
        """Float32 tensors keyed `<layer index>.<statistic>` (class ones [classes, ...])."""
        if (self.counts == 0).any():
            empty = torch.flatnonzero(self.counts == 0).tolist()
            raise ValueError(f"classes {empty} have no train image: EDC's class statistics need one")
        out = {}
        for key, value in self.sums.items():
            if ".class_" in key:
                value = value.cpu() / self.counts.view(-1, 1)
            out[key] = value.cpu().float().contiguous()
        return out


class StatisticMatching:
    """One observer's matching loss while recovering (docs/methods/edc.md#statistic-matching): hooks on its
    matched layers add one term per layer on every forward; `loss()` returns the weighted sum and clears them.
    `start(labels)` begins a batch (its class targets, and EMA states from zero: each batch depends only on its
    own inputs, so a run resumes and shards exactly)."""

    def __init__(self, model: nn.Module, targets: dict[str, torch.Tensor], momentum: float,
                 first_multiplier: float, drop_rate: float, patch_swap: bool, rng: np.random.Generator):
        self.layers = matched_layers(model)
        self.targets, self.momentum, self.first_multiplier = targets, momentum, first_multiplier
        self.drop_rate, self.patch_swap, self.rng = drop_rate, patch_swap, rng
        self.terms: list[torch.Tensor] = []
        self.ema: dict[str, torch.Tensor] = {}
        self.class_targets: dict[str, torch.Tensor] = {}
        self.labels = torch.zeros(0, dtype=torch.long)
        self.paused = False
        self.handles = []

    def _class_target(self, index: int, stat: str) -> torch.Tensor:
        """The batch's class target: the mean over its labels, made once per batch (start() clears them)."""
        if self.patch_swap and stat.startswith("patch_"):  # the reference saves these two under each other's name
            stat = {"patch_mean": "patch_var", "patch_var": "patch_mean"}[stat]
        key = f"{index:03d}.class_{stat}"
        if key not in self.class_targets:
            self.class_targets[key] = self.targets[key][self.labels].mean(0)
        return self.class_targets[key]

    def _hook(self, index: int, module: nn.Module):
        conv = isinstance(module, nn.Conv2d)

        def hook(_module, inputs, _output) -> None:
            if self.paused:
                return
            if conv and self.drop_rate and self.rng.uniform() > 1 - self.drop_rate:
                self.terms.append(torch.zeros(()))  # the reference's random drop of a conv term
                return
            term = torch.zeros(())
            for stat, s in batch_statistics(inputs[0].float(), conv).items():
                key = f"{index:03d}.{stat}"
                with torch.no_grad():
                    self.ema[key] = self.momentum * self.ema.get(key, torch.zeros_like(s)) + (1 - self.momentum) * s
                estimate = self.ema[key] + s - s.detach()
                glob = getattr(module, f"running_{stat}") if not conv else self.targets[key]
                term = term + 0.5 * (torch.linalg.vector_norm(glob - estimate)
                                     + torch.linalg.vector_norm(self._class_target(index, stat) - estimate))
            self.terms.append(term)
        return hook

    def __enter__(self) -> "StatisticMatching":
        self.handles = [m.register_forward_hook(self._hook(i, m)) for i, (_, m) in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def start(self, labels: torch.Tensor) -> None:
        self.labels, self.ema, self.terms, self.class_targets = labels, {}, [], {}

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Forwards that add no term and leave the EMAs alone (the flatness term's forward of the EMA images)."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def loss(self) -> torch.Tensor:
        terms, self.terms = self.terms, []
        if len(terms) != len(self.layers):
            raise RuntimeError(f"expected {len(self.layers)} matched layers in one forward, saw {len(terms)}")
        return self.first_multiplier * terms[0] + sum(terms[1:], torch.zeros(()))
