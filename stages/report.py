"""report: every metrics file for the current dataset/ipc → a table (Markdown, CSV), an accuracy plot,
an image grid per distilled set, and summary.json (the numbers `dvc exp show` lists).

Gain is measured against `random` under the same protocol. A method that loses to random shows a
negative gain; nothing is hidden.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stages.data.distilled import images_root  # noqa: E402
from stages.data.folder import read_classes  # noqa: E402
from stages.data.prepared import split_items  # noqa: E402
from stages.pipeline import cli  # noqa: E402
from stages.pipeline.card import read_card  # noqa: E402
from stages.pipeline.errors import DataError  # noqa: E402
from stages.pipeline.outputs import atomic_dir, atomic_file, write_json  # noqa: E402

GRID_COLUMNS = 10


def collect(metric_dirs: list[Path]) -> pd.DataFrame:
    rows = []
    for folder in metric_dirs:
        for path in sorted(folder.glob("*.json")):
            m = json.loads(path.read_text())
            for protocol, r in m["protocols"].items():
                rows.append({
                    "method": m["method"], "protocol": protocol, "ipc": m["ipc"] if m["ipc"] is not None else "all",
                    "top1": r["top1"]["mean"], "top1_std": r["top1"]["std"],
                    "top1_best": r["top1_best"]["mean"], "top1_best_std": r["top1_best"]["std"],
                    "top5": r["top5"]["mean"], "seeds": m["seeds"], "images": m["images"], "pixels": m["pixels"],
                    "bytes": m["bytes"],
                    "student": m["student"], "epochs": m["epochs"],
                    "teacher_fidelity": m["teacher_fidelity"],
                    "intra_class_cosine": np.nan if m["intra_class_cosine"] is None else m["intra_class_cosine"],
                })
    if not rows:
        raise DataError(f"no metrics under {', '.join(map(str, metric_dirs))}; run the evaluate stages first")
    table = pd.DataFrame(rows)
    random = table[table.method == "random"].set_index("protocol")["top1"]
    table["gain_vs_random"] = [row.top1 - random[row.protocol] if row.protocol in random.index else np.nan
                               for row in table.itertuples()]
    rank = {"random": 0, "full": 2}
    table["_order"] = [rank.get(m, 1) for m in table.method]
    return table.sort_values(["_order", "method", "protocol"]).drop(columns="_order").reset_index(drop=True)


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
             "Protocol `static` learns the labels a set ships (INFER's logits, PoDD's own learned labels).", "",
             "| method | protocol | IPC | top-1 % | best top-1 % | top-5 % | gain vs random (pts) | fidelity % "
             "| intra-class cos | images | pixels | bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        gain = "" if np.isnan(r.gain_vs_random) else f"{100 * r.gain_vs_random:+.1f}"
        cosine = "–" if np.isnan(r.intra_class_cosine) else f"{r.intra_class_cosine:.3f}"
        lines.append(f"| {r.method} | {r.protocol} | {r.ipc} | {pct(r.top1, r.top1_std)} | "
                     f"{pct(r.top1_best, r.top1_best_std)} | {pct(r.top5)} | {gain} | {pct(r.teacher_fidelity)} | "
                     f"{cosine} | {r.images} | {r.pixels} | {r.bytes} |")
    first = table.iloc[0]
    lines += ["", f"Student {first.student}, {first.seeds} seeds; epochs per set: "
              + ", ".join(f"{m} {e}" for m, e in table.groupby("method").epochs.first().items()) + "."]
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


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", nargs="+", required=True, type=Path, help="folders of evaluate outputs")
    parser.add_argument("--sets", nargs="+", required=True, type=Path, help="folders of distilled sets")
    parser.add_argument("--data", required=True, help="data/<dataset>")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--summary", required=True, help="summary metrics JSON for `dvc exp show`")
    parser.add_argument("--table", help="results.csv again, at a path that does not depend on ipc: DVC matches a "
                                        "plot's files across experiments by path (the accuracy-vs-IPC plot)")
    args = parser.parse_args()
    classes = read_classes(args.data)
    table = collect(args.metrics)
    ipc = next((i for i in table.ipc if i != "all" and float(i).is_integer()), "all")  # not a poster's own IPC
    title = f"{Path(args.data).name}, IPC {ipc}"

    with atomic_dir(args.out) as tmp:
        table.to_csv(tmp / "results.csv", index=False, float_format="%.6f")
        plot(table, tmp / "accuracy.png", title)
        (tmp / "grids").mkdir()
        posters = []
        for folder in args.sets:
            for set_dir in sorted(d for d in folder.iterdir() if (d / "card.json").exists()):
                image_grid(set_dir, classes, tmp / "grids" / f"{set_dir.name}.png")
                if (set_dir / "poster.png").exists():  # PoDD: the poster itself, crops are views of it
                    (tmp / "posters").mkdir(exist_ok=True)
                    shutil.copy(set_dir / "poster.png", tmp / "posters" / f"{set_dir.name}.png")
                    posters.append(set_dir.name)
        (tmp / "results.md").write_text(markdown(table, title) + "".join(
            f"\n![{name} poster](posters/{name}.png)\n\n`{name}` poster: every training image of the set is an "
            f"image-sized crop of it (`grids/{name}.png`).\n" for name in posters))
    summary = {"ipc": ipc}
    for r in table.drop_duplicates("method").itertuples():
        summary[r.method] = {"teacher_fidelity": r.teacher_fidelity,
                             **({} if np.isnan(r.intra_class_cosine) else {"intra_class_cosine": r.intra_class_cosine})}
    for r in table.itertuples():
        summary.setdefault(r.method, {})[r.protocol] = {
            "top1": round(r.top1, 4), "top1_std": round(r.top1_std, 4),
            **({} if np.isnan(r.gain_vs_random) else {"gain": round(r.gain_vs_random, 4)})}
    write_json(args.summary, summary)
    if args.table:
        with atomic_file(args.table) as tmp:
            shutil.copy(Path(args.out) / "results.csv", tmp)
    print((Path(args.out) / "results.md").read_text())


if __name__ == "__main__":
    cli.run(main)
