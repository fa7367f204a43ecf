"""Scaling: wall time, CPU time and peak memory of each stage as the train set grows and as ipc grows.

Train-set size: the digits train images replicated x1, x4, x16 (an `imagefolder` source whose train/<class>/
folder holds each digits train image k times under distinct names, hard links; val unchanged), prepared by the
real `prepare` stage with `dataset: imagefolder`, `prepare.root`. IPC: 1, 10, 50 on the x1 project.

Every stage runs as a subprocess with the exact command dvc.yaml gives it (resolved by DVC itself from a copy
of this repo's dvc.yaml and the params below), one project folder per train-set size; each stage's wall time
is clocked around it and its CPU seconds and peak RSS come from `os.wait4` (that child's own rusage). The
default mode uses fewer epochs and iterations than params.yaml (printed) to stay within ~20-30 min on 2 cores;
`--quick` uses tests/conftest.py's TINY-like settings and 2 sizes; `--tiny` is the smoke-test level (2 stages);
`--all` adds the long stages (second teacher, INFER, caption, diffusion, latents, prototypes, synthesis, poster).

    python benchmarks/scaling.py [--quick | --tiny] [--all] [--plot benchmarks/scaling.png]

Read it as: seconds per stage (smaller is faster) and how each grows - a ratio near 16 at x16 means linear in
the train set; near 1 means the stage does not read it. The machine is shared, so wall time is noisy under
load; CPU seconds are the steadier figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's tests/tiny.py
from tests.tiny import TINY, merge  # noqa: E402

# Stages in dependency order. IPC_STAGES are the ones whose work depends on `ipc` (the ipc sweep reruns them).
STAGES = ["prepare", "teacher@convnet", "rank", "select", "recover@sre2l", "recover@delt", "baseline@random",
          "relabel@sre2l", "evaluate@sre2l", "baseline@full", "relabel@full", "evaluate@full"]
LONG = ["teacher@resnet18_modified", "recover@infer", "caption", "diffusion", "latents", "prototypes@d4m",
        "synthesize@d4m", "poster"]
TINY_STAGES = ["prepare", "baseline@random"]  # no training: the smoke test checks the plumbing
IPC_STAGES = {"select", "recover@sre2l", "recover@delt", "recover@infer", "baseline@random", "relabel@sre2l",
              "evaluate@sre2l", "prototypes@d4m", "synthesize@d4m"}

# Fewer epochs/iterations than params.yaml so the default sweep fits ~20-30 min on 2 cores.
DEFAULT = {
    "teacher": {"epochs": 3},
    "evaluate": {"epochs": 30, "full_epochs": 2, "seeds": 1, "eval_points": 3},
    "sre2l": {"recover": {"iterations": 100}},
    "delt": {"round_iterations": 25, "recover": {"iterations": 100}},
    "infer": {"recover": {"iterations": 100}},
}
# tests/tiny.py's TINY (what the tests' projects use), with one seed and fewer student epochs.
QUICK = merge(TINY, {"evaluate": {"epochs": 10, "full_epochs": 1, "seeds": 1, "eval_points": 2,
                                  "protocols": ["fkd", "hard", "static"]}})


def stage_env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1"}


def run_measured(argv: list[str], cwd: Path, log: Path) -> dict:
    """Run one stage; its wall seconds, and CPU seconds and peak RSS from wait4 (this child alone)."""
    with open(log, "w") as out:
        began = time.perf_counter()
        child = subprocess.Popen(argv, cwd=cwd, env=stage_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so tell Popen
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {child.returncode}) in {cwd}:\n{log.read_text()[-3000:]}")
    # ru_maxrss is in KiB on Linux.
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def make_project(folder: Path, params: dict) -> Path:
    """This repo's dvc.yaml and code (linked) with its own params: DVC resolves the commands from them."""
    folder.mkdir()
    (folder / "stages").symlink_to(REPO / "stages")
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=folder, env=stage_env(), check=True)
    return folder


def commands(project: Path, params: dict) -> dict[str, list[str]]:
    """Each stage's command as dvc.yaml resolves it for these params (`python` → this interpreter)."""
    from dvc.repo import Repo

    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with Repo(str(project)) as repo:
        resolved = {stage.name: shlex.split(stage.cmd) for stage in repo.index.stages}
    for argv in resolved.values():
        if argv[0] == "python":
            argv[0] = sys.executable
    return resolved


def replicate(digits: Path, root: Path, k: int) -> int:
    """An imagefolder source: train/<class>/<stem>_r<j>.png (k links per digits train image), val as is."""
    count = 0
    for split, copies in (("train", k), ("val", 1)):
        for image in sorted((digits / split).glob("*/*.png")):
            target = root / split / image.parent.name
            target.mkdir(parents=True, exist_ok=True)
            for j in range(copies):
                dest = target / (f"{image.stem}_r{j}.png" if split == "train" else image.name)
                try:
                    os.link(image, dest)  # no bytes copied: the source tree costs nothing at x16
                except OSError:
                    shutil.copy2(image, dest)
                count += split == "train"
    return count


def run_stages(project: Path, params: dict, names: list[str], label: str, logs: Path) -> dict[str, dict]:
    argvs = commands(project, params)
    results = {}
    for name in names:
        results[name] = run_measured(argvs[name], project, logs / f"{label}-{name}.log")
        r = results[name]
        print(f"  {label:>6} {name:<26} {r['wall']:8.1f} s wall {r['cpu']:8.1f} s cpu {r['rss_mb']:7.0f} MB",
              flush=True)
    return results


def table(title: str, columns: list[str], results: dict[str, dict[str, dict]], names: list[str]) -> None:
    print(f"\n{title}: wall s / cpu s / peak MB")
    print(f"{'stage':<26}" + "".join(f"{c:>24}" for c in columns))
    for name in names:
        cells = [results[c].get(name) for c in columns]
        print(f"{name:<26}" + "".join(f"{r['wall']:>8.1f}{r['cpu']:>8.1f}{r['rss_mb']:>8.0f}" if r else f"{'-':>24}"
                                      for r in cells))


def ratio_line(what: str, columns: list[str], results: dict, names: list[str]) -> None:
    first, last = results[columns[0]], results[columns[-1]]
    for clock in ("wall", "cpu"):  # cpu: steadier than wall time on a shared machine
        parts = [f"{n} {last[n][clock] / first[n][clock]:.2f}x" for n in names if n in first and n in last]
        print(f"ratio {columns[-1]}/{columns[0]} ({what}, {clock} time): " + ", ".join(parts))


def plot(path: Path, sizes: dict[int, int], by_size: dict, ipcs: list[int], by_ipc: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for i, name in enumerate(next(iter(by_size.values()))):  # dashed after 10: the colour cycle repeats
        left.plot([sizes[k] for k in by_size], [by_size[k][name]["wall"] for k in by_size], "o-" if i < 10 else "s--",
                  label=name)
    left.set(xscale="log", yscale="log", xlabel="train images", ylabel="wall seconds", title="vs train-set size")
    for j, name in enumerate(next(iter(by_ipc.values()))):
        right.plot(ipcs, [by_ipc[i][name]["wall"] for i in ipcs], "o-" if j < 10 else "s--", label=name)
    right.set(xscale="log", yscale="log", xlabel="images per class", ylabel="wall seconds", title="vs ipc")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="TINY-like settings, train set x1 x2, ipc 1 3")
    parser.add_argument("--tiny", action="store_true", help="--quick with 2 stages: the smoke-test level")
    parser.add_argument("--all", action="store_true", help="also the long stages: " + ", ".join(LONG))
    parser.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "scaling.png")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and leave it, logs included")
    args = parser.parse_args()
    quick = args.quick or args.tiny
    settings = QUICK if quick else DEFAULT
    factors, ipcs, base_ipc = ([1, 2], [1, 3], 3) if quick else ([1, 4, 16], [1, 10, 50], 10)
    names = TINY_STAGES if args.tiny else STAGES + (LONG if args.all else [])
    if args.all and not args.tiny:  # keep dependency order: the long stages' inputs come first
        names = STAGES[:1] + ["teacher@convnet", "teacher@resnet18_modified"] + \
            [n for n in STAGES[2:] + LONG if n not in ("teacher@convnet", "teacher@resnet18_modified")]
    threads = os.environ.get("DDPIPE_THREADS", str(os.cpu_count()))
    base = merge(yaml.safe_load((REPO / "params.yaml").read_text()), settings)

    work = args.keep or Path(tempfile.mkdtemp(prefix="ddpipe-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    try:
        # The digits themselves, through the real prepare stage (not timed): the source every size replicates.
        digits_project = make_project(work / "digits", merge(base, {"dataset": "digits"}))
        subprocess.run(commands(digits_project, merge(base, {"dataset": "digits"}))["prepare"], cwd=digits_project,
                       env=stage_env(), check=True, capture_output=True)
        digits = digits_project / "data" / "digits"

        print(f"python {platform.python_version()}, {os.cpu_count()} cores, DDPIPE_THREADS={threads}; "
              f"stages: {', '.join(names)}")
        print(f"settings over params.yaml: {settings}")
        by_size, sizes, projects = {}, {}, {}
        for k in factors:
            root = work / f"source-x{k}"
            sizes[k] = replicate(digits, root, k)
            params = merge(base, {"dataset": "imagefolder", "ipc": base_ipc, "prepare": {"root": str(root)}})
            projects[k] = (make_project(work / f"x{k}", params), params)
            by_size[f"x{k}"] = run_stages(projects[k][0], params, names, f"x{k}", logs)
        produced = sum(1 for _ in (projects[factors[-1]][0] / "data" / "imagefolder" / "train").glob("*/*.png"))
        if produced != sizes[factors[-1]]:  # the same images the source holds, none dropped or merged
            raise SystemExit(f"prepare wrote {produced} train images at x{factors[-1]}, expected {sizes[factors[-1]]}")

        ipc_names = [n for n in names if n in IPC_STAGES]
        by_ipc = {}
        project, params = projects[1]
        for ipc in ipcs:  # the x1 project already ran base_ipc: those numbers are reused, not rerun
            by_ipc[ipc] = ({n: by_size["x1"][n] for n in ipc_names} if ipc == base_ipc else
                           run_stages(project, merge(params, {"ipc": ipc}), ipc_names, f"ipc{ipc}", logs))

        columns = list(by_size)
        table(f"train-set size ({', '.join(f'x{k} = {sizes[k]} images' for k in factors)}; ipc {base_ipc})",
              columns, by_size, names)
        ipc_columns = [f"ipc {i}" for i in ipcs]
        by_ipc_named = {f"ipc {i}": by_ipc[i] for i in ipcs}
        table(f"ipc (train set x1 = {sizes[1]} images)", ipc_columns, by_ipc_named, ipc_names)
        print()
        ratio_line("train set", columns, by_size, names)
        ratio_line("train set x1", ipc_columns, by_ipc_named, ipc_names)
        plot(args.plot, {f"x{k}": sizes[k] for k in factors}, by_size, ipcs, by_ipc,
             f"ddpipe stage wall time, {os.cpu_count()} cores, DDPIPE_THREADS={threads}"
             f"{' (quick settings)' if quick else ''}")
        print(f"plot: {args.plot}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
