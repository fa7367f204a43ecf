"""img2img from latent prototypes with the stock StableDiffusionImg2ImgPipeline (no patched diffusers).

The stock pipeline already takes a 4-channel `image` as init latents (already x scaling_factor): it
noises them to the first kept timestep of `strength` and denoises for int(steps x strength) steps —
exactly D4M's Latents2Img pipeline (docs/methods/d4m.md#the-shared-diffusion-model). Edge cases are defined:
when int(steps x strength) is 0 (strength 0, or tiny) the prototype is decoded as it is (the stock
pipeline would fail on an empty timestep list); strength 1 starts from (almost) pure noise.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from stages.generation import text
from stages.generation.pipeline_folder import check_pipeline_folder
from stages.pipeline.errors import ArtifactError


def load_pipeline(folder: Path, device: torch.device | None = None):
    from diffusers import StableDiffusionImg2ImgPipeline

    check_pipeline_folder(folder)
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                              requires_safety_checker=False, use_safetensors=True)
    except (OSError, ValueError, TypeError) as e:
        raise ArtifactError(f"{folder}: not a Stable Diffusion pipeline folder ({str(e).splitlines()[0]}); "
                            "rerun the diffusion stage") from None
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoising_steps(steps: int, strength: float) -> int:
    """The stock pipeline's count: min(int(steps x strength), steps)."""
    return min(int(steps * strength), steps)


def pipeline_dtype(pipe) -> torch.dtype:
    return pipe.unet.dtype


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images in [0, 1]."""
    vae = pipe.vae
    x = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    return ((x.float() + 1) / 2).clamp(0, 1).cpu()


@torch.no_grad()
def generate(pipe, latents: torch.Tensor, prompts: list[str], negative: str, strength: float, guidance: float,
             steps: int, generators: list[torch.Generator]) -> torch.Tensor:
    """One image per (latent, prompt, generator); returns N x 3 x H x W in [0, 1] on the CPU."""
    if denoising_steps(steps, strength) == 0:
        return decode(pipe, latents)
    encoded = text.encode(pipe, prompts, negative)
    device, dtype = pipe.unet.device, pipeline_dtype(pipe)
    images: list = [None] * len(prompts)
    for length in sorted({embeds.shape[1] for embeds, _ in encoded}):  # one pipeline call per prompt length
        group = [i for i, (embeds, _) in enumerate(encoded) if embeds.shape[1] == length]
        out = pipe(image=latents[group].to(device, dtype),
                   prompt_embeds=torch.cat([encoded[i][0] for i in group]).to(device, dtype),
                   negative_prompt_embeds=torch.cat([encoded[i][1] for i in group]).to(device, dtype),
                   strength=strength, guidance_scale=guidance, num_inference_steps=steps,
                   generator=[generators[i] for i in group], output_type="pt")
        for i, image in zip(group, out.images.float().clamp(0, 1).cpu()):
            images[i] = image
    return torch.stack(images)


def from_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 N x 3 x H x W → float in [-1, 1] (SD's input range) at the VAE's resolution."""
    x = images.float() / 127.5 - 1
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x


def to_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """[0, 1] images at the model's resolution → uint8 N x H x W x 3 at the dataset's size."""
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
