"""Tiny models built in code, offline: a BatchNorm teacher for the recover engine and a Stable Diffusion folder."""
from __future__ import annotations

from pathlib import Path

import torch

WINDOW = 16  # the tiny Stable Diffusion's text window (tokens), short so a long prompt spans several


def tiny_teacher():
    """A 3-class convnet on 8 px images whose BN layers hold non-trivial running statistics, in eval mode."""
    from stages.models import build

    torch.manual_seed(1)
    model = build("convnet", 3, 8, {"width": 8, "depth": 2, "norm": "batch"})
    model.train()
    with torch.no_grad():  # give the BN layers non-trivial running statistics
        for _ in range(20):
            model(torch.randn(16, 3, 8, 8) * 0.5 + 0.2)
    return model.eval()


def tiny_stable_diffusion(folder: Path) -> Path:
    """SD-1.5's layout in miniature: CLIP text model, AutoencoderKL, cross-attention UNet, PNDM (SD's default)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from stages.generation import text
    from stages.pipeline.artifacts import write_record

    tokenizer = AutoTokenizer.from_pretrained(text.minilm_path(), local_files_only=True, model_max_length=WINDOW)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=WINDOW, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=32)
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_record(folder)  # as the diffusion stage does
    return folder
