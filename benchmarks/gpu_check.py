"""The GPU check: the CIFAR-10 preset at a small size through every stage, offline; images/s and peak memory.

Run through benchmarks/gpu_check.sh. It builds a throw-away project from this tree (code, dvc.yaml,
params.yaml, presets), applies presets/cifar10-sre2l.yaml with small sizes, generates a CIFAR-shaped 32 px
imagefolder (10 classes) and a ResNet-18-modified `file` teacher (random weights: nothing is downloaded),
runs `dvc repro`, and prints one row per stage process: wall seconds, the images it handled per second,
and its peak GPU memory (torch.cuda.max_memory_allocated). A hook in every Python process the run starts
(sitecustomize on PYTHONPATH) records those figures without touching the stages.

--cpu hides the GPU (CUDA_VISIBLE_DEVICES=""), --tiny shrinks the sizes to a CPU smoke run. The default
sizes are chosen to finish within 8 minutes on one recent GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOOK = '''
import atexit, json, os, sys, time
_start = time.perf_counter()
def _report():
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name.startswith("stages."):  # dvc itself, pip, ...
        return
    torch, peak = sys.modules.get("torch"), None
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
    entry = {"module": spec.name, "argv": sys.argv[1:], "seconds": time.perf_counter() - _start,
             "peak_gpu_bytes": peak}
    with open(os.environ["GPU_CHECK_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\\n")
atexit.register(_report)
'''

def sizes(tiny: bool) -> dict:
    """(train, val) images per class and the overrides layered on the preset."""
    from tests.tiny import TINY, TINY_PRESET

    if tiny:
        return {"train": 12, "val": 4, "params": TINY_PRESET}
    return {"train": 500, "val": 100, "params": {  # 5000 train images: CIFAR-10 shapes, a tenth of its size
        **{k: TINY[k] for k in ("diffusion", "d4m", "vlcp", "podd")}, "ipc": 10,
        "evaluate": {"epochs": 50, "full_epochs": 2, "seeds": 1, "eval_points": 2},
        "sre2l": {"recover": {"iterations": 500}},
        "delt": {"round_iterations": 100, "recover": {"iterations": 500}},
        "infer": {"recover": {"iterations": 500}}}}


def project(root: Path, cfg: dict) -> None:
    import torch

    from stages import preset
    from stages.models.resnet import resnet18_modified
    from tests.tiny import generated_cifar

    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    generated_cifar(root / "src", cfg["train"], cfg["val"])
    width = cfg["params"].get("models", {}).get("resnet18_modified", {}).get("width", 64)
    (root / "teachers").mkdir()
    torch.manual_seed(0)
    torch.save({"model": resnet18_modified(10, 32, width=width).state_dict()},
               root / "teachers" / "cifar10_resnet18_modified.pth")
    preset.apply("cifar10-sre2l", root / "params.yaml", root / "data",
                 {**cfg["params"], "dataset": "imagefolder", "prepare": {"root": str(root / "src")}})
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def images_handled(entry: dict, params, counts: dict) -> int | None:
    """The images a stage process went through (its unit of work), from the params and the data sizes:
    recover counts image-iterations, relabel crops labelled, evaluate training images seen (all students)."""
    module, argv = entry["module"].rsplit(".", 1)[-1], entry["argv"]  # stages.methods.delt.rank → rank
    opts = {a: b for a, b in zip(argv, argv[1:]) if a.startswith("--")}
    classes, ipc = 10, params.ipc
    train, val = counts["train"] * classes, counts["val"] * classes
    target = opts.get("--set", "")
    set_size = train if target.endswith("/full") else ipc * classes
    epochs = int(opts.get("--epochs", params.evaluate.epochs))
    if module == "prepare":
        return train + val
    if module == "teacher":
        return val  # a file teacher: one pass over val
    if module in ("rank", "caption", "latents"):
        return train
    if module == "recover":
        return ipc * classes * getattr(params, argv[0]).recover.iterations
    if module == "relabel":
        return set_size * epochs
    if module == "evaluate":
        protocols = [p for p in params.evaluate.protocols if p != "static" or target.endswith("/infer")]
        return len(protocols) * params.evaluate.seeds * set_size * epochs
    if module in ("synthesize", "baseline", "select"):
        return ipc * classes
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="hide the GPU: run on the CPU")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke sizes (a few minutes on 2 cores)")
    parser.add_argument("--keep", help="build the project here and keep it (default: a temp folder, removed)")
    args = parser.parse_args()
    cfg = sizes(args.tiny)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    root.mkdir(parents=True, exist_ok=True)
    hook = root.parent / f".{root.name}_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    log = root.parent / f".{root.name}_log.jsonl"
    log.unlink(missing_ok=True)
    try:
        project(root, cfg)
        env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "GPU_CHECK_LOG": str(log), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if args.cpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
        total = time.perf_counter() - start
        if run.returncode != 0:
            sys.exit(f"gpu_check: dvc repro failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        from stages.pipeline import params as params_mod

        params = params_mod.load(root / "params.yaml", root / "data")
        import torch

        device = "cpu" if args.cpu or not torch.cuda.is_available() else torch.cuda.get_device_name()
        print(f"gpu_check on {device}: {cfg['train'] * 10} train / {cfg['val'] * 10} val images at 32 px, "
              f"ipc {params.ipc}, whole `dvc repro` {total:.0f} s")
        print(f"{'stage':44s} {'seconds':>8s} {'images/s':>10s} {'peak GPU MiB':>13s}")
        peak_all = 0
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            name = " ".join([entry["module"].removeprefix("stages."),
                             *[a.split("/")[-1] for a in entry["argv"][:1] if not a.startswith("--")],
                             *[entry["argv"][i + 1].split("/")[-1] for i, a in enumerate(entry["argv"][:-1])
                               if a in ("--arch", "--set")]])
            n = images_handled(entry, params, cfg)
            rate = f"{n / entry['seconds']:.0f}" if n else "-"
            peak = entry["peak_gpu_bytes"]
            peak_all = max(peak_all, peak or 0)
            print(f"{name:44s} {entry['seconds']:8.1f} {rate:>10s} "
                  f"{(f'{peak / 2**20:.0f}' if peak is not None else '-'):>13s}")
        print(f"peak GPU memory over all stages: {peak_all / 2**20:.0f} MiB" if peak_all else
              "peak GPU memory: no stage used a GPU")
    finally:
        shutil.rmtree(hook, ignore_errors=True)
        log.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
