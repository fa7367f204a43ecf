"""Smoke tests of the benchmark scripts: each runs with --quick and prints ratio lines that parse."""
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, stage_env


def run_benchmark(script: str, *args: str, quick: bool = True) -> str:
    mode = ["--quick"] if quick else []
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *mode, *args], cwd=REPO, env=stage_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_relabel_benchmark_quick(prepared):
    out = run_benchmark("relabel.py", "--data", str(prepared / "data" / "digits"),
                        "--teacher", str(prepared / "artifacts" / "digits" / "teachers" / "convnet"))
    assert "teacher: " + str(prepared) in out  # the trained teacher was loaded, not a fresh one
    stored = re.findall(r"(\d+) images x 10 classes, batch +\d+: +(\d+) B stored vs +(\d+) B raw", out)
    assert [int(n) for n, _, _ in stored] == [100, 1437] and all(int(s) > 0 for _, s, _ in stored)
    ratios = dict(re.findall(r"^ratio fkd / teacher \(IPC 10, (.+)\): (\d+\.\d+)x$", out, re.M))
    assert set(ratios) == {"data + labels", "end to end"} and all(float(r) > 0 for r in ratios.values()), out


def test_diffusion_benchmark_quick(tmp_path):
    out = run_benchmark("diffusion.py", "--diffusion", str(tmp_path / "absent"), "--data", str(tmp_path / "absent"))
    assert "untrained model of the default architecture" in out
    assert re.search(r"^d4m\.synthesis .*: 4 images, steps 10 x strength 0\.7 = 7 denoising steps", out, re.M), out
    ratio = re.search(r"^ratio batched / one-at-a-time: (\d+\.\d+)x$", out, re.M)
    assert ratio and float(ratio.group(1)) > 0, out


def test_evaluate_benchmark_quick_prints_its_ratios(prepared):
    out = run_benchmark("evaluate.py", "--data", str(prepared / "data" / "digits"))
    data = re.search(r"^ratio data path ours / torchvision \(num_workers=0\): ([\d.]+)x with decode, ([\d.]+)x "
                     r"steady state$", out, re.M)
    e2e = re.search(r"^ratio end to end ours / torchvision \(num_workers=0\): ([\d.]+)x$", out, re.M)
    assert data and e2e, out
    # steady state leaves out a cost that "with decode" includes, so it can only be the larger rate
    assert float(data[2]) >= float(data[1]) > 0 and float(e2e[1]) > 0
    assert re.search(r"^data: .*\(1437 images, 16 px, 10 classes\), batch 100,", out, re.M), out


@pytest.mark.slow  # dozens of dvc calls; kept out of CI's 20 minutes (pytest -m slow)
def test_pipeline_overhead_benchmark_quick():
    # --quick at fewer files, one repeat and no hardlink project: the plumbing, not the numbers.
    out = run_benchmark("pipeline_overhead.py", "--sizes", "200", "1000", "--repeats", "1", "--no-hardlink")
    rows = re.findall(r"^ +(\d+)((?: +-?\d+\.\d+){6})$", out, re.M)
    assert [int(n) for n, _ in rows] == [200, 1000], out
    assert all(float(v) > 0 for _, values in rows for v in values.split()[:2]), out  # cmd, 1st repro
    ratio = re.search(r"^ratio 1000/200 files \(5x the files\): status (\d+\.\d+)x, no-op repro (\d+\.\d+)x, "
                      r"status after touch (\d+\.\d+)x, 1st repro (\d+\.\d+)x$", out, re.M)
    assert ratio and all(float(r) > 0 for r in ratio.groups()), out
    assert "cache.type hardlink" not in out


@pytest.mark.slow  # dozens of dvc calls; kept out of CI's 20 minutes (pytest -m slow)
def test_scaling_benchmark_tiny(tmp_path):
    plot = tmp_path / "scaling.png"
    out = run_benchmark("scaling.py", "--tiny", "--plot", str(plot), quick=False)
    assert "x1 = 1437 images, x2 = 2874 images" in out, out  # digits train set, replicated twice
    for stage in ("prepare", "baseline@random"):
        cells = re.search(rf"^{re.escape(stage)} +((?:\d+\.\d+ +\d+\.\d+ +\d+ *){{2}})$", out, re.M)
        assert cells, out
        wall, cpu, mb = (float(v) for v in cells[1].split()[:3])
        assert wall > 0 and cpu > 0 and mb > 10, out  # a python process with numpy holds more than 10 MB
    ratio = re.search(r"^ratio x2/x1 \(train set, wall time\): prepare (\d+\.\d+)x, baseline@random (\d+\.\d+)x$", out,
                      re.M)
    assert ratio and all(float(r) > 0 for r in ratio.groups()), out
    assert re.search(r"^ratio ipc 3/ipc 1 \(train set x1, wall time\): baseline@random \d+\.\d+x$", out, re.M), out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # two dvc projects and a dozen dvc calls; kept out of CI's 20 minutes (pytest -m slow)
def test_manifest_benchmark_quick():
    out = run_benchmark("manifest.py", "--count", "300", "--repeats", "1", quick=False)
    rows = dict(re.findall(r"^ +(copy|manifest) +300 +(\d+) ", out, re.M))
    assert rows == {"copy": "302", "manifest": "3"}, out  # 300 PNGs + classes.json + meta.json; manifest + 2
    ratio = re.search(r"^ratio copy / manifest at 300 images \(wall\): 1st repro (\d+\.\d+)x, status (\d+\.\d+)x, "
                      r"no-op repro (\d+\.\d+)x$", out, re.M)
    assert ratio and all(float(r) > 0 for r in ratio.groups()), out
    assert re.search(r"^target no-op status and repro < 2 s with the manifest at 300 images: (met|missed)", out, re.M)


@pytest.mark.slow  # trains four students and writes a 1000-class epoch five ways: minutes on shared cores
def test_topk_benchmark_quick(prepared):
    out = run_benchmark("topk.py", "--data", str(prepared / "data" / "digits"),
                        "--teacher", str(prepared / "artifacts" / "digits" / "teachers" / "convnet"))
    assert "skipped k > 10 classes: [50]" in out, out
    digits = dict(re.findall(r"^ +(dense|top-10|top-5|top-1) +(\d+) ", out, re.M))
    assert set(digits) == {"dense", "top-10", "top-5", "top-1"}, out
    assert "top-10 (every class) gives the dense top-1 exactly: True" in out
    ratio = re.search(r"^ratio dense / top-10 bytes per crop at 1000 classes: (\d+\.\d+)x", out, re.M)
    assert ratio and float(ratio[1]) > 5, out  # 10 of 1000 fp16 logits (+ their int16 classes) and the plan


def test_students_together_benchmark_quick():
    out = run_benchmark("students_together.py")
    rates = dict(re.findall(r"^  (one at a time|side by side|together) +[\d.]+ s +(\d+) images/s per student", out,
                            re.M))
    assert set(rates) == {"one at a time", "side by side", "together"} and all(int(r) > 0 for r in rates.values())
    spread = re.search(r"^final losses, together vs one at a time: largest relative difference (\S+)$", out, re.M)
    assert spread and float(spread.group(1)) < 1e-3, out


def test_default_run_benchmark_compares_two_runs(tmp_path):
    """`compare` sums a foreach stage's members and prints after/before per stage and in total."""
    import json

    runs = {"before": {"a@x": 10.0, "a@y": 30.0, "b": 5.0}, "after": {"a@x": 5.0, "a@y": 15.0, "c": 2.0}}
    for name, stages in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"project": name, "commit": name[:1],
                                                           "total_seconds": sum(stages.values()), "stages": stages}))
    out = run_benchmark("default_run.py", "compare", str(tmp_path / "before.json"), str(tmp_path / "after.json"),
                        quick=False)
    assert re.search(r"^a +40\.0 +20\.0 +0\.50$", out, re.M), out
    assert re.search(r"^b +5\.0 +- +-$", out, re.M) and re.search(r"^c +- +2\.0 +-$", out, re.M), out
    assert re.search(r"^total \(dvc repro\) +45 +22 +0\.49$", out, re.M), out


def test_startup_benchmark_measures_a_revision_beside_this_tree():
    out = run_benchmark("startup.py", "--before", "HEAD", "-n", "1", "--modules", "stages.plots_page", quick=False)
    row = re.search(r"^stages\.plots_page +1 +(\d+\.\d+) +(\d+\.\d+) +(\d+\.\d+)$", out, re.M)
    assert row and all(float(v) > 0 for v in row.groups()), out
    assert re.search(r"^sum, weighted by starts +1 ", out, re.M), out
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    assert not re.search(r"/before ", worktrees), worktrees  # the temporary worktree is gone


def test_small_data_knobs_knows_every_recover_method(tmp_path):
    """Every recover method is accepted, each with its own settings (EDC's are overrides of `edc`, not of a
    recover block), and the teachers its stages read (dvc.yaml's deps) are the ones trained."""
    import importlib.util

    import yaml

    from stages import methods

    spec = importlib.util.spec_from_file_location("small_data_knobs", REPO / "benchmarks" / "small_data_knobs.py")
    knobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(knobs)
    assert set(knobs.METHODS) == set(methods.joining("recover"))
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    assert knobs.teachers_of(p, "sre2l") == ["convnet"]
    assert knobs.teachers_of(p, "edc") == ["convnet", "resnet18_modified"]
    assert knobs.teachers_of(p, "infer") == ["convnet", "resnet18_modified"]
    assert all(set(v) <= {"r_loss", "momentum"} for v in knobs.EDC_SETTINGS.values())
    result = subprocess.run([sys.executable, "benchmarks/small_data_knobs.py", "--root", str(tmp_path),
                             "--method", "edc", "--settings", "r_bn1"], cwd=REPO, env=stage_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--method edc has no setting r_bn1" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before any stage ran
