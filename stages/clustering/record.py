"""prototypes@<method>'s JSON record (ipc<N>/prototypes/<method>.json), the keys synthesize reads."""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field


class PrototypeCluster(BaseModel):
    """One cluster as synthesize reads it: VLCP prompts with its text prototype (D4M with the class prompt)."""
    model_config = ConfigDict(extra="allow", strict=True)

    text_prototype: Optional[str] = None


class PrototypeClass(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(alias="class")
    clusters: list[PrototypeCluster]


class PrototypesRecord(BaseModel):
    """prototypes@<method>'s JSON record, the keys synthesize reads (members, outliers, words are kept, not read)."""
    model_config = ConfigDict(extra="allow", strict=True)

    method: Annotated[str, Field(min_length=1)]  # the method that clustered (synthesize checks it is its own)
    ipc: Annotated[int, Field(gt=0)]
    params: dict
    classes: list[PrototypeClass]


