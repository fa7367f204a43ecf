"""The parity harness (benchmarks/parity, docs/parity.md) on a stand-in "reference": a script with a device
string, a class count and loss prints, so the harness cannot rot while no real reference is at hand."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks.parity.harness import (Adaptation, LossFormat, RunError, apply_adaptations, child_env, collect_images,
                                       copy_reference, parse_losses, run_measured, write_shims)
from tests.conftest import REPO, TINY, merge, default_params

STAND_IN = '''import argparse
import os

import numpy as np
from PIL import Image

import shim

DEVICE = "cuda"
NUM_CLASSES = 100

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--ipc", type=int)
parser.add_argument("--verbose", action="store_true")
args = parser.parse_args()
assert DEVICE == "cpu" and shim.OK, "the adaptations did not reach the copy"
for ipc_id in range(args.ipc):
    for it in range(3):
        if args.verbose:
            print(f"------ iteration {it} ------")
            print("loss_ce", 1.0 / (it + 1 + ipc_id))
            print("loss_total", 2.0 / (it + 1 + ipc_id))
    for c in range(NUM_CLASSES):
        d = os.path.join(args.out, f"new{c:03d}")
        os.makedirs(d, exist_ok=True)
        pixels = np.full((16, 16, 3), 20 * c + ipc_id, np.uint8)
        Image.fromarray(pixels).save(os.path.join(d, f"class{c:03d}_id{ipc_id:03d}.jpg"))
'''

ADAPTATIONS = [Adaptation("ref/train.py", '"cuda"', '"cpu"', "device: no GPU here", count=1),
               Adaptation("ref/train.py", r"NUM_CLASSES = \d+", "NUM_CLASSES = 10", "class count", regex=True)]
FORMAT = LossFormat(start=r"^-+ iteration (\d+) -+$", fields={"ce": r"^loss_ce (\S+)$", "total": r"^loss_total (\S+)$"})
IMAGES = r"new(?P<label>\d{3})/class\d{3}_id(?P<index>\d{3})\.jpg"


@pytest.fixture
def checkout(tmp_path) -> Path:
    root = tmp_path / "checkout"
    (root / "ref").mkdir(parents=True)
    (root / "ref" / "train.py").write_text(STAND_IN)
    (root / "ref" / "unused.py").write_text("raise SystemExit('never copied')\n")
    return root


def test_adaptations_change_a_copy_only_and_are_listed(checkout, tmp_path):
    copy = copy_reference(checkout, ["ref/train.py"], tmp_path / "copy")
    lines = apply_adaptations(copy, ADAPTATIONS)
    assert (checkout / "ref" / "train.py").read_text() == STAND_IN  # the checkout is untouched
    assert not (copy / "ref" / "unused.py").exists()  # only the declared files are copied
    text = (copy / "ref" / "train.py").read_text()
    assert 'DEVICE = "cpu"' in text and "NUM_CLASSES = 10\n" in text and '"cuda"' not in text
    assert len(lines) == 2 and "device: no GPU here" in lines[0] and "[1x]" in lines[0]
    assert "regex" in lines[1] and "class count" in lines[1]


def refuse(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`script` under cli.run, as the harness's command runs: a PipelineError is one `error:` line, exit 2."""
    code = f"from stages.pipeline import cli\nfrom benchmarks.parity.harness import *\n{script}\ncli.run(main)\n"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(1), capture_output=True, text=True,
                          timeout=60)


def one_error(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    return errors[0]


def test_a_missing_pattern_stops_the_run_naming_file_and_pattern(checkout, tmp_path):
    copy = copy_reference(checkout, ["ref/train.py"], tmp_path / "copy")
    result = refuse(f"""
def main():
    apply_adaptations(Path({str(copy)!r}), [
        Adaptation("ref/train.py", '"cuda"', '"cpu"', "device"),
        Adaptation("ref/train.py", "torch.load(args.arch_path)", "shim.load()", "teacher")])
from pathlib import Path
""", tmp_path)
    line = one_error(result)
    assert line.startswith("error: ReferenceChangedError: ref/train.py: adaptation 2 pattern "
                           "'torch.load(args.arch_path)' not found (teacher)"), line
    # found another number of times than declared: the same refusal
    line = one_error(refuse(f"""
def main():
    apply_adaptations(Path({str(copy)!r}), [Adaptation("ref/train.py", "NUM_CLASSES", "N", "classes", count=1)])
from pathlib import Path
""", tmp_path))
    assert "found 2 times, expected 1" in line, line
    line = one_error(refuse(f"""
def main():
    copy_reference(Path({str(checkout)!r}), ["ref/gone.py"], Path({str(tmp_path / 'other')!r}))
from pathlib import Path
""", tmp_path))
    assert line.startswith("error: ReferenceChangedError: ") and "ref/gone.py: not in the checkout" in line, line


def test_the_reference_runs_measured_its_losses_parse_and_its_images_import(checkout, tmp_path):
    copy = copy_reference(checkout, ["ref/train.py"], tmp_path / "copy")
    apply_adaptations(copy, ADAPTATIONS)
    write_shims(copy / "ref", {"shim.py": '"""written by the harness"""\nOK = True\n'})
    out = tmp_path / "images"
    run = run_measured([sys.executable, "train.py", "--out", str(out), "--ipc", "3", "--verbose"], copy / "ref",
                       tmp_path / "logs" / "ref.log", child_env(1, [copy / "ref"]))
    assert run.seconds > 0 and run.peak_rss_mib > 10  # a python process with numpy and PIL
    rows = parse_losses(run.output, FORMAT)
    assert [(r["batch"], r["iteration"]) for r in rows] == [(b, t) for b in range(3) for t in range(3)]
    assert rows[4] == {"batch": 1, "iteration": 1, "ce": pytest.approx(1 / 3), "total": pytest.approx(2 / 3)}

    classes = [str(c) for c in range(10)]
    counts = collect_images(out, IMAGES, classes, tmp_path / "collected")
    assert counts == dict.fromkeys(classes, 3)
    assert (tmp_path / "collected" / "7" / "2.jpg").read_bytes() == (out / "new007" / "class007_id002.jpg").read_bytes()

    # ddpipe's own import reads the collected folder (a tiny prepared project: digits, TINY's ipc 3)
    project = tmp_path / "project"
    project.mkdir()
    params = merge(merge(default_params(), TINY), {"external": {"ref": {"path": str(tmp_path / "collected"),
                                                                          "method": "stand-in"}}})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = child_env(1)
    run_measured([sys.executable, "-m", "stages.prepare", "--out", "data/digits"], project, tmp_path / "p.log", env)
    run_measured([sys.executable, "-m", "stages.import_set", "ref", "--data", "data/digits", "--out", "set"],
                 project, tmp_path / "i.log", env)
    imported = sorted(p.relative_to(project / "set").as_posix() for p in (project / "set").rglob("*.png"))
    assert len(imported) == 30 and imported[0].startswith("0/") and '"method": "stand-in"' in \
        (project / "set" / "card.json").read_text()

    # a failing command is one error naming its log
    with pytest.raises(RunError, match=r"exited 3 .*log: "):
        run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, tmp_path / "f.log", env)


def test_recover_loss_log_leaves_the_images_alone(tmp_path):
    from stages.models import build
    from stages.recover_engine.engine import RecoverConfig, logging_losses, recover_batch

    torch.manual_seed(0)
    teacher = build("convnet", 10, 16, {"width": 8, "depth": 2, "norm": "batch"}).eval()
    with torch.no_grad():  # BN statistics that are not the identity, as a trained teacher's
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    cfg = RecoverConfig(iterations=6, lr=0.1, r_bn=1.0, first_bn_multiplier=10, r_var=1.0, jitter=2,
                        crop_min_scale=1.0, crop_schedule="fixed", flip=False, roll="positive")
    init = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def once() -> torch.Tensor:
        return recover_batch(teacher, init, torch.arange(10), torch.zeros(10, dtype=torch.long), cfg, [0.3] * 3,
                             [0.35] * 3, np.random.default_rng(2), where="batch")

    plain = once()
    with logging_losses(tmp_path / "losses.csv"):
        logged = once()
    assert torch.equal(plain, logged)
    with open(tmp_path / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(6)) and rows[0]["batch"] == "batch"
    for r in rows:  # total = ce + r_bn * bn
        assert float(r["total"]) == pytest.approx(float(r["ce"]) + float(r["bn"]), rel=1e-5)
    assert once().equal(plain)  # the log is off again outside the block


def applied_copy(module, plan, variable: str, tmp_path: Path) -> Path:
    """The adapter's files copied from the reference checkout $variable names, every adaptation applied (each
    pattern found as declared, or ReferenceChangedError)."""
    copy = copy_reference(Path(os.environ[variable]), module.FILES, tmp_path / "copy")
    assert len(apply_adaptations(copy, plan.adaptations)) == len(plan.adaptations)
    return copy


@pytest.mark.skipif(not os.environ.get("DDPIPE_SRE2L_REFERENCE"),
                    reason="DDPIPE_SRE2L_REFERENCE: a checkout of VILA-Lab/SRe2L, to check the adapter's patterns")
def test_the_sre2l_adapter_still_applies(tmp_path):
    from benchmarks.parity import sre2l
    from benchmarks.parity.compare import Context

    ctx = Context(tmp_path, tmp_path, "digits", 2, 0, [str(c) for c in range(10)], 16, [0.3] * 3, [0.35] * 3,
                  params=type("P", (), {"sre2l": type("S", (), {"teacher": "convnet", "recover": type("R", (), dict(
                      r_var=1.0, crop_min_scale=1.0, flip=False, dwa_steps=0, lr=0.25, iterations=5, jitter=2,
                      r_bn=1.0, first_bn_multiplier=10.0, roll="positive", ipc_per_batch=1))})}),
                  raw_params={}, threads=1)
    applied_copy(sre2l, sre2l.plan(ctx), "DDPIPE_SRE2L_REFERENCE", tmp_path)


def edc_context(tmp_path, **edc):
    """A Context whose params carry only what the EDC adapter reads (no project on disk)."""
    from benchmarks.parity.compare import Context

    section = dict(observers=["convnet", "resnet18_modified"], distinct_init=False, iterations=3, lr=0.05,
                   r_loss=0.01, first_multiplier=10.0, momentum=0.8, drop_rate=0.0, patch_swap=True,
                   crop_min_scale=0.08, flip=True, flatness=False, flatness_weight=1.0, ema_alpha=0.99,
                   batch_size=10, jpeg_quality=75,
                   statistics=type("St", (), dict(batch_size=64, crop="pad", flip=True))) | edc
    return Context(tmp_path, tmp_path, "digits", 2, 0, [str(c) for c in range(10)], 16, [0.3] * 3, [0.35] * 3,
                   params=type("P", (), {"edc": type("E", (), section)}), raw_params={}, threads=1)


def test_the_edc_adapter_refuses_what_the_reference_cannot_run(tmp_path):
    from benchmarks.parity import edc
    from stages.pipeline.errors import ParamsError

    plan = edc.plan(edc_context(tmp_path))
    assert plan.ddpipe_before[0][0] == "stages.methods.edc.statistics" and plan.reference_before
    assert "--store-best-images" not in plan.reference_before[0] and "--store-best-images" in plan.reference_command
    for knob, value in (("distinct_init", True), ("jpeg_quality", None), ("flip", False), ("patch_swap", False)):
        with pytest.raises(ParamsError, match=f"edc.{knob} = "):
            edc.plan(edc_context(tmp_path, **{knob: value}))
    assert edc.ddpipe_overrides({}) == {"edc": {"flip": True, "statistics": {"flip": True}}}


@pytest.mark.skipif(not os.environ.get("DDPIPE_EDC_REFERENCE"),
                    reason="DDPIPE_EDC_REFERENCE: a checkout of shaoshitong/EDC, to check the adapter's patterns")
def test_the_edc_adapter_still_applies(tmp_path):
    from benchmarks.parity import edc

    copy = applied_copy(edc, edc.plan(edc_context(tmp_path)), "DDPIPE_EDC_REFERENCE", tmp_path)
    text = (copy / edc.SCRIPT).read_text()
    assert "cuda" not in text.replace("torch.cuda.empty_cache()", "").replace("torch.cuda.device_count()", "")


STAGE = '''"""A stand-in ddpipe stage for a method without loss curves: it refuses --losses."""
import argparse
import os

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()  # an unknown --losses exits 2
for c in range(10):
    os.makedirs(os.path.join(args.out, str(c)), exist_ok=True)
    for k in range(2):
        Image.fromarray(np.full((16, 16, 3), 20 * c + k, np.uint8)).save(os.path.join(args.out, str(c), f"{k}.png"))
'''


def test_a_method_without_loss_curves_runs_without_them(checkout, tmp_path):
    """loss_format None (RDED): the reference's output is not parsed for losses, ddpipe's stage runs without
    --losses, no curves are written or tabled, the runs still check ddpipe's bytes, and a plan's set_measures
    reach the table."""
    from types import SimpleNamespace

    from benchmarks.parity import compare

    project = tmp_path / "project"
    project.mkdir()
    (project / "standin_stage.py").write_text(STAGE)
    ctx = compare.Context(project, tmp_path / "out", "digits", 2, 0, [str(c) for c in range(10)], 16, [0.3] * 3,
                          [0.35] * 3, params=None, raw_params={}, threads=1)
    plan = compare.Plan(adaptations=ADAPTATIONS, shims={"shim.py": '"""written by the harness"""\nOK = True\n'},
                        reference_cwd="ref", reference_command=[sys.executable, "train.py", "--out", "{out}", "--ipc",
                                                                "2"],
                        reference_log_flags=[], reference_images=IMAGES, loss_format=None,
                        ddpipe_command=["standin_stage", "--out", "artifacts/digits/ipc2/distilled/standin"],
                        ddpipe_set="standin")
    module = SimpleNamespace(NAME="standin", REPOSITORY="stand-in", FILES=["ref/train.py"], plan=lambda _ctx: plan)
    _, lines, ref_logged, ref_unlogged, ref_rows, _ = compare.run_reference(ctx, module, checkout, repeats=1)
    assert ref_rows == [] and len(ref_unlogged) == 1 and not (ctx.out / "curves").exists()
    assert len(list((ctx.out / "reference_images").rglob("*.jpg"))) == 20
    logged, unlogged, rows, same, _ = compare.run_ddpipe(ctx, plan, repeats=1)
    assert rows == [] and same is True and "--losses" not in logged.command and len(unlogged) == 1

    result = {"method": "standin", "reference": {"repository": "stand-in", "commit": None}, "dataset": "digits",
              "ipc": 2, "seed": 0, "threads": 1, "command": "python -m benchmarks.parity standin", "adaptations": lines,
              "knobs": [], "notes": [], "curves": None, "ddpipe_logging_same_bytes": same,
              "time_memory": compare.time_memory(logged, unlogged, ref_logged, ref_unlogged),
              "pixels": compare.pixel_comparison(ctx, ctx.sets / "distilled" / "standin", ctx.out / "reference_images"),
              "set_measures": {"kept loss": {"ddpipe": 0.1, "reference": 0.2}}}
    md = compare.markdown(result)
    assert "Loss curves" not in md and "ddpipe's images in every run: the same bytes" in md, md
    assert "| wall s, first run |" in md and "| wall s, repeat runs (fastest) |" in md
    assert "| kept loss | 0.1 | 0.2 |" in md


def rded_context(tmp_path, counts=(3, 4), **rded):
    """A Context whose params carry only what the RDED adapter reads, and a train folder of `counts` images."""
    from benchmarks.parity.compare import Context

    classes = [str(c) for c in range(len(counts))]
    for c, n in zip(classes, counts):
        (tmp_path / "data" / "digits" / "train" / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            (tmp_path / "data" / "digits" / "train" / c / f"{k}.png").write_bytes(b"")
    section = dict(observer="convnet", candidates=3, crops=5, factor=1, crop_scale=[0.08, 1.0]) | rded
    return Context(tmp_path, tmp_path, "digits", 2, 0, classes, 16, [0.3] * 3, [0.35] * 3,
                   params=type("P", (), {"rded": type("R", (), section)}), raw_params={}, threads=1)


def test_the_rded_adapter_maps_its_knobs_and_refuses_what_the_reference_cannot_run(tmp_path):
    from benchmarks.parity import rded
    from stages.pipeline.errors import ParamsError

    plan = rded.plan(rded_context(tmp_path))
    command = plan.reference_command
    for flag, value in (("--mipc", "3"), ("--num-crop", "5"), ("--factor", "1"), ("--ipc", "2")):
        assert command[command.index(flag) + 1] == value
    assert plan.loss_format is None and plan.set_measures is rded.set_measures
    assert "CLASSES = ['0', '1']" in plan.shims["ddpipe_teacher.py"]
    with pytest.raises(ParamsError, match=r"rded.candidates = 4: above the smallest class \(3 train images of "
                                          r"class '0'\).*-S rded.candidates=3"):
        rded.plan(rded_context(tmp_path, candidates=4))
    with pytest.raises(ParamsError, match=r"rded.crop_scale = \[0.5, 1.0\]"):
        rded.plan(rded_context(tmp_path, crop_scale=[0.5, 1.0]))
    log = "Namespace(...)\nkept observer losses 0.000100 0.200000\nother\nkept observer losses 1.000000 3.000000\n"
    assert rded.kept_losses(log) == [[0.0001, 0.2], [1.0, 3.0]]


@pytest.mark.skipif(not os.environ.get("DDPIPE_RDED_REFERENCE"),
                    reason="DDPIPE_RDED_REFERENCE: a checkout of LINs-lab/RDED, to check the adapter's patterns")
def test_the_rded_adapter_still_applies(tmp_path):
    from benchmarks.parity import rded

    copy = applied_copy(rded, rded.plan(rded_context(tmp_path)), "DDPIPE_RDED_REFERENCE", tmp_path)
    for name in (rded.SYNTH, rded.UTILS):  # validation/utils.py's cutmix (.cuda()) is the student's, never called
        assert ".cuda()" not in (copy / name).read_text()
