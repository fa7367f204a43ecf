"""The flow every parity adapter goes through (docs/parity.md), and the comparison it writes.

1. A work project under --out: the project's data/<ds> and the teachers copied (the project is only read),
   params.yaml with the adapter's matching settings and an `external` entry for the reference's set.
2. The reference: its files copied from --reference into a temporary folder, the adapter's declared
   adaptations applied and printed, run twice (with its loss printing, then without, for the time), its
   loss lines parsed into curves/reference.csv, its images collected as an ImageFolder and imported with
   ddpipe's own import (`python -m stages.import_set`).
3. ddpipe: the method's stage run twice the same way (`--losses` on, then off: the images must be the same bytes).
4. Both sets through the shared relabel -> evaluate commands of dvc.yaml; the table (parity.json, parity.md),
   the curves (curves.png) and the pixel statistics of the two sets.

An adapter module (sre2l.py) defines NAME, REPOSITORY, TESTED_COMMIT, FILES and `plan(ctx) -> Plan`.
"""
from __future__ import annotations

import copy
import json
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks.parity.harness import (REPO, Adaptation, LossFormat, Measured, RunError, apply_adaptations,
                                       child_env, collect_images, copy_reference, parse_losses, python, read_csv,
                                       run_measured, write_csv, write_shims)
from stages.data.folder import read_classes
from stages.pipeline import params as params_module
from stages.pipeline.artifacts import read_data_meta
from stages.pipeline.errors import ParamsError

LOSS_COLUMNS = ["batch", "iteration", "ce", "bn", "total"]


@dataclass
class Context:
    """What an adapter needs to know about the comparison it plans."""
    project: Path  # the work project (under --out): data/, artifacts/<ds>/teachers/, params.yaml
    out: Path
    dataset: str
    ipc: int
    seed: int
    classes: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    params: object  # the validated Params of the work project
    raw_params: dict
    threads: int

    @property
    def data(self) -> Path:
        return self.project / "data" / self.dataset

    @property
    def sets(self) -> Path:
        return self.project / "artifacts" / self.dataset / f"ipc{self.ipc}"

    def teacher(self, arch: str) -> Path:
        return self.project / "artifacts" / self.dataset / "teachers" / arch


@dataclass
class Plan:
    """One method's comparison. Commands are argument lists; `{out}` in reference_command is the folder the
    reference writes its images to (under the temporary copy)."""
    adaptations: list[Adaptation]
    shims: dict[str, str]  # extra files written into the temporary copy (declared, printed)
    reference_cwd: str  # relative to the temporary copy
    reference_command: list[str]
    reference_log_flags: list[str]  # arguments of reference_command that only turn loss printing on
    reference_images: str  # regex over the image paths under {out}, named groups `label` and `index`
    loss_format: LossFormat | None  # None: a method without iterations (RDED): no curves, ddpipe runs without --losses
    ddpipe_command: list[str]  # after `python -m`, run in the work project; `--losses <csv>` is appended (loss_format)
    ddpipe_set: str  # the set's folder name under artifacts/<ds>/ipc<N>/distilled
    knobs: list[tuple[str, str, str]] = field(default_factory=list)  # (knob, ddpipe, reference): printed, in the table
    notes: list[str] = field(default_factory=list)  # reference details recorded, not changed
    # commands each side needs once before its measured runs (EDC: the statistics pass), timed and reported apart:
    # ddpipe's after `python -m` in the work project, the reference's in reference_cwd ({out} as above)
    ddpipe_before: list[list[str]] = field(default_factory=list)
    reference_before: list[list[str]] = field(default_factory=list)
    # method-specific measures of the two sets (RDED: the observer's losses of the kept crops):
    # (ctx, ddpipe's set folder, the imported reference set folder) -> {measure: {"ddpipe": v, "reference": v}}
    set_measures: Callable[..., dict] | None = None


def merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def work_project(project: Path, out: Path, params_file: Path, overrides: dict, teachers: list[str]) -> Path:
    """out/project: data and teachers copied from `project`, params.yaml = params_file + overrides."""
    raw = yaml.safe_load(params_file.read_text())
    raw = merge(raw, overrides)
    dataset = raw["dataset"]
    work = out / "project"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(project / "data" / dataset, work / "data" / dataset)
    for arch in teachers:
        src = project / "artifacts" / dataset / "teachers" / arch
        if not (src / "model.safetensors").is_file():
            raise ParamsError(f"--project {project}: no trained teacher {src} (run `dvc repro teacher@{arch}` there)")
        shutil.copytree(src, work / "artifacts" / dataset / "teachers" / arch)
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return work


def context(work: Path, out: Path, threads: int) -> Context:
    p = params_module.load(work / "params.yaml", work / "data")
    data = work / "data" / p.dataset
    meta = read_data_meta(data)
    return Context(work, out, p.dataset, p.ipc, p.seed, read_classes(data), meta.image_size, list(meta.mean),
                   list(meta.std), p, yaml.safe_load((work / "params.yaml").read_text()), threads)


def ddpipe_stage(ctx: Context, args: list[str], log: Path) -> Measured:
    return run_measured([python(), "-m", *args], ctx.project, log, child_env(ctx.threads))


def fastest(runs: list[Measured]) -> Measured:
    return min(runs, key=lambda m: m.seconds)


def run_reference(ctx: Context, module, checkout: Path, repeats: int = 1
                  ) -> tuple[Plan, list[str], Measured, list[Measured], list[dict], list[Measured]]:
    """Copy, adapt, print, run the plan's `reference_before` commands once, then the reference (logged, then
    `repeats` times unlogged, for the time); collect the images as <out>/reference_images."""
    plan = module.plan(ctx)
    with tempfile.TemporaryDirectory(prefix=f"parity-{module.NAME}-") as tmp:
        root = copy_reference(checkout, module.FILES, Path(tmp))
        lines = apply_adaptations(root, plan.adaptations) + write_shims(root / plan.reference_cwd, plan.shims)
        print(f"reference {module.REPOSITORY} ({checkout}), copied to {tmp}; adaptations:")
        print("\n".join(lines), flush=True)
        cwd, images = root / plan.reference_cwd, root / "images"
        env = child_env(ctx.threads, [cwd])
        command = [c.replace("{out}", str(images)) for c in plan.reference_command]
        before = [run_measured([c.replace("{out}", str(images)) for c in b], cwd,
                               ctx.out / "logs" / f"reference_before{i}.log", env)
                  for i, b in enumerate(plan.reference_before)]
        shutil.rmtree(images, ignore_errors=True)
        logged = run_measured(command, cwd, ctx.out / "logs" / "reference.log", env)
        rows = parse_losses(logged.output, plan.loss_format) if plan.loss_format else []
        if plan.loss_format and not rows:
            raise RunError(f"{logged.log}: no loss lines in the reference's output (format {plan.loss_format.start!r})")
        collect_images(images, plan.reference_images, ctx.classes, ctx.out / "reference_images")
        shutil.rmtree(images)  # the unlogged runs write it again
        quiet = [c for c in command if c not in plan.reference_log_flags]
        unlogged = [run_measured(quiet, cwd, ctx.out / "logs" / f"reference_unlogged{i}.log", env)
                    for i in range(repeats)]
        shutil.rmtree(images, ignore_errors=True)
    if plan.loss_format:
        write_csv(ctx.out / "curves" / "reference.csv", rows, LOSS_COLUMNS)
    return plan, lines, logged, unlogged, rows, before


def run_ddpipe(ctx: Context, plan: Plan, repeats: int = 1
               ) -> tuple[Measured, list[Measured], list[dict], bool | None, list[Measured]]:
    """The plan's `ddpipe_before` commands once, then the stage `repeats` times without, then once with --losses
    (without where the plan has no loss format: then the last run is the "logged" one and has no rows);
    (logged, unlogged runs, loss rows, whether every run wrote the same bytes, the before runs)."""
    target = ctx.sets / "distilled" / plan.ddpipe_set
    before = [ddpipe_stage(ctx, b, ctx.out / "logs" / f"ddpipe_before{i}.log")
              for i, b in enumerate(plan.ddpipe_before)]
    unlogged, sets = [], []
    for i in range(repeats):
        unlogged.append(ddpipe_stage(ctx, plan.ddpipe_command, ctx.out / "logs" / f"ddpipe_unlogged{i}.log"))
        sets.append({p.relative_to(target).as_posix(): p.read_bytes() for p in sorted(target.rglob("*.png"))})
        shutil.rmtree(target)
    curves = ctx.out / "curves" / "ddpipe.csv"
    losses = ["--losses", str(curves)] if plan.loss_format else []
    logged = ddpipe_stage(ctx, [*plan.ddpipe_command, *losses], ctx.out / "logs" / "ddpipe.log")
    second = {p.relative_to(target).as_posix(): p.read_bytes() for p in sorted(target.rglob("*.png"))}
    rows = read_csv(curves) if plan.loss_format else []
    batches = {name: i for i, name in enumerate(dict.fromkeys(r["batch"] for r in rows))}
    rows = [{**r, "batch": batches[r["batch"]]} for r in rows]
    return logged, unlogged, rows, all(s == second for s in sets) if sets else None, before


def evaluate(ctx: Context, name: str) -> dict:
    """relabel -> evaluate of one set, as dvc.yaml's commands; the metrics JSON."""
    ds, sets, e = ctx.dataset, ctx.sets, ctx.params.evaluate
    teacher = ctx.teacher(e.teacher).relative_to(ctx.project)
    common = ["--teacher", str(teacher), "--data", f"data/{ds}", "--epochs", str(e.epochs)]
    rel = sets.relative_to(ctx.project)
    ddpipe_stage(ctx, ["stages.relabel", "--set", f"{rel}/distilled/{name}", *common,
                       "--out", f"{rel}/soft_labels/{name}"], ctx.out / "logs" / f"relabel_{name}.log")
    ddpipe_stage(ctx, ["stages.evaluate", "--set", f"{rel}/distilled/{name}", "--labels", f"{rel}/soft_labels/{name}",
                       *common, "--out", f"{rel}/metrics/{name}.json", "--curves", f"{rel}/curves/{name}.csv"],
                 ctx.out / "logs" / f"evaluate_{name}.log")
    return json.loads((sets / "metrics" / f"{name}.json").read_text())


def load_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def image_at(folder: Path, k: int) -> Path:
    """The image of IPC index k in a class folder (<k>.<ext>, zero-padded or not)."""
    found = [p for p in sorted(folder.glob("*")) if p.stem.isdigit() and int(p.stem) == k]
    if not found:
        raise RunError(f"{folder}: no image of IPC index {k}")
    return found[0]


def pair_stats(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    if not a:  # e.g. k vs k+1 at IPC 1
        return {"pairs": 0, "mean_abs_diff": None, "rmse": None, "psnr_db": None, "correlation": None,
                "equal_pixels": None}
    diffs = [np.abs(x - y) for x, y in zip(a, b)]
    rmse = [float(np.sqrt(((x - y) ** 2).mean())) for x, y in zip(a, b)]
    corr = [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b)]
    return {"pairs": len(diffs), "mean_abs_diff": round(float(np.mean([d.mean() for d in diffs])), 2),
            "rmse": round(float(np.mean(rmse)), 2),
            "psnr_db": round(float(np.mean([20 * np.log10(255 / max(r, 1e-9)) for r in rmse])), 2),
            "correlation": round(float(np.mean(corr)), 4),
            "equal_pixels": round(float(np.mean([(d == 0).mean() for d in diffs])), 4)}


def as_jpeg(pixels: np.ndarray, quality: int = 75) -> np.ndarray:
    """The image through a JPEG round trip at PIL's default quality: the codec's own share of a difference."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def set_stats(images: list[np.ndarray]) -> dict:
    x = np.stack(images)
    return {"mean": round(float(x.mean()), 2), "std": round(float(x.std()), 2),
            "at_0": round(float((x == 0).mean()), 4), "at_255": round(float((x == 255).mean()), 4)}


def pixel_comparison(ctx: Context, ddpipe_dir: Path, reference_dir: Path) -> dict:
    """Image k of class c in both sets (same IPC index: the same seed where the adapter seeds the reference),
    against two images of one set that share nothing but their class (k and k+1): the level of "unrelated";
    and ddpipe's images through a JPEG round trip at quality 75: the level the codec alone explains."""
    ours, theirs = [], []
    for c in ctx.classes:
        for k in range(ctx.ipc):
            ours.append(load_pixels(image_at(ddpipe_dir / c, k)))
            theirs.append(load_pixels(image_at(reference_dir / c, k)))
    neighbours = [(i, i + 1) for i in range(len(ours)) if (i + 1) % ctx.ipc]
    return {"ddpipe_vs_reference_same_index": pair_stats(ours, theirs),
            "ddpipe_vs_itself_as_jpeg75": pair_stats(ours, [as_jpeg(x) for x in ours]),
            "ddpipe_k_vs_k+1_same_class": pair_stats([ours[i] for i, _ in neighbours],
                                                     [ours[j] for _, j in neighbours]),
            "reference_k_vs_k+1_same_class": pair_stats([theirs[i] for i, _ in neighbours],
                                                        [theirs[j] for _, j in neighbours]),
            "ddpipe_set": set_stats(ours), "reference_set": set_stats(theirs)}


def mean_curve(rows: list[dict], column: str) -> dict[int, float]:
    by_t: dict[int, list[float]] = {}
    for r in rows:
        if r.get(column) not in (None, ""):
            by_t.setdefault(int(r["iteration"]), []).append(float(r[column]))
    return {t: statistics.fmean(v) for t, v in sorted(by_t.items())}


def curve_summary(ours: list[dict], theirs: list[dict]) -> dict:
    """Mean over batches at a few iterations, for both sides."""
    out = {}
    for column in ("ce", "bn", "total"):
        a, b = mean_curve(ours, column), mean_curve(theirs, column)
        common = sorted(set(a) & set(b))
        if not common:
            continue
        last = common[-1]
        marks = sorted({common[0], *(t for t in (1, 10, 50, 100, 250) if t in a and t in b), last})
        out[column] = {str(t): {"ddpipe": round(a[t], 5), "reference": round(b[t], 5)} for t in marks}
        tail = [t for t in common if t >= int(0.9 * last)]  # the last 10 %: mean ratio
        out[column]["last_10pct_ratio_ddpipe_over_reference"] = round(
            statistics.fmean(a[t] for t in tail) / max(statistics.fmean(b[t] for t in tail), 1e-12), 4)
    return out


def plot_curves(ours: list[dict], theirs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=80)
    for ax, column, label in zip(axes, ("ce", "bn", "total"),
                                 ("cross-entropy", "BN term (before r_bn)", "total")):
        for rows, name, style in ((theirs, "reference", "-"), (ours, "ddpipe", "--")):
            curve = mean_curve(rows, column)
            ax.plot(list(curve), list(curve.values()), style, label=name, linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def protocol_rows(ours: dict, theirs: dict) -> dict:
    rows = {}
    for protocol in ours["protocols"]:
        if protocol not in theirs["protocols"]:
            continue
        a, b = ours["protocols"][protocol]["top1"], theirs["protocols"][protocol]["top1"]
        rows[protocol] = {"ddpipe": [round(100 * a["mean"], 2), round(100 * a["std"], 2)],
                          "reference": [round(100 * b["mean"], 2), round(100 * b["std"], 2)],
                          "difference": round(100 * (a["mean"] - b["mean"]), 2),
                          "larger_std": round(100 * max(a["std"], b["std"]), 2)}
    return rows


def markdown(result: dict) -> str:
    lines = [f"# Parity: {result['method']} beside {result['reference']['repository']} "
             f"(commit {result['reference']['commit'] or 'unknown'})", "",
             f"{result['dataset']}, IPC {result['ipc']}, seed {result['seed']}, {result['threads']} threads. "
             f"`{result['command']}`", "", "## Adaptations (printed with every run)", "",
             *[f"- {line.strip()}" for line in result["adaptations"]], "", "## Knobs", "",
             "| knob | ddpipe | reference |", "|---|---|---|",
             *[f"| {k} | {a} | {b} |" for k, a, b in result["knobs"]], ""]
    if result.get("evaluation"):
        ev = result["evaluation"]
        lines += ["## Evaluation (the shared recipe, top-1 %, mean ± std over seeds)", "",
                  "| protocol | ddpipe | reference | difference | larger std |", "|---|---|---|---|---|"]
        for protocol, r in ev["protocols"].items():
            lines.append(f"| {protocol} | {r['ddpipe'][0]:.1f} ± {r['ddpipe'][1]:.1f} | "
                         f"{r['reference'][0]:.1f} ± {r['reference'][1]:.1f} | {r['difference']:+.1f} | "
                         f"{r['larger_std']:.1f} |")
        lines += ["", "| set | teacher fidelity | intra-class cosine |", "|---|---|---|",
                  *[f"| {side} | {ev[side]['teacher_fidelity']} | {ev[side]['intra_class_cosine']} |"
                    for side in ("ddpipe", "reference")], ""]
    t = result["time_memory"]
    curves = result["curves"] is not None  # None: a method without loss curves (no --losses: the runs only repeat)
    lines += ["## Time and memory of the synthesis itself", "", "| run | ddpipe | reference | ratio ddpipe/reference |",
              "|---|---|---|---|"]
    labels = (("logged", "losses logged every iteration"), ("unlogged", "no loss logging (fastest run)")) if curves \
        else (("logged", "first run"), ("unlogged", "repeat runs (fastest)"))
    for key, label in labels:
        if key in t:
            r = t[key]
            lines += [f"| wall s, {label} | {r['ddpipe']} | {r['reference']} | {r['ratio']} |",
                      f"| CPU s, {label} | {r['cpu_ddpipe']} | {r['cpu_reference']} | {r['cpu_ratio']} |",
                      f"| 1-min load at start, exit | {r.get('load_ddpipe')} | {r.get('load_reference')} | |"]
    r = t["peak_rss_mib"]
    same = result["ddpipe_logging_same_bytes"]
    lines.append(f"| peak RSS MiB | {r['ddpipe']} | {r['reference']} | {r['ratio']} |")
    for side, runs in t.get("before", {}).items():  # run once before the measured runs (EDC: statistics)
        lines += [f"| before, {side}: `{b['command']}`: wall s (CPU s), peak RSS MiB | {b['seconds']} "
                  f"({b['cpu_seconds']}), {b['peak_rss_mib']} | | |" for b in runs]
    lines += ["", ("ddpipe's images with and without `--losses`: " if curves else "ddpipe's images in every run: ")
              + {True: "the same bytes", False: "DIFFERENT (a bug)", None: "not checked (--repeats 0)"}[same], ""]
    if curves:
        lines += ["## Loss curves (mean over batches)", "", *curve_table(result["curves"]), ""]
    if result.get("set_measures"):
        lines += ["## Method-specific measures of the two sets", "", "| measure | ddpipe | reference |",
                  "|---|---|---|",
                  *[f"| {k} | {v['ddpipe']} | {v['reference']} |" for k, v in result["set_measures"].items()], ""]
    lines += ["## Pixels (uint8 levels)", "", *pixel_table(result["pixels"]), "",
              "## Reference details recorded, not changed", "", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


def curve_table(curves: dict) -> list[str]:
    lines = ["| loss | iteration | ddpipe | reference |", "|---|---|---|---|"]
    for column, marks in curves.items():
        for t, v in marks.items():
            if isinstance(v, dict):
                lines.append(f"| {column} | {t} | {v['ddpipe']:.4g} | {v['reference']:.4g} |")
        lines.append(f"| {column} | last 10 %: ratio ddpipe/reference | "
                     f"{marks['last_10pct_ratio_ddpipe_over_reference']} | |")
    return lines


def pixel_table(pixels: dict) -> list[str]:
    lines = ["| pairs | n | mean abs diff | RMSE | PSNR dB | correlation | equal pixels |",
             "|---|---|---|---|---|---|---|"]
    for name, v in pixels.items():
        if "pairs" in v:
            lines.append(f"| {name} | {v['pairs']} | {v['mean_abs_diff']} | {v['rmse']} | {v['psnr_db']} | "
                         f"{v['correlation']} | {v['equal_pixels']} |")
    lines += ["", "| set | mean | std | share at 0 | share at 255 |", "|---|---|---|---|---|"]
    for name, v in pixels.items():
        if "pairs" not in v:
            lines.append(f"| {name} | {v['mean']} | {v['std']} | {v['at_0']} | {v['at_255']} |")
    return lines


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def run(module, checkout: Path, project: Path, out: Path, params_file: Path | None, overrides: dict,
        threads: int, evaluate_sets: bool, command: str, commit: str | None = None, repeats: int = 1) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    params_file = params_file or project / "params.yaml"
    base = merge(yaml.safe_load(params_file.read_text()), overrides)
    reference_name = f"{module.NAME}_reference"
    overrides = merge(overrides, merge(module.ddpipe_overrides(base), {"external": {reference_name: {
        "path": str((out / "reference_images").resolve()), "method": f"{module.NAME}-reference"}}}))
    work = work_project(project, out, params_file, overrides, module.teachers(merge(base, overrides)))
    ctx = context(work, out, threads)
    plan, lines, ref_logged, ref_unlogged, ref_rows, ref_before = run_reference(ctx, module, checkout, repeats)
    ddpipe_stage(ctx, ["stages.import_set", reference_name, "--data", f"data/{ctx.dataset}",
                       "--out", str((ctx.sets / "distilled" / reference_name).relative_to(work))],
                 out / "logs" / "import_set.log")
    ours_logged, ours_unlogged, our_rows, same_bytes, ours_before = run_ddpipe(ctx, plan, repeats)
    if plan.loss_format:
        batches = len({r["batch"] for r in our_rows})
        plot_curves(our_rows, ref_rows, out / "curves.png",
                    f"{module.NAME}: {ctx.dataset}, IPC {ctx.ipc} (mean over {batches} batches)")
    result = {
        "method": module.NAME, "dataset": ctx.dataset, "ipc": ctx.ipc, "seed": ctx.seed, "threads": threads,
        "command": command,
        "reference": {"repository": module.REPOSITORY, "checkout": str(checkout),
                      "commit": commit or commit_of(checkout), "tested_commit": module.TESTED_COMMIT,
                      "files": module.FILES},
        "adaptations": lines, "knobs": plan.knobs, "notes": plan.notes,
        "time_memory": time_memory(ours_logged, ours_unlogged, ref_logged, ref_unlogged, ours_before, ref_before),
        "ddpipe_logging_same_bytes": same_bytes,
        "curves": curve_summary(our_rows, ref_rows) if plan.loss_format else None,
        "pixels": pixel_comparison(ctx, ctx.sets / "distilled" / plan.ddpipe_set, out / "reference_images"),
    }
    if plan.set_measures:
        result["set_measures"] = plan.set_measures(ctx, ctx.sets / "distilled" / plan.ddpipe_set,
                                                   ctx.sets / "distilled" / reference_name)
    if evaluate_sets:
        ours, theirs = evaluate(ctx, plan.ddpipe_set), evaluate(ctx, reference_name)
        result["evaluation"] = {
            "protocols": protocol_rows(ours, theirs),
            **{side: {"teacher_fidelity": m.get("teacher_fidelity"), "intra_class_cosine": m.get("intra_class_cosine")}
               for side, m in (("ddpipe", ours), ("reference", theirs))}}
    (out / "parity.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "parity.md").write_text(markdown(result))
    return result


def time_memory(ours_logged: Measured, ours_unlogged: list[Measured], ref_logged: Measured,
                ref_unlogged: list[Measured], ours_before: list[Measured] = (), ref_before: list[Measured] = ()
                ) -> dict:
    """Wall and CPU seconds (unlogged: the fastest of the repeats, all listed; none with --repeats 0) and peak RSS
    (over every run of a side), with ratios ddpipe/reference; the plan's `before` commands apart (`before`)."""
    def row(ours: Measured, theirs: Measured) -> dict:
        return {"ddpipe": round(ours.seconds, 2), "reference": round(theirs.seconds, 2),
                "ratio": ratio(ours.seconds, theirs.seconds), "cpu_ddpipe": round(ours.cpu_seconds, 2),
                "cpu_reference": round(theirs.cpu_seconds, 2), "cpu_ratio": ratio(ours.cpu_seconds, theirs.cpu_seconds),
                "load_ddpipe": ours.load, "load_reference": theirs.load}

    ours_rss = max(m.peak_rss_mib for m in [ours_logged, *ours_unlogged])
    ref_rss = max(m.peak_rss_mib for m in [ref_logged, *ref_unlogged])
    out = {"logged": row(ours_logged, ref_logged),
           "peak_rss_mib": {"ddpipe": round(ours_rss, 1), "reference": round(ref_rss, 1),
                            "ratio": ratio(ours_rss, ref_rss)}}
    if ours_unlogged and ref_unlogged:
        out["unlogged"] = {**row(fastest(ours_unlogged), fastest(ref_unlogged)),
                           "all_ddpipe": [round(m.seconds, 2) for m in ours_unlogged],
                           "all_reference": [round(m.seconds, 2) for m in ref_unlogged]}
    if ours_before or ref_before:
        out["before"] = {side: [{"command": " ".join(m.command[:4]), "seconds": round(m.seconds, 2),
                                 "cpu_seconds": round(m.cpu_seconds, 2), "peak_rss_mib": round(m.peak_rss_mib, 1)}
                                for m in runs] for side, runs in (("ddpipe", ours_before), ("reference", ref_before))}
    return out


def commit_of(checkout: Path) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
    except OSError:
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


__all__ = ["Context", "Plan", "run", "REPO"]
