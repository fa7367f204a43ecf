"""SRe2L (docs/methods/sre2l.md): images optimised from noise so one frozen teacher classifies them and its
BatchNorm statistics match, through the shared recover engine (stages/recover_engine)."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="sre2l", summary="images optimised from noise against one teacher's BN statistics",
    sets=(EvaluatedSet("sre2l", order=10),), stages=("recover@sre2l",), shared_stages=("recover",))
