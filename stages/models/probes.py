"""What a teacher says about a set of images: fidelity (does it see the intended class?) and
diversity (how alike are a class's images in the teacher's penultimate features?).

Diversity follows DELT: mean cosine similarity between the penultimate features of distinct images
of the same class, averaged over classes. Lower is more diverse.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stages.models import predict


@torch.no_grad()
def logits_and_features(model: nn.Module, images: torch.Tensor, batch_size: int = 512):
    """Logits and the input of the last Linear layer (the penultimate features) for normalised images."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].flatten(1)))
    try:
        logits = predict(model, images, batch_size)
    finally:
        handle.remove()
    return logits, torch.cat(captured)


def intra_class_cosine(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean cosine similarity between distinct same-class images."""
    unit = F.normalize(features.float(), dim=1)
    per_class = []
    for label in labels.unique():
        members = unit[labels == label]
        n = len(members)
        if n < 2:
            continue
        similarity = members @ members.T
        per_class.append(((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1))).item())
    return float(sum(per_class) / len(per_class)) if per_class else float("nan")


def teacher_view(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    logits, features = logits_and_features(model, images)
    cosine = intra_class_cosine(features, labels)  # undefined (None) with one image per class
    return {"teacher_fidelity": round((logits.argmax(1) == labels).float().mean().item(), 6),
            "intra_class_cosine": None if cosine != cosine else round(cosine, 6)}
