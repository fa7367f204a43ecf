"""Smoke tests of benchmarks/: each script runs in its quick mode and prints a ratio line that parses."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, stage_env


def test_pipeline_overhead_benchmark_quick():
    # --quick at fewer files, one repeat and no hardlink project: the plumbing, not the numbers.
    result = subprocess.run([sys.executable, "benchmarks/pipeline_overhead.py", "--quick", "--sizes", "200", "1000",
                             "--repeats", "1", "--no-hardlink"], cwd=REPO, env=stage_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^ +(\d+)((?: +-?\d+\.\d+){6})$", result.stdout, re.M)
    assert [int(n) for n, _ in rows] == [200, 1000], result.stdout
    assert all(float(v) > 0 for _, values in rows for v in values.split()[:2]), result.stdout  # cmd, 1st repro
    ratio = re.search(r"^ratio 1000/200 files \(5x the files\): status (\d+\.\d+)x, no-op repro (\d+\.\d+)x, "
                      r"status after touch (\d+\.\d+)x, 1st repro (\d+\.\d+)x$", result.stdout, re.M)
    assert ratio and all(float(r) > 0 for r in ratio.groups()), result.stdout
    assert "cache.type hardlink" not in result.stdout


def test_scaling_benchmark_tiny(tmp_path):
    plot = tmp_path / "scaling.png"
    result = subprocess.run([sys.executable, "benchmarks/scaling.py", "--tiny", "--plot", str(plot)], cwd=REPO,
                            env=stage_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
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
