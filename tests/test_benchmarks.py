"""Smoke tests of benchmarks/: each script runs in --quick mode and prints a ratio line that parses."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def test_evaluate_benchmark_quick_prints_its_ratios(prepared):
    env = {**os.environ, "DDPIPE_THREADS": "1"}
    result = subprocess.run([sys.executable, "benchmarks/evaluate.py", "--quick", "--data",
                             str(prepared / "data" / "digits")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    data = re.search(r"^ratio data path ours / torchvision \(num_workers=0\): ([\d.]+)x with decode, ([\d.]+)x "
                     r"steady state$", result.stdout, re.M)
    e2e = re.search(r"^ratio end to end ours / torchvision \(num_workers=0\): ([\d.]+)x$", result.stdout, re.M)
    assert data and e2e, result.stdout
    # steady state leaves out a cost that "with decode" includes, so it can only be the larger rate
    assert float(data[2]) >= float(data[1]) > 0 and float(e2e[1]) > 0
    assert re.search(r"^data: .*\(1437 images, 16 px, 10 classes\), batch 100,", result.stdout, re.M), result.stdout
