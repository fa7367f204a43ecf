"""KIP/FRePo-style ZCA whitening as PoDD uses it (docs/methods/podd.md#deviations-from-the-reference-code-and-why).

Each image is centred on its own mean and scaled to unit L2 norm; the whitening matrix comes from the
covariance of the train set so normalised, with eigenvalues regularised by `reg` times their mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Zca:
    whiten: torch.Tensor  # [D, D]
    unwhiten: torch.Tensor  # [D, D], for looking at whitened data
    eigenvalues: torch.Tensor  # [D], before regularisation
    reg: float

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flat = per_image_normalise(images.flatten(1))
        return (flat @ self.whiten).view_as(images)

    def to(self, device: torch.device) -> "Zca":
        return Zca(self.whiten.to(device), self.unwhiten.to(device), self.eigenvalues.to(device), self.reg)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"whiten": self.whiten.cpu(), "unwhiten": self.unwhiten.cpu(), "eigenvalues": self.eigenvalues.cpu()}


def per_image_normalise(flat: torch.Tensor) -> torch.Tensor:
    centred = flat - flat.mean(1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-8)


def fit(images: torch.Tensor, reg: float) -> Zca:
    """Fit on [N, C, H, W] float images (float64 for the eigendecomposition)."""
    flat = per_image_normalise(images.flatten(1).double())
    covariance = flat.T @ flat / len(flat)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp_min(0)
    regularised = eigenvalues + reg * eigenvalues.mean()
    whiten = vectors @ torch.diag(regularised.rsqrt()) @ vectors.T
    unwhiten = vectors @ torch.diag(regularised.sqrt()) @ vectors.T
    return Zca(whiten.float(), unwhiten.float(), eigenvalues.float(), reg)
