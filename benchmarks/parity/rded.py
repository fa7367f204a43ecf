"""RDED's parity adapter: the reference's synthesis (main.py → synthesize/main.py) beside ddpipe's `rded` stage.

Reference: https://github.com/LINs-lab/RDED (tested at commit 3f6453d), `main.py` with `argument.py`, run as its
CIFAR-10 ConvNet-3 script runs it (scripts/cifar10_10ipc_conv3_to_conv3_cr5.sh: `--subset cifar10 --arch-name conv3
--factor 1 --num-crop 5 --mipc 300 --ipc 10 --stud-name conv3 --re-epochs 300`). Its main.py synthesises and then
trains and evaluates its own student; it builds a ConvNet and loads a pickle from ./data/pretrain_models, wraps it
in nn.DataParallel on CUDA, reads ./data/cifar10/train whatever --train-dir says, with class folders named 00000,
00001, ..., and normalises with ImageNet's mean/std for every dataset. The declared adaptations below make it run
synthesis only (the student is ddpipe's shared relabel → evaluate, for both sets), in one CPU process, against
ddpipe's observer (`rded.observer`, through a shim module the harness writes, `ddpipe_teacher.py`), on the prepared
train folder (its class folders in classes.json order), at the prepared size and class count, with the teachers'
normalisation, its global RNGs seeded from ddpipe's seed, and the losses of the crops it keeps printed (one line
per class). Everything else (the ImageFolder and its shuffled draw of --mipc images per class, MultiRandomCrop,
the zero-padded scoring, the selector, mix_images, the JPEG writer) runs as published.

RDED has no iterations, so no loss curves: the plan has no loss format, and ddpipe's stage runs without
`--losses`. The comparison is the shared evaluation of both sets, the observer's losses of the kept crops (as each
side computed them, and re-scored by one code path on the saved images), time and memory.

The reference's ImageFolder takes exactly --mipc files from every class folder (file_ls[i] for i < mipc: an
IndexError where a class has fewer) and its loader takes --mipc images per batch as one class, so --mipc must not
exceed the smallest class: the adapter refuses `rded.candidates` above it (ddpipe would take every image of the
larger classes, the reference cannot); on digits run with `-S rded.candidates=139`.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmarks.parity.harness import Adaptation, refuse_unexpressible
from stages.pipeline.errors import ParamsError

NAME = "rded"
REPOSITORY = "https://github.com/LINs-lab/RDED"
TESTED_COMMIT = "3f6453d"
MAIN, ARGUMENT = "main.py", "argument.py"
SYNTH, UTILS, VUTILS = "synthesize/main.py", "synthesize/utils.py", "validation/utils.py"
# models.py: imported by synthesize/utils.py (its ConvNet is not used once the teacher is the shim's)
FILES = [MAIN, ARGUMENT, SYNTH, UTILS, "synthesize/models.py", VUTILS]

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TEACHER_BLOCK = (r"(?s)model_teacher = load_model\(\s*model_name=args\.arch_name,.*?\)\s*\n\s*"
                 r"model_teacher = nn\.DataParallel\(model_teacher\)\.cuda\(\)")
CIFAR10_BLOCK = ('elif args.subset == "cifar10":\n    args.nclass = 10\n    args.classes = range(args.nclass)\n'
                 '    args.val_ipc = 1000\n    args.input_size = 32\n')
VALIDATION_IMPORT = ("from validation.main import (\n    main as valid_main,\n)  # The relabel and validation are "
                     "combined here for fast experiment\n")
KEPT = "    indices = torch.argsort(dist, descending=False)[:n]\n"
KEPT_PRINT = 'kept observer losses'  # the line the print adaptation writes, one per class

SHIM = '''"""Written by ddpipe's parity harness (not reference code): ddpipe's observer, classes and seed for RDED."""
import random

import numpy as np
import torch

from stages.models import load_checkpoint

OBSERVER = {observer}  # the teacher folder of rded.observer
CLASSES = {classes}  # classes.json order: the reference's class c is ddpipe's label c
SEED = {seed}  # ddpipe's seed (params `seed`)

# the reference seeds nothing: its global generators at ddpipe's seed, so a run is reproducible (the candidate
# draw is Python's random.shuffle of each class folder's listing, the crops torch's RandomResizedCrop)
random.seed(SEED)
np.random.seed(SEED)
torch.manual_seed(SEED)


def load(folder):
    """The teacher folder (meta.json + model.safetensors) as ddpipe's rded stage loads it, in eval mode."""
    model, _ = load_checkpoint(folder)
    return model.eval()
'''


def teachers(raw: dict) -> list[str]:
    return list(dict.fromkeys([raw["rded"]["observer"], raw["evaluate"]["teacher"]]))


def ddpipe_overrides(raw: dict) -> dict:
    """Nothing to set: every rded knob the reference has maps to a flag or is at its fixed behaviour (checked)."""
    return {}


def check_expressible(r, class_counts: dict[str, int]) -> None:
    """crop_scale has no flag (MultiRandomCrop uses RandomResizedCrop's default area); --mipc must fit every class."""
    refuse_unexpressible("rded", {"crop_scale": (list(r.crop_scale), [0.08, 1.0])},
                         "the reference's MultiRandomCrop")
    smallest = min(class_counts, key=class_counts.get)
    if r.candidates > class_counts[smallest]:
        raise ParamsError(
            f"rded.candidates = {r.candidates}: above the smallest class ({class_counts[smallest]} train images of "
            f"class {smallest!r}); the reference's ImageFolder takes exactly --mipc files of every class (an "
            f"IndexError below that) and its loader reads --mipc images as one class, so it cannot take every "
            f"image of a smaller class as ddpipe does; set -S rded.candidates={class_counts[smallest]} for the "
            "comparison")


def plan(ctx):
    from benchmarks.parity.compare import Plan

    r = ctx.params.rded
    train = ctx.data / "train"
    counts = {c: sum(1 for p in (train / c).iterdir() if p.is_file()) for c in ctx.classes}
    check_expressible(r, counts)
    classes, size, ds = len(ctx.classes), ctx.image_size, ctx.dataset
    mean, std = ([round(v, 6) for v in values] for values in (ctx.mean, ctx.std))
    observer = ctx.teacher(r.observer)
    adaptations = [
        Adaptation(MAIN, VALIDATION_IMPORT, "", "synthesis only: the reference's own student training "
                   "(validation/main.py, not copied) is replaced by ddpipe's shared relabel → evaluate of both sets",
                   count=1),
        Adaptation(MAIN, "    valid_main(args)\n", "", "synthesis only (as above)", count=1),
        Adaptation(ARGUMENT, 'args.train_dir = f"./data/{args.subset}/train/"',
                   "pass  # --train-dir as given (parity harness)",
                   f"data: --train-dir (data/{ds}/train) is used instead of being overwritten with "
                   "./data/<subset>/train", count=1),
        Adaptation(ARGUMENT, CIFAR10_BLOCK, CIFAR10_BLOCK.replace("args.nclass = 10", f"args.nclass = {classes}")
                   .replace("args.input_size = 32", f"args.input_size = {size}"),
                   f"class count and image size: {classes} classes at {size} px in the cifar10 branch "
                   "(--subset cifar10, as the CIFAR-10 script runs)", count=1),
        Adaptation(SYNTH, TEACHER_BLOCK, "model_teacher = ddpipe_teacher.load(ddpipe_teacher.OBSERVER)",
                   f"teacher: ddpipe's observer {r.observer} (rded.observer) through the harness's shim instead of "
                   "the reference's ConvNet / torchvision model loaded from ./data/pretrain_models/<subset>_<arch>"
                   ".pth and wrapped in nn.DataParallel(...).cuda(); eval mode and frozen parameters as published",
                   regex=True, count=1),
        Adaptation(SYNTH, "from validation.utils import ImageFolder\n",
                   "from validation.utils import ImageFolder\nimport ddpipe_teacher\n",
                   "import the shim (observer, seed)", count=1),
        Adaptation(SYNTH, "num_workers=args.workers,", "num_workers=0,",
                   "loader in the main process (2 CPU cores; argument.py sets 4 workers at IPC 10): the crops then "
                   "draw from the seeded global generator", count=1),
        Adaptation(VUTILS, "import random\n", "import random\nimport ddpipe_teacher\n",
                   "import the shim (class folder names) where the ImageFolder is defined", count=1),
        Adaptation(VUTILS, 'dir_path = self.root + "/" + str(classes[c]).zfill(5)',
                   'dir_path = self.root + "/" + ddpipe_teacher.CLASSES[c]',
                   "data: class c's folder is ddpipe's class name (classes.json order), not a zero-padded index",
                   count=1),
        Adaptation(UTILS, ".cuda()", ".cpu()", "device: no GPU here", count=3),
        Adaptation(UTILS, f"transforms.Normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})",
                   f"transforms.Normalize(mean={mean}, std={std})",
                   f"normalisation: the teachers' mean/std (data/{ds}/meta.json) instead of ImageNet's, used for "
                   "every dataset", count=1),
        Adaptation(UTILS, "std=[1 / 0.229, 1 / 0.224, 1 / 0.225]", f"std={[round(1 / s, 6) for s in std]}",
                   "normalisation: denormalize's first step", count=1),
        Adaptation(UTILS, "mean=[-0.485, -0.456, -0.406]", f"mean={[-m for m in mean]}",
                   "normalisation: denormalize's second step", count=1),
        Adaptation(UTILS, KEPT, KEPT + f'    print("{KEPT_PRINT}", " ".join(f"{{v:.6f}}" for v in '
                   'dist[indices].tolist()))\n',
                   "print the observer's losses of the kept crops, one line per class (prints only)", count=1),
    ]
    command = [sys.executable, "main.py", "--subset", "cifar10", "--arch-name", r.observer,
               "--factor", str(r.factor), "--num-crop", str(r.crops), "--mipc", str(r.candidates),
               "--ipc", str(ctx.ipc), "--stud-name", "conv3", "--re-epochs", "300",
               "--train-dir", str(train), "--syn-data-path", "{out}"]
    sets = ctx.sets.relative_to(ctx.project)
    knobs = [
        ("observer", r.observer, "the shim's OBSERVER in place of load_model(--arch-name) (adaptation 5); "
         "--arch-name names the experiment folder only"),
        ("candidates", str(r.candidates), f"--mipc {r.candidates} (at most the smallest class: the adapter refuses "
         "more)"),
        ("crops", str(r.crops), f"--num-crop {r.crops}"),
        ("factor", str(r.factor), f"--factor {r.factor}"),
        ("crop_scale", str(list(r.crop_scale)), "no flag: RandomResizedCrop's default (0.08, 1), ratio (1, 1) "
         "(--min-scale-crops is read by validation only)"),
        ("ipc", str(ctx.ipc), f"--ipc {ctx.ipc}"),
        ("seed", str(ctx.seed), "none in the reference; the shim seeds random, numpy and torch at it"),
        ("output", "PNG, rounded", "JPEG, PIL's default quality 75, after truncation (astype(uint8))"),
    ]
    notes = [
        "candidates: the reference's ImageFolder shuffles each class folder's os.listdir with Python's global "
        "random and takes the first --mipc; ddpipe draws them with its per-class numpy generator: with the same "
        "seed the two sides score different candidates and crops, so the sets are different images and the pixel "
        "table compares different images",
        "crop boxes: torchvision's RandomResizedCrop draws integer pixel boxes (area and side rounded, 10 tries, "
        "then a centre fallback); ddpipe's sample_boxes draws fractional boxes (the same area and ratio law) and "
        "resamples them with roi_align at pixel centres",
        "scores: the reference computes the cross-entropy as -log(softmax(logits)) in float32 (0 where the softmax "
        "rounds to 1, so very confident crops tie); ddpipe uses F.cross_entropy (log-softmax); the reference's "
        "torch.argsort is not stable, ddpipe's sort is",
        "the saved set is JPEG at quality 75 after truncation in the reference; ddpipe writes lossless PNG after "
        "rounding",
        "the reference's own student training and evaluation (validation/main.py) is not run: both sets go "
        "through ddpipe's shared relabel → evaluate",
        "argument.py creates ./exp/<exp_name> in the copy; the images go to --syn-data-path (an absolute path, "
        "which os.path.join keeps)",
    ]
    return Plan(adaptations=adaptations,
                shims={"ddpipe_teacher.py": SHIM.replace("{observer}", repr(str(observer)))
                       .replace("{classes}", repr(list(ctx.classes))).replace("{seed}", str(ctx.seed))},
                reference_cwd="", reference_command=command, reference_log_flags=[],
                reference_images=r"(?P<label>\d{5})/class\d{5}_id(?P<index>\d{5})\.jpg",
                loss_format=None,
                ddpipe_command=["stages.methods.rded.realistic_crops", "--teachers", f"artifacts/{ds}/teachers",
                                "--data", f"data/{ds}", "--out", f"{sets}/distilled/rded"],
                ddpipe_set="rded", knobs=knobs, notes=notes, set_measures=set_measures)


def kept_losses(log: str) -> list[list[float]]:
    """The reference's printed losses of the kept crops, one list per class (print order = class order)."""
    return [[float(v) for v in line.split()[3:]] for line in log.splitlines() if line.startswith(KEPT_PRINT)]


def set_measures(ctx, ddpipe_dir: Path, reference_dir: Path) -> dict:
    """The observer's cross-entropy on the true class of the kept crops: as each side computed it while selecting
    (ddpipe's card, the reference's printed lines: mean over classes of each class's mean), and re-scored by one
    code path (ddpipe's predict) on the saved images of both sets (at factor 1 an image is one kept crop)."""
    card = json.loads((ddpipe_dir / "card.json").read_text())
    printed = kept_losses((ctx.out / "logs" / "reference.log").read_text())
    if len(printed) != len(ctx.classes):
        raise ParamsError(f"{ctx.out / 'logs' / 'reference.log'}: {len(printed)} lines {KEPT_PRINT!r}, expected one "
                          f"per class ({len(ctx.classes)})")
    out = {"observer loss of the kept crops, as computed while selecting (mean over classes)": {
        "ddpipe": round(card["synthesis"]["observer_loss_kept"], 6),
        "reference": round(statistics.fmean(statistics.fmean(c) for c in printed), 6)}}
    ours, theirs = rescore(ctx, ddpipe_dir), rescore(ctx, reference_dir)
    what = "the saved images" if ctx.params.rded.factor == 1 else "the saved (stitched) images"
    for key, label in (("mean", f"observer loss of {what}, re-scored (mean)"),
                       ("median", f"observer loss of {what}, re-scored (median)"),
                       ("max", f"observer loss of {what}, re-scored (max)"),
                       ("correct", f"share of {what} the observer classifies correctly")):
        out[label] = {"ddpipe": ours[key], "reference": theirs[key]}
    return out


def rescore(ctx, folder: Path) -> dict:
    """The observer's cross-entropy on the true class of every image of a set folder (<class>/<k>.png)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from stages.data.folder import normalise
    from stages.models import load_checkpoint, predict

    images, labels = [], []
    for label, name in enumerate(ctx.classes):
        for path in sorted((folder / name).glob("*.png")):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
    x = normalise(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255, ctx.mean, ctx.std)
    model, _ = load_checkpoint(ctx.teacher(ctx.params.rded.observer))
    with torch.no_grad():
        logits = predict(model, x)
    y = torch.tensor(labels)
    loss = F.cross_entropy(logits, y, reduction="none")
    return {"mean": round(float(loss.mean()), 6), "median": round(float(loss.median()), 6),
            "max": round(float(loss.max()), 6), "correct": round(float((logits.argmax(1) == y).float().mean()), 4)}
