"""EDC's parity adapter: the reference's CIFAR-10 recover (Branch_CIFAR_10/recover/recover.py) beside ddpipe's
`statistics` + `recover@edc`.

Reference: https://github.com/shaoshitong/EDC, folder `Branch_CIFAR_10/recover` (tested at commit 80116a7), run as
its recover.sh runs it (`--category-aware global`, real starts, `--store-best-images`). Its recover spawns one
process per GPU under NCCL, loads eight CIFAR-10 observers from `--pre-train-path` and computes the real set's
statistics with torchvision's CIFAR10 (downloaded). The declared adaptations below make it run in one CPU process,
against ddpipe's observers (`edc.observers`, through a shim module the harness writes, `ddpipe_teacher.py`), on the
prepared train folder (an ImageFolder with the same transforms at the prepared size), with the teachers'
normalisation, its loss printed every iteration and its global RNGs seeded from ddpipe's seed. Everything else
(the hooks BNFeatureHook / ConvFeatureHook and their EMAs, the observer counter, the crop and flips, Adam, the
cosine, the clip, the JPEG writer) runs as published.

The reference's statistics, as published, are usable only by a second run: the first run accumulates them, saves
them and keeps them in memory as Python lists, which the recover hooks then index with the label tensor (a
TypeError). So the statistics pass runs first as its own command (`--iteration 0`, nothing stored: the
`reference_before` of the plan), and the measured runs read the saved files, as a second run of the published
script does; ddpipe's statistics stage is its `ddpipe_before`. Both are timed apart.

ddpipe runs with the reference's flips (`edc.flip: true`, `edc.statistics.flip: true`; ddpipe's digits default is
false), which the reference cannot turn off.
"""
from __future__ import annotations

import sys

from benchmarks.parity.harness import Adaptation, LossFormat, refuse_unexpressible
from stages.pipeline.errors import ParamsError

NAME = "edc"
REPOSITORY = "https://github.com/shaoshitong/EDC"
TESTED_COMMIT = "80116a7"
FOLDER = "Branch_CIFAR_10/recover"
SCRIPT = f"{FOLDER}/recover.py"
UTILS = f"{FOLDER}/utils.py"
FILES = [SCRIPT, UTILS]  # models/ and baseline.py only built the eight CIFAR observers (adaptation 1, 2)

CIFAR100_MEAN = "[0.5071, 0.4867, 0.4408]"  # the CIFAR-10 branch normalises with CIFAR-100's mean/std
CIFAR100_STD = "[0.2675, 0.2565, 0.2761]"
TEACHER_BLOCK = (r'(?s)aux_teacher = \["ResNet18", "ConvNetW128".*?'
                 r'model_teacher\[-1\]\.load_state_dict\(checkpoint\)')
SPAWN_BLOCK = (r"(?s)os\.environ\[\"CUDA_VISIBLE_DEVICES\"\] = args\.gpu_id.*?"
               r"mp\.spawn\(main_worker, .*?ipc_id_range\)\)")
PRINT_IF = "            if iteration % save_every == 0 and args.gpu == 0:\n"
VERIFY_IF = "                if hook_for_display is not None:\n                    hook_for_display(inputs, targets)\n"

SHIM = '''"""Written by ddpipe's parity harness (not reference code): ddpipe's observers and seed for the reference."""
import random

import numpy as np
import torch

from stages.models import load_checkpoint

OBSERVERS = {observers}  # edc.observers: the teacher folders under --pre-train-path
SEED = {seed}  # ddpipe's seed (params `seed`)

# the reference seeds nothing: its global generators at ddpipe's seed, so a run is reproducible (its starts come
# from numpy's global generator, its crops and flips from torch's reseeded by Python's `random` every iteration)
random.seed(SEED)
np.random.seed(SEED)
torch.manual_seed(SEED)


def load(folder, arch):
    """The teacher folder <folder>/<arch> (meta.json + model.safetensors) as ddpipe's recover loads it."""
    model, _ = load_checkpoint(f"{{folder}}/{{arch}}")
    return model.eval()
'''


def teachers(raw: dict) -> list[str]:
    return list(dict.fromkeys([*raw["edc"]["observers"], raw["evaluate"]["teacher"]]))


def ddpipe_overrides(raw: dict) -> dict:
    """The reference always flips (statistics loader, each start, each iteration's view)."""
    return {"edc": {"flip": True, "statistics": {"flip": True}}}


def check_expressible(e) -> None:
    """ddpipe knobs the reference has no flag or code path for must be at its fixed behaviour."""
    fixed = {"statistics.crop": (e.statistics.crop, "pad"), "statistics.flip": (e.statistics.flip, True),
             "flip": (e.flip, True), "distinct_init": (e.distinct_init, False), "patch_swap": (e.patch_swap, True),
             "jpeg_quality": (e.jpeg_quality, 75)}
    refuse_unexpressible("edc", fixed, "the reference's CIFAR-10 recover")


def plan(ctx):
    from benchmarks.parity.compare import Plan

    e = ctx.params.edc
    check_expressible(e)
    if ctx.classes != sorted(ctx.classes):
        raise ParamsError(f"classes {ctx.classes}: the reference's ImageFolder labels classes in sorted folder "
                          "order; the comparison needs classes.json in that order")
    classes, size, ds = len(ctx.classes), ctx.image_size, ctx.dataset
    mean, std = ([round(v, 6) for v in values] for values in (ctx.mean, ctx.std))
    train_images = sum(1 for p in (ctx.data / "train").rglob("*") if p.is_file())
    adaptations = [
        Adaptation(SCRIPT, TEACHER_BLOCK, "aux_teacher = ddpipe_teacher.OBSERVERS\n    args.aux_teacher = aux_teacher\n"
                   "    model_teacher = [ddpipe_teacher.load(args.pre_train_path, name) for name in aux_teacher]",
                   f"teachers: ddpipe's observers {list(e.observers)} (edc.observers) through the harness's shim "
                   "instead of the eight CIFAR-10 networks loaded from pickles under --pre-train-path; aux_teacher "
                   "keeps the hooks' names (<class>_<arch>=<module>)", regex=True, count=1),
        Adaptation(SCRIPT, "import models as ti_models\nfrom baseline import get_network as ti_get_network\n",
                   "import ddpipe_teacher\n", "imports: models/ and baseline.py only built the replaced observers "
                   "(they need kornia); the shim is imported instead, which also seeds", count=1),
        Adaptation(SCRIPT, SPAWN_BLOCK, "main_worker(0, 1, args, model_teacher, model_verifier, ipc_id_range)",
                   "one CPU process: main_worker called directly instead of mp.spawn per GPU (GatherLayer is unused)",
                   regex=True, count=1),
        Adaptation(SCRIPT, r"dist\.init_process_group\([^)]*\)", "pass", "no NCCL process group (one process)",
                   regex=True, count=1),
        Adaptation(SCRIPT, "torch.cuda.set_device(args.gpu)", "pass", "device: no GPU here", count=1),
        Adaptation(SCRIPT, ".cuda(gpu)", ".cpu()", "device: no GPU here", count=7),
        Adaptation(UTILS, ".cuda(gpu)", ".cpu()", "device: no GPU here (the hooks' saved statistics)", count=10),
        Adaptation(SCRIPT, "f'cuda:{gpu}'", "'cpu'", "device: no GPU here", count=3),
        Adaptation(SCRIPT, "criterion.cuda()", "criterion.cpu()", "device: no GPU here", count=1),
        Adaptation(SCRIPT, "torchvision.datasets.CIFAR10(root=args.train_data_path, train=True, download=True,",
                   "torchvision.datasets.ImageFolder(root=args.train_data_path,",
                   f"statistics data: an ImageFolder over the prepared train folder "
                   f"(--train-data-path data/{ds}/train) with the same transforms, instead of torchvision's CIFAR10 "
                   "(downloaded)", count=1),
        Adaptation(SCRIPT, "transforms.RandomCrop(32, padding=4)",
                   f"transforms.RandomCrop({size}, padding={size // 8})",
                   f"image size: the statistics loader's crop at {size} px (padding size/8 as 4 of 32)", count=1),
        Adaptation(SCRIPT, "num_workers=4,", "num_workers=0,", "statistics loader in the main process (2 CPU cores; "
                   "the shuffle and the augmentation draw from the same seeded generators)", count=1),
        Adaptation(SCRIPT, "batch_size=64,", f"batch_size={e.statistics.batch_size},",
                   "statistics batch: edc.statistics.batch_size (the reference's 64)", count=1),
        Adaptation(UTILS, "data_number=50000", f"data_number={train_images}",
                   f"the real set's size: the conv statistics are summed as batch/N over the {train_images} prepared "
                   "train images, not CIFAR-10's 50,000", count=1),
        Adaptation(SCRIPT, "transforms.Resize((32,32))", f"transforms.Resize(({size},{size}))",
                   f"image size: the starts at {size} px (the prepared images' own size: no resampling)", count=2),
        Adaptation(SCRIPT, "transforms.RandomResizedCrop(32, scale=(0.08, 1))",
                   f"transforms.RandomResizedCrop({size}, scale=({e.crop_min_scale}, 1))",
                   f"image size: each iteration's view at {size} px; area from edc.crop_min_scale", count=1),
        Adaptation(SCRIPT, "len(ipc_id_range), 10)", f"len(ipc_id_range), {classes})",
                   f"class count: {classes} classes", count=3),
        Adaptation(SCRIPT, "np.arange(10)", f"np.arange({classes})", f"class count: {classes}", count=1),
        Adaptation(SCRIPT, "total_number = 10 *", f"total_number = {classes} *", f"class count: {classes}", count=1),
        Adaptation(UTILS, "range(10)", f"range({classes})", f"class count: the hooks' per-class targets ({classes})",
                   count=12),
        Adaptation(SCRIPT, CIFAR100_MEAN, str(mean), f"normalisation: the teachers' mean (data/{ds}/meta.json), in "
                   "every Normalize (one is in a comment)", count=5),
        Adaptation(SCRIPT, CIFAR100_STD, str(std), "normalisation: the teachers' std", count=5),
        Adaptation(UTILS, CIFAR100_MEAN, str(mean), "normalisation: clip and denormalize", count=4),
        Adaptation(UTILS, CIFAR100_STD, str(std), "normalisation: clip and denormalize", count=4),
        Adaptation(SCRIPT, PRINT_IF, "            if args.gpu == 0:\n",
                   "loss print every iteration, not every 100th (prints only)", count=1),
        Adaptation(SCRIPT, VERIFY_IF, VERIFY_IF.replace("is not None:", "is not None and iteration % save_every == 0:"),
                   "the verifier pass stays at every 100th iteration: it runs observer 0 through its hooks, which "
                   "moves their EMAs, so printing more must not run it more", count=1),
    ]
    train, teachers_dir = ctx.data / "train", ctx.project / "artifacts" / ds / "teachers"
    command = [sys.executable, "recover.py", "--arch-name", "resnet18", "--exp-name", "edc",
               "--syn-data-path", "{out}", "--batch-size", str(e.batch_size), "--category-aware", "global",
               "--lr", str(e.lr), "--drop-rate", str(e.drop_rate), "--ipc-number", str(ctx.ipc),
               "--training-momentum", str(e.momentum), "--iteration", str(e.iterations), "--r-loss", str(e.r_loss),
               "--first-multiplier", str(e.first_multiplier), "--flatness-weight", str(e.flatness_weight),
               "--ema_alpha", str(e.ema_alpha), *(["--flatness"] if e.flatness else []),
               "--initial-img-dir", str(train), "--train-data-path", str(train), "--pre-train-path", str(teachers_dir),
               "--statistic-path", "./statistic", "--verifier", "--store-best-images"]
    statistics = [c for c in command if c != "--store-best-images"]
    statistics[statistics.index("--iteration") + 1] = "0"
    sets = ctx.sets.relative_to(ctx.project)
    knobs = [
        ("observers", ", ".join(e.observers), "the shim's OBSERVERS in place of the hard-coded aux_teacher list "
         "(ResNet18, ConvNetW128, MobileNetV2, WRN_16_2, ShuffleNetV2_0_5, ConvNetD1, ConvNetD2, ConvNetW32)"),
        ("iterations, lr, r_loss, first_multiplier", f"{e.iterations}, {e.lr}, {e.r_loss}, {e.first_multiplier}",
         "--iteration, --lr, --r-loss, --first-multiplier (Adam 0.5/0.9, cosine to 0 in both)"),
        ("momentum, drop_rate", f"{e.momentum}, {e.drop_rate}", "--training-momentum, --drop-rate"),
        ("batch_size", str(e.batch_size), f"--batch-size {e.batch_size} (class-major turn_index in both)"),
        ("flatness, flatness_weight, ema_alpha", f"{e.flatness}, {e.flatness_weight}, {e.ema_alpha}",
         "--flatness, --flatness-weight, --ema_alpha"),
        ("crop_min_scale", str(e.crop_min_scale), "RandomResizedCrop's scale (hard-coded 0.08; adapted)"),
        ("flip, statistics.flip", f"{e.flip}, {e.statistics.flip}", "always: RandomHorizontalFlip in the statistics "
         "loader, on each start and in each iteration's view (ddpipe set to true by the adapter)"),
        ("statistics.crop, statistics.batch_size", f"{e.statistics.crop}, {e.statistics.batch_size}",
         f"RandomCrop({size}, padding={size // 8}) (adapted from 32/4), batch 64 (adapted to the knob)"),
        ("distinct_init", str(e.distinct_init), "no flag: np.random.choice per image (false)"),
        ("patch_swap", str(e.patch_swap), "no flag: ConvFeatureHook.save swaps the class patch mean/var (true)"),
        ("jpeg_quality", str(e.jpeg_quality), "no flag: `.jpg` at PIL's default 75, truncated by astype(uint8)"),
        ("seed", str(ctx.seed), "none in the reference; the shim seeds random, numpy and torch at it"),
        ("statistics", f"python -m stages.methods.edc.statistics → artifacts/{ds}/edc_statistics",
         "recover.py --iteration 0 without --store-best-images: the hooks' save() into ./statistic of the copy"),
    ]
    notes = [
        "the hooks' EMAs of each statistic run on across batches in the reference; ddpipe starts them from 0 in every "
        "batch (its declared deviation, docs/methods/edc.md): the first batch is the same, later ones are not",
        "the reference's verifier (observer 0) classifies the images at iteration 0 and after each batch ('Testing...'"
        ", on the JPEG-quantised pixels); both passes go through observer 0's hooks and update their EMAs; ddpipe has "
        "no such pass",
        "starts: the reference draws each image's start with numpy's global np.random.choice and flips it with "
        "torch's RandomHorizontalFlip; ddpipe draws from its per-batch generator: with the same seed the starts are "
        "different images, so the pixel table compares different trajectories (not the same image twice)",
        "the crop box and flip come from torch's global generator reseeded each iteration by Python's random "
        "(ApplyTransformToPair) in the reference, from ddpipe's per-batch numpy generator in ddpipe",
        "the statistics pass draws its shuffle and augmentation from torch's global generator (DataLoader) in the "
        "reference, from ddpipe's per-observer numpy generator in ddpipe; the reference computes it in float32, "
        "ddpipe in float64",
        "as published, a first run of recover.py that computes the statistics fails at its first recover step (the "
        "class statistics are then a Python list indexed with the label tensor); only a run that loads the saved "
        "files works: the harness runs the statistics pass as its own command first",
        "the saved set is JPEG at quality 75 after truncation in the reference; ddpipe applies the same JPEG "
        "round trip (jpeg_quality 75) and stores the decoded pixels as PNG after rounding",
        "`--verifier` has no effect (the verifier always runs); `--arch-name` is unused",
    ]
    return Plan(adaptations=adaptations,
                shims={"ddpipe_teacher.py": SHIM.replace("{observers}", repr(list(e.observers)))
                       .replace("{seed}", str(ctx.seed)).replace("{{", "{").replace("}}", "}")},
                reference_cwd=FOLDER, reference_command=command, reference_log_flags=[],
                reference_images=r"edc/new(?P<label>\d{3})/class\d{3}_id(?P<index>\d{3})\.jpg",
                loss_format=LossFormat(start=r"^-+iteration (\d+)-+$",
                                       fields={"ce": r"^main criterion (\S+)$", "bn": r"^loss_r_feature (\S+)$",
                                               "total": r"^total loss (\S+)$"}),
                ddpipe_command=["stages.recover", "edc", "--teachers", f"artifacts/{ds}/teachers",
                                "--init", f"artifacts/{ds}/edc_statistics", "--data", f"data/{ds}",
                                "--out", f"{sets}/distilled/edc", "--stats", f"{sets}/synthesis/edc.json"],
                ddpipe_before=[["stages.methods.edc.statistics", "--teachers", f"artifacts/{ds}/teachers",
                                "--data", f"data/{ds}", "--out", f"artifacts/{ds}/edc_statistics"]],
                reference_before=[statistics], ddpipe_set="edc", knobs=knobs, notes=notes)
