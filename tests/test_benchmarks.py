"""Smoke tests of the benchmark scripts: each runs with --quick and prints ratio lines that parse."""
import re
import subprocess
import sys

from tests.conftest import REPO, stage_env


def run_benchmark(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", *args], cwd=REPO, env=stage_env(),
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
