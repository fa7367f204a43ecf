"""The `diffusion` and `latents` sections (the diffusion model D4M and VLCP share) and img2img's knobs."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from stages.pipeline.params import NonNegFloat, NonNegInt, Positive, PositiveFloat, Section, UnitFloat

ORDER = 60


class DiffusionTrain(Section):
    """train mode: a small latent diffusion model built from configs and trained in the stage."""
    vae_channels: Annotated[list[Positive], Field(min_length=1)]
    vae_steps: Positive
    vae_lr: PositiveFloat
    kl_weight: NonNegFloat
    unet_channels: Annotated[list[Positive], Field(min_length=1)]
    unet_steps: Positive
    unet_lr: PositiveFloat
    batch_size: Positive
    text_window: Positive


class Finetune(Section):
    """pretrained mode: VLCP's optional fine-tune of the UNet on (image, caption) pairs."""
    epochs: NonNegInt
    lr: PositiveFloat
    ema_decay: UnitFloat
    batch_size: Positive


class DiffusionCheck(Section):
    """Text-to-image samples per class that the evaluate teacher classifies (diffusion_check)."""
    samples: Positive
    guidance: NonNegFloat
    steps: Positive


class Diffusion(Section):
    mode: Literal["train", "pretrained"]
    pretrained: str
    resolution: Optional[Positive]
    caption_fraction: UnitFloat
    p_uncond: Annotated[float, Field(ge=0, lt=1)]
    check: DiffusionCheck
    train: DiffusionTrain
    finetune: Finetune


class Latents(Section):
    posterior: Literal["sample", "mean"]
    batch_size: Positive


class Img2Img(Section):
    """A method's img2img settings (d4m.synthesis, vlcp.synthesis)."""
    strength: UnitFloat
    guidance: NonNegFloat
    steps: Positive
    negative_prompt: str
    batch_size: Positive


SECTIONS = {"diffusion": Diffusion, "latents": Latents}
