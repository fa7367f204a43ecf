"""The results tables of docs/results.md, regenerated from an IPC grid run through the DVC experiment queue.

Not a benchmark of code paths: it queues the default grid and turns what the grid wrote into Markdown.

    python benchmarks/results_grid.py queue [--ipc 1 10 50] [--jobs 1] [--no-wait]
    python benchmarks/results_grid.py table [--protocols fkd hard] [--out FILE]

`queue` runs, from the repository root, `dvc exp run --queue -S ipc=N --name ipcN` for each N and
`dvc queue start`, with the run log (stages/pipeline/runlog.py) pointed at one absolute file: queued
experiments run in temporary copies of the project, and a relative log would vanish with them. The queue's
workers are spawned by `dvc queue start` and inherit its environment, so `DDPIPE_RUN_LOG` reaches every
stage - unless a worker is already running, started with another environment (refused below).
Commit the `dvc repro` first: the experiments then restore teachers, diffusion model and poster from the
cache instead of training them once per worker.

`table` reads the report table (`artifacts/<ds>/results.csv`, the copy `report` writes at an IPC-free path)
of the workspace and of every finished experiment of HEAD whose params equal the workspace's except `ipc`
(`dvc exp show --json`, `dvc.api.open(rev=<experiment commit>)`), and prints one table per protocol: method x
IPC (and `full`, PoDD at its own pixel budget), top-1, gain over random, teacher fidelity, diversity,
synthesis wall time (the run log line whose `out` is the set's folder; the latest one when a stage ran more
than once), storage. Then the machine facts of those log lines and the commands that regenerate it.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from stages import methods
from stages.pipeline import cli, runlog
from stages.pipeline.errors import ArtifactError, ParamsError, PipelineError

DVC = [sys.executable, "-m", "dvc"]
SETS = {s.name: s for s in methods.evaluated_sets()}
ORDER = [s.name for s in SETS.values() if s.role != "upper_bound"]  # the registry's order; others, full
# their sets also need the `diffusion` stage's model, trained once
SHARED_DIFFUSION = {s.name for m in methods.methods() if "synthesize" in m.shared_stages for s in m.sets}
MACHINE = ("host", "cpu_count", "threads", "device", "world_size")


WORKER_LOGS = Path(".dvc", "tmp", "exps", "celery")  # where `dvc queue start` workers log

def dvc(*args: str, env: dict | None = None) -> str:
    result = subprocess.run([*DVC, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} failed (exit {result.returncode}):\n"
                            f"{(result.stdout + result.stderr).strip()}")
    return result.stdout + result.stderr


def log_file(given: str | None) -> Path:
    """One absolute run log for the workspace and every queued experiment."""
    return Path(given or runlog.path()).absolute()


# ---- queue ---------------------------------------------------------------------------------------------

def queue_entries() -> list[dict]:
    """Every task `dvc queue status` lists: rev (the stash commit), name, status."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return repo.experiments.celery_queue.status()


def worker_count() -> int:
    from dvc.repo import Repo

    with Repo(".") as repo:
        return len(repo.experiments.celery_queue.worker_status())


def wait_for_idle_workers(seconds: float) -> None:
    """A worker keeps the environment it was started with, so it would not log where this run says. The
    queue's workers exit a few seconds after their last task: give them that long, then refuse."""
    deadline = time.monotonic() + seconds
    while worker_count():
        if time.monotonic() > deadline:
            raise ParamsError("dvc queue: a worker is still running (`dvc queue status`); it keeps the environment "
                              "it was started with and would not log to DDPIPE_RUN_LOG. Wait for it or "
                              "`dvc queue stop`, then run this again")
        time.sleep(2)


def queue(args: argparse.Namespace) -> None:
    log = log_file(args.log)
    names = [f"ipc{n}" for n in args.ipc]
    if subprocess.run([*DVC, "status", "--quiet"]).returncode != 0:
        print("warning: `dvc status` is not clean: run `dvc repro` and commit first, or every queued experiment "
              "recomputes the shared stages (teachers, diffusion, poster) itself", file=sys.stderr)
    # DVC notices a taken name only when it collects the finished run, and `exp run --force` would also
    # rerun every stage (teachers included): refuse before anything runs.
    taken = sorted(set(names) & set(dvc("exp", "list", "--name-only").split()))
    if taken:
        raise ParamsError(f"experiments {taken} exist already (`dvc exp list`); `dvc exp remove {' '.join(taken)}` "
                          "to run them again")
    wait_for_idle_workers(60)
    before = {e["rev"] for e in queue_entries()}  # earlier tasks of the same names are not ours
    # The workers are started as `dvc` from PATH and run the stages' `python`: make both this interpreter's.
    env = {**os.environ, "DDPIPE_RUN_LOG": str(log),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    for n, name in zip(args.ipc, names):
        print("$ " + shlex.join(["dvc", "exp", "run", "--queue", "-S", f"ipc={n}", "--name", name]))
        print(dvc("exp", "run", "--queue", "-S", f"ipc={n}", "--name", name, env=env).strip())
    print(f"$ DDPIPE_RUN_LOG={shlex.quote(str(log))} dvc queue start -j {args.jobs}")
    # The workers it spawns inherit its stdout: a pipe would stay open (and us blocked) until they exit.
    with tempfile.TemporaryFile("w+") as out:
        started = subprocess.run([*DVC, "queue", "start", "-j", str(args.jobs)], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.seek(0)
        print(out.read().strip())
    if started.returncode != 0:
        raise PipelineError(f"dvc queue start failed (exit {started.returncode})")
    if args.no_wait:
        print(f"queued {', '.join(names)}; `dvc queue status` to follow, then "
              f"`python benchmarks/results_grid.py table --log {log}`")
        return
    began, last, idle_since = time.monotonic(), None, None
    while True:
        states = {e["name"]: e["status"] for e in queue_entries() if e["rev"] not in before and e["name"] in names}
        line = ", ".join(f"{name}: {states.get(name, 'not in queue')}" for name in names)
        if line != last:
            print(f"[{time.monotonic() - began:6.0f} s] {line}", flush=True)
            last = line
        if not any(s in ("Queued", "Running") for s in states.values()):
            break
        # A worker that failed to start (its log: WORKER_LOGS) leaves the tasks queued forever.
        if "Running" in states.values() or worker_count():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 60:
            raise PipelineError(f"experiments queued but no queue worker running for 60 s; see "
                                f"{WORKER_LOGS}/dvc-exp-worker-*.out, then `dvc queue start`")
        time.sleep(args.poll)
    failed = [name for name in names if states.get(name) != "Success"]
    if failed:
        raise PipelineError(f"experiments {failed} did not succeed; `dvc queue logs <name>` shows why")
    print(f"done; now: python benchmarks/results_grid.py table --log {log}")


# ---- table ---------------------------------------------------------------------------------------------

def sources(shown: list[dict]) -> tuple[list[dict], list[str]]:
    """The workspace, then every finished experiment of HEAD whose params differ from it only in `ipc`."""
    def params(data: dict) -> dict:
        return ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}

    workspace = next(c for c in shown if c["rev"] == "workspace")
    base = params(workspace["data"])
    if not base:
        raise ParamsError("params.yaml: not found in the workspace (run this from the repository root)")
    found = [{"name": "workspace", "rev": None, "params": base}]
    skipped = []
    for commit in shown:
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state", "success")
            for rev in exp.get("revs") or []:
                name = rev.get("name") or rev["rev"][:7]
                if state != "success" or rev.get("error"):
                    skipped.append(f"{name}: {state}{' - ' + str(rev['error']) if rev.get('error') else ''}")
                    continue
                p = params(rev["data"])
                other = sorted(k for k in set(p) | set(base) if k != "ipc" and p.get(k) != base.get(k))
                if other:
                    skipped.append(f"{name}: params differ from the workspace's beyond ipc ({', '.join(other)})")
                    continue
                found.append({"name": name, "rev": rev["rev"], "params": p})
    return found, skipped


def read_results(source: dict) -> pd.DataFrame | None:
    import dvc.api

    path = f"artifacts/{source['params']['dataset']}/results.csv"
    try:
        with dvc.api.open(path, repo=".", rev=source["rev"]) as f:
            table = pd.read_csv(io.StringIO(f.read()), dtype={"ipc": str})
    except FileNotFoundError:
        return None
    table["source"] = source["name"]
    return table


def set_folder(p: dict, method: str, ipc: str) -> str:
    """Where dvc.yaml puts a set (the `out` its producing stage logs)."""
    ds, spec = p["dataset"], SETS.get(method)
    if spec is not None and spec.own_budget:
        return f"artifacts/{ds}/{spec.folder(p)}/distilled/{method}"
    return f"artifacts/{ds}/ipc{ipc}/distilled/{method}"


def own_budget(method: str) -> bool:
    """PoDD's poster: a set at a pixel budget of its own (the full set's IPC reads `all`)."""
    return method in SETS and SETS[method].own_budget and SETS[method].role == "method"


def budget(ipc: str) -> float:
    return math.inf if ipc == "all" else float(ipc)


def combine(tables: list[pd.DataFrame]) -> tuple[pd.DataFrame, list[str]]:
    """One row per (method, protocol, IPC): full and PoDD appear in every report, the first one is kept."""
    rows = pd.concat(tables, ignore_index=True)
    notes = []
    key = ["method", "protocol", "ipc"]
    for (method, protocol, ipc), same in rows.groupby(key):
        if same.top1.nunique() > 1:
            notes.append(f"{method} {protocol} IPC {ipc}: top-1 differs between {', '.join(same.source)}; "
                         f"kept {same.source.iloc[0]}'s")
    rows = rows.drop_duplicates(key).copy()
    rows["budget_"] = rows.ipc.map(budget)
    rows["rank_"] = [ORDER.index(m) if m in ORDER else len(ORDER) for m in rows.method]
    return rows.sort_values(["budget_", "rank_", "method"]).reset_index(drop=True), notes


def gain(row, random: pd.DataFrame) -> str:
    """Top-1 minus random's under the same protocol at the same IPC; PoDD against the smallest random budget
    at least its own (its poster has fewer pixels); none for the full set."""
    if row.ipc == "all":
        return "–"
    richer = random[(random.protocol == row.protocol) & (random.budget_ >= row.budget_)]
    if richer.empty:
        return "–"
    ref = richer.iloc[0]
    points = f"{100 * (row.top1 - ref.top1):+.1f}"
    return points if ref.ipc == row.ipc else f"{points} (vs IPC {ref.ipc})"


def wall_time(row, p: dict, runs: dict[str, dict], used: list[dict]) -> str:
    found = runs.get(set_folder(p, row.method, row.ipc))
    if found is None:
        return "not in log"
    used.append(found)
    cell = f"{found['seconds']:.1f}"
    if row.method in SHARED_DIFFUSION:
        diffusion = runs.get(f"artifacts/{p['dataset']}/diffusion")
        cell += " (+ diffusion)" if diffusion else " (+ diffusion: not in log)"
    return cell


def score(r, key: str) -> str:
    """A DD-Ranking score (fraction) as points, mean ± std over seeds; – where the report has none."""
    mean, std = getattr(r, key, math.nan), getattr(r, f"{key}_std", math.nan)
    return "–" if pd.isna(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def storage(r) -> tuple[str, str]:
    """Label bytes and images + labels as % of the full train set's bytes (the report's budget columns)."""
    labels, share = getattr(r, "label_bytes", math.nan), getattr(r, "budget_fraction", math.nan)
    return ("–" if pd.isna(labels) else f"{int(labels):,}"), ("–" if pd.isna(share) else f"{100 * share:.2f}")


def markdown(rows: pd.DataFrame, protocol: str, p: dict, runs: dict[str, dict], used: list[dict]) -> str:
    random = rows[rows.method == "random"]
    part = rows[rows.protocol == protocol]
    seeds = ", ".join(map(str, sorted(set(part.seeds))))
    lines = [f"### `{protocol}` protocol ({p['dataset']}, student {part.student.iloc[0]}, {seeds} seeds)", "",
             "| method | IPC | top-1 % (mean ± std) | IOR: gain over random (pts) | HLR (pts) | LRS % | ARS % "
             "| teacher fidelity % | diversity (intra-class cos) | synthesis wall time (s) | images | pixels "
             "| image bytes | label bytes | storage % of train set | flag |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in part.itertuples():
        ipc = "all" if r.ipc == "all" else (f"{float(r.ipc):g} (own budget)" if own_budget(r.method) else r.ipc)
        cosine = "–" if pd.isna(r.intra_class_cosine) else f"{r.intra_class_cosine:.3f}"
        flag = getattr(r, "flag", "")
        flag = "" if pd.isna(flag) else " & ".join(f"⚠ {why.split(':')[0]}" for why in str(flag).split("; ") if why)
        labels, share = storage(r)
        lines.append(f"| {r.method} | {ipc} | {100 * r.top1:.1f} ± {100 * r.top1_std:.1f} | {gain(r, random)} | "
                     f"{score(r, 'hlr')} | {score(r, 'lrs')} | {score(r, 'ars')} | "
                     f"{100 * r.teacher_fidelity:.1f} | {cosine} | {wall_time(r, p, runs, used)} | {r.images:,} | "
                     f"{r.pixels:,} | {r.bytes:,} | {labels} | {share} | {flag} |")
    return "\n".join(lines) + "\n"


def table(args: argparse.Namespace) -> None:
    found, skipped = sources(json.loads(dvc("exp", "show", "--json")))
    tables, read = [], []
    for source in found:
        t = read_results(source)
        if t is None:
            skipped.append(f"{source['name']}: no artifacts/{source['params']['dataset']}/results.csv (report not run)")
        else:
            tables.append(t)
            read.append(source)
    if not tables:
        raise ArtifactError("no report table in the workspace or in any finished experiment; "
                            "run `dvc repro` or the `queue` command first")
    rows, notes = combine(tables)
    missing = sorted(set(args.protocols) - set(rows.protocol))
    if missing:
        raise ParamsError(f"--protocols {' '.join(missing)}: not in the reports (they have "
                          f"{', '.join(sorted(set(rows.protocol)))}; params.yaml evaluate.protocols)")
    runs: dict[str, dict] = {}
    for entry in runlog.read(log_file(args.log)):  # in file order: the latest run of an output wins
        runs[os.path.normpath(entry["out"])] = entry
    p, used = found[0]["params"], []
    tables_md = [markdown(rows, protocol, p, runs, used) for protocol in args.protocols]

    notes_md = ["Top-1 after the last epoch on the real validation set. Gain: top-1 minus random's under the same "
                "protocol at the same IPC (PoDD: at the smallest random IPC with at least its pixels). Diversity: "
                "mean cosine of same-class teacher features (lower = more diverse; – where a class has one image). "
                "HLR, LRS, ARS: DD-Ranking's scores as the report computes them (docs/evaluation.md). Storage: images "
                "plus the labels the protocol needs, as a share of the full train set's bytes. "
                "Synthesis wall time: the run-log line of the stage that wrote the set (recover, synthesize, rded, "
                "poster); `baseline` does not log, so random and full say 'not in log'."]
    diffusion = runs.get(f"artifacts/{p['dataset']}/diffusion")
    if diffusion and set(rows.method) & SHARED_DIFFUSION:
        used.append(diffusion)
        notes_md.append(f"\\+ diffusion: the `diffusion` stage trained the model D4M and VLCP share once, in "
                        f"{diffusion['seconds']:.1f} s (caption, latents and prototypes are not logged).")
    machines = sorted({tuple(e.get(k) for k in MACHINE) for e in used}, key=str)
    notes_md.append("Machine (the run-log lines used): " + "; ".join(
        f"host {h}, {c} cores, {t} torch threads, device {d}, {w} process(es)" for h, c, t, d, w in machines)
        if machines else "Machine: no run-log line matched, nothing was timed.")
    notes_md.append("Sources: " + ", ".join(
        f"{s['name']} (ipc {s['params']['ipc']}{', ' + s['rev'][:7] if s['rev'] else ''})" for s in read)
        + (f"; skipped: {'; '.join(skipped)}" if skipped else "") + ".")
    notes_md += notes
    ipcs = " ".join(str(s["params"]["ipc"]) for s in sorted(read[1:], key=lambda s: s["params"]["ipc"]))
    table_args = shlex.join(["--protocols", *args.protocols, *(["--out", args.out] if args.out else [])])
    notes_md.append("Regenerate, from the repository root after `dvc repro` and a commit:\n\n```bash\n"
                    f"python benchmarks/results_grid.py queue{' --ipc ' + ipcs if ipcs else ''}\n"
                    f"python benchmarks/results_grid.py table {table_args}\n```")
    text = "\n".join(tables_md) + "\n" + "\n\n".join(notes_md) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("queue", help="queue one experiment per IPC and run them")
    q.add_argument("--ipc", nargs="+", type=int, default=[1, 10, 50])
    q.add_argument("--jobs", type=int, default=1, help="queue workers (timings are cleaner with 1)")
    q.add_argument("--no-wait", action="store_true", help="return once the workers are started")
    q.add_argument("--poll", type=float, default=10.0, help="seconds between queue status checks")
    t = commands.add_parser("table", help="print the results tables of the finished grid")
    t.add_argument("--protocols", nargs="+", default=["fkd", "hard"])
    t.add_argument("--out", help="also write the Markdown here")
    for sub in (q, t):
        sub.add_argument("--log", help="run log (default: $DDPIPE_RUN_LOG or artifacts/runs.jsonl), made absolute")
    args = parser.parse_args()
    if not Path("dvc.yaml").exists():
        raise ParamsError(f"{Path.cwd()}: no dvc.yaml; run this from the repository root")
    if args.command == "queue" and (min(args.ipc) < 1 or args.jobs < 1):
        raise ParamsError(f"--ipc {args.ipc} / --jobs {args.jobs}: expected positive integers")
    (queue if args.command == "queue" else table)(args)


if __name__ == "__main__":
    cli.run(main)
