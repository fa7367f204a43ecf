"""The `caption` section: one caption per train image (VLCP's first step)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import field_validator

from stages.pipeline.params import Positive, Section, placeholder

ORDER = 50


class Llava(Section):
    model: Optional[str]  # hub id or local folder of a transformers LLaVA checkpoint
    question: str  # {subject} = the class prompt of the image's class
    batch_size: Positive
    max_new_tokens: Positive

    _subject = field_validator("question")(lambda q: placeholder(q, "subject", "the class"))


class Caption(Section):
    captioner: Literal["attributes", "llava"]
    llava: Llava


SECTIONS = {"caption": Caption}


def check(p) -> None:
    if p.caption.captioner == "llava" and not p.caption.llava.model:
        raise ValueError("caption.llava.model = None: captioner 'llava' needs a model id or folder")
