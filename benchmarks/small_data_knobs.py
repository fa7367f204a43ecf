"""The recover knobs at small scale: one recover method (sre2l, delt, infer or edc) under several settings, each
set evaluated as the pipeline does (recover → relabel → evaluate, protocols fkd and hard), into
docs/small-data-knobs.md's table.

    python benchmarks/small_data_knobs.py --root knobs --dataset digits --ipc 10 \
        --method sre2l --settings default r_bn1 r_var11
    python benchmarks/small_data_knobs.py --root knobs --dataset digits --ipc 1 \
        --method edc --settings r_loss0.01 r_loss0.1
    python benchmarks/small_data_knobs.py --root knobs --table

Each setting is the shipped params.yaml with `dataset`, `ipc` and the setting's overrides of the method's section
(`<method>.recover` for the recover engine's methods sre2l, delt and infer; EDC's knobs are top-level in `edc`).
The stages run from their own folder per setting (`<root>/<dataset>-ipc<N>-<method>-<setting>/`), exactly as
dvc.yaml runs them, a method's prerequisite stages included (DELT: rank and select; EDC: statistics); prepare, the
teachers the method reads and the random baseline run once per dataset (and IPC) and are shared by symlink.
Results are appended to `<root>/results.jsonl`; `--table` prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.tiny import merge  # noqa: E402

# name → overrides of the method's section (recover keys go under "recover"). The sources are in the docs.
SETTINGS = {
    "default": {},  # params.yaml as shipped (SRe2L's r_bn was 0.01 when the docs' table was measured)
    "r_bn0.01": {"recover": {"r_bn": 0.01}},  # SRe2L's ImageNet and CIFAR-100 value
    "r_bn1": {"recover": {"r_bn": 1.0}},
    "r_var11": {"recover": {"r_var": 11.0}},
    "crop_cosine": {"recover": {"crop_min_scale": 0.08, "crop_schedule": "cosine"}},
    "crop_cosine_0.5": {"recover": {"crop_min_scale": 0.5, "crop_schedule": "cosine"}},
    "it1000_jitter4": {"recover": {"iterations": 1000, "jitter": 4}},
    "lr0.1": {"recover": {"lr": 0.1}},
    "jitter0": {"recover": {"jitter": 0}},
    "r_bn1_r_var11": {"recover": {"r_bn": 1.0, "r_var": 11.0}},
    "r_bn1_crop_cosine_0.5": {"recover": {"r_bn": 1.0, "crop_min_scale": 0.5, "crop_schedule": "cosine"}},
    "r_bn0.1": {"recover": {"r_bn": 0.1}},
    "r_bn10": {"recover": {"r_bn": 10.0}},
}
# EDC's settings: overrides of the `edc` section itself (EDC does not use the recover engine's block)
EDC_SETTINGS = {
    "default": {},
    "r_loss0.01": {"r_loss": 0.01},  # EDC's CIFAR/Tiny scripts (the shipped value)
    "r_loss0.1": {"r_loss": 0.1},  # EDC's ImageNet-1K script
    "momentum0.8": {"momentum": 0.8},  # the shipped value (CIFAR scripts)
    "momentum0": {"momentum": 0.0},  # EDC's ImageNet-10 script
    "r_loss0.1_momentum0": {"r_loss": 0.1, "momentum": 0.0},
}
METHODS = ["sre2l", "delt", "infer", "edc"]
PROTOCOLS = ["fkd", "hard"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def stage(folder: Path, module: str, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=folder, env=env(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"stages.{module} in {folder} failed:\n{result.stdout}\n{result.stderr}")


def params_for(dataset: str, ipc: int, method: str | None, override: dict, extra: dict) -> dict:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    p = merge(base, {"dataset": dataset, "ipc": ipc, "evaluate": {"protocols": PROTOCOLS}, **extra})
    return merge(p, {method: override}) if method else p


def settings_of(method: str) -> dict:
    return EDC_SETTINGS if method == "edc" else SETTINGS


def teachers_of(p: dict, method: str | None) -> list[str]:
    """The teacher archs a method's stages read (dvc.yaml's deps), evaluate's teacher first."""
    archs = {"sre2l": [p["sre2l"]["teacher"]], "delt": [p["delt"]["ranker"], p["delt"]["teacher"]],
             "infer": list(p["infer"]["teachers"]), "edc": list(p["edc"]["observers"]), None: []}[method]
    return list(dict.fromkeys([p["evaluate"]["teacher"], *archs]))


def shared(root: Path, dataset: str, ipc: int, extra: dict, method: str | None = None) -> Path:
    """prepare + the teachers `method` reads (each once per dataset; evaluate's convnet always)."""
    base = root / f"{dataset}-base"
    base.mkdir(parents=True, exist_ok=True)
    p = params_for(dataset, ipc, None, {}, extra)
    (base / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    if not (base / "data" / dataset).exists():
        stage(base, "prepare", "--out", f"data/{dataset}")
    for arch in teachers_of(p, method):
        teacher = f"artifacts/{dataset}/teachers/{arch}"
        if not (base / teacher).exists():
            stage(base, "teacher", "--arch", arch, "--data", f"data/{dataset}", "--out", teacher)
    return base


def prerequisites(folder: Path, p: dict, method: str, dataset: str) -> str:
    """A method's stages before recover, in its folder as dvc.yaml runs them; returns recover's --init."""
    data, art = f"data/{dataset}", f"artifacts/{dataset}"
    if method == "delt":  # rank → select (dvc.yaml's rank and select stages)
        stage(folder, "methods.delt.rank", "--teacher", f"{art}/teachers/{p['delt']['ranker']}", "--data", data,
              "--out", f"{art}/ranking.csv")
        init = f"{art}/ipc{p['ipc']}/init/{p['delt']['criterion']}"
        stage(folder, "methods.delt.select", "--ranking", f"{art}/ranking.csv", "--data", data, "--out", init)
        return init
    if method == "edc":  # the statistics stage
        stage(folder, "methods.edc.statistics", "--teachers", f"{art}/teachers", "--data", data,
              "--out", f"{art}/edc_statistics")
        return f"{art}/edc_statistics"
    return {"sre2l": "noise", "infer": f"{data}/train"}[method]


def link_shared(folder: Path, base: Path, dataset: str) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / f"artifacts/{dataset}").mkdir(parents=True, exist_ok=True)
    for rel in (f"data/{dataset}", f"artifacts/{dataset}/teachers"):
        if not (folder / rel).exists():
            (folder / rel).symlink_to(base / rel)


def evaluate_set(folder: Path, dataset: str, set_dir: str, epochs: int) -> dict:
    teacher = f"artifacts/{dataset}/teachers/convnet"
    stage(folder, "relabel", "--set", set_dir, "--teacher", teacher, "--data", f"data/{dataset}",
          "--epochs", str(epochs), "--out", "soft_labels")
    stage(folder, "evaluate", "--set", set_dir, "--labels", "soft_labels", "--teacher", teacher,
          "--data", f"data/{dataset}", "--epochs", str(epochs), "--out", "metrics.json")
    return json.loads((folder / "metrics.json").read_text())


def row(m: dict, **what) -> dict:
    return {**what, "intra_class_cosine": m["intra_class_cosine"], "teacher_fidelity": m["teacher_fidelity"],
            **{f"{pr}_{k}": m["protocols"][pr]["top1"][k] for pr in PROTOCOLS for k in ("mean", "std")},
            **{f"{pr}_seeds": m["protocols"][pr]["per_seed_top1"] for pr in PROTOCOLS}}


def record(root: Path, r: dict) -> None:
    with open(root / "results.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")
    print(json.dumps(r), flush=True)


def claim(folder: Path) -> bool:
    """Several runs may share a root (one per core): each setting's folder goes to whichever makes it first."""
    try:
        folder.mkdir(parents=True)
        return True
    except FileExistsError:
        print(f"{folder.name}: done or running elsewhere; skipped", flush=True)
        return False


def run(args: argparse.Namespace) -> None:
    root = Path(args.root).absolute()
    extra = yaml.safe_load(args.params) if args.params else {}
    bad = [name for name in args.settings if name not in settings_of(args.method)]
    if bad:
        sys.exit(f"--method {args.method} has no setting {', '.join(bad)}; its settings: "
                 f"{', '.join(settings_of(args.method))}")
    # run one stream first, or they train a teacher each
    base = shared(root, args.dataset, args.ipc, extra, args.method)
    epochs = params_for(args.dataset, args.ipc, None, {}, extra)["evaluate"]["epochs"]
    random = root / f"{args.dataset}-ipc{args.ipc}-random"
    if args.random and claim(random):
        (random / "params.yaml").write_text(
            yaml.safe_dump(params_for(args.dataset, args.ipc, None, {}, extra), sort_keys=False))
        link_shared(random, base, args.dataset)
        stage(random, "methods.baselines.baseline", "random", "--data", f"data/{args.dataset}", "--out", "set")
        record(root, row(evaluate_set(random, args.dataset, "set", epochs), dataset=args.dataset, ipc=args.ipc,
                         method="random", setting="-"))
    for name in args.settings:
        folder = root / f"{args.dataset}-ipc{args.ipc}-{args.method}-{name}"
        if not claim(folder):
            continue
        p = params_for(args.dataset, args.ipc, args.method, settings_of(args.method)[name], extra)
        (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        link_shared(folder, base, args.dataset)
        init = prerequisites(folder, p, args.method, args.dataset)
        stage(folder, "recover", args.method, "--teachers", f"artifacts/{args.dataset}/teachers", "--init", init,
              "--data", f"data/{args.dataset}", "--out", "set", "--stats", "stats.json")
        record(root, row(evaluate_set(folder, args.dataset, "set", epochs), dataset=args.dataset, ipc=args.ipc,
                         method=args.method, setting=name))


def table(root: Path) -> None:
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines() if line.strip()]
    print("| dataset | IPC | method | setting | intra-class cos | fidelity | fkd top-1 | hard top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cos = r["intra_class_cosine"]  # null at IPC 1: one image per class has no pair
        cos = "–" if cos is None else f"{cos:.3f}"
        print(f"| {r['dataset']} | {r['ipc']} | {r['method']} | {r['setting']} | {cos} | "
              f"{100 * r['teacher_fidelity']:.0f} % | {100 * r['fkd_mean']:.1f} ± {100 * r['fkd_std']:.1f} | "
              f"{100 * r['hard_mean']:.1f} ± {100 * r['hard_std']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="working folder (one sub-folder per setting)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--method", default="sre2l", choices=METHODS)
    parser.add_argument("--settings", nargs="*", default=[], choices=sorted({*SETTINGS, *EDC_SETTINGS}),
                        help="names of SETTINGS (sre2l, delt, infer) or EDC_SETTINGS (edc)")
    parser.add_argument("--random", action="store_true", help="also evaluate the random real subset")
    parser.add_argument("--params", help="YAML mapping merged into every setting's params (e.g. prepare.image_size)")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of results.jsonl")
    args = parser.parse_args()
    if args.table:
        table(Path(args.root))
    else:
        run(args)


if __name__ == "__main__":
    main()
