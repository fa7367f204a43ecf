"""EDC (docs/methods/edc.md): real images refined against several observers' BatchNorm and convolution statistics
of the real set, through its own loop on the recover stage (stages/methods/edc/recipe.py)."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="edc", summary="real images refined so several observers see the real set's per-class statistics",
    sets=(EvaluatedSet("edc", order=35),), stages=("statistics", "recover@edc"), shared_stages=("recover",))
