"""DELT (docs/methods/delt.md): the ranker teacher scores every real image (rank), `ipc` of them per class
start the recover (select), and EarlyLate staggers when each joins (recover@delt)."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="delt", summary="SRe2L's recover from ranked real images, staggered by EarlyLate",
    sets=(EvaluatedSet("delt", order=20),), stages=("rank", "select", "recover@delt"), shared_stages=("recover",))
