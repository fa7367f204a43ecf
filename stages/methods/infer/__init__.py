"""INFER (docs/methods/infer.md): real base images plus one additive compensator per teacher per base set,
shipped with the teachers' mean logits as static labels (recover@infer)."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="infer", summary="real bases plus one shared compensator per teacher per base set, ensemble labels",
    sets=(EvaluatedSet("infer", order=30),), stages=("recover@infer",), shared_stages=("recover",))
