"""The default run's stage times: `dvc repro` in a project, each stage's wall time, and two runs side by side.

    python benchmarks/default_run.py run PROJECT OUT.json   # dvc repro in PROJECT (a fresh clone with its venv
                                                            # active), timed; writes OUT.json
    python benchmarks/default_run.py compare BEFORE.json AFTER.json   # the table and the ratios

A stage's wall time runs from DVC's "Running stage" line to the next one (or the end), so it holds the stage
process's start-up (imports), its work and DVC's hashing of its outputs; the run log's seconds
(artifacts/runs.jsonl, inside the stage after its imports) are kept beside it. Ratios compare only runs on one
machine: its speed drifts between runs (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def run(project: Path, out: Path) -> dict:
    """dvc repro in `project`, every stage timed from its start line to the next."""
    starts: list[tuple[str, float]] = []
    began = time.perf_counter()
    with subprocess.Popen(["dvc", "repro"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            match = STAGE_LINE.search(line)
            if match:
                starts.append((match.group(1), time.perf_counter() - began))
    total = time.perf_counter() - began
    if proc.returncode:
        sys.exit(f"error: dvc repro failed in {project} (exit {proc.returncode})")
    ends = [t for _, t in starts[1:]] + [total]
    stages = {name: round(end - start, 2) for (name, start), end in zip(starts, ends)}
    log = project / "artifacts" / "runs.jsonl"
    inside = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project, capture_output=True,
                            text=True).stdout.strip()
    result = {"project": str(project), "commit": commit, "total_seconds": round(total, 2), "stages": stages,
              "run_log": inside}
    out.write_text(json.dumps(result, indent=1))
    print(f"dvc repro: {total:.0f} s, {len(stages)} stages; written {out}")
    return result


def family(stage: str) -> str:
    """`evaluate@infer` -> `evaluate`: the table sums a foreach stage's members."""
    return stage.split("@")[0]


def compare(before: dict, after: dict) -> None:
    """Per stage family: seconds before, after, and after/before; then the total."""
    sums = [{}, {}]
    for side, run_ in zip(sums, (before, after)):
        for stage, seconds in run_["stages"].items():
            side[family(stage)] = side.get(family(stage), 0.0) + seconds
    names = sorted(set(sums[0]) | set(sums[1]), key=lambda n: -max(sums[0].get(n, 0), sums[1].get(n, 0)))
    print(f"{'stage':<20} {'before s':>9} {'after s':>9} {'after/before':>13}")
    for name in names:
        b, a = sums[0].get(name), sums[1].get(name)
        shown = [f"{v:.1f}" if v is not None else "-" for v in (b, a)]
        print(f"{name:<20} {shown[0]:>9} {shown[1]:>9} {f'{a / b:.2f}' if a and b else '-':>13}")
    b, a = before["total_seconds"], after["total_seconds"]
    print(f"{'total (dvc repro)':<20} {b:>9.0f} {a:>9.0f} {a / b:>13.2f}")
    print(f"before: {before['commit']} in {before['project']}; after: {after['commit']} in {after['project']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("project", type=Path)
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.project.resolve(), args.out.resolve())
    else:
        compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))


if __name__ == "__main__":
    main()
