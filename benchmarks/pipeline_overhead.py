"""DVC's own overhead as a stage's output folder grows: 10k against 50k small files.

A temp git + DVC project (made like tests/conftest.py's make_project: git init, dvc init, this repo's
.dvcignore) has one stage whose output folder holds N small PNGs (random 10-16 px RGB noise, ~0.3-0.9 KB,
ten class folders: the shape of a distilled ImageFolder). For each N the script times, as the user types them:

- the first `dvc repro` (the command, then hashing every file and copying it into the cache), beside the
  command alone run outside DVC, so the difference is DVC's share;
- `dvc status` when everything is up to date;
- a no-op `dvc repro`;
- `dvc status` after one output file's mtime changed (content unchanged: DVC re-hashes that one file).

Each is repeated and the median printed, then the 50k / 10k ratio and the marginal seconds per 10k files
(the slope between the two sizes, which leaves out the constant start-up of the `dvc` command). One more line
repeats the first repro and status at the larger N with `cache.type hardlink` (the default is reflink, then copy).

    python benchmarks/pipeline_overhead.py [--quick] [--sizes 10000 50000] [--repeats 3]

Smaller is better everywhere; a ratio near N50k / N10k = 5 means the cost is linear in the file count.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dvc
import yaml

REPO = Path(__file__).resolve().parents[1]
UP_TO_DATE = "Data and pipelines are up to date."

# The stage's command: N noise PNGs of 10-16 px under out/<class>/ (PNG-sized files, distinct contents).
GENERATOR = '''\
import sys
from pathlib import Path
import numpy as np
from PIL import Image
count, out = int(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(0)
for c in range(10):
    (out / f"class{c}").mkdir(parents=True, exist_ok=True)
for i in range(count):
    side = int(rng.integers(10, 17))
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out / f"class{i % 10}" / f"{i:06d}.png")
'''


def env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1"}


def dvc_cmd(project: Path, *args: str) -> tuple[float, str]:
    """Run `dvc <args>` as a user would (a fresh process: its start-up is part of what they wait for)."""
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env(), capture_output=True,
                            text=True)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {project}:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout + result.stderr


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=project,
                   check=True, capture_output=True)


def make_project(root: Path, count: int, cache_type: str | None) -> Path:
    root.mkdir()
    (root / "gen.py").write_text(GENERATOR)
    stage = {"cmd": f'"{sys.executable}" gen.py {count} out', "deps": ["gen.py"], "outs": ["out"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": stage}}))
    git(root, "init", "-q")
    dvc_cmd(root, "init", "-q")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # after init, which writes a blank one
    dvc_cmd(root, "config", "core.analytics", "false")
    # DVC's state database (inode, mtime, size → hash) lives in the site cache; keep it inside the temp dir.
    dvc_cmd(root, "config", "--local", "core.site_cache_dir", str(root / ".site_cache"))
    if cache_type:
        dvc_cmd(root, "config", "cache.type", cache_type)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


def median_of(repeats: int, run) -> float:
    return statistics.median(run(i) for i in range(repeats))


def expect(output: str, *phrases: str) -> None:
    """Every timed command must have done what is claimed (nothing re-ran, nothing changed)."""
    if not any(p in output for p in phrases):
        raise SystemExit(f"unexpected dvc output (wanted one of {phrases}):\n{output}")


def measure(work: Path, count: int, repeats: int, cache_type: str | None = None) -> dict:
    project = make_project(work / f"n{count}-{cache_type or 'default'}", count, cache_type)
    row = {}
    row["repro"], log = dvc_cmd(project, "repro")
    expect(log, "Running stage 'make'")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    nfiles = lock["stages"]["make"]["outs"][0]["nfiles"]
    if nfiles != count:  # the same work at every size: the .dir entry lists exactly N files
        raise SystemExit(f"dvc.lock lists {nfiles} files in out/, expected {count}")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "outputs")

    def status(_):
        seconds, out = dvc_cmd(project, "status")
        expect(out, UP_TO_DATE)
        return seconds

    def noop(_):
        seconds, out = dvc_cmd(project, "repro")
        expect(out, "didn't change, skipping", UP_TO_DATE)
        return seconds

    files = sorted((project / "out").rglob("*.png"))
    status(None)  # untimed: the first status after a repro can still be filling DVC's state database

    def touched(i):
        # A new mtime on a different file each time, so every repeat has one stale state-db entry to re-hash.
        path = files[(i * 7919) % len(files)]
        stamp = time.time_ns() + i * 1_000_000_000
        os.utime(path, ns=(stamp, stamp))
        return status(i)

    row["status"] = median_of(repeats, status)
    if cache_type is None:
        row["noop"] = median_of(repeats, noop)
        row["touched"] = median_of(repeats, touched)
    return row


def run_alone(work: Path, count: int) -> float:
    """The stage's command without DVC: the work DVC's first repro adds its hashing and caching to."""
    folder = work / f"alone{count}"
    folder.mkdir()
    (folder / "gen.py").write_text(GENERATOR)
    began = time.perf_counter()
    subprocess.run([sys.executable, "gen.py", str(count), "out"], cwd=folder, check=True)
    seconds = time.perf_counter() - began
    shutil.rmtree(folder)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                        help="file counts (default 10000 50000; --quick 1000 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per command (median)")
    parser.add_argument("--quick", action="store_true", help="1k and 5k files")
    parser.add_argument("--no-hardlink", action="store_true", help="skip the cache.type hardlink line")
    args = parser.parse_args()
    small, large = args.sizes or ([1_000, 5_000] if args.quick else [10_000, 50_000])
    if not 0 < small < large or args.repeats < 1:
        raise SystemExit(f"--sizes {small} {large} --repeats {args.repeats}: want 0 < SMALL < LARGE, repeats >= 1")

    with tempfile.TemporaryDirectory(prefix="ddpipe-dvc-overhead-") as tmp:
        work = Path(tmp)
        run_alone(work, 100)  # warm-up outside the clocks: page cache for python, numpy and PIL
        rows = {}
        for count in (small, large):
            rows[count] = {"alone": run_alone(work, count), **measure(work, count, args.repeats)}
        hardlink = None if args.no_hardlink else measure(work, large, args.repeats, "hardlink")
        fs = subprocess.run(["df", "--output=fstype", tmp], capture_output=True, text=True).stdout.split()[-1]

    print(f"dvc {dvc.__version__}, python {platform.python_version()}, {os.cpu_count()} cores, temp fs {fs}; "
          f"median of {args.repeats} runs, seconds (wall, each a fresh `dvc` process)")
    head = f"{'files':>7} {'cmd alone':>10} {'1st repro':>10} {'DVC share':>10} {'status':>8} {'no-op repro':>12} " \
           f"{'status, 1 touched':>18}"
    print(head)
    for count, r in rows.items():
        print(f"{count:>7} {r['alone']:>10.2f} {r['repro']:>10.2f} {r['repro'] - r['alone']:>10.2f} "
              f"{r['status']:>8.2f} {r['noop']:>12.2f} {r['touched']:>18.2f}")
    a, b = rows[small], rows[large]
    per = 10_000 / (large - small)
    print(f"marginal seconds per 10k files ({small}→{large}): 1st repro DVC share "
          f"{((b['repro'] - b['alone']) - (a['repro'] - a['alone'])) * per:.2f}, status "
          f"{(b['status'] - a['status']) * per:.2f}, no-op repro {(b['noop'] - a['noop']) * per:.2f}, "
          f"status after touch {(b['touched'] - a['touched']) * per:.2f}")
    if hardlink:
        print(f"cache.type hardlink at {large} files: 1st repro {hardlink['repro']:.2f} s "
              f"(default {b['repro']:.2f} s), status {hardlink['status']:.2f} s (default {b['status']:.2f} s)")
    print(f"ratio {large}/{small} files ({large / small:.0f}x the files): status {b['status'] / a['status']:.2f}x, "
          f"no-op repro {b['noop'] / a['noop']:.2f}x, status after touch {b['touched'] / a['touched']:.2f}x, "
          f"1st repro {b['repro'] / a['repro']:.2f}x")


if __name__ == "__main__":
    main()
