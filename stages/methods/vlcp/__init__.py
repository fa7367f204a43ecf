"""VLCP (docs/methods/vlcp.md): D4M with captions: LOF outlier removal, full k-means, and per cluster a text
prototype (the member caption that best carries its distinctive words) as the img2img prompt."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="vlcp", summary="D4M with captions, outlier removal and a text prototype per cluster as its prompt",
    sets=(EvaluatedSet("vlcp", order=50),), stages=("caption", "prototypes@vlcp", "synthesize@vlcp"),
    shared_stages=("prototypes", "synthesize"))
