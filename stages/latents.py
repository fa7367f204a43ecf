"""latents: the VAE posterior of every train image (its mean or a seeded sample, as latents.posterior says),
x the VAE's scaling_factor → artifacts/<ds>/latents/ (latents.safetensors + index.csv).

Both reference repos sample the posterior (docs/methods/d4m.md#the-shared-diffusion-model); the mean is the
stabler choice.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from stages.data.folder import read_classes
from stages.data.prepared import open_images
from stages.data.latents_folder import write_latents
from stages.generation.pipeline_folder import check_pipeline_folder
from stages.generation.img2img import from_uint8
from stages.pipeline import cli, params
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.pipeline import outputs


def load_vae(pipeline_dir: Path) -> tuple[AutoencoderKL, int]:
    """The pipeline folder's VAE and the resolution it encodes at (the diffusion stage records it as sample_size)."""
    check_pipeline_folder(pipeline_dir, ["vae"])
    try:
        vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae", local_files_only=True,
                                            use_safetensors=True).eval()
    except (OSError, ValueError, TypeError) as e:
        raise ArtifactError(f"{pipeline_dir / 'vae'}: not a diffusers VAE ({str(e).splitlines()[0]}); "
                            "rerun the diffusion stage") from None
    return vae, vae.config.sample_size


@torch.no_grad()
def encode(vae: AutoencoderKL, images: torch.Tensor, resolution: int, posterior: str, batch_size: int,
           gen: torch.Generator) -> torch.Tensor:
    out = []
    for i in progress(range(0, len(images), batch_size), desc="encode latents", unit="batch"):
        q = vae.encode(from_uint8(images[i:i + batch_size], resolution).to(vae.device)).latent_dist
        out.append(((q.mean if posterior == "mean" else q.sample(gen)) * vae.config.scaling_factor).cpu())
    return torch.cat(out)


def run(p: Params, diffusion: Path, data: Path, out: Path) -> torch.Tensor:
    """The latents stage: every train image through the pipeline folder's VAE into the latents folder `out`
    (latents.safetensors + index.csv + SHA256SUMS). Returns the latents."""
    outputs.claim("latents", {"--out": (out, outputs.LATENTS)}, {"--diffusion": diffusion, "--data": data})
    classes = read_classes(data)
    train = open_images(data / "train", classes, desc="load train")
    vae, resolution = load_vae(diffusion)
    if torch.cuda.is_available():
        vae = vae.to("cuda")
    gen = torch.Generator().manual_seed(derive_seed(p.seed, "latents"))
    latents = encode(vae, train.images, resolution, p.latents.posterior, p.latents.batch_size, gen)
    with atomic_dir(out) as tmp:
        write_latents(tmp, latents, train.labels, train.paths)
    print(f"latents: {len(latents)} x {'x'.join(map(str, latents.shape[1:]))} ({p.latents.posterior}, "
          f"std {latents.std():.3f}) → {out}")
    return latents


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", required=True, type=Path, help="artifacts/<ds>/diffusion")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="artifacts/<ds>/latents")
    args = parser.parse_args()
    run(params.load(), args.diffusion, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
