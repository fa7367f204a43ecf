"""PoDD (docs/methods/podd.md): the whole train set as one poster below one image per class of pixels
(PoCO class order, RaT-BPTT on its overlapping crops), graded at its own pixel budget."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="podd", summary="the train set as one poster below one image per class, optimised by RaT-BPTT",
    sets=(EvaluatedSet("podd", order=70, budget="podd${podd.ipc}"),), stages=("poster",))
