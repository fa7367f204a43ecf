"""The KD-temperature table of docs/evaluation-fairness.md: every set's top-1 at each temperature and IPC.

Not a benchmark of code paths: it reruns the `evaluate` stages of a reproduced project through
`dvc exp run -S ipc=N -S evaluate.temperature=T` and keeps each set's metrics JSON, then prints the table.

    python benchmarks/temperature.py run --ipc 10 1 --temperatures 1 4 20 --sets random sre2l delt infer full
    python benchmarks/temperature.py table [--out FILE]

`run` works in the project it is started in (a clone: it leaves params.yaml at the last setting and an
experiment ref per run). Upstream stages (teachers, recover, relabel, ...) run once per IPC and are restored
from the run cache afterwards: FKD files store raw teacher logits, so the temperature reads only `evaluate`.
Only the protocols that read the temperature are run (`--protocols`, default fkd and static); a (ipc, T, set)
whose metrics are already in `--runs` is skipped, so an interrupted grid resumes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

DVC = [sys.executable, "-m", "dvc"]


def metrics_path(p: dict, set_name: str) -> Path:
    """Where dvc.yaml's evaluate@<set> writes (relabel's foreach `dir`)."""
    ds = p["dataset"]
    folder = "full" if set_name == "full" else f"podd{p['podd']['ipc']}" if set_name == "podd" else f"ipc{p['ipc']}"
    return Path("artifacts", ds, folder, "metrics", f"{set_name}.json")


def run(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    for ipc in args.ipc:
        for t in args.temperatures:
            where = runs / f"ipc{ipc}" / f"T{t:g}"
            todo = [s for s in args.sets if not (where / f"{s}.json").exists()]
            if not todo:
                continue
            command = [*DVC, "exp", "run", "-S", f"ipc={ipc}", "-S", f"evaluate.temperature={float(t)}",
                       "-S", f"evaluate.protocols=[{','.join(args.protocols)}]", *(f"evaluate@{s}" for s in todo)]
            print("$ " + " ".join(command[2:]), flush=True)
            subprocess.run(command, check=True)
            p = yaml.safe_load(Path("params.yaml").read_text())
            where.mkdir(parents=True, exist_ok=True)
            for s in todo:
                shutil.copyfile(metrics_path(p, s), where / f"{s}.json")


def table(args: argparse.Namespace) -> str:
    runs = Path(args.runs)
    cells: dict[tuple, dict] = {}
    for path in sorted(runs.glob("ipc*/T*/*.json")):
        ipc, t = path.parent.parent.name[3:], float(path.parent.name[1:])
        m = json.loads(path.read_text())
        for protocol, r in m["protocols"].items():
            if protocol in args.protocols:
                cells[(protocol, ipc, m["method"], t)] = r
    temperatures = sorted({k[3] for k in cells})
    lines = []
    for protocol in sorted({k[0] for k in cells}):
        lines += [f"`{protocol}`: top-1 % after the last epoch, mean ± std over seeds", "",
                  "| IPC | set | " + " | ".join(f"T = {t:g}" for t in temperatures) + " | best T |",
                  "|---|---|" + "---|" * (len(temperatures) + 1)]
        keys = sorted({(k[1], k[2]) for k in cells if k[0] == protocol}, key=lambda k: (-int(k[0]), k[1]))
        for ipc, method in keys:
            row = [cells.get((protocol, ipc, method, t)) for t in temperatures]
            text = [f"{100 * r['top1']['mean']:.1f} ± {100 * r['top1']['std']:.1f}" if r else "–" for r in row]
            best = max((r["top1"]["mean"], t) for r, t in zip(row, temperatures) if r)[1]
            lines.append(f"| {ipc} | {method} | " + " | ".join(text) + f" | {best:g} |")
        means = []
        for ipc in sorted({k[0] for k in keys}, key=int, reverse=True):
            per_t = [[cells[(protocol, ipc, m, t)]["top1"]["mean"] for m in sorted({k[1] for k in keys if k[0] == ipc})
                      if (protocol, ipc, m, t) in cells] for t in temperatures]
            means.append(f"| {ipc} | mean over sets | " + " | ".join(
                f"{100 * statistics.fmean(v):.1f}" if v else "–" for v in per_t) + " | |")
        lines += means + [""]
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--ipc", type=int, nargs="+", default=[10, 1])
    r.add_argument("--temperatures", type=float, nargs="+", default=[1, 4, 20])
    r.add_argument("--sets", nargs="+", default=["random", "sre2l", "delt", "infer", "d4m", "vlcp", "podd", "full"])
    r.add_argument("--protocols", nargs="+", default=["fkd", "static"])
    r.add_argument("--runs", default="temperature-runs", help="folder the metrics are copied to")
    t = sub.add_parser("table")
    t.add_argument("--runs", default="temperature-runs")
    t.add_argument("--protocols", nargs="+", default=["fkd", "static"], help="the ones that read a temperature")
    t.add_argument("--out")
    args = parser.parse_args()
    (run if args.command == "run" else table)(args)


if __name__ == "__main__":
    main()
