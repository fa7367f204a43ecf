"""RDED parity diagnostics (docs/parity.md#rded): the two selections and stitchings on the SAME candidate crops.

The parity run compares two sets drawn from different random candidates and crops. This takes the randomness
out: after a parity run (its work project holds the data and the observer), with the same checkout,

    python benchmarks/parity/diagnostics/rded.py --reference <RDED checkout> --run <the parity run's --out> [--factor 2]

copies and adapts the reference as the harness does and, in one process in that copy (the reference's modules
imported with its own argument parsing of the parity command), for every class: draws ddpipe's candidate crops
(`candidate_patches`, ddpipe's seed), gives the same normalised crops to the reference's `selector` and to ddpipe's
`patch_losses` + `select_patches`, and the kept crops to the reference's `mix_images` and ddpipe's `stitch`.
Prints, per class, whether the kept crops are the same crops in the same order, and the largest difference of the
stitched images. Reference code runs only in the temporary copy.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script from anywhere

from benchmarks.parity import rded  # noqa: E402
from benchmarks.parity.compare import context  # noqa: E402
from benchmarks.parity.harness import apply_adaptations, child_env, copy_reference, write_shims  # noqa: E402

PROBE = '''
import sys
sys.argv = {argv}  # the parity run's reference command: argument.py parses it on import
import numpy as np
import torch
from synthesize.utils import batched_forward, cross_entropy, mix_images, pad, selector
import ddpipe_teacher
from stages.data.folder import normalise
from stages.data.prepared import open_images
from stages.methods.rded.patches import candidate_patches, patch_losses, select_patches, stitch
from stages.pipeline.seeds import derive_seed

classes, size, ipc, factor, crops, candidates = {classes}, {size}, {ipc}, {factor}, {crops}, {candidates}
mean, std, seed = {mean}, {std}, {seed}
observer = ddpipe_teacher.load(ddpipe_teacher.OBSERVER)
train = open_images("{train}", classes, size)
n = ipc * factor ** 2
same_all, worst = 0, 0.0
for label, name in enumerate(classes):
    rng = np.random.default_rng(derive_seed(seed, "rded", name))
    members = torch.nonzero(train.labels == label).flatten()
    chosen = rng.permutation(len(members))[:min(candidates, len(members))]
    images = train.images[members][torch.from_numpy(chosen)]
    patches = candidate_patches(images, crops, size // factor, (0.08, 1.0), rng)
    m = len(patches)
    normalised = normalise(patches.flatten(0, 1), mean, std).view(m, crops, 3, size // factor, size // factor)
    theirs = selector(n, observer, normalised, torch.full((m,), label), size, m=crops)
    index, crop = select_patches(patch_losses(observer, patches, label, mean, std, size), n)
    ours = normalised[index, crop]
    same = torch.equal(theirs, ours)
    # which kept crops differ: rank positions where the two selections hold another crop
    differ = [k for k in range(n) if not torch.equal(theirs[k], ours[k])]
    in_both = sum(any(torch.equal(t, o) for o in ours) for t in theirs)
    mixed = mix_images(theirs, size, factor, ipc)
    stitched = stitch(ours, ipc, factor, size)
    stitched_theirs = stitch(theirs, ipc, factor, size)
    gap = float((mixed - stitched_theirs).abs().max())
    worst = max(worst, gap)
    same_all += same
    # the reference's score, -log(softmax) in float32: 0 where the softmax rounds to 1 (ties its argsort orders
    # arbitrarily); ddpipe's log-softmax keeps those apart
    flat = normalised.permute(1, 0, 2, 3, 4).flatten(0, 1)
    scores = cross_entropy(batched_forward(observer, pad(flat, size), m), torch.full((m,), label).repeat(crops))
    zeros = int((scores.view(crops, m).min(0).values == 0).sum())
    print(f"class {{name}}: {{m * crops}} crops; kept the same crops in the same order: {{same}} "
          f"(rank positions that differ: {{differ[:8]}}{{'...' if len(differ) > 8 else ''}}; "
          f"{{in_both}} of {{n}} kept crops in both; candidates whose best crop the reference scores exactly 0: "
          f"{{zeros}}); mix_images vs stitch on the reference's kept crops: max |diff| {{gap:.2e}}")
print(f"classes with the same kept crops in the same order: {{same_all}} of {{len(classes)}}; "
      f"stitching: max |diff| {{worst:.2e}} (factor {{factor}})")
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, type=Path)
    parser.add_argument("--run", required=True, type=Path, help="a parity run's --out folder")
    parser.add_argument("--factor", type=int, help="override rded.factor (e.g. 2: the stitching of 4 patches)")
    args = parser.parse_args()
    ctx = context(args.run / "project", args.run, threads=2)
    r = ctx.params.rded
    if args.factor:
        r.factor = args.factor
    plan = rded.plan(ctx)
    with tempfile.TemporaryDirectory(prefix="parity-rded-diag-") as tmp:
        root = copy_reference(args.reference, rded.FILES, Path(tmp))
        print("\n".join(apply_adaptations(root, plan.adaptations) + write_shims(root, plan.shims)))
        argv = [c.replace("{out}", str(Path(tmp) / "images")) for c in plan.reference_command[1:]]
        probe = PROBE.format(argv=argv, classes=list(ctx.classes), size=ctx.image_size, ipc=ctx.ipc, factor=r.factor,
                             crops=r.crops, candidates=r.candidates, mean=list(ctx.mean), std=list(ctx.std),
                             seed=ctx.seed, train=ctx.data / "train")
        subprocess.run([sys.executable, "-c", probe], cwd=root, env=child_env(2, [root]), check=True)


if __name__ == "__main__":
    main()
