"""SRe2L parity diagnostics (docs/parity.md#sre2l): what makes ddpipe's and the reference's images differ.

Run after a parity run (its work project holds the data, the teacher and ddpipe's set), with the same checkout:

    python benchmarks/parity/diagnostics/sre2l.py --reference <SRe2L checkout> --run <the parity run's --out folder>

1. The adapted reference again, plus EXPERIMENT-ONLY changes that are not parity adaptations (printed as such):
   writing PNG instead of JPEG, and then also clamping its start as ddpipe does; each set against ddpipe's
   images of the run (compare at jitter 0, `-S sre2l.recover.jitter=0 -S ipc=1` in the parity run).
2. ddpipe's engine from the same noise and from the noise + 1e-6 / 1e-3: how far a tiny change of the start
   moves the result (is the optimisation chaotic?).
3. Per-iteration CPU cost, sides taking turns in one process: the adapted reference's get_images against
   ddpipe's recover_batch on one batch of every class.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script from anywhere

from benchmarks.parity import sre2l  # noqa: E402
from benchmarks.parity.compare import context  # noqa: E402
from benchmarks.parity.harness import (Adaptation, apply_adaptations, child_env, copy_reference,  # noqa: E402
                                       write_shims)
from stages.models import load_checkpoint  # noqa: E402
from stages.recover_engine.engine import RecoverConfig, recover_batch  # noqa: E402
from stages.recover_engine.finished import to_uint8  # noqa: E402

EXPERIMENTS = {
    "png": Adaptation(sre2l.SCRIPT, "/class{:03d}_id{:03d}.jpg", "/class{:03d}_id{:03d}.png",
                      "EXPERIMENT ONLY: lossless PNG instead of JPEG", count=1),
    "clamp": Adaptation(sre2l.SCRIPT, "        iterations_per_layer = args.iteration\n",
                        "        inputs.data = clip_cifar(inputs.data)\n"
                        "        iterations_per_layer = args.iteration\n",
                        "EXPERIMENT ONLY: clamp the start before the first forward pass, as ddpipe does", count=1),
}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def differ(a: list[np.ndarray], b: list[np.ndarray]) -> str:
    d = np.mean([np.abs(x - y).mean() for x, y in zip(a, b)])
    c = np.mean([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)])
    return f"mean |diff| {d:.2f} levels, correlation {c:.4f}"


def adapted(checkout: Path, plan, extra: list[str], tmp: Path) -> Path:
    root = copy_reference(checkout, sre2l.FILES, tmp)
    apply_adaptations(root, plan.adaptations + [EXPERIMENTS[e] for e in extra])
    write_shims(root / plan.reference_cwd, plan.shims)
    return root / plan.reference_cwd


def reference_variants(ctx, plan, checkout: Path) -> None:
    ours_dir = ctx.sets / "distilled" / plan.ddpipe_set
    ours = [pixels(p) for c in ctx.classes for p in sorted((ours_dir / c).glob("*.png"))]
    for extra in (["png"], ["png", "clamp"]):
        with tempfile.TemporaryDirectory() as tmp:
            cwd = adapted(checkout, plan, extra, Path(tmp))
            out = Path(tmp) / "images"
            command = [c.replace("{out}", str(out)) for c in plan.reference_command
                       if c not in plan.reference_log_flags]
            subprocess.run(command, cwd=cwd, env=child_env(ctx.threads, [cwd]), check=True, capture_output=True)
            theirs = [pixels(out / "sre2l" / f"new{c:03d}" / f"class{c:03d}_id{k:03d}.png")
                      for c in range(len(ctx.classes)) for k in range(ctx.ipc)]
        print(f"reference + {' + '.join(extra)} vs ddpipe: {differ(ours, theirs)}")


def config(ctx, iterations: int) -> RecoverConfig:
    r = ctx.params.sre2l.recover
    return RecoverConfig(iterations=iterations, lr=r.lr, r_bn=r.r_bn, first_bn_multiplier=r.first_bn_multiplier,
                         r_var=r.r_var, jitter=r.jitter, crop_min_scale=1.0, crop_schedule="fixed", flip=False,
                         roll=r.roll)


def sensitivity(ctx, iterations: int) -> None:
    teacher, meta = load_checkpoint(ctx.teacher(ctx.params.sre2l.teacher))
    n = len(ctx.classes)
    init = torch.randn(n, 3, ctx.image_size, ctx.image_size, generator=torch.Generator().manual_seed(0))

    def run(x: torch.Tensor) -> list[np.ndarray]:
        out = recover_batch(teacher, x, torch.arange(n), torch.zeros(n, dtype=torch.long), config(ctx, iterations),
                            meta["mean"], meta["std"], np.random.default_rng(0))
        return list(to_uint8(out, meta["mean"], meta["std"]).numpy().astype(np.float64))

    base = run(init)
    for eps in (1e-6, 1e-3):
        moved = run(init + eps * torch.randn(init.shape, generator=torch.Generator().manual_seed(1)))
        print(f"ddpipe from the noise + {eps:g}: {differ(base, moved)}")


def per_iteration(ctx, plan, checkout: Path, iterations: int, rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="parity-ab-"))
    cwd = adapted(checkout, plan, [], tmp)
    sys.path.insert(0, str(cwd))
    reference = importlib.import_module("recover_cifar")
    shim = sys.modules["ddpipe_teacher"]
    r = ctx.params.sre2l.recover
    args = argparse.Namespace(batch_size=len(ctx.classes), iteration=iterations, lr=r.lr, jitter=r.jitter, r_bn=r.r_bn,
                              first_bn_multiplier=r.first_bn_multiplier, store_best_images=False, verifier=False,
                              syn_data_path=str(tmp))
    ours, meta = load_checkpoint(ctx.teacher(ctx.params.sre2l.teacher))
    n = len(ctx.classes)
    init = torch.randn(n, 3, ctx.image_size, ctx.image_size, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"reference": [], "ddpipe": []}
    for _ in range(rounds):
        model = shim.load(str(ctx.teacher(ctx.params.sre2l.teacher))).eval()  # fresh: the reference never removes hooks
        for p in model.parameters():
            p.requires_grad = False
        began = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            reference.get_images(args, model, None, 0)
        times["reference"].append(1000 * (time.process_time() - began) / iterations)
        began = time.process_time()
        recover_batch(ours, init, torch.arange(n), torch.zeros(n, dtype=torch.long), config(ctx, iterations),
                      meta["mean"], meta["std"], np.random.default_rng(0))
        times["ddpipe"].append(1000 * (time.process_time() - began) / iterations)
    for side, values in times.items():
        print(f"{side}: CPU ms per iteration by round {[round(v, 1) for v in values]}, median "
              f"{np.median(values):.1f}")
    print(f"ratio ddpipe / reference (medians): {np.median(times['ddpipe']) / np.median(times['reference']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, type=Path, help="the SRe2L checkout of the parity run")
    parser.add_argument("--run", required=True, type=Path, help="the parity run's --out folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=150, help="per-iteration timing: iterations per round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ctx = context(args.run / "project", args.run, args.threads)
    plan = sre2l.plan(ctx)
    reference_variants(ctx, plan, args.reference)
    sensitivity(ctx, ctx.params.sre2l.recover.iterations)
    per_iteration(ctx, plan, args.reference, args.iterations, args.rounds)


if __name__ == "__main__":
    main()
