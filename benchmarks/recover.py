"""Recover throughput: the batched engine against a per-class, one-IPC-index-at-a-time loop.

Both optimise the same images (digits, 10 classes) against the same teacher for the same number of
iterations; the script prints image-iterations per second for each and their ratio, measured in one run.

    python benchmarks/recover.py [--teacher artifacts/digits/teachers/convnet] [--ipc 10] [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from stages.models import build, load_checkpoint
from stages.recover_engine.engine import RecoverConfig, plan_groups, recover_batch, synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="artifacts/digits/teachers/convnet",
                        help="teacher folder; a fresh ConvNet-3 (width 64, 16 px) if it does not exist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20 iterations, IPC 4")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.ipc = 20, 4
    torch.set_num_threads(int(os.environ.get("DDPIPE_THREADS", os.cpu_count() or 1)))

    if os.path.exists(os.path.join(args.teacher, "meta.json")):
        teacher, meta = load_checkpoint(args.teacher)
        classes, size, mean, std = meta["num_classes"], meta["image_size"], meta["mean"], meta["std"]
        source = args.teacher
    else:
        teacher = build("convnet", 10, 16, {"width": 64, "depth": 3, "norm": "batch"}).eval()
        classes, size, mean, std, source = 10, 16, [0.5] * 3, [0.25] * 3, "fresh ConvNet-3 (no checkpoint)"
    cfg = RecoverConfig(iterations=args.iterations, lr=0.25, r_bn=0.01, first_bn_multiplier=10, r_var=1.0,
                        jitter=2, crop_min_scale=1.0, crop_schedule="fixed", flip=False)
    images = classes * args.ipc
    # Warm-up outside the clocks: first-call costs (imports, kernel selection) belong to neither side.
    recover_batch(teacher, torch.randn(2, 3, size, size), torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long),
                  RecoverConfig(**{**cfg.__dict__, "iterations": 2}), mean, std, np.random.default_rng(0))

    began = time.perf_counter()
    list(synthesize(teacher, classes, size, plan_groups(0, args.ipc, args.ipc), cfg, mean, std, seed=0))
    engine = images * args.iterations / (time.perf_counter() - began)

    began = time.perf_counter()
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    for label in range(classes):
        for _ in range(args.ipc):
            recover_batch(teacher, torch.randn(1, 3, size, size, generator=gen), torch.tensor([label]),
                          torch.zeros(1, dtype=torch.long), cfg, mean, std, rng)
    loop = images * args.iterations / (time.perf_counter() - began)

    print(f"teacher: {source}; {classes} classes x IPC {args.ipc}, {args.iterations} iterations, "
          f"{torch.get_num_threads()} threads")
    print(f"engine (all classes and IPC indices per batch): {engine:10.0f} image-iterations/s")
    print(f"per-class, one IPC index at a time:              {loop:10.0f} image-iterations/s")
    print(f"ratio engine / loop: {engine / loop:.1f}x")


if __name__ == "__main__":
    main()
