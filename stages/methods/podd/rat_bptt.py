"""RaT-BPTT (docs/methods/podd.md#rat-bptt): random truncated back-propagation through an unrolled inner training run.

One outer step: a fresh inner ConvNet and a fresh Adam; `c` warm-up steps on the crops with no
meta-gradient (c uniform in [minwindow, totwindow - window], redrawn every step: RaT-BPTT's
`complete_random`; or given, drawn once per epoch as PoDD's code does: params `podd.warmup_draw`);
then `window` differentiable Adam steps that carry the warm-up's moments over;
then the meta-loss, cross-entropy of the final weights on an augmented real batch with hard labels.

The differentiable Adam masks second moments that are exactly zero: √v has an infinite derivative at
0, and a conv bias in front of instance norm gets exactly zero gradient (the NaN trap; docs/methods/podd.md#rat-bptt).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from stages.methods.podd.diff_augment import augment

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass
class InnerRun:
    lr: float
    window: int
    minwindow: int
    totwindow: int
    batch_size: int  # crops per inner step
    ops: list[str]  # augmentation ops


@dataclass
class AdamState:
    m: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    t: int = 0

    @classmethod
    def zeros(cls, params: dict[str, torch.Tensor]) -> "AdamState":
        return cls({k: torch.zeros_like(p) for k, p in params.items()},
                   {k: torch.zeros_like(p) for k, p in params.items()})


def masked_sqrt(v: torch.Tensor) -> torch.Tensor:
    """√v, with zero value and zero derivative where v == 0 (instead of an infinite derivative)."""
    positive = v > 0
    return torch.where(positive, v, torch.ones_like(v)).sqrt() * positive


def adam_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], state: AdamState,
              lr: float) -> tuple[dict[str, torch.Tensor], AdamState]:
    """torch.optim.Adam's update (no weight decay), written out so it is differentiable."""
    (b1, b2), t = BETAS, state.t + 1
    m = {k: b1 * state.m[k] + (1 - b1) * g for k, g in grads.items()}
    v = {k: b2 * state.v[k] + (1 - b2) * g * g for k, g in grads.items()}
    new = {k: p - lr / (1 - b1 ** t) * m[k] / (masked_sqrt(v[k] / (1 - b2 ** t)) + EPS) for k, p in params.items()}
    return new, AdamState(m, v, t)


def inner_loss(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(functional_call(net, params, (x,)), y)


def sample(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`size` of n indices without replacement, sorted (drawn on the CPU generator; index any device)."""
    return torch.randperm(n, generator=generator)[:size].sort().values


def draw_warmup(run: InnerRun, generator: torch.Generator) -> int:
    """c uniform in [minwindow, totwindow - window] (RaT-BPTT's cctype 2)."""
    return int(torch.randint(run.minwindow, run.totwindow - run.window + 1, (), generator=generator))


def meta_loss(net: nn.Module, crops: torch.Tensor, labels: torch.Tensor, real_x: torch.Tensor,
              real_y: torch.Tensor, run: InnerRun, generator: torch.Generator,
              warmup: int | None = None) -> tuple[torch.Tensor, int]:
    """Unroll a fresh `net` on the crops ([P, C, h, w], probability labels [P, K]); the real batch's loss
    is differentiable in `crops` and `labels` through the last `window` steps. Returns (loss, c).
    `warmup`: the warm-up length c, or None to draw it here from `generator`."""
    params = {k: p.detach() for k, p in net.named_parameters()}
    state = AdamState.zeros(params)
    c = draw_warmup(run, generator) if warmup is None else warmup
    frozen_crops, frozen_labels = crops.detach(), labels.detach()
    for _ in range(c):  # warm-up: ordinary training, nothing flows back to the poster
        idx = sample(len(crops), run.batch_size, generator)
        leaf = {k: p.requires_grad_() for k, p in params.items()}
        loss = inner_loss(net, leaf, augment(frozen_crops[idx], run.ops, generator), frozen_labels[idx])
        grads = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values()))))
        with torch.no_grad():
            params, state = adam_step(params, grads, state, run.lr)
    params = {k: p.detach().requires_grad_() for k, p in params.items()}
    for _ in range(run.window):  # differentiable window
        idx = sample(len(crops), run.batch_size, generator)
        loss = inner_loss(net, params, augment(crops[idx], run.ops, generator), labels[idx])
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True)))
        params, state = adam_step(params, grads, state, run.lr)
    return inner_loss(net, params, augment(real_x, run.ops, generator), real_y), c


@dataclass
class NormClip:
    """Clip a gradient to `factor` x an EMA of its norm (PoDD: coefficient 0.9, factor 2)."""
    coef: float
    factor: float = 2.0
    ema: float | None = None

    def __call__(self, grad: torch.Tensor) -> float:
        norm = grad.norm().item()
        self.ema = norm if self.ema is None else self.coef * self.ema + (1 - self.coef) * norm
        limit = self.factor * self.ema
        if norm > limit:
            grad.mul_(limit / norm)
        return norm


def train_on_crops(net: nn.Module, crops: torch.Tensor, labels: torch.Tensor, run: InnerRun, steps: int,
                   generator: torch.Generator) -> nn.Module:
    """PoDD's evaluation training: Adam(inner lr) on random augmented crop batches for `steps` steps."""
    optimizer = torch.optim.Adam(net.parameters(), run.lr, foreach=True)
    net.train()
    for _ in range(steps):
        idx = sample(len(crops), run.batch_size, generator)
        loss = F.cross_entropy(net(augment(crops[idx], run.ops, generator)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval()
