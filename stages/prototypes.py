"""prototypes@<method>: `ipc` latent prototypes per class for the methods on the diffusion model (D4M, VLCP,
...), each clustering as its package's recipe.py says (docs/methods/d4m.md, docs/methods/vlcp.md#prototypes).

d4m   k-means on each class's VAE latents (d4m.kmeans: `minibatch`, the reference's streaming online k-means with
      every class's leftover rows fed, or `full`); the synthesis prompt is the class prompt.
vlcp  LOF outlier removal (vlcp.contamination, 0 = off), full k-means on the inliers, and per cluster a text
      prototype: the member caption that best carries the cluster's distinctive words (stages/methods/vlcp/
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
from stages import methods
from stages.clustering.kmeans import Clusters
from stages.data.folder import read_classes
from stages.data.latents_folder import read_latents
from stages.pipeline import cli, params
from stages.pipeline.errors import DataError, ParamsError, PipelineError
from stages.pipeline.outputs import write_json
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.pipeline import outputs


def check_rows(folder: Path, labels: list[int], paths: list[str], classes: list[str]) -> None:
    """Every latent row must belong to a class of classes.json and sit in that class's folder."""
    for i, (label, path) in enumerate(zip(labels, paths)):
        if not 0 <= label < len(classes) or path.split("/")[0] != classes[label]:
            raise DataError(f"{folder}: row {i} ({path!r}, label {label}) does not match classes.json "
                            f"({len(classes)} classes); rerun the latents stage")


def class_record(p, recipe, name: str, prompt: str, paths: list[str], clusters: Clusters,
                 captions: dict[str, str] | None) -> dict:
    members = [[paths[i] for i in clusters.members(j)] for j in range(p.ipc)]
    return {"class": name, "prompt": prompt, "images": len(paths), "outliers": [paths[i] for i in clusters.outliers],
            **recipe.describe(p, name, prompt, paths, clusters, members, captions)}


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


def check_captions_option(method: str, recipe, captions: Path | None) -> None:
    """A method that reads captions (VLCP) needs the captions folder; one that does not (D4M) takes none."""
    if recipe.captions and captions is None:
        raise PipelineError(f"prototypes {method}: --captions is required (artifacts/<ds>/captions; "
                            "dvc repro caption)")
    if not recipe.captions and captions is not None:
        raise PipelineError(f"prototypes {method}: --captions {captions}: {method} uses no captions (it prompts with "
                            "the class prompt); drop the option")


def summary(method: str, recipe, p: Params, record: dict, n_classes: int, n_images: int,
            targets: tuple[Path, Path]) -> str:
    """The stage's closing line: what was clustered, and what the method dropped or fell back on."""
    records = record["classes"]
    empty = sum(cl["size"] == 0 for r in records for cl in r["clusters"])  # online k-means can leave a centre bare
    extra = recipe.summary(records) + (f", {empty} empty clusters" if empty else "")
    return (f"prototypes {method}: {n_classes} classes x {p.ipc} centroids of "
            f"{'x'.join(map(str, record['latent_shape']))} latents from {n_images} images{extra} → "
            f"{targets[1]}, {targets[0].name}")


def run(p: Params, method: str, latents_dir: Path, data: Path, captions_dir: Path | None, out: Path) -> dict:
    """The prototypes stage for `method` (d4m, vlcp, ...): cluster each class's latents as its recipe says (VLCP's
    text prototypes from the captions folder), write <out>.safetensors and <out>.json. Returns the JSON record."""
    methods.check_joins("prototypes", method, "the diffusion model")
    if out.name in ("", ".."):
        raise ParamsError(f"--out {out}: names the files <out>.json and <out>.safetensors, so it must end in a name "
                          "(artifacts/<ds>/ipc<N>/prototypes/<method>)")
    outputs.claim(f"prototypes {method}",
                  {"--out (.json)": (out.with_name(out.name + ".json"),
                                     outputs.json_kind("a prototypes record", method=method)),
                   "--out (.safetensors)": (out.with_name(out.name + ".safetensors"),
                                            outputs.file_kind("prototype centroids", ".safetensors"))},
                  {"--latents": latents_dir, "--data": data, "--captions": captions_dir})
    recipe = methods.recipe(method)
    check_captions_option(method, recipe, captions_dir)
    classes = read_classes(data)
    prompts = params.class_prompts(p, classes)  # (params.load checked class_names against the data)
    latents, labels, paths = read_latents(latents_dir)
    check_rows(latents_dir, labels.tolist(), paths, classes)
    captions = read_captions(captions_dir, paths) if recipe.captions else None

    array = latents.numpy()
    centroids, records = [], []
    for c, (name, prompt) in enumerate(zip(progress(classes, desc=f"prototypes {method}", unit="class"), prompts)):
        rows = np.flatnonzero(labels.numpy() == c)  # the latents' row order = train folder order
        clusters = recipe.cluster(p, array[rows], derive_seed(p.seed, "prototypes", method, name), name)
        centroids.append(torch.from_numpy(clusters.centroids))
        records.append(class_record(p, recipe, name, prompt, [paths[i] for i in rows], clusters, captions))

    record = {"method": method, "ipc": p.ipc, "seed": p.seed, "params": recipe.prototype_params(p),
              "latent_shape": list(latents.shape[1:]), "classes": records}
    targets = write_outputs(out, record, torch.stack(centroids))
    print(summary(method, recipe, p, record, len(classes), len(paths), targets))
    return record


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=methods.joining("prototypes"), help="a method on the diffusion model")
    parser.add_argument("--latents", required=True, type=Path, help="artifacts/<ds>/latents")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset> (for classes.json)")
    parser.add_argument("--captions", type=Path, help="artifacts/<ds>/captions, the captions folder (vlcp only)")
    parser.add_argument("--out", required=True, type=Path,
                        help="artifacts/<ds>/ipc<N>/prototypes/<method>: writes <out>.json and <out>.safetensors")
    args = parser.parse_args()
    run(params.load(), args.method, args.latents, args.data, args.captions, args.out)


if __name__ == "__main__":
    cli.run(main)
