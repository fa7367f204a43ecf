"""The `d4m` section: how D4M clusters latents into prototypes (prototypes@d4m) and turns them into images
(synthesize@d4m)."""
from __future__ import annotations

from typing import Literal

from stages.generation.params import Img2Img
from stages.pipeline.params import Positive, Section

ORDER = 70


class D4mPrototypes(Section):
    kmeans: Literal["minibatch", "full"]
    km_expand: Positive
    n_init: Positive


class D4m(Section):
    prototypes: D4mPrototypes
    synthesis: Img2Img


SECTIONS = {"d4m": D4m}
