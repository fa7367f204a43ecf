"""The tiny settings every test project starts from, and the merge that layers overrides on them
(no pytest import: benchmarks/scaling.py reuses them for its --quick mode)."""
from __future__ import annotations

import copy
from pathlib import Path

# Small enough for CI, big enough that every code path runs (mixing, several batches, val points).
TINY = {
    "ipc": 3,
    "teacher": {"archs": ["convnet", "resnet18_modified"], "epochs": 2},
    "models": {"convnet": {"width": 16, "depth": 2, "norm": "batch"},
               "resnet18_modified": {"width": 4, "norm": "batch"}},
    "evaluate": {"epochs": 30, "full_epochs": 2, "seeds": 2, "eval_points": 2,
                 "protocols": ["fkd", "teacher", "hard", "static"]},
    "sre2l": {"recover": {"iterations": 20}},
    "delt": {"round_iterations": 5, "recover": {"iterations": 20}},
    "infer": {"recover": {"iterations": 20}},
    "edc": {"iterations": 10},
    "diffusion": {"train": {"vae_channels": [8, 16], "vae_steps": 5, "unet_channels": [16, 32], "unet_steps": 5,
                            "batch_size": 32, "text_window": 16},
                  "check": {"samples": 1, "steps": 2}},
    "d4m": {"synthesis": {"steps": 4}},
    "vlcp": {"synthesis": {"steps": 4}},
    "podd": {"inner": {"width": 8, "depth": 2, "lr": 0.001}, "window": 2, "totwindow": 4, "epochs": 1,
             "checkpoint_every": 3, "eval": {"runs": 2, "steps": 5}},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# A CIFAR-10 preset (presets/) at sizes a CPU runs in minutes: the paper's shapes (32 px, 10 classes, RN18-mod)
# kept, on a generated imagefolder (tests/core/test_presets.py, benchmarks/gpu_check.py --tiny).
TINY_PRESET = {**{k: TINY[k] for k in ("diffusion", "d4m", "vlcp", "podd")},
               "dataset": "imagefolder", "ipc": 2,
               "models": {"resnet18_modified": {"width": 4, "norm": "batch"}},
               "evaluate": {"epochs": 4, "full_epochs": 1, "seeds": 1, "eval_points": 1},
               "sre2l": {"recover": {"iterations": 10}},
               "delt": {"round_iterations": 5, "recover": {"iterations": 10, "ipc_per_batch": 2}},
               "infer": {"recover": {"iterations": 10}}}


def generated_cifar(root: Path, train: int, val: int) -> None:
    """A CIFAR-10-shaped imagefolder: 32 px PNGs whose colour depends on the class, so a teacher can learn it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(CIFAR10):
            (root / split / name).mkdir(parents=True)
            base = np.array([c * 25, 255 - c * 25, (c * 70) % 256])
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
