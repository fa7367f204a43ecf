"""The `vlcp` section: LOF, k-means and text prototypes (prototypes@vlcp) and its img2img (synthesize@vlcp)."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from stages.generation.params import Img2Img
from stages.pipeline.params import Positive, Section

ORDER = 71


class VlcpPrototypes(Section):
    lof_neighbors: Positive
    contamination: Annotated[float, Field(ge=0, le=0.5)]
    n_init: Positive
    threshold: Annotated[float, Field(gt=0, le=1)]
    tpk: Positive


class Vlcp(Section):
    prototypes: VlcpPrototypes
    synthesis: Img2Img


SECTIONS = {"vlcp": Vlcp}
