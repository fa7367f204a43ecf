"""RDED (docs/methods/rded.md): per class the real crops an observer teacher scores most realistic, stitched
`factor x factor` into each distilled image."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="rded", summary="the observer's most realistic real crops, stitched factor x factor",
    sets=(EvaluatedSet("rded", order=60),), stages=("rded",))
