"""D4M's part in the prototypes and synthesize stages: k-means on each class's VAE latents (`minibatch`, the
reference's streaming online k-means with every class's leftover rows fed, or `full`), and the class prompt
as every cluster's img2img prompt (docs/methods/d4m.md)."""
from __future__ import annotations

from stages.clustering.kmeans import Clusters, full_kmeans, minibatch_kmeans


class D4mRecipe:
    captions = False  # D4M prompts with the class prompt: it reads no captions

    def prototype_params(self, p) -> dict:
        """The knobs the prototypes stage read, as recorded in its JSON."""
        d = p.d4m.prototypes
        if d.kmeans == "minibatch":
            return {"kmeans": "minibatch", "km_expand": d.km_expand, "batch_size": d.km_expand * p.ipc}
        return {"kmeans": "full", "n_init": d.n_init}

    def cluster(self, p, latents, seed: int, name: str) -> Clusters:
        d = p.d4m.prototypes
        if d.kmeans == "minibatch":
            return minibatch_kmeans(latents, p.ipc, d.km_expand, seed, name)
        return full_kmeans(latents, p.ipc, d.n_init, seed, name)

    def describe(self, p, name: str, prompt: str, paths: list[str], clusters: Clusters, members: list[list[str]],
                 captions) -> dict:
        """The class's clusters as the JSON records them: no text prototype."""
        return {"clusters": [{"size": len(m), "members": m, "text_prototype": None, "text_prototype_path": None}
                             for m in members]}

    def summary(self, records: list[dict]) -> str:
        return ""

    def prompt(self, class_prompt: str, cluster) -> str | None:
        """A cluster's img2img prompt (None: the record lacks it)."""
        return class_prompt


RECIPE = D4mRecipe()
