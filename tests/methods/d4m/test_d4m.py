"""D4M (stages/methods/d4m, docs/methods/d4m.md): its recipe for the shared prototypes and synthesize stages -
the k-means it runs (minibatch, the reference's, or full), the knobs it records, its clusters' record, and the
class prompt as every cluster's img2img prompt. The stages themselves are tested in tests/engines/
(test_prototypes.py, test_diffusion.py)."""
from types import SimpleNamespace

import numpy as np
import pytest

from stages.clustering.kmeans import Clusters, full_kmeans, minibatch_kmeans
from stages.methods import recipe
from tests.conftest import tiny_params

D4M = recipe("d4m")


def blobs(seed: int = 0) -> np.ndarray:
    """36 latents [4, 2, 2] in three far-apart blobs of 12 rows (means -10, 0, 10), in blob order."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(m, 0.5, size=(12, 4, 2, 2)) for m in (-10.0, 0.0, 10.0)]).astype(np.float32)


def test_the_recorded_knobs_follow_the_kmeans_mode(tmp_path):
    p = tiny_params(tmp_path / "mini", {"ipc": 4, "d4m": {"prototypes": {"kmeans": "minibatch", "km_expand": 3}}})
    assert D4M.prototype_params(p) == {"kmeans": "minibatch", "km_expand": 3, "batch_size": 12}  # km_expand x ipc
    p = tiny_params(tmp_path / "full", {"d4m": {"prototypes": {"kmeans": "full", "n_init": 4}}})
    assert D4M.prototype_params(p) == {"kmeans": "full", "n_init": 4}


@pytest.mark.parametrize("mode", ["minibatch", "full"])
def test_cluster_runs_the_configured_kmeans_and_finds_the_blobs(tmp_path, mode):
    p = tiny_params(tmp_path, {"ipc": 3, "d4m": {"prototypes": {"kmeans": mode, "km_expand": 2, "n_init": 3}}})
    x = blobs()
    clusters = D4M.cluster(p, x, 7, "c")
    expected = minibatch_kmeans(x, 3, 2, 7, "c") if mode == "minibatch" else full_kmeans(x, 3, 3, 7, "c")
    other = full_kmeans(x, 3, 3, 7, "c") if mode == "minibatch" else minibatch_kmeans(x, 3, 2, 7, "c")
    assert np.array_equal(clusters.centroids, expected.centroids)
    assert not np.array_equal(clusters.centroids, other.centroids)  # the mode matters: the other k-means differs
    assert clusters.centroids.shape == (3, 4, 2, 2) and len(clusters.outliers) == 0  # D4M removes no outliers
    assert np.allclose(np.sort(clusters.centroids.mean((1, 2, 3))), [-10, 0, 10], atol=0.5)
    for blob in range(3):  # each blob is one cluster
        assert len(set(clusters.assignment[12 * blob:12 * (blob + 1)].tolist())) == 1
    assert len(set(clusters.assignment.tolist())) == 3


def test_the_record_has_no_text_prototypes_and_every_prompt_is_the_class_prompt():
    assert D4M.captions is False  # the prototypes stage refuses a captions folder for d4m
    clusters = Clusters(np.zeros((2, 4, 2, 2), np.float32), np.array([0, 1, 1, 0, 1]), np.array([0, 2]))
    members = [["c/0.png", "c/3.png"], ["c/1.png", "c/2.png", "c/4.png"]]
    record = D4M.describe(None, "c", "a photo of a c", [f"c/{i}.png" for i in range(5)], clusters, members, None)
    assert record == {"clusters": [
        {"size": 2, "members": members[0], "text_prototype": None, "text_prototype_path": None},
        {"size": 3, "members": members[1], "text_prototype": None, "text_prototype_path": None}]}
    cluster = SimpleNamespace(text_prototype="a bold three")  # what a VLCP record would carry: D4M ignores it
    assert D4M.prompt("handwritten digit 3", cluster) == "handwritten digit 3"
    assert D4M.summary([{"outliers": [], "clusters": []}]) == ""
