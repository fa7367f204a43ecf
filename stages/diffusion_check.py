"""diffusion_check: does the diffusion model draw the classes? Text-to-image from each class prompt with
the stock StableDiffusionPipeline over the same components; the evaluate teacher classifies the samples.

Writes <out>/samples.png (one row per class) and <out>/metrics.json (teacher fidelity overall and per class).
A model whose samples the teacher reads below `flags.noise_factor` x chance draws noise, not the classes (a
model sized for digits does that on photos): metrics.json says `"noise": true` and the stage warns.
Kept apart from the diffusion stage so a retrained teacher re-checks the model without retraining it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from stages.data.folder import normalise, read_classes
from stages.generation.img2img import to_uint8
from stages.models import load_checkpoint, predict
from stages.pipeline.artifacts import read_data_meta
from stages.pipeline import cli, params
from stages.pipeline.outputs import atomic_dir, write_json
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.generation.img2img import load_pipeline
from stages.pipeline import outputs


@torch.no_grad()
def sample(pipe, prompts: list[str], per_class: int, guidance: float, steps: int, seed: int) -> torch.Tensor:
    """per_class images of every prompt, class-major, in [0, 1] at the pipeline's resolution."""
    from diffusers import StableDiffusionPipeline

    text2img = StableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"},
                                       requires_safety_checker=False)
    text2img.set_progress_bar_config(disable=True)
    resolution = pipe.vae.config.sample_size
    images = []
    for label, prompt in enumerate(progress(prompts, desc="diffusion_check samples", unit="class")):
        gens = [torch.Generator().manual_seed(derive_seed(seed, "diffusion_check", label, i)) for i in range(per_class)]
        out = text2img([prompt] * per_class, height=resolution, width=resolution, num_inference_steps=steps,
                       guidance_scale=guidance, generator=gens, output_type="pt")
        images.append(out.images.float().cpu())
    return torch.cat(images)


def grid(images: torch.Tensor, rows: int, path: Path, zoom: int = 4) -> None:
    """uint8 N x H x W x 3, class-major → one row per class, scaled up for viewing."""
    n, h, w, _ = images.shape
    cols = n // rows
    tiled = images.view(rows, cols, h, w, 3).permute(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    Image.fromarray(tiled.numpy()).resize((cols * w * zoom, rows * h * zoom), Image.NEAREST).save(path)


def run(p: Params, diffusion: Path, teacher: Path, data: Path, out: Path) -> dict:
    """The diffusion_check stage: text-to-image samples of every class prompt, read by the teacher; writes
    samples.png and metrics.json into `out` and warns when the model draws noise. Returns the metrics."""
    outputs.claim("diffusion_check", {"--out": (out, outputs.DIFFUSION_CHECK)},
                  {"--diffusion": diffusion, "--teacher": teacher, "--data": data})
    c = p.diffusion.check
    classes = read_classes(data)
    meta = read_data_meta(data)
    prompts = params.class_prompts(p, classes)
    model, teacher_meta = load_checkpoint(teacher, meta.classes_sha256)
    images = to_uint8(sample(load_pipeline(diffusion), prompts, c.samples, c.guidance, c.steps, p.seed),
                      meta.image_size)
    labels = torch.arange(len(classes)).repeat_interleave(c.samples)
    x = normalise(images.permute(0, 3, 1, 2).float() / 255, teacher_meta["mean"], teacher_meta["std"])
    hits = (predict(model, x).argmax(1) == labels).float()
    threshold = p.flags.noise_factor / len(classes)
    noise = hits.mean().item() < threshold
    metrics = {"samples": len(labels), "guidance": c.guidance, "steps": c.steps, "prompts": prompts,
               "teacher": teacher_meta["arch"], "teacher_fidelity": round(hits.mean().item(), 4),
               "noise_threshold": round(threshold, 4), "noise": noise,
               "per_class": {name: round(v, 3)
                             for name, v in zip(classes, hits.view(len(classes), -1).mean(1).tolist())}}
    with atomic_dir(out) as tmp:
        grid(images, len(classes), tmp / "samples.png")
        write_json(tmp / "metrics.json", metrics)
    print(f"diffusion_check: the {teacher_meta['arch']} teacher reads {100 * hits.mean():.1f} % of "
          f"{len(labels)} text-to-image samples as their class → {out}")
    if noise:
        print(f"warning: diffusion_check: {100 * hits.mean():.1f} % is under {p.flags.noise_factor:g} x chance "
              f"({100 / len(classes):.1f} %): the model draws noise, not the classes, and D4M and VLCP sets made with "
              f"it will be noise too (a bigger model: diffusion.train, or diffusion.mode: pretrained)", file=sys.stderr)
    return metrics


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", required=True, type=Path, help="artifacts/<ds>/diffusion")
    parser.add_argument("--teacher", required=True, type=Path, help="the teacher folder that classifies")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="folder for samples.png and metrics.json")
    args = parser.parse_args()
    run(params.load(), args.diffusion, args.teacher, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
