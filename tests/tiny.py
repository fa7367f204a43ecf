"""The tiny settings every test project starts from, and the merge that layers overrides on them
(no pytest import: benchmarks/scaling.py reuses them for its --quick mode)."""
from __future__ import annotations

import copy

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
