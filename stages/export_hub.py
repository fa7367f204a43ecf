"""export_hub: a distilled set as a Hugging Face dataset folder (and, with a repo id and a token, on the Hub).

    python -m stages.export_hub --set artifacts/digits/ipc10/distilled/rded --out hub/digits-ipc10-rded \\
        [--data data/digits] [--metrics <evaluate JSON>] [--soft-labels <relabel folder>] \\
        [--license cc-by-4.0] [--repo-id user/name [--private]]

The folder, which `datasets.load_dataset(folder)` reads:
  README.md                      dataset card: the Hub's YAML metadata + method, source, IPC, teacher, results
  data/train-00000-of-00001.parquet   one row per image in class order: image (the set's PNG bytes), label
                                 (ClassLabel, names in classes.json order), path; plus `logits` or
                                 `probabilities` when the set ships labels (the `static` protocol's)
  fkd/epoch_NNNN.parquet         optional config `fkd_soft_labels`: relabel's FKD epochs (plan + fp16 teacher
                                 logits, an `epoch` column added), when the set was relabelled
  card.json, SHA256SUMS          the set's own card and checksum list, unchanged (ddpipe's import_set reads them)
  metrics.json, fkd.json         the evaluation and relabel records, when there are any

With --repo-id the folder is uploaded with huggingface_hub (HfApi.upload_folder) to a dataset repository,
the token from HF_TOKEN (or huggingface_hub's login), the endpoint from HF_ENDPOINT. When the upload cannot
happen (no token, no network) the folder stays written and the command stops with one `error:` line.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.data.distilled import images_root, load_set, read_labels
from stages.data.folder import image_size_of, list_images
from stages.pipeline import cli
from stages.evaluation.metrics import read_metrics
from stages.pipeline.artifacts import read_json
from stages.pipeline.card import CARD, SUMS, read_card, verify_content
from stages.pipeline.errors import ArtifactError, PipelineError
from stages.pipeline.outputs import atomic_dir, dir_bytes, write_json
from stages.pipeline import outputs

TRAIN_FILE = "data/train-00000-of-00001.parquet"
FKD_CONFIG = "fkd_soft_labels"


class UploadError(PipelineError):
    """The Hub upload after the folder was written: no token, no network, a refused repository."""


def sibling(set_dir: Path, kind: str, suffix: str = "") -> Path:
    """artifacts/<ds>/<dir>/distilled/<m> → artifacts/<ds>/<dir>/<kind>/<m><suffix> (evaluate's, relabel's)."""
    return set_dir.parent.parent / kind / f"{set_dir.name}{suffix}"


def features(classes: list[str], label_kind: str | None):
    import datasets

    columns = {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes), "path": datasets.Value("string")}
    if label_kind:
        columns[label_kind] = datasets.List(datasets.Value("float32"), length=len(classes))
    return datasets.Features(columns)


def write_images(out: Path, set_dir: Path, card, data_dir: Path | None) -> tuple[int, str | None]:
    """The set's images as one Parquet file with the `datasets` feature schema; (rows, shipped label kind)."""
    import datasets

    if data_dir is not None:
        _, images = load_set(set_dir, data_dir)
    else:  # no dataset beside it: the card's own class order
        verify_content(set_dir, card)
        images = None
    root = images_root(set_dir, card)
    files = list_images(root, card.classes)
    rows = {"image": [{"bytes": p.read_bytes(), "path": p.name} for p, _ in files],
            "label": [y for _, y in files], "path": [p.relative_to(root).as_posix() for p, _ in files]}
    kind = None
    if card.labels is not None:
        if images is None:
            from stages.data.folder import load_imagefolder
            images = load_imagefolder(root, card.classes)
        values, kind = read_labels(set_dir, card, images)
        rows[kind] = values.float().tolist()
    table = datasets.Dataset.from_dict(rows, features=features(card.classes, kind))
    (out / "data").mkdir()
    table.to_parquet(str(out / TRAIN_FILE))
    return len(files), kind


def checked_epochs(labels_dir: Path, card) -> list[Path]:
    """relabel's epoch files, each checked against fkd.json's record (its bytes) and the set (rows, classes,
    batches): an epoch changed, added or removed since relabel wrote it is refused, never exported."""
    from stages.pipeline.artifacts import read_fkd_meta
    from stages.training.soft_labels import read_checked_epoch

    meta = read_fkd_meta(labels_dir)
    record = labels_dir / "fkd.json"
    if meta.files is None:
        raise ArtifactError(f"{record}: no `files` record of the epochs (made before records existed): run relabel "
                            "again, or export with --no-soft-labels")
    on_disk = sorted(p.name for p in labels_dir.glob("epoch_*.parquet"))
    if on_disk != sorted(meta.files):
        extra, missing = sorted(set(on_disk) - set(meta.files)), sorted(set(meta.files) - set(on_disk))
        raise ArtifactError(f"{record}: records epochs {sorted(meta.files)[:3]}..., the folder holds "
                            f"{len(on_disk)} (not recorded: {extra[:3]}, missing: {missing[:3]}); run relabel again")
    if meta.num_images != card.num_images:
        raise ArtifactError(f"{record}: num_images = {meta.num_images}, the set holds {card.num_images}")
    files = []
    for name, digest in sorted(meta.files.items()):
        read_checked_epoch(labels_dir / name, meta.num_images, len(card.classes), meta.batch_size, digest)
        files.append(labels_dir / name)
    return files


def write_fkd(out: Path, labels_dir: Path, card) -> int:
    """relabel's epochs with an `epoch` column, so the config's rows say which epoch they replay."""
    files = checked_epochs(labels_dir, card)
    (out / "fkd").mkdir()
    for path in files:
        table = pq.read_table(path)
        epoch = int(path.stem.split("_")[1])
        table = table.append_column("epoch", pa.array([epoch] * len(table), pa.int32()))
        pq.write_table(table, out / "fkd" / path.name, compression="zstd")
    shutil.copyfile(labels_dir / "fkd.json", out / "fkd.json")
    return len(files)


def results_table(metrics: dict | None) -> str:
    if metrics is None:
        return "Not evaluated with ddpipe yet (no metrics file was given or found).\n"
    lines = ["| protocol | top-1 % (mean ± std) | best top-1 % | top-5 % | seeds |", "|---|---|---|---|---|"]
    for protocol, r in metrics["protocols"].items():
        lines.append(f"| {protocol} | {100 * r['top1']['mean']:.1f} ± {100 * r['top1']['std']:.1f} | "
                     f"{100 * r['top1_best']['mean']:.1f} | {100 * r['top5']['mean']:.1f} | {metrics['seeds']} |")
    return "\n".join(lines) + (f"\n\nStudent `{metrics['student']}`, {metrics['epochs']} epochs; teacher fidelity "
                               f"(the teacher's top-1 on these images) {100 * metrics['teacher_fidelity']:.1f} %.\n")


def card_text(card, metrics: dict | None, fkd_epochs: int, label_kind: str | None, storage: dict,
              license_id: str, repo_id: str | None, recipe: dict | None = None) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": TRAIN_FILE}], "default": True}]
    if fkd_epochs:
        configs.append({"config_name": FKD_CONFIG, "data_files": [{"split": "train", "path": "fkd/epoch_*.parquet"}]})
    data = DatasetCardData(
        license=license_id, task_categories=["image-classification"], pretty_name=title(card),
        tags=["dataset-distillation", "distilled-dataset", card.method, "ddpipe"],
        size_categories=["n<1K" if card.num_images < 1000 else
                         "1K<n<10K" if card.num_images < 10_000 else "10K<n<100K"],
        configs=configs,
        ddpipe={"method": card.method, "source_dataset": card.dataset, "ipc": card.ipc, "num_images": card.num_images,
                "classes": card.classes, "teacher": card.teacher, "params": card.params,
                "results": None if metrics is None else {p: {"top1": r["top1"]["mean"], "top1_std": r["top1"]["std"]}
                                                        for p, r in metrics["protocols"].items()}},
    )
    teacher = "none (the images were not shaped by a teacher)" if card.teacher is None else \
        ", ".join(f"`{a}`" for a in card.teacher.get("archs", [card.teacher.get("arch")])) + " (hashes in card.json)"
    where = repo_id or "<this folder>"
    load = f'load_dataset("{where}")'
    fkd_line = f'\nfkd = load_dataset("{where}", "{FKD_CONFIG}")   # one row per augmented slot and epoch' \
        if fkd_epochs else ""
    body = f"""
# {title(card)}

A distilled dataset made with ddpipe by **{card.method}**: {card.num_images} images standing
for the `{card.dataset}` training set, {card.ipc} per class.

| | |
|---|---|
| method | `{card.method}` |
| source dataset | `{card.dataset}`, {len(card.classes)} classes: {", ".join(f"`{c}`" for c in card.classes)} |
| images per class (IPC) | {card.ipc} |
| teacher | {teacher} |
| shipped labels | {f"`{label_kind}` per image (column `{label_kind}`)" if label_kind else "none"} |
| FKD soft labels | {f"{fkd_epochs} epochs, config `{FKD_CONFIG}`" if fkd_epochs else "not included"} |

```python
from datasets import load_dataset
images = {load}                      # image, label (class names in the source's order), path{fkd_line}
```

## Results

{results_table(metrics)}
Evaluation recipe: {card.evaluation.get("recipe", "")}{recipe_text(recipe)}. Protocols:
{chr(10).join(f"- `{k}`: {v}" for k, v in card.evaluation.get("protocols", {}).items())}

## Storage

{storage["images"]} images, {storage["image_bytes"]} bytes of PNG; {storage["pixels"]} pixels
({storage["height"]} x {storage["width"]} each). Folder total {storage["folder_bytes"]} bytes before this card.

## Parameters

The parameters the set was made with (`card.json`, which also pins every file's SHA-256):

```json
{json.dumps(card.params, indent=2, sort_keys=True)}
```

License: `{license_id}` (the distilled images derive from `{card.dataset}`; its own terms apply too).
"""
    return DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body).content


def read_recipe(path: Path) -> dict | None:
    """The `evaluate` section of the project's params.yaml at export time (None outside a project)."""
    import yaml

    try:
        return yaml.safe_load(path.read_text()).get("evaluate")
    except (OSError, AttributeError, yaml.YAMLError):
        return None


def recipe_text(recipe: dict | None) -> str:
    if not recipe:
        return ""
    keys = ("student", "teacher", "epochs", "optimizer", "lr", "weight_decay", "batch_size", "temperature",
            "crop_scale", "flip", "mix", "mix_alpha", "seeds")
    return "; at export: " + ", ".join(f"{k} {recipe[k]}" for k in keys if k in recipe)


def title(card) -> str:
    return f"{card.dataset} distilled by {card.method} (IPC {card.ipc})"


def upload(out: Path, repo_id: str, private: bool) -> str:
    """upload_folder to a dataset repository; every failure is one UploadError line."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        if token is None and api.token is None:
            raise UploadError(f"no Hugging Face token: set HF_TOKEN (or `hf auth login`); the folder {out} is "
                              f"written, upload it later with `hf upload {repo_id} {out} --repo-type dataset`")
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=out,
                                 commit_message="ddpipe export")
    except UploadError:
        raise
    except Exception as e:  # httpx/requests connection errors, HfHubHTTPError, offline mode: all end here
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UploadError(f"upload of {out} to {repo_id} failed ({type(e).__name__}: {reason}); the folder is "
                          f"written, upload it later with `hf upload {repo_id} {out} --repo-type dataset`") from None
    return str(getattr(info, "commit_url", info))


def export(set_dir: Path, out: Path, data_dir: Path | None, metrics_path: Path | None, labels_dir: Path | None,
           license_id: str, repo_id: str | None) -> dict:
    card = read_card(set_dir)
    metrics = None
    if metrics_path and metrics_path.is_file():  # the schema report reads it by; exported as written
        read_metrics(metrics_path)
        metrics = read_json(metrics_path)
    with atomic_dir(out) as tmp:
        count, kind = write_images(tmp, set_dir, card, data_dir)
        fkd_epochs = write_fkd(tmp, labels_dir, card) if labels_dir and (labels_dir / "fkd.json").is_file() else 0
        for name in (CARD, SUMS):
            shutil.copyfile(set_dir / name, tmp / name)
        if metrics is not None:
            write_json(tmp / "metrics.json", metrics)
        first = next(p for p, _ in list_images(images_root(set_dir, card), card.classes))
        width, height = image_size_of(first)  # the header only, under the pixel limit
        storage = {"images": count, "image_bytes": sum(p.stat().st_size for p, _ in
                                                       list_images(images_root(set_dir, card), card.classes)),
                   "pixels": count * width * height, "height": height, "width": width}
        storage["folder_bytes"] = dir_bytes(tmp)
        (tmp / "README.md").write_text(card_text(card, metrics, fkd_epochs, kind, storage, license_id, repo_id,
                                                     read_recipe(Path("params.yaml"))))
    return {"images": count, "fkd_epochs": fkd_epochs, "labels": kind, "metrics": metrics is not None}


def run(set_dir: Path, out: Path, data: Path | None = None, metrics: Path | None = None,
        soft_labels: Path | None = None, no_soft_labels: bool = False, license_id: str = "other",
        repo_id: str | None = None, private: bool = False) -> dict:
    """The export_hub stage: the set's Hub folder `out` (evaluate's metrics and relabel's FKD epochs found
    beside the set unless given or left out), uploaded to `repo_id` when one is given. Returns what was
    exported (images, labels, fkd_epochs, metrics) and, after an upload, its `url`."""
    if not (set_dir / CARD).is_file():
        raise ArtifactError(f"{set_dir / CARD}: missing; --set must be a distilled set folder")
    metrics_path = metrics or sibling(set_dir, "metrics", ".json")
    labels = None if no_soft_labels else soft_labels or sibling(set_dir, "soft_labels")
    outputs.claim("export_hub", {"--out": (out, outputs.HUB)},
                  {"--set": set_dir, "--data": data, "--metrics": metrics_path, "--soft-labels": labels})
    if metrics and not metrics.is_file():
        raise ArtifactError(f"--metrics {metrics}: no such file")
    done = export(set_dir, out, data, metrics_path, labels, license_id, repo_id)
    print(f"export_hub: {done['images']} images, labels {done['labels']}, {done['fkd_epochs']} FKD epochs, "
          f"{'with' if done['metrics'] else 'without'} results → {out}")
    if repo_id:
        done["url"] = upload(out, repo_id, private)
        print(f"export_hub: uploaded → {done['url']}")
    return done


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--set", required=True, type=Path, help="distilled set folder (with card.json)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (replaced if it exists)")
    parser.add_argument("--data", type=Path, help="data/<dataset>: also check the class order against classes.json")
    parser.add_argument("--metrics", type=Path, help="evaluate's JSON (default: <dir>/metrics/<set>.json beside it)")
    parser.add_argument("--soft-labels", type=Path, help="relabel's folder (default: <dir>/soft_labels/<set>)")
    parser.add_argument("--no-soft-labels", action="store_true", help="leave the FKD soft labels out")
    parser.add_argument("--license", default="other", help="the card's license field (a Hub license id)")
    parser.add_argument("--repo-id", help="upload to this Hub dataset repository (user/name)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    args = parser.parse_args()
    run(args.set, args.out, args.data, args.metrics, args.soft_labels, args.no_soft_labels, args.license,
        args.repo_id, args.private)


if __name__ == "__main__":
    cli.run(main)
