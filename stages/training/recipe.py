"""The shared evaluation recipe's derived settings, used identically by relabel and evaluate."""
from __future__ import annotations

from stages.data.augment import Augment
from stages.training.params import Evaluate


def eval_batch_size(cfg: Evaluate, num_images: int, num_classes: int) -> int:
    """RDED's rule when `auto`: 10 / 50 / 100 for <=1 / <=10 / more images per class, x2 at >=100 classes."""
    if cfg.batch_size != "auto":
        return min(cfg.batch_size, num_images)
    per_class = num_images / num_classes
    size = 10 if per_class <= 1 else 50 if per_class <= 10 else 100
    if num_classes >= 100:
        size *= 2
    return min(size, num_images)


def eval_augment(cfg: Evaluate, image_size: int) -> Augment:
    return Augment(tuple(cfg.crop_scale), cfg.flip, cfg.mix, cfg.mix_alpha, image_size)

