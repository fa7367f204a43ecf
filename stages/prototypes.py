"""prototypes@<method>: `ipc` latent prototypes per class for D4M and VLCP (docs/methods/d4m.md,
docs/methods/vlcp.md#prototypes).

d4m   k-means on each class's VAE latents (d4m.kmeans: `minibatch`, the reference's streaming online k-means with
      every class's leftover rows fed, or `full`); the synthesis prompt is the class prompt.
vlcp  LOF outlier removal (vlcp.contamination, 0 = off), full k-means on the inliers, and per cluster a text
      prototype: the member caption that best carries the cluster's distinctive words (stages/clustering/
      text_prototypes.py).

Writes <out>.safetensors (`centroids`, float32 [classes, ipc, C, h, w], classes.json order) and <out>.json
(clusters, members, outliers, text prototypes), both or neither.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from stages.captions.jsonl import read_captions
from stages.clustering.kmeans import Clusters, full_kmeans, minibatch_kmeans, vlcp_clusters
from stages.clustering.text_prototypes import STOPWORDS_FILE, class_text_prototypes, name_words, stopwords
from stages.data.folder import read_classes
from stages.data.latents import read_latents
from stages.pipeline import cli, params
from stages.pipeline.errors import DataError, PipelineError
from stages.pipeline.outputs import write_json
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed


def check_rows(folder: Path, labels: list[int], paths: list[str], classes: list[str]) -> None:
    """Every latent row must belong to a class of classes.json and sit in that class's folder."""
    for i, (label, path) in enumerate(zip(labels, paths)):
        if not 0 <= label < len(classes) or path.split("/")[0] != classes[label]:
            raise DataError(f"{folder}: row {i} ({path!r}, label {label}) does not match classes.json "
                            f"({len(classes)} classes); rerun the latents stage")


def method_params(p, method: str) -> dict:
    """The knobs this stage read, as recorded in the JSON (synthesis knobs belong to the synthesize stage)."""
    if method == "vlcp":
        return {**p.vlcp.prototypes.model_dump(),
                "stopwords": f"{STOPWORDS_FILE.name} (NLTK English, {len(stopwords())} words)"}
    d = p.d4m.prototypes
    if d.kmeans == "minibatch":
        return {"kmeans": "minibatch", "km_expand": d.km_expand, "batch_size": d.km_expand * p.ipc}
    return {"kmeans": "full", "n_init": d.n_init}


def cluster_class(p, method: str, latents: np.ndarray, seed: int, name: str) -> Clusters:
    if method == "vlcp":
        v = p.vlcp.prototypes
        return vlcp_clusters(latents, p.ipc, v.lof_neighbors, v.contamination, v.n_init, seed, name)
    d = p.d4m.prototypes
    if d.kmeans == "minibatch":
        return minibatch_kmeans(latents, p.ipc, d.km_expand, seed, name)
    return full_kmeans(latents, p.ipc, d.n_init, seed, name)


def class_record(p, method: str, name: str, prompt: str, paths: list[str], clusters: Clusters,
                 captions: dict[str, str] | None) -> dict:
    record = {"class": name, "prompt": prompt, "images": len(paths),
              "outliers": [paths[i] for i in clusters.outliers]}
    members = [[paths[i] for i in clusters.members(j)] for j in range(p.ipc)]
    if method == "d4m":  # D4M prompts with the class prompt: no text prototype
        record["clusters"] = [{"size": len(m), "members": m, "text_prototype": None, "text_prototype_path": None}
                              for m in members]
        return record
    common, texts = class_text_prototypes(name, paths, [captions[path] for path in paths], clusters.assignment,
                                          clusters.nearest, name_words(prompt, name), p.vlcp.prototypes.threshold,
                                          p.vlcp.prototypes.tpk)
    record["class_common"] = common
    record["clusters"] = [{"size": len(m), "members": m, "text_prototype": t.caption, "text_prototype_path": t.path,
                           "top_words": [[w, c] for w, c in t.top_words], "fallback": t.fallback}
                          for m, t in zip(members, texts)]
    return record


def write_outputs(out: Path, record: dict, centroids: torch.Tensor) -> tuple[Path, Path]:
    """<out>.safetensors and <out>.json via temp names, then renamed: a failure leaves neither half-written."""
    targets = out.with_name(out.name + ".safetensors"), out.with_name(out.name + ".json")
    temps = [t.with_name(f".{t.name}.part") for t in targets]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # One metadata key: safetensors stores metadata as a hash map, so several keys come out in any order.
        info = {"method": record["method"], "ipc": record["ipc"], "latent_shape": record["latent_shape"],
                "classes": [c["class"] for c in record["classes"]]}
        save_file({"centroids": centroids.contiguous()}, temps[0],
                  metadata={"ddpipe": json.dumps(info, sort_keys=True)})
        write_json(temps[1], record)
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return targets


def check_captions_option(method: str, captions: Path | None) -> None:
    """VLCP needs the captions folder; D4M prompts with the class prompt and takes none."""
    if method == "vlcp" and captions is None:
        raise PipelineError("prototypes vlcp: --captions is required (artifacts/<ds>/captions; "
                            "dvc repro caption)")
    if method == "d4m" and captions is not None:
        raise PipelineError(f"prototypes d4m: --captions {captions}: D4M uses no captions (it prompts with "
                            "the class prompt); drop the option")


def summary(method: str, p: Params, record: dict, n_classes: int, n_images: int, targets: tuple[Path, Path]) -> str:
    """The stage's closing line: what was clustered, and what VLCP dropped or fell back on."""
    records = record["classes"]
    outliers = sum(len(r["outliers"]) for r in records)
    fallbacks = sum(cl.get("fallback", False) for r in records for cl in r["clusters"])
    empty = sum(cl["size"] == 0 for r in records for cl in r["clusters"])  # online k-means can leave a centre bare
    extra = f", {outliers} LOF outliers, {fallbacks} text fallbacks" if method == "vlcp" else ""
    extra += f", {empty} empty clusters" if empty else ""
    return (f"prototypes {method}: {n_classes} classes x {p.ipc} centroids of "
            f"{'x'.join(map(str, record['latent_shape']))} latents from {n_images} images{extra} → "
            f"{targets[1]}, {targets[0].name}")


def run(p: Params, method: str, latents_dir: Path, data: Path, captions_dir: Path | None, out: Path) -> dict:
    """The prototypes stage for `method` ("d4m" or "vlcp"): cluster each class's latents, pick VLCP's text
    prototypes from the captions folder, write <out>.safetensors and <out>.json. Returns the JSON record."""
    check_captions_option(method, captions_dir)
    classes = read_classes(data)
    prompts = params.class_prompts(p, classes)  # (params.load checked class_names against the data)
    latents, labels, paths = read_latents(latents_dir)
    check_rows(latents_dir, labels.tolist(), paths, classes)
    captions = read_captions(captions_dir, paths) if method == "vlcp" else None

    array = latents.numpy()
    centroids, records = [], []
    for c, (name, prompt) in enumerate(zip(progress(classes, desc=f"prototypes {method}", unit="class"), prompts)):
        rows = np.flatnonzero(labels.numpy() == c)  # the latents' row order = train folder order
        clusters = cluster_class(p, method, array[rows], derive_seed(p.seed, "prototypes", method, name), name)
        centroids.append(torch.from_numpy(clusters.centroids))
        records.append(class_record(p, method, name, prompt, [paths[i] for i in rows], clusters, captions))

    record = {"method": method, "ipc": p.ipc, "seed": p.seed, "params": method_params(p, method),
              "latent_shape": list(latents.shape[1:]), "classes": records}
    targets = write_outputs(out, record, torch.stack(centroids))
    print(summary(method, p, record, len(classes), len(paths), targets))
    return record


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=["d4m", "vlcp"])
    parser.add_argument("--latents", required=True, type=Path, help="artifacts/<ds>/latents")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset> (for classes.json)")
    parser.add_argument("--captions", type=Path, help="artifacts/<ds>/captions, the captions folder (vlcp only)")
    parser.add_argument("--out", required=True, type=Path,
                        help="artifacts/<ds>/ipc<N>/prototypes/<method>: writes <out>.json and <out>.safetensors")
    args = parser.parse_args()
    run(params.load(), args.method, args.latents, args.data, args.captions, args.out)


if __name__ == "__main__":
    cli.run(main)
