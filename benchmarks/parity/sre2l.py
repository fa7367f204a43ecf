"""SRe2L's parity adapter: the reference's small-dataset recover (recover_cifar.py) beside `recover@sre2l`.

Reference: https://github.com/VILA-Lab/SRe2L, folder `SRe2L/*small_dataset` (tested at commit 8d00cba). Its
recover builds a torchvision ResNet-18 for CIFAR-100 on "cuda"; the declared adaptations below make it run on
the CPU, on the prepared dataset's classes, size and normalisation, against ddpipe's own teacher (through a
shim module the harness writes, `ddpipe_teacher.py`), with its loss printed every iteration and its initial
noise drawn from ddpipe's per-batch seed. Everything else (the loop, the BN hooks, the losses, Adam, the cosine,
the roll, the clamp, the JPEG writer) runs as published. ddpipe runs with the reference's batching
(`ipc_per_batch: 1`: one IPC index x every class per batch) and roll (`roll: positive`).
"""
from __future__ import annotations

from benchmarks.parity.harness import Adaptation, LossFormat, refuse_unexpressible
from stages.pipeline.seeds import derive_seed

NAME = "sre2l"
REPOSITORY = "https://github.com/VILA-Lab/SRe2L"
TESTED_COMMIT = "8d00cba"
FOLDER = "SRe2L/*small_dataset"
SCRIPT = f"{FOLDER}/recover_cifar.py"
FILES = [SCRIPT, f"{FOLDER}/utils.py"]

TEACHER_BLOCK = (r'(?s)import torchvision\s*\n\s*model_teacher = torchvision\.models\.get_model\("resnet18", '
                 r'num_classes=100\).*?model_teacher\.load_state_dict\(checkpoint\["state_dict"\]\)')
CIFAR_MEAN = "np.array([0.4914, 0.4822, 0.4465])"
CIFAR_STD = "np.array([0.2023, 0.1994, 0.2010])"

SHIM = '''"""Written by ddpipe's parity harness (not reference code): ddpipe's teacher and seeds for the reference."""
import random

import torch

from stages.models import load_checkpoint
from stages.recover_engine.engine import Group

SEED = {seed}  # derive_seed(seed, "sre2l"): recover@sre2l's base seed


def load(path):
    """The teacher folder (meta.json + model.safetensors) as ddpipe's recover loads it, in eval mode."""
    model, _ = load_checkpoint(path)
    return model


def seed(ipc_id):
    """The global RNGs at ddpipe's seed of the batch of IPC index `ipc_id` (ipc_per_batch 1): the reference's
    torch.randn then draws the very noise ddpipe starts from; its rolls come from Python's `random`."""
    s = Group(ipc_id, ipc_id + 1).seed(SEED)
    torch.manual_seed(s)
    random.seed(s)
'''


def teachers(raw: dict) -> list[str]:
    return list(dict.fromkeys([raw["sre2l"]["teacher"], raw["evaluate"]["teacher"]]))


def ddpipe_overrides(raw: dict) -> dict:
    """The reference's batching (one IPC index x every class per batch) and roll ([0, jitter])."""
    return {"sre2l": {"recover": {"roll": "positive", "ipc_per_batch": 1, "ipc_start": 0, "ipc_end": None}}}


def check_expressible(r) -> None:
    """Engine settings the reference has no flag for must be at its fixed behaviour."""
    fixed = {"r_var": (r.r_var, 1.0), "crop_min_scale": (r.crop_min_scale, 1.0), "flip": (r.flip, False),
             "dwa_steps": (r.dwa_steps, 0), "clamp_start": (r.clamp_start, False)}
    refuse_unexpressible("sre2l.recover", fixed)


def plan(ctx):
    from benchmarks.parity.compare import Plan

    r = ctx.params.sre2l.recover
    check_expressible(r)
    classes, size = len(ctx.classes), ctx.image_size
    mean, std = ([round(v, 6) for v in values] for values in (ctx.mean, ctx.std))
    adaptations = [
        Adaptation(SCRIPT, TEACHER_BLOCK, "model_teacher = ddpipe_teacher.load(args.arch_path)",
                   f"teacher: ddpipe's {ctx.params.sre2l.teacher} through the harness's shim instead of torchvision's "
                   "CIFAR ResNet-18 (100 classes) in nn.DataParallel loaded from a pickle's state_dict",
                   regex=True, count=1),
        Adaptation(SCRIPT, '"cuda"', '"cpu"', "device: no GPU here", count=2),
        Adaptation(SCRIPT, "criterion.cuda()", "criterion.cpu()", "device: no GPU here", count=1),
        Adaptation(SCRIPT, "torch.LongTensor(np.arange(100))", f"torch.LongTensor(np.arange({classes}))",
                   f"class count: {classes} classes, not CIFAR-100's", count=1),
        Adaptation(SCRIPT, "range(0, 100, batch_size)", f"range(0, {classes}, batch_size)",
                   f"class count: {classes}", count=1),
        Adaptation(SCRIPT, "min(kk + batch_size, 100)", f"min(kk + batch_size, {classes})",
                   f"class count: {classes}", count=1),
        Adaptation(SCRIPT, CIFAR_MEAN, f"np.array({mean})",
                   f"normalisation: the prepared data's mean (data/{ctx.dataset}/meta.json), clamp and de-normalise",
                   count=2),
        Adaptation(SCRIPT, CIFAR_STD, f"np.array({std})", "normalisation: the prepared data's std", count=2),
        Adaptation(SCRIPT, "(targets.shape[0], 3, 32, 32)", f"(targets.shape[0], 3, {size}, {size})",
                   f"image size: {size} px", count=1),
        Adaptation(SCRIPT, "save_every = 100", "save_every = 1",
                   "loss print every iteration, not every 100th (logging only: prints, no computation)", count=1),
        Adaptation(SCRIPT, "        data_type = torch.float\n",
                   "        ddpipe_teacher.seed(ipc_id)\n        data_type = torch.float\n",
                   "seed: the reference seeds nothing; the noise is drawn at ddpipe's seed of the same batch",
                   count=1),
        Adaptation(SCRIPT, "from utils import BNFeatureHook, lr_cosine_policy\n",
                   "from utils import BNFeatureHook, lr_cosine_policy\nimport ddpipe_teacher\n",
                   "import the shim (teacher, seed) at the top", count=1),
    ]
    command = ["python", "recover_cifar.py", "--arch-name", ctx.params.sre2l.teacher,
               "--arch-path", str(ctx.teacher(ctx.params.sre2l.teacher)), "--exp-name", "sre2l",
               "--syn-data-path", "{out}", "--batch-size", str(classes), "--lr", str(r.lr),
               "--iteration", str(r.iterations), "--jitter", str(r.jitter), "--r-bn", str(r.r_bn),
               "--first-bn-multiplier", str(r.first_bn_multiplier), "--store-best-images",
               "--ipc-start", "0", "--ipc-end", str(ctx.ipc), "--verifier"]
    import sys

    command[0] = sys.executable
    ds, sets = ctx.dataset, ctx.sets.relative_to(ctx.project)
    knobs = [
        ("iterations", str(r.iterations), f"--iteration {r.iterations}"),
        ("lr", str(r.lr), f"--lr {r.lr} (cosine to 0, no warm-up: lr_cosine_policy(lr, 0, iterations))"),
        ("r_bn", str(r.r_bn), f"--r-bn {r.r_bn}"),
        ("first_bn_multiplier", str(r.first_bn_multiplier), f"--first-bn-multiplier {r.first_bn_multiplier}"),
        ("jitter / roll", f"{r.jitter} / {r.roll}", f"--jitter {r.jitter}: torch.roll by random.randint(0, jitter) "
         "per axis (ddpipe's `roll: positive`; ddpipe's default `symmetric` has no reference flag)"),
        ("ipc_per_batch", str(r.ipc_per_batch), f"--batch-size {classes}: the classes of ONE IPC index per batch; "
         "the reference cannot batch IPC indices (ddpipe's default 10 has no reference equivalent)"),
        ("r_var", str(r.r_var), "no flag: variance and mean terms weigh 1"),
        ("crop_min_scale / flip", f"{r.crop_min_scale} / {r.flip}", "no flags: no crop, no flip in recover_cifar.py"),
        ("clamp_start", str(r.clamp_start), "no flag: the first forward reads the raw noise, clamped after each step"),
        ("teacher", ctx.params.sre2l.teacher, "--arch-path: ddpipe's teacher folder (adaptation 1)"),
        ("seed", f"{ctx.seed} (batch seeds from it)", "none in the reference; the harness's shim seeds it "
         "per IPC index at ddpipe's batch seed (adaptation 11)"),
        ("output", "PNG, rounded", "JPEG, PIL's default quality 75, truncated by astype(uint8)"),
    ]
    notes = [
        "JPEG at quality 75 with truncation (`(x * 255).astype(np.uint8)`) vs ddpipe's lossless PNG with rounding: "
        "the reference's set is not what it optimised (the pixel table measures both the optimisation and the codec)",
        "the reference starts from the raw N(0, 1) noise and clamps after the first step; ddpipe clamps the start "
        "before the first forward pass (iteration 0's losses differ; the same noise is drawn)",
        "the rolls come from Python's `random` in the reference and numpy's generator in ddpipe: with the same seed "
        "the noise is the same tensor, the roll offsets are not, so the trajectories part from iteration 0",
        "main_syn rebuilds and reloads the teacher for every IPC index (its time is in the reference's wall time)",
        "`best_inputs` bookkeeping is dead code; both save the last iterate",
        "nn.DataParallel is gone with the teacher adaptation (one device: no numerical effect)",
        "`--verifier` with no verifier model only turns the loss printing on (hook_for_display is None)",
    ]
    return Plan(adaptations=adaptations, shims={"ddpipe_teacher.py": SHIM.replace("{seed}", str(
        derive_seed(ctx.seed, "sre2l")))}, reference_cwd=FOLDER, reference_command=command,
        reference_log_flags=["--verifier"],
        reference_images=r"sre2l/new(?P<label>\d{3})/class\d{3}_id(?P<index>\d{3})\.jpg",
        loss_format=LossFormat(start=r"^-+iteration (\d+)-+$",
                               fields={"ce": r"^loss_ce (\S+)$", "bn": r"^loss_r_bn_feature (\S+)$",
                                       "total": r"^loss_total (\S+)$"}),
        ddpipe_command=["stages.recover", "sre2l", "--teachers", f"artifacts/{ds}/teachers", "--init", "noise",
                        "--data", f"data/{ds}", "--out", f"{sets}/distilled/sre2l",
                        "--stats", f"{sets}/synthesis/sre2l.json"],
        ddpipe_set="sre2l", knobs=knobs, notes=notes)
