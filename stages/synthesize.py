"""synthesize@<method>: images for the methods on the diffusion model (D4M, VLCP, ...), img2img from each latent
prototype with the shared pipeline; the prompt of each cluster comes from the method's recipe.py.

d4m   prompt = the class prompt; negative prompt, strength, guidance, steps from d4m.synthesis (docs/methods/d4m.md).
vlcp  prompt = the cluster's text prototype (a member caption; long ones are encoded in windows,
      docs/methods/vlcp.md#prototypes).

Each image has its own seeded generator (seed, method, class, index), so a batch's make-up never changes an
image. Images are decoded, resized to the dataset's size and saved as <class>/<k>.png with card.json; the
stats file records the work (images, denoising steps), the run log (stages/pipeline/runlog.py) the wall time.
Under torchrun each rank generates its block of the images (on its own GPU) into one temporary folder; rank 0
writes the card and stats once all are done.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from stages import methods
from stages.data.folder import read_classes, save_png
from stages.generation.img2img import denoising_steps, generate, load_pipeline, to_uint8
from stages.clustering.record import PrototypesRecord
from stages.pipeline.artifacts import read_data_meta, read_model
from stages.pipeline import cli, distributed, params, runlog
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.errors import ArtifactError, DataError, ParamsError
from stages.pipeline.outputs import sha256_file, write_json
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.pipeline import outputs


def read_centroids(tensors: Path, method: str) -> torch.Tensor:
    """<prototypes>.safetensors' one tensor `centroids`: finite float32 [classes, ipc, C, h, w]."""
    try:
        loaded = load_file(tensors)
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{tensors}: not a readable safetensors file ({e}); rerun prototypes@{method}") from None
    if set(loaded) != {"centroids"}:
        raise ArtifactError(f"{tensors}: expected the one tensor ['centroids'], found {sorted(loaded)}; "
                            f"rerun prototypes@{method}")
    centroids = loaded["centroids"]
    if centroids.dtype != torch.float32 or centroids.dim() != 5:
        raise ArtifactError(f"{tensors}: centroids {centroids.dtype} {list(centroids.shape)}; expected float32 "
                            "[classes, ipc, C, h, w]")
    if not bool(centroids.isfinite().all()):
        raise ArtifactError(f"{tensors}: centroids hold NaN or inf; rerun prototypes@{method}")
    return centroids


def load_prototypes(prefix: Path, method: str, ipc: int, classes: list[str]) -> tuple[torch.Tensor, PrototypesRecord]:
    """<prefix>.safetensors and <prefix>.json, checked against each other and against this run's method,
    ipc and classes.json."""
    tensors, record_path = prefix.with_name(prefix.name + ".safetensors"), prefix.with_name(prefix.name + ".json")
    for path in (tensors, record_path):
        if not path.exists():
            raise DataError(f"{path}: missing; run prototypes@{method} first")
    centroids = read_centroids(tensors, method)
    record, recipe = read_model(PrototypesRecord, record_path), methods.recipe(method)
    if record.method != method or record.ipc != ipc or [c.name for c in record.classes] != classes:
        raise DataError(f"{record_path}: made for {record.method} at ipc {record.ipc}, not {method} at ipc "
                        f"{ipc} over classes.json; rerun prototypes@{method}")
    for c, entry in enumerate(record.classes):
        if len(entry.clusters) != ipc:
            raise ArtifactError(f"{record_path}: classes.{c}.clusters: {len(entry.clusters)} clusters, expected "
                                f"ipc = {ipc}; rerun prototypes@{method}")
        missing = next((k for k, cluster in enumerate(entry.clusters) if recipe.prompt("", cluster) is None), None)
        if missing is not None:
            raise ArtifactError(f"{record_path}: classes.{c}.clusters.{missing}.text_prototype: missing ({method} "
                                f"prompts with it); rerun prototypes@{method}")
    if tuple(centroids.shape[:2]) != (len(classes), ipc):
        raise DataError(f"{tensors}: centroids of shape {list(centroids.shape)}, expected [{len(classes)}, {ipc}, ...]")
    return centroids, record


def synthesis_prompts(p: Params, method: str, classes: list[str], record: PrototypesRecord) -> list[list[str]]:
    """[class][cluster] prompts as the method's recipe says: D4M's class prompt, VLCP's text prototypes."""
    class_prompts, recipe = params.class_prompts(p, classes), methods.recipe(method)
    return [[recipe.prompt(class_prompts[c], cluster) for cluster in entry.clusters]
            for c, entry in enumerate(record.classes)]


def draw(p: Params, method: str, pipe, jobs: list[tuple[int, int]], centroids: torch.Tensor,
         prompts: list[list[str]], classes: list[str], size: int, tmp: Path) -> None:
    """Generate this rank's `jobs` ((class, index) pairs) batch by batch into tmp/<class>/<index>.png."""
    s = getattr(p, method).synthesis
    bar = progress(total=len(jobs), desc=f"synthesize {method}", unit="img")
    for i in range(0, len(jobs), s.batch_size):
        batch = jobs[i:i + s.batch_size]
        gens = [torch.Generator().manual_seed(derive_seed(p.seed, method, classes[c], k)) for c, k in batch]
        images = generate(pipe, torch.stack([centroids[c, k] for c, k in batch]), [prompts[c][k] for c, k in batch],
                          s.negative_prompt, s.strength, s.guidance, s.steps, gens)
        for (c, k), array in zip(batch, to_uint8(images, size).numpy()):
            save_png(array, tmp / classes[c] / f"{k:03d}.png")
        bar.update(len(batch))
    bar.close()


def run(p: Params, method: str, diffusion: Path, prototypes: Path, data: Path, out: Path, stats: Path) -> dict | None:
    """The synthesize stage for `method`: img2img from every prototype into the set folder `out` (card
    included) and the stats JSON. Under torchrun each rank draws its share; rank 0 writes card and stats and
    returns the stats, the other ranks None."""
    methods.check_joins("synthesize", method, "the diffusion model")
    if prototypes.name in ("", ".."):
        raise ParamsError(f"--prototypes {prototypes}: names the files <prototypes>.json and .safetensors, so it "
                          "must end in a name (artifacts/<ds>/ipc<N>/prototypes/<method>)")
    outputs.claim(f"synthesize {method}", {"--out": (out, outputs.set_kind(method)),
                                           "--stats": (stats, outputs.json_kind("synthesis stats", method=method,
                                                                                images=None))},
                  {"--diffusion": diffusion, "--prototypes": [prototypes.with_name(prototypes.name + suffix)
                                                              for suffix in (".json", ".safetensors")],
                   "--data": data})
    s = getattr(p, method).synthesis
    classes = read_classes(data)
    size = read_data_meta(data).image_size
    centroids, record = load_prototypes(prototypes, method, p.ipc, classes)
    prompts = synthesis_prompts(p, method, classes, record)
    jobs = [(c, k) for c in range(len(classes)) for k in range(p.ipc)]
    with distributed.world() as world, distributed.shared_dir(world, out) as tmp:
        pipe = load_pipeline(diffusion, world.device)
        began = time.perf_counter()
        draw(p, method, pipe, world.shard(jobs), centroids, prompts, classes, size, tmp)
        world.barrier()  # every rank's images are in tmp
        if not world.main:
            return None
        seconds = time.perf_counter() - began
        unet_weights = diffusion / "unet" / "diffusion_pytorch_model.safetensors"
        synthesis = {"denoising_steps": denoising_steps(s.steps, s.strength),
                     "scheduler": pipe.scheduler.__class__.__name__,
                     "diffusion_unet_sha256": sha256_file(unet_weights),
                     "prototypes_sha256": sha256_file(prototypes.with_name(prototypes.name + ".safetensors")),
                     "prompts": {name: prompts[c] for c, name in enumerate(classes)}}
        write_card(tmp, method=method, dataset=p.dataset, ipc=p.ipc, classes=classes, num_images=len(jobs),
                   params={"ipc": p.ipc, "seed": p.seed, "class_prompt": p.class_prompt, "class_names": p.class_names,
                           method: getattr(p, method).model_dump(), "prototypes": record.params},
                   teacher=None, evaluation=EVALUATION_NOTE, synthesis=synthesis, device=world.device)
    result = {"method": method, "images": len(jobs), "denoising_steps": denoising_steps(s.steps, s.strength)}
    write_json(stats, result)
    runlog.record("synthesize", out, seconds, method=method, images=len(jobs),
                  images_per_second=round(len(jobs) / max(seconds, 1e-9), 3))
    print(f"synthesize {method}: {len(jobs)} images, {denoising_steps(s.steps, s.strength)} denoising steps "
          f"each, {seconds:.1f} s → {out}")
    return result


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=methods.joining("synthesize"), help="a method on the diffusion model")
    parser.add_argument("--diffusion", required=True, type=Path, help="artifacts/<ds>/diffusion")
    parser.add_argument("--prototypes", required=True, type=Path,
                        help="artifacts/<ds>/ipc<N>/prototypes/<method> (reads .safetensors and .json)")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="distilled set folder")
    parser.add_argument("--stats", required=True, type=Path, help="synthesis stats JSON (timings) to write")
    args = parser.parse_args()
    run(params.load(), args.method, args.diffusion, args.prototypes, args.data, args.out, args.stats)


if __name__ == "__main__":
    cli.run(main)
