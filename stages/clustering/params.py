"""The `d4m` and `vlcp` sections: how each clusters latents into prototypes and turns them into images."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from stages.generation.params import Img2Img
from stages.pipeline.params import Positive, Section

ORDER = 70


class D4mPrototypes(Section):
    kmeans: Literal["minibatch", "full"]
    km_expand: Positive
    n_init: Positive


class VlcpPrototypes(Section):
    lof_neighbors: Positive
    contamination: Annotated[float, Field(ge=0, le=0.5)]
    n_init: Positive
    threshold: Annotated[float, Field(gt=0, le=1)]
    tpk: Positive


class D4m(Section):
    prototypes: D4mPrototypes
    synthesis: Img2Img


class Vlcp(Section):
    prototypes: VlcpPrototypes
    synthesis: Img2Img


SECTIONS = {"d4m": D4m, "vlcp": Vlcp}
