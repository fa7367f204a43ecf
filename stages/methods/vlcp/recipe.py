"""VLCP's part in the prototypes and synthesize stages: LOF outlier removal (vlcp.contamination, 0 = off), full
k-means on the inliers, and per cluster a text prototype - the member caption that best carries the cluster's
distinctive words (text_prototypes.py) - as its img2img prompt (docs/methods/vlcp.md#prototypes)."""
from __future__ import annotations

from stages.clustering.kmeans import Clusters, vlcp_clusters
from stages.methods.vlcp.text_prototypes import STOPWORDS_FILE, class_text_prototypes, name_words, stopwords


class VlcpRecipe:
    captions = True  # the captions folder: text prototypes are member captions

    def prototype_params(self, p) -> dict:
        return {**p.vlcp.prototypes.model_dump(),
                "stopwords": f"{STOPWORDS_FILE.name} (NLTK English, {len(stopwords())} words)"}

    def cluster(self, p, latents, seed: int, name: str) -> Clusters:
        v = p.vlcp.prototypes
        return vlcp_clusters(latents, p.ipc, v.lof_neighbors, v.contamination, v.n_init, seed, name)

    def describe(self, p, name: str, prompt: str, paths: list[str], clusters: Clusters, members: list[list[str]],
                 captions: dict[str, str]) -> dict:
        common, texts = class_text_prototypes(name, paths, [captions[path] for path in paths], clusters.assignment,
                                              clusters.nearest, name_words(prompt, name), p.vlcp.prototypes.threshold,
                                              p.vlcp.prototypes.tpk)
        return {"class_common": common,
                "clusters": [{"size": len(m), "members": m, "text_prototype": t.caption, "text_prototype_path": t.path,
                              "top_words": [[w, c] for w, c in t.top_words], "fallback": t.fallback}
                             for m, t in zip(members, texts)]}

    def summary(self, records: list[dict]) -> str:
        outliers = sum(len(r["outliers"]) for r in records)
        fallbacks = sum(cl.get("fallback", False) for r in records for cl in r["clusters"])
        return f", {outliers} LOF outliers, {fallbacks} text fallbacks"

    def prompt(self, class_prompt: str, cluster) -> str | None:
        return cluster.text_prototype


RECIPE = VlcpRecipe()
