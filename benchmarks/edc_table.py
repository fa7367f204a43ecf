"""EDC beside RDED, SRe2L and random, under today's recipe and under EDC's (docs/results.md, "EDC beside RDED,
SRe2L and random"). Not a benchmark of code paths: it runs the grid and prints the table.

    python benchmarks/edc_table.py run <project> <out.json> [--datasets digits photos] [--ipc 1 10]
    python benchmarks/edc_table.py table <out.json>

`run` works in `project`, a clone of this repository (its DVC cache keeps the teachers, the statistics and
`full` between configurations). For every dataset, IPC and recipe it writes the overrides below into the
clone's params.yaml and runs `dvc repro` on the targets evaluate@{random,sre2l,rded,edc,full}, then the report
stage's module over just those metrics (the report's DD-Ranking scores, flags and intra-class cosine), and keeps
the report's rows, the recover stages' run-log seconds and the commands in `out.json` (written after every
configuration, so a stopped run keeps what it finished).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

SETS = ("random", "sre2l", "rded", "edc")
DATASET = {  # every key either dataset changes, set each time (exp run keeps the workspace's last values)
    "digits": ["dataset=digits", "prepare.image_size=16", "teacher.flip=false", "evaluate.flip=false",
               "class_prompt='handwritten digit {name}'", "edc.flip=false", "edc.statistics.flip=false"],
    # docs/photos.md's settings; EDC's flips (recover and statistics) as its scripts, for natural images
    "photos": ["dataset=photos", "prepare.image_size=32", "teacher.flip=true", "evaluate.flip=true",
               "class_prompt='a photo of {name}'", "edc.flip=true", "edc.statistics.flip=true"],
}
RECIPE = {
    "today": [],
    # EDC's post-evaluation (docs/evaluation.md, "EDC's recipe"): MSE + 0.025 CE, EMA 0.99 validation, the
    # smoothing schedule at the paper's zeta 2, the paper's CIFAR-10 batch 25 (its Table 20)
    "edc": ["evaluate.loss=mse_ce", "evaluate.ema=0.99", "evaluate.zeta=2", "evaluate.batch_size=25"],
}
DEFAULTS = ["evaluate.loss=kl", "evaluate.ema=null", "evaluate.zeta=1.0", "evaluate.batch_size=auto"]


def set_params(path: Path, overrides: list[str]) -> None:
    """`key.path=value` (a YAML value) into params.yaml, comments kept (as `dvc exp run -S` would; plain `dvc repro`
    runs only the targets' stages, where `exp run` also collects every other stage's outputs from the cache)."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.width = 4096
    doc = rt.load(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    with open(path, "w") as f:
        rt.dump(doc, f)


def sh(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"error: {shlex.join(cmd)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def recover_seconds(project: Path, dataset: str, ipc: int) -> dict[str, float]:
    """The latest run-log seconds of each set's synthesis stage at this dataset and IPC."""
    seconds = {}
    for line in (project / "artifacts" / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        for name in SETS[1:]:
            if r.get("out") == f"artifacts/{dataset}/ipc{ipc}/distilled/{name}":
                seconds[name] = r["seconds"]
    return seconds


def run_one(project: Path, dataset: str, ipc: int, recipe: str) -> dict:
    overrides = [*DATASET[dataset], f"ipc={ipc}", *DEFAULTS, *RECIPE[recipe]]
    targets = [f"evaluate@{s}" for s in (*SETS, "full")]
    set_params(project / "params.yaml", overrides)
    cmd = [sys.executable, "-m", "dvc", "repro", *targets]
    sh(cmd, project)
    art = f"artifacts/{dataset}"
    out = Path(".edc_table") / f"{dataset}-ipc{ipc}-{recipe}"
    report = [sys.executable, "-m", "stages.report", "--metrics", f"{art}/ipc{ipc}/metrics", f"{art}/full/metrics",
              "--sets", f"{art}/ipc{ipc}/distilled", f"{art}/full/distilled", "--data", f"data/{dataset}",
              "--out", str(out / "report"), "--summary", str(out / "summary.json"), "--table", str(out / "results.csv")]
    sh(report, project)
    rows = pd.read_csv(project / out / "results.csv")
    return {"dataset": dataset, "ipc": ipc, "recipe": recipe, "command": shlex.join(cmd),
            "rows": rows.to_dict("records"), "recover_seconds": recover_seconds(project, dataset, ipc)}


def run(project: Path, out: Path, datasets: list[str], ipcs: list[int]) -> None:
    done = json.loads(out.read_text()) if out.exists() else []
    have = {(d["dataset"], d["ipc"], d["recipe"]) for d in done}
    for dataset in datasets:
        for recipe in RECIPE:
            for ipc in ipcs:
                if (dataset, ipc, recipe) in have:
                    continue
                print(f"{dataset} ipc {ipc} recipe {recipe} ...", flush=True)
                done.append(run_one(project, dataset, ipc, recipe))
                out.write_text(json.dumps(done, indent=1) + "\n")


def pm(row) -> str:
    return f"{100 * row.top1:.1f} ± {100 * row.top1_std:.1f}"


def table(out: Path) -> str:
    """One Markdown table per dataset: set x (IPC, recipe), fkd and hard top-1 with the report's scores. The
    run-log seconds stay in the JSON: on a shared machine they measure the load (docs/results.md times the
    recover stages on a quiet one)."""
    lines = []
    for dataset in dict.fromkeys(d["dataset"] for d in json.loads(out.read_text())):
        lines += [f"**{dataset}**", "", "| IPC | recipe | set | fkd | hard | IOR (fkd) | HLR | ARS (fkd) | "
                  "intra-class cos | flag |", "|---|---|---|---|---|---|---|---|---|---|"]
        for d in json.loads(out.read_text()):
            if d["dataset"] != dataset:
                continue
            rows = pd.DataFrame(d["rows"])
            for name in SETS:
                r = rows[rows.method == name]
                fkd, hard = (r[r.protocol == p].iloc[0] for p in ("fkd", "hard"))
                flag = fkd.flag if isinstance(fkd.flag, str) else ""
                cos = "–" if pd.isna(fkd.intra_class_cosine) else f"{fkd.intra_class_cosine:.3f}"
                lines.append(f"| {d['ipc']} | {d['recipe']} | {name} | {pm(fkd)} | {pm(hard)} | "
                             f"{100 * fkd.gain_vs_random:+.1f} | {100 * fkd.hlr:.1f} | {100 * fkd.ars:.1f} | "
                             f"{cos} | {flag} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("project", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--datasets", nargs="+", default=list(DATASET), choices=list(DATASET))
    r.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    t = sub.add_parser("table")
    t.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.project.resolve(), args.out.resolve(), args.datasets, args.ipc)
    else:
        print(table(args.out))


if __name__ == "__main__":
    main()
