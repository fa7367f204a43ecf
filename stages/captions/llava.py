"""LLaVA-1.5 captions through transformers' stock classes (docs/methods/vlcp.md#captions).

The checkpoint is a hub id (e.g. llava-hf/llava-1.5-7b-hf) or a local folder in the transformers
LLaVA format (then nothing is looked up online). Remote code is never trusted.

Decoding is greedy (do_sample=False). VLCP sampled at temperature 0.2, which makes every run
caption differently; greedy decoding keeps the stage deterministic so DVC's cache stays valid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.pipeline.errors import PipelineError

PROMPT = "USER: <image>\n{question} ASSISTANT:"  # the llava-1.5-hf conversation format


class LlavaCaptioner:
    """captioner(images, subjects) → one caption per image, for one batch."""

    def __init__(self, model: str, question: str, max_new_tokens: int, key: str = "caption.llava.model"):
        from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

        local = Path(model).is_dir()  # a folder: load only what is in it
        options = {"local_files_only": local, "trust_remote_code": False}  # (and weights: safetensors only)
        try:
            config = AutoConfig.from_pretrained(model, **options)
            if config.model_type != "llava":
                raise PipelineError(f"{key} = {model!r}: a {config.model_type!r} checkpoint, expected 'llava'")
            self.processor = AutoProcessor.from_pretrained(model, **options)
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            self.model = LlavaForConditionalGeneration.from_pretrained(model, dtype=dtype, use_safetensors=True,
                                                                       **options)
        except (OSError, ValueError) as e:  # not found offline, not a transformers checkpoint, ...
            raise PipelineError(f"{key} = {model!r}: cannot load a LLaVA checkpoint ({e})") from None
        self.model.to(self.device).eval()
        self.question, self.max_new_tokens = question, max_new_tokens

    def __call__(self, images: list[np.ndarray], subjects: list[str]) -> list[str]:
        prompts = [PROMPT.format(question=self.question.format(subject=s)) for s in subjects]
        # Left padding: generation appends after the last position, so every prompt must end there.
        inputs = self.processor(images=[Image.fromarray(a) for a in images], text=prompts, padding=True,
                                padding_side="left", return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        new = ids[:, inputs["input_ids"].shape[1]:]  # drop the prompt tokens
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]
