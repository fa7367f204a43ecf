"""prepare.copy: true against false on a generated ImageFolder: what DVC costs when it tracks copies or a manifest.

The script writes N small images (noise PNGs, 12-24 px, not square, 10 classes; train and a val split of a
tenth) outside any project, then for each mode makes a temp git + DVC project (like
benchmarks/pipeline_overhead.py) whose dvc.yaml has the real `prepare` stage (this repo's
`python -m stages.prepare`, params.yaml = the shipped one with dataset imagefolder, prepare.root = the
generated folder, image_size 16, prepare.copy = the mode) and one downstream stage that depends on
data/imagefolder (as teacher, rank, baseline ... do). It times, as the user types them:

- the first `dvc repro` (prepare decodes every image; copy also writes every PNG, and DVC hashes and caches
  whatever data/imagefolder holds),
- `dvc status` when everything is up to date,
- a no-op `dvc repro`.

Each status/no-op is repeated and the median printed; the last line gives the ratios copy / manifest. The
copy side can run at fewer images (--copy-count) when N copies take too long; the table says which N each
row had, and no ratio is printed across different N.

    nice -n 10 python benchmarks/manifest.py [--quick] [--count 100000] [--copy-count 20000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dvc
import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.pipeline_overhead import UP_TO_DATE, dvc_cmd, env, expect, git  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def generate(root: Path, count: int) -> None:
    """count images in root/{train,val}/class<c>/ (every tenth one in val, each class in both)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(12, 25, size=2))
        split = "val" if i % 10 == 9 else "train"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / split / f"class{i // 10 % 10}" / f"{i:06d}.png")


def make_project(root: Path, source: Path, copy: bool) -> Path:
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = "imagefolder"
    params["prepare"].update(root=str(source), image_size=16, copy=copy)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = f'PYTHONPATH="{REPO}" TQDM_DISABLE=1'
    stages = {
        "prepare": {"cmd": f'{env} "{sys.executable}" -m stages.prepare --out data/imagefolder',
                    "params": ["dataset", "prepare.root", "prepare.image_size", "prepare.copy"],
                    "outs": ["data/imagefolder"]},
        "downstream": {"cmd": f'"{sys.executable}" -c "import json; print(len(json.load(open('
                              f"'data/imagefolder/classes.json'))))\" > classes.txt",
                       "deps": ["data/imagefolder"], "outs": ["classes.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    git(root, "init", "-q")
    dvc_cmd(root, "init", "-q")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    dvc_cmd(root, "config", "core.analytics", "false")
    dvc_cmd(root, "config", "--local", "core.site_cache_dir", str(root / ".site_cache"))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


def timed_dvc(project: Path, *args: str) -> tuple[float, float, str]:
    """`dvc <args>` in a fresh process: (wall seconds, CPU seconds of the process and its children, output).
    The CPU time is what the command costs; on a shared machine the wall time also holds the waiting."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env(), capture_output=True,
                            text=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {project}:\n{result.stdout}\n{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout + result.stderr


def measure(work: Path, source: Path, copy: bool, repeats: int) -> dict:
    project = make_project(work / ("copy" if copy else "manifest"), source, copy)
    row = {}
    row["repro"], row["repro_cpu"], log = timed_dvc(project, "repro")
    expect(log, "Running stage 'prepare'")
    data = project / "data" / "imagefolder"
    row["files"] = sum(1 for p in data.rglob("*") if p.is_file())
    row["bytes"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    git(project, "add", "-A")
    git(project, "commit", "-qm", "outputs")
    dvc_cmd(project, "status")  # untimed: the first status after a repro can still be filling DVC's state db

    def timed(*args, phrases):
        runs = [timed_dvc(project, *args) for _ in range(repeats)]
        for _, _, out in runs:
            expect(out, *phrases)
        return statistics.median(w for w, _, _ in runs), statistics.median(c for _, c, _ in runs)

    row["status"], row["status_cpu"] = timed("status", phrases=(UP_TO_DATE,))
    row["noop"], row["noop_cpu"] = timed("repro", phrases=("didn't change, skipping", UP_TO_DATE))
    shutil.rmtree(project)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, help="images for the manifest project (default 100000; --quick 2000)")
    parser.add_argument("--copy-count", type=int, help="images for the copy project (default: --count)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of status and no-op repro (median)")
    parser.add_argument("--quick", action="store_true", help="2000 images")
    args = parser.parse_args()
    count = args.count or (2_000 if args.quick else 100_000)
    copy_count = args.copy_count or count
    if not 0 < copy_count <= count or args.repeats < 1:
        raise SystemExit(f"--count {count} --copy-count {copy_count}: want 0 < copy-count <= count, repeats >= 1")

    rows = {}
    with tempfile.TemporaryDirectory(prefix="ddpipe-manifest-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        generate(work / "source", count)
        generated = time.perf_counter() - began
        if copy_count < count:  # the copy side on the first copy_count images: the same files, fewer of them
            subset = work / "source_copy"
            for path in sorted((work / "source").rglob("*.png")):
                if int(path.stem) < copy_count:
                    target = subset / path.relative_to(work / "source")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(path, target)
        for copy, n, source in ((False, count, work / "source"),
                                (True, copy_count, work / ("source_copy" if copy_count < count else "source"))):
            rows[copy] = {"images": n, **measure(work, source, copy, args.repeats)}
        fs = subprocess.run(["df", "--output=fstype", tmp], capture_output=True, text=True).stdout.split()[-1]

    print(f"dvc {dvc.__version__}, python {platform.python_version()}, {os.cpu_count()} cores, temp fs {fs}; "
          f"{count} images generated in {generated:.1f} s; median of {args.repeats} runs, seconds (wall, each a "
          f"fresh `dvc` process)")
    print("wall s (CPU s of the dvc process and the stages it ran)")
    print(f"{'mode':>9} {'images':>8} {'files in data/':>15} {'MB':>8} {'1st repro':>16} {'status':>14} "
          f"{'no-op repro':>14}")
    for copy, r in ((True, rows[True]), (False, rows[False])):
        print(f"{'copy' if copy else 'manifest':>9} {r['images']:>8} {r['files']:>15} {r['bytes'] / 1e6:>8.2f} "
              f"{r['repro']:>8.2f} ({r['repro_cpu']:>5.1f}) {r['status']:>6.2f} ({r['status_cpu']:>4.2f}) "
              f"{r['noop']:>6.2f} ({r['noop_cpu']:>4.2f})")
    c, m = rows[True], rows[False]
    if c["images"] == m["images"]:
        print(f"ratio copy / manifest at {count} images (wall): 1st repro {c['repro'] / m['repro']:.2f}x, status "
              f"{c['status'] / m['status']:.2f}x, no-op repro {c['noop'] / m['noop']:.2f}x")
    else:
        print(f"per 1k images: copy (at {c['images']}) 1st repro {c['repro'] / c['images'] * 1e3:.3f} s, manifest "
              f"(at {m['images']}) 1st repro {m['repro'] / m['images'] * 1e3:.3f} s; no ratio across different N")
    target = "met" if m["status"] < 2 and m["noop"] < 2 else "missed"
    print(f"target no-op status and repro < 2 s with the manifest at {m['images']} images: {target} on wall time "
          f"({m['status']:.2f} s, {m['noop']:.2f} s; CPU {m['status_cpu']:.2f} s, {m['noop_cpu']:.2f} s)")


if __name__ == "__main__":
    main()
