"""The baselines every method is graded against (docs/methods/baselines.md): `random`, a seeded real subset of
`ipc` images per class (one draw per student seed), and `full`, the whole train set (by reference)."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="baselines", summary="a seeded real subset of ipc images per class; the whole train set",
    sets=(EvaluatedSet("random", order=0, role="reference", summary="a seeded real subset of ipc images per class"),
          EvaluatedSet("full", order=1000, budget="full", epochs="${evaluate.full_epochs}", role="upper_bound",
                       summary="the whole train set, by reference to data/<ds>")),
    stages=("baseline@random", "baseline@full"))
