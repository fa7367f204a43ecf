"""D4M (docs/methods/d4m.md): k-means prototypes of each class's latents in the shared diffusion model's
latent space, turned into images by img2img with the class prompt."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="d4m", summary="k-means latent prototypes turned into images by img2img",
    sets=(EvaluatedSet("d4m", order=40),), stages=("prototypes@d4m", "synthesize@d4m"),
    shared_stages=("prototypes", "synthesize"))
