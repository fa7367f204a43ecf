"""Evaluate's students: trained one at a time, side by side (CPU threads), or together as one vmapped model.

The three ways `evaluate` can train the seeds of one (student, protocol), each through the function the stage
calls: `train` per student one after another, `train` per student in `map_side_by_side` (one thread each,
evaluate's CPU default), and `train_together` (evaluate.together; auto = on a GPU). Same students (ConvNet-3 at
the default run's 16 px and width, IPC-10-sized draws of random images, batch 50), same epochs; prints
images/s per student for each and the ratios, and checks the students' losses agree to rounding.

    python benchmarks/students_together.py [--students 3] [--epochs 20] [--rounds 3] [--device cpu|cuda] [--quick]

Rounds alternate the three ways so a machine's drift hits each alike; the best round of each is printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's `stages`

from stages.data.augment import Augment, plan_epoch  # noqa: E402 (after the path fix above)
from stages.data.folder import ImageSet
from stages.models import build
from stages.pipeline.side_by_side import jobs_at_once, map_side_by_side
from stages.training.loop import Optim, hard_loss, train
from stages.training.together import train_together

NORM = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
AUG = Augment((0.5, 1.0), False, "cutmix", 1.0, 16)


def draw(seed: int, n: int = 100, size: int = 16) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                    torch.arange(n) % 10, [f"{i % 10}/{i}.png" for i in range(n)])


def student(seed: int, device: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("convnet", 10, 16, {"width": 128, "depth": 3, "norm": "batch"}).to(device)


def plans(k: int):
    rng = np.random.default_rng(k)
    return lambda epoch: (plan_epoch(100, 50, rng, AUG), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 students, 2 epochs, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.students, args.epochs, args.rounds = 2, 2, 1
    device, n = args.device, args.students
    draws = [draw(k) for k in range(n)]
    val = (draw(99).normalised(*NORM).tensor(), draw(99).labels)
    optim = Optim("adamw", 1e-3, 0.01)

    def one(k):
        return train(student(k, device), draws[k], NORM, args.epochs, 50, plans(k), hard_loss, optim, val, 1,
                     f"alone {k}")

    ways = {
        "one at a time": lambda: [one(k) for k in range(n)],
        "side by side": lambda: map_side_by_side(one, range(n), jobs_at_once(torch.device(device), n)),
        "together": lambda: train_together([student(k, device) for k in range(n)], draws, NORM, args.epochs, 50,
                                           [plans(k) for k in range(n)], hard_loss, optim, val, 1, "together"),
    }
    best, losses = {}, {}
    for _ in range(args.rounds):
        for name, way in ways.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            histories = way()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            best[name] = min(best.get(name, float("inf")), seconds)
            losses[name] = [h.loss[-1] for h in histories]
    images = args.epochs * 100  # per student
    print(f"{n} ConvNet-3 students (width 128, 16 px, batch 50), {args.epochs} epochs of 100 images, "
          f"{device} ({torch.get_num_threads()} threads), best of {args.rounds} rounds:")
    for name, seconds in best.items():
        print(f"  {name:<14} {seconds:7.2f} s  {images / seconds:8.0f} images/s per student  "
              f"x{best['one at a time'] / seconds:.2f} vs one at a time")
    spread = max(abs(a - b) / abs(b) for a, b in zip(losses["together"], losses["one at a time"]))
    print(f"final losses, together vs one at a time: largest relative difference {spread:.2e}")


if __name__ == "__main__":
    main()
