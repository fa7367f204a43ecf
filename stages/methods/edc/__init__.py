"""EDC (docs/methods/edc.md): real images refined against several observers' BatchNorm and convolution statistics
of the real set, through its own loop on the recover stage (stages/methods/edc/recipe.py)."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="edc", summary="real images refined so several observers see the real set's per-class statistics",
    sets=(EvaluatedSet("edc", order=35),), stages=("statistics", "recover@edc"), shared_stages=("recover",),
    engine_knobs=False, preset_keys=tuple(f"edc.{k}" for k in (
        "observers", "init", "statistics.crop", "statistics.flip", "iterations", "lr", "r_loss", "momentum",
        "crop_min_scale", "flip", "batch_size", "jpeg_quality")))
