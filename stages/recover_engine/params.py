"""The recover engine's `recover` block (docs/methods/sre2l.md#the-recover-engine): the knobs every method on
the engine shares. A method's own section (sre2l, delt, infer, ...) holds a `recover` mapping of the keys it
sets differently; `resolve` fills the rest from this block before validation, so each method's section is
validated, used and recorded (card.json, resume keys) whole, while params.yaml holds one block."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field, model_validator

from stages.pipeline.params import NonNegFloat, NonNegInt, Positive, PositiveFloat, Section

ORDER = 40


class Recover(Section):
    """The recover engine's knobs: the shared block, and each method's after its overrides."""
    iterations: Positive
    lr: PositiveFloat
    r_bn: NonNegFloat
    first_bn_multiplier: NonNegFloat
    r_var: NonNegFloat
    jitter: NonNegInt
    roll: Literal["symmetric", "positive"]  # shifts in [-jitter, jitter], or [0, jitter] (the references)
    clamp_start: bool  # clamp the starts to the pixel range before the first forward (false: after the first step,
                       # as SRe2L's recover_cifar.py; a no-op for starts made of pixels)
    crop_min_scale: Annotated[float, Field(gt=0, le=1)]
    crop_schedule: Literal["fixed", "cosine"]
    flip: bool
    ipc_per_batch: Positive
    ipc_start: NonNegInt
    ipc_end: Optional[Positive]
    dwa_steps: NonNegInt
    dwa_rho: NonNegFloat

    @model_validator(mode="after")
    def _range(self) -> "Recover":
        if self.ipc_end is not None and self.ipc_end <= self.ipc_start:
            raise ValueError(f"ipc_end = {self.ipc_end}: must be above ipc_start = {self.ipc_start}")
        if self.ipc_start % self.ipc_per_batch:
            raise ValueError(f"ipc_start = {self.ipc_start}: must be a multiple of ipc_per_batch = "
                             f"{self.ipc_per_batch} so shards reproduce a single run exactly")
        return self


SECTIONS = {"recover": Recover}


def _inherits(model: Any) -> bool:
    """Whether a section's model has a `recover` field of the engine's knobs."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return False
    field = model.model_fields.get("recover")
    return field is not None and field.annotation is Recover


def resolve(raw: dict, sections: dict[str, Any]) -> None:
    """Each section with a `recover` field gets the shared block's keys it does not set itself (in the block's
    order, so a resolved section dumps as a whole one always did)."""
    shared = raw.get("recover")
    if not isinstance(shared, dict):
        return  # validation names the bad block
    for key, model in sections.items():
        section = raw.get(key)
        if _inherits(model) and isinstance(section, dict):
            own = section.get("recover") or {}
            if isinstance(own, dict):
                section["recover"] = {**shared, **own}
