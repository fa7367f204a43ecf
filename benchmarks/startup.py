"""Stage start-up: how long each stage module that dvc.yaml runs takes from process start to the start of its work.

    python benchmarks/startup.py                 # this tree: median of 5 fresh `python -c 'import stages.X'` each
    python benchmarks/startup.py --before REV    # REV (a temporary git worktree, removed afterwards) and this tree,
                                                 # interleaved, with after/before per module
    python benchmarks/startup.py -n 9 --modules stages.report stages.relabel

A stage process (`python -m stages.X ...`) imports its module and everything that pulls in before main() runs;
a fresh `python -c 'import stages.X'` is that start-up (its interpreter start included; `python -c pass` is
printed for scale). The total weights each module by how many processes dvc.yaml's default run starts with it:
a foreach stage counts its members (relabel and evaluate once per evaluated set, teacher once per arch, ...).
Each repeat times every module in both trees, in alternating order, so drift on a shared machine hits both.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODULE = re.compile(r"-m (stages(?:\.\w+)+)")
BARE = "(python -c pass)"  # the interpreter alone, for scale


def stage_starts(repo: Path = REPO) -> dict[str, int]:
    """Stage module → how many processes the default `dvc repro` starts with it (dvc.yaml, params.yaml)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    starts: dict[str, int] = {}
    for body in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        members = body.get("foreach", [None])
        if isinstance(members, str):  # ${teacher.archs}: a list or dict in params.yaml
            members = params
            for key in re.fullmatch(r"\$\{(.+)\}", body["foreach"]).group(1).split("."):
                members = members[key]
        module = MODULE.search(body.get("do", body)["cmd"]).group(1)
        starts[module] = starts.get(module, 0) + len(members)
    return starts


def seconds(tree: Path, code: str) -> float:
    """Wall time of a fresh interpreter running `code` in `tree` (`python -c` puts the working directory, and
    so that tree's stages/, first on sys.path)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=tree, check=True)
    return time.perf_counter() - began


def short_rev(tree: Path) -> str:
    """HEAD's short hash, and `+ changes` when the tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + (" + changes" if git("status", "--porcelain") else "")


def measure(trees: dict[str, Path], modules: list[str], n: int) -> dict[tuple[str, str], float]:
    """Median seconds per (tree, module); each repeat runs every module in every tree, alternating the order."""
    for tree in trees.values():
        found = subprocess.run([sys.executable, "-c", "import stages; print(stages.__file__)"], cwd=tree,
                               capture_output=True, text=True, check=True).stdout.strip()
        if not Path(found).is_relative_to(tree.resolve()):
            sys.exit(f"error: in {tree}, `import stages` finds {found}, not that tree's")
    times: dict[tuple[str, str], list[float]] = {(side, m): [] for side in trees for m in modules}
    for rep in range(n):
        order = list(trees) if rep % 2 == 0 else list(trees)[::-1]
        for module in modules:
            code = "pass" if module == BARE else f"import {module}"
            for side in order:
                times[side, module].append(seconds(trees[side], code))
        print(f"repeat {rep + 1}/{n} done", file=sys.stderr)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="also measure this git revision, interleaved")
    parser.add_argument("-n", type=int, default=5, help="fresh processes per module and tree (median)")
    parser.add_argument("--modules", nargs="+", help="only these modules (default: every one dvc.yaml runs)")
    args = parser.parse_args()
    starts = stage_starts()
    modules = [BARE, *(args.modules or sorted(starts))]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"now": REPO}
        if args.before:
            trees = {"before": Path(tmp) / "before", "after": REPO}
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(trees["before"]), args.before], cwd=REPO,
                           check=True)
        try:
            median = measure(trees, modules, args.n)
            revs = {side: short_rev(tree) for side, tree in trees.items()}
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["before"])], cwd=REPO, check=True)
    sides = list(trees)

    def ratio(before: float, after: float) -> str:
        return f" {after / before:>12.2f}" if args.before else ""

    print(f"{'module':<36} {'starts':>6}" + "".join(f" {s + ' s':>9}" for s in sides)
          + (f" {'after/before':>12}" if args.before else ""))
    totals = dict.fromkeys(sides, 0.0)
    for module in modules:
        count = starts.get(module, 0)
        values = [median[s, module] for s in sides]
        print(f"{module:<36} {count or '':>6}" + "".join(f" {v:>9.2f}" for v in values) + ratio(values[0], values[-1]))
        for s in sides:
            totals[s] += count * median[s, module]
    values = [totals[s] for s in sides]
    print(f"{'sum, weighted by starts':<36} {sum(starts.get(m, 0) for m in modules):>6}"
          + "".join(f" {v:>9.1f}" for v in values) + ratio(values[0], values[-1]))
    print(f"median of {args.n} fresh processes per module and tree; "
          + "; ".join(f"{side}: {revs[side]}" for side in sides) + f"; {sys.executable}")


if __name__ == "__main__":
    main()
