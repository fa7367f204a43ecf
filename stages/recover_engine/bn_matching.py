"""The BatchNorm-statistics loss of SRe2L (docs/methods/sre2l.md#the-recover-engine).

Forward hooks on every BatchNorm2d of a frozen teacher (eval mode) read the BN *input* of the
current batch and compare its per-channel mean and biased variance with the layer's running
statistics: r_l = r_var·‖σ²_b − running_var‖₂ + ‖μ_b − running_mean‖₂ (plain, not squared, norms;
DWA's `r_var` weights the variance term, 1 elsewhere). The total weights the first layer by
`first_multiplier` (10 in every reference) and the others by 1.
"""
from __future__ import annotations

import torch
from torch import nn


class BNStatisticsLoss:
    """Use as a context manager around the teacher's forward passes; read `.loss()` after each one."""

    def __init__(self, model: nn.Module, first_multiplier: float = 10.0, r_var: float = 1.0):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ValueError("BN-statistics matching needs a teacher with BatchNorm2d layers")
        self.first_multiplier, self.r_var = first_multiplier, r_var
        self.terms: list[torch.Tensor] = []
        self.handles = []

    def _hook(self, module: nn.BatchNorm2d, inputs, _output) -> None:
        x = inputs[0].float()  # under bf16 autocast (CUDA) the statistics are still taken in fp32
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
        self.terms.append(self.r_var * torch.linalg.vector_norm(var - module.running_var)
                          + torch.linalg.vector_norm(mean - module.running_mean))

    def __enter__(self) -> "BNStatisticsLoss":
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def loss(self) -> torch.Tensor:
        """Weighted sum over the layers seen since the last call; clears them."""
        terms, self.terms = self.terms, []
        if len(terms) != len(self.layers):
            raise RuntimeError(f"expected {len(self.layers)} BN layers in one forward, saw {len(terms)}")
        return self.first_multiplier * terms[0] + sum(terms[1:], torch.zeros(()))
