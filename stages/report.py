"""report: every metrics file for the current dataset/ipc → a table (Markdown, CSV), an accuracy plot,
an image grid per distilled set, and summary.json (the numbers `dvc exp show` lists).

Gain is measured against `random` under the same protocol. A method that loses to random shows a
negative gain; nothing is hidden. DD-Ranking's scores (docs/evaluation-fairness.md), from the per-seed
top-1 (seed k of a set against seed k of random, i.e. random's draw k, and of full): HLR = full's `hard`
top-1 minus the set's, IOR = the set's top-1 minus random's under the same protocol (the gain), LRS =
(e^α − e^−1)/(e − e^−1) with α = w·IOR − (1 − w)·HLR, ARS the same with β = w·IOR(with augmentation)
+ (1 − w)·IOR(`noaug`), for the augmented protocols that label with the teacher (fkd, teacher).
A set that is not a distilled dataset is marked and the reason given
(params `flags`): the teacher reads it near chance (noise), or its images of a class are near-copies of
each other (intra-class cosine far above real images').
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stages import methods  # noqa: E402
from stages.data.files import read_classes  # noqa: E402
from stages.data.splits import images_root, split_items  # noqa: E402
from stages.pipeline import cli, params  # noqa: E402
from stages.evaluation.metrics import EvaluateMetrics, read_metrics  # noqa: E402
from stages.pipeline.card import read_card  # noqa: E402
from stages.pipeline.errors import DataError  # noqa: E402
from stages.pipeline.outputs import atomic_dir, atomic_file, write_json  # noqa: E402
from stages.pipeline.params import Params  # noqa: E402
from stages.pipeline import outputs

GRID_COLUMNS = 10


# the set every gain is measured against (random real images) and the upper bound (the whole train set)
REFERENCE, UPPER_BOUND = methods.set_names("reference")[0], methods.set_names("upper_bound")[0]
AUGMENTED = ("fkd", "teacher")  # protocols whose no-augmentation twin is `noaug` (ARS)


def normalised_exp(x: np.ndarray) -> np.ndarray:
    """DD-Ranking's map of a score in [-1, 1] onto [0, 1]: (e^x − e^−1) / (e − e^−1)."""
    return (np.exp(x) - np.exp(-1)) / (np.exp(1) - np.exp(-1))


def lrs(ior: np.ndarray, hlr: np.ndarray, weight: float) -> np.ndarray:
    return normalised_exp(weight * ior - (1 - weight) * hlr)


def ars(ior_aug: np.ndarray, ior_noaug: np.ndarray, weight: float) -> np.ndarray:
    return normalised_exp(weight * ior_aug + (1 - weight) * ior_noaug)


def seed_mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def collect(metric_dirs: list[Path], lrs_weight: float = 0.5, ars_weight: float = 0.5) -> pd.DataFrame:
    """One row per metrics file under `metric_dirs` and protocol, each file read through its schema, with the
    gain over random and DD-Ranking's scores; random first, full last."""
    rows = []
    for folder in metric_dirs:
        for path in sorted(folder.glob("*.json")):
            rows += metric_rows(read_metrics(path))
    if not rows:
        raise DataError(f"no metrics under {', '.join(map(str, metric_dirs))}; run the evaluate stages first")
    table = pd.DataFrame(rows)
    random = table[table.method == REFERENCE].set_index("protocol")["top1"]
    table["gain_vs_random"] = [row.top1 - random[row.protocol] if row.protocol in random.index else np.nan
                               for row in table.itertuples()]
    scores(table, lrs_weight, ars_weight)
    table = table.drop(columns="per_seed")
    rank = {"reference": 0, "upper_bound": 2}
    table["_order"] = [rank.get(methods.set_role(m), 1) for m in table.method]
    return table.sort_values(["_order", "method", "protocol"]).drop(columns="_order").reset_index(drop=True)


def metric_rows(m: EvaluateMetrics) -> list[dict]:
    """A metrics file's table rows, one per protocol (before the columns that compare sets)."""
    students = m.students or {m.student: m.protocols}
    rows = []
    for protocol, r in m.protocols.items():
        label_bytes = (m.label_bytes or {}).get(protocol)
        per_arch = {f"student_{arch}": res[protocol].top1.mean for arch, res in students.items()}
        rows.append({
            **per_arch, **({"top1_arch_mean": float(np.mean(list(per_arch.values())))}
                           if len(students) > 1 else {}),
            "per_seed": np.array(r.per_seed_top1), "draws": m.draws,
            "label_bytes": np.nan if label_bytes is None else label_bytes,
            "total_bytes": np.nan if label_bytes is None else m.bytes + label_bytes,
            "budget_fraction": np.nan if label_bytes is None else (m.bytes + label_bytes) / m.train_bytes,
            "method": m.method, "protocol": protocol, "ipc": m.ipc if m.ipc is not None else "all",
            "top1": r.top1.mean, "top1_std": r.top1.std,
            "top1_best": r.top1_best.mean, "top1_best_std": r.top1_best.std,
            "top5": r.top5.mean, "seeds": m.seeds, "images": m.images, "pixels": m.pixels,
            "bytes": m.bytes,
            "student": m.student, "epochs": m.epochs,
            "teacher_fidelity": m.teacher_fidelity,
            "intra_class_cosine": np.nan if m.intra_class_cosine is None else m.intra_class_cosine,
        })
    return rows


def flag_sets(table: pd.DataFrame, num_classes: int, noise_factor: float, copies_margin: float,
              hard_margin: float = 0.0) -> list[str]:
    """Per row, why its set is not a distilled dataset ('' if it is one).

    Noise: teacher fidelity below noise_factor x chance, or students trained on the set with hard labels
    (protocol `hard`) within hard_margin of chance - a teacher can read a class signal that teaches no
    student. Near-copies: intra-class cosine above that of random real images at the same IPC (else the full
    train set) by more than copies_margin."""
    chance = 1 / num_classes
    hard = {(row.method, row.ipc): row.top1 for row in table[table.protocol == "hard"].itertuples()}
    real = {row.ipc: row.intra_class_cosine for row in table[table.method.isin([REFERENCE, UPPER_BOUND])].itertuples()
            if not np.isnan(row.intra_class_cosine)}
    reasons = []
    for row in table.itertuples():
        why = []
        if row.teacher_fidelity < noise_factor * chance:
            why.append(f"noise: the teacher reads {pct(row.teacher_fidelity)} % of its images as their class, under "
                       f"{noise_factor:g} x chance ({pct(chance)} %)")
        taught = hard.get((row.method, row.ipc))
        if row.method not in (REFERENCE, UPPER_BOUND) and taught is not None and taught < chance + hard_margin:
            why.append(f"noise: students trained on its images with hard labels reach {pct(taught)} %, within "
                       f"{pct(hard_margin)} points of chance ({pct(chance)} %)")
        reference = real.get(row.ipc, real.get("all"))
        if row.method not in (REFERENCE, UPPER_BOUND) and reference is not None and \
                row.intra_class_cosine > reference + copies_margin:
            why.append(f"near-copies: intra-class cosine {row.intra_class_cosine:.3f}, "
                       f"more than {copies_margin:g} above "
                       f"real images' {reference:.3f}")
        reasons.append("; ".join(why))
    return reasons


def scores(table: pd.DataFrame, lrs_weight: float, ars_weight: float) -> None:
    """HLR, LRS and ARS columns (mean and std over seeds), in place; NaN where an input is missing."""
    seeds = {(r.method, r.protocol): r.per_seed for r in table.itertuples()}

    def ior(method: str, protocol: str):
        own, rnd = seeds.get((method, protocol)), seeds.get((REFERENCE, protocol))
        return None if own is None or rnd is None or len(own) != len(rnd) else own - rnd

    out = {k: [] for k in ("hlr", "hlr_std", "lrs", "lrs_std", "ars", "ars_std")}
    for r in table.itertuples():
        hard, full = seeds.get((r.method, "hard")), seeds.get((UPPER_BOUND, "hard"))
        gain = ior(r.method, r.protocol)
        hlr = None if hard is None or full is None or len(hard) != len(full) else full - hard
        noaug = ior(r.method, "noaug") if r.protocol in AUGMENTED else None
        values = {"hlr": hlr, "lrs": None if gain is None or hlr is None else lrs(gain, hlr, lrs_weight),
                  "ars": None if gain is None or noaug is None else ars(gain, noaug, ars_weight)}
        for key, v in values.items():
            mean, std = (np.nan, np.nan) if v is None else seed_mean_std(v)
            out[key].append(mean)
            out[f"{key}_std"].append(std)
    for key, column in out.items():
        table[key] = column


def pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown(table: pd.DataFrame, title: str) -> str:
    lines = [f"# {title}", "",
             "Top-1 on the real validation set after the last epoch (mean ± std over seeds); `best` is the max over",
             "validation points, an optimistic figure. Gain is top-1 minus `random` under the same protocol.",
             "Fidelity: the teacher's top-1 on the set's own images. Intra-class cos: mean cosine similarity of",
             "same-class teacher penultimate features (DELT's diversity measure; lower = more diverse).",
             "Wall times are not here (outputs hold no timings, so reruns give the same bytes): see the run log,",
             "artifacts/runs.jsonl.",
             "Pixels: the budget (images x h x w; PoDD: its poster's pixels, so PoDD is listed at its own IPC).",
             "Protocol `static` learns the labels a set ships (INFER's logits, PoDD's own learned labels); `noaug`",
             "learns the teacher's logits of each whole image with no crop, flip or mix.",
             "DD-Ranking's scores (per seed, then mean ± std): IOR = the gain; HLR = full's `hard` top-1 minus the",
             "set's; LRS = (e^α − e^−1)/(e − e^−1), α = w·IOR − (1 − w)·HLR; ARS the same map of",
             "w·IOR + (1 − w)·IOR(`noaug`) (rows fkd, teacher). Storage: one set's images plus the labels the",
             "protocol needs (FKD files, shipped labels, noaug's float32 logits, the teacher for online KD), as a",
             "fraction of the full train set's bytes.",
             "Flag: ⚠ marks a set that is not a distilled dataset (noise or near-copies; why: below the table).", "",
             "| method | protocol | IPC | top-1 % | best top-1 % | top-5 % | IOR: gain vs random (pts) | HLR (pts) "
             "| LRS % | ARS % | fidelity % | intra-class cos | images | pixels | image bytes | label bytes "
             "| storage % of train set | flag |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value: float, std: float | None = None, signed: bool = False) -> str:
        if np.isnan(value):
            return "–"
        return f"{100 * value:+.1f}" if signed else pct(value, std)

    for r in table.itertuples():
        cosine = "–" if np.isnan(r.intra_class_cosine) else f"{r.intra_class_cosine:.3f}"
        labels = "–" if np.isnan(r.label_bytes) else f"{int(r.label_bytes)}"
        share = "–" if np.isnan(r.budget_fraction) else f"{100 * r.budget_fraction:.2f}"
        flag = " & ".join(f"⚠ {why.split(':')[0]}" for why in getattr(r, "flag", "").split("; ") if why)
        lines.append(f"| {r.method} | {r.protocol} | {r.ipc} | {pct(r.top1, r.top1_std)} | "
                     f"{pct(r.top1_best, r.top1_best_std)} | {pct(r.top5)} | {cell(r.gain_vs_random, signed=True)} | "
                     f"{cell(r.hlr, r.hlr_std)} | {cell(r.lrs, r.lrs_std)} | {cell(r.ars, r.ars_std)} | "
                     f"{pct(r.teacher_fidelity)} | {cosine} | {r.images} | {r.pixels} | {r.bytes} | {labels} | {share} "
                     f"| {flag} |")
    first = table.iloc[0]
    draws = table[table.method == REFERENCE].draws.dropna()
    lines += ["", f"Student {first.student}, {first.seeds} seeds; epochs per set: "
              + ", ".join(f"{m} {e}" for m, e in table.groupby("method").epochs.first().items()) + "."
              + (f" `random`: mean ± std over {int(draws.iloc[0])} independent draws (seed k trains on draw k)."
                 if len(draws) else "")]
    archs = [c[len("student_"):] for c in table.columns if c.startswith("student_")]
    if len(archs) > 1:
        lines += ["", "## Students across architectures", "",
                  "Top-1 % (mean over seeds) of each student architecture on the same set, labels and plans.", "",
                  "| method | protocol | " + " | ".join(archs) + " | mean |", "|---|---|" + "---|" * (len(archs) + 1)]
        lines += [f"| {r.method} | {r.protocol} | " + " | ".join(pct(getattr(r, f"student_{a}")) for a in archs)
                  + f" | {pct(r.top1_arch_mean)} |" for r in table.itertuples()]
    flagged = table[table.flag != ""].drop_duplicates(["method", "ipc"]) if "flag" in table else table.iloc[:0]
    if len(flagged):  # its numbers stay in the table, but it is not read like the others
        lines += ["", "**Flagged sets** (not distilled datasets; params `flags`):", ""]
        lines += [f"- ⚠ {r.method} (IPC {r.ipc}): {r.flag}" for r in flagged.itertuples()]
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    methods = list(dict.fromkeys(table.method))
    protocols = list(dict.fromkeys(table.protocol))
    width = 0.8 / len(protocols)
    fig, ax = plt.subplots(figsize=(1.4 + 1.2 * len(methods), 3.6))
    for i, protocol in enumerate(protocols):
        part = table[table.protocol == protocol].set_index("method").reindex(methods)
        ax.bar(np.arange(len(methods)) + (i - (len(protocols) - 1) / 2) * width, 100 * part.top1, width,
               yerr=100 * part.top1_std, capsize=3, label=protocol)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_ylabel("val top-1 (%)")
    low = 100 * (table.top1 - table.top1_std).min()
    ax.set_ylim(max(0, low - 10), 100)
    ax.set_title(title)
    ax.legend(title="protocol", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def image_grid(set_dir: Path, classes: list[str], path: Path) -> None:
    """One row per class, up to GRID_COLUMNS images each (the first ones in file order)."""
    card = read_card(set_dir)
    files = split_items(images_root(set_dir, card), classes)
    rows = [[item for item in files if item.label == label][:GRID_COLUMNS] for label in range(len(classes))]
    columns = max(map(len, rows))
    tiles = [[item.load() for item in row] for row in rows]
    h = max(t.shape[0] for row in tiles for t in row)
    w = max(t.shape[1] for row in tiles for t in row)
    # one mosaic (white 1-pixel gaps) in one axes: a figure of classes x columns axes took seconds to build
    mosaic = np.full((len(rows) * (h + 1) - 1, columns * (w + 1) - 1, 3), 255, np.uint8)
    for label, row in enumerate(tiles):
        for col, tile in enumerate(row):
            mosaic[label * (h + 1):label * (h + 1) + tile.shape[0], col * (w + 1):col * (w + 1) + tile.shape[1]] = tile
    fig, ax = plt.subplots(figsize=(0.6 * columns + 0.6, 0.6 * len(classes) + 0.4))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([label * (h + 1) + h / 2 for label in range(len(classes))], classes, fontsize=7)
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    fig.suptitle(f"{card.method} ({card.num_images} images)", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def report_ipc(table: pd.DataFrame) -> int | str:
    """The IPC the report is titled by: the first integer one (not a poster's own IPC), else 'all'."""
    return next((i for i in table.ipc if i != "all" and float(i).is_integer()), "all")


def write_report(table: pd.DataFrame, sets: list[Path], classes: list[str], out: Path, title: str) -> None:
    """The report folder: results.csv, accuracy.png, an image grid per set (and PoDD's posters), results.md."""
    with atomic_dir(out) as tmp:
        table.to_csv(tmp / "results.csv", index=False, float_format="%.6f")
        plot(table, tmp / "accuracy.png", title)
        (tmp / "grids").mkdir()
        posters = []
        for folder in sets:
            for set_dir in sorted(d for d in folder.iterdir() if (d / "card.json").exists()):
                image_grid(set_dir, classes, tmp / "grids" / f"{set_dir.name}.png")
                if (set_dir / "poster.png").exists():  # PoDD: the poster itself, crops are views of it
                    (tmp / "posters").mkdir(exist_ok=True)
                    shutil.copy(set_dir / "poster.png", tmp / "posters" / f"{set_dir.name}.png")
                    posters.append(set_dir.name)
        (tmp / "results.md").write_text(markdown(table, title) + "".join(
            f"\n![{name} poster](posters/{name}.png)\n\n`{name}` poster: every training image of the set is an "
            f"image-sized crop of it (`grids/{name}.png`).\n" for name in posters))


def summary_of(table: pd.DataFrame, ipc: int | str) -> dict:
    """summary.json: per method its fidelity, diversity and flag, and per protocol top-1 and the scores."""
    summary = {"ipc": ipc}
    for r in table.drop_duplicates("method").itertuples():
        summary[r.method] = {"teacher_fidelity": r.teacher_fidelity, **({"flag": r.flag} if r.flag else {}),
                             **({} if np.isnan(r.intra_class_cosine) else {"intra_class_cosine": r.intra_class_cosine})}
    for r in table.itertuples():
        extra = {key: round(getattr(r, column), 4) for key, column in
                 (("ior", "gain_vs_random"), ("hlr", "hlr"), ("lrs", "lrs"), ("ars", "ars"),
                  ("top1_arch_mean", "top1_arch_mean"), ("storage_fraction", "budget_fraction"))
                 if hasattr(r, column) and not np.isnan(getattr(r, column))}
        summary.setdefault(r.method, {})[r.protocol] = {"top1": round(r.top1, 4), "top1_std": round(r.top1_std, 4),
                                                        **extra}
    return summary


def run(p: Params, metrics: list[Path], sets: list[Path], data: Path, out: Path, summary: Path,
        table_copy: Path | None = None) -> pd.DataFrame:
    """Tabulate every metrics file under `metrics`, flag what is not a distilled dataset, write the report
    folder `out` and `summary` (and results.csv again at `table_copy`); print results.md. Returns the table."""
    outputs.claim("report", {"--out": (out, outputs.REPORT),
                             "--summary": (summary, outputs.json_kind("a report summary", ipc=None)),
                             "--table": (table_copy, outputs.file_kind("a results table", ".csv"))},
                  {"--metrics": metrics, "--sets": sets, "--data": data})
    classes = read_classes(data)
    table = collect(metrics, p.report.lrs_weight, p.report.ars_weight)
    table["flag"] = flag_sets(table, len(classes), p.flags.noise_factor, p.flags.copies_margin,
                              p.flags.hard_margin)
    for r in table[table.flag != ""].drop_duplicates(["method", "ipc"]).itertuples():
        print(f"warning: report: {r.method} (IPC {r.ipc}) is flagged - {r.flag}", file=sys.stderr)
    ipc = report_ipc(table)
    write_report(table, sets, classes, out, f"{data.name}, IPC {ipc}")
    write_json(summary, summary_of(table, ipc))
    if table_copy:
        with atomic_file(table_copy) as tmp:
            shutil.copy(out / "results.csv", tmp)
    print((out / "results.md").read_text())
    return table


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", nargs="+", required=True, type=Path, help="folders of evaluate outputs")
    parser.add_argument("--sets", nargs="+", required=True, type=Path, help="folders of distilled sets")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    parser.add_argument("--summary", required=True, type=Path, help="summary metrics JSON for `dvc exp show`")
    parser.add_argument("--table", type=Path, help="results.csv again, at a path that does not depend on ipc: DVC "
                                                   "matches a plot's files across experiments by path (the "
                                                   "accuracy-vs-IPC plot)")
    args = parser.parse_args()
    run(params.load(), args.metrics, args.sets, args.data, args.out, args.summary, args.table)


if __name__ == "__main__":
    cli.run(main)
