"""prototypes@{d4m,vlcp}: k-means / LOF invariants (stages/clustering) and the stage on a fake latents folder.
VLCP's text prototypes are in tests/methods/vlcp/test_vlcp.py."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.cluster import MiniBatchKMeans
from sklearn.neighbors import LocalOutlierFactor

from stages.captions.jsonl import caption_line, record_captions
from stages.clustering.kmeans import full_kmeans, lof_inliers, minibatch_kmeans, stream_chunks, vlcp_clusters
from stages.data.latents_folder import read_latents, write_latents
from stages.pipeline.errors import DataError
from tests.conftest import REPO, run_stage, write_params


def latents(n: int, seed: int = 0, shape=(4, 2, 2)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    flat, c = x.reshape(len(x), -1), centroids.reshape(len(centroids), -1)
    return ((flat[:, None] - c[None]) ** 2).sum(-1).argmin(1)


# k-means

@pytest.mark.parametrize("mode", ["minibatch", "full"])
def test_kmeans_gives_ipc_centroids_of_the_latent_shape_deterministically(mode):
    x = latents(37)
    def run():
        return minibatch_kmeans(x, 5, 2, 7, "c") if mode == "minibatch" else full_kmeans(x, 5, 3, 7, "c")

    a, b = run(), run()
    assert a.centroids.shape == (5, 4, 2, 2) and a.centroids.dtype == np.float32
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.assignment, b.assignment)
    assert len(a.outliers) == 0 and set(a.assignment.tolist()) <= set(range(5))
    # every row sits with its nearest centroid, and `nearest` is a member of its cluster
    assert np.array_equal(a.assignment, nearest_centroid(x, a.centroids))
    for j, row in enumerate(a.nearest):
        assert (row == -1) == (len(a.members(j)) == 0) and (row == -1 or a.assignment[row] == j)


def test_minibatch_streams_every_row_including_the_leftover_chunk():
    n, k, km_expand, seed = 23, 3, 2, 11
    chunks = stream_chunks(n, k * km_expand, seed)
    assert [len(c) for c in chunks] == [6, 6, 6, 5]  # 5 leftover rows: the reference dropped them (but for one class)
    assert np.array_equal(np.sort(np.concatenate(chunks)), np.arange(n))

    x = latents(n, seed=3)
    ours = minibatch_kmeans(x, k, km_expand, seed, "c").centroids.reshape(k, -1)

    def replay(parts):
        model = MiniBatchKMeans(n_clusters=k, batch_size=k * km_expand, n_init="auto", random_state=seed)
        for rows in parts:
            model.partial_fit(x.reshape(n, -1).astype(np.float64)[rows])
        return model.cluster_centers_

    assert np.allclose(ours, replay(chunks), atol=1e-6)
    assert not np.allclose(ours, replay(chunks[:-1]), atol=1e-3)


def test_minibatch_class_smaller_than_one_chunk_is_one_partial_fit():
    x = latents(4)  # km_expand x ipc = 6 > 4 rows >= ipc: the single chunk still initialises 3 centres
    clusters = minibatch_kmeans(x, 3, 2, 0, "c")
    assert clusters.centroids.shape == (3, 4, 2, 2) and len(clusters.assignment) == 4


@pytest.mark.parametrize("run", [lambda x: minibatch_kmeans(x, 3, 1, 0, "seven"),
                                 lambda x: full_kmeans(x, 3, 2, 0, "seven"),
                                 lambda x: vlcp_clusters(x, 3, 10, 0.1, 2, 0, "seven")])
def test_class_smaller_than_ipc_is_a_data_error_naming_it(run):
    with pytest.raises(DataError, match=r"class 'seven': 2 images, fewer than ipc = 3"):
        run(latents(2))


def test_too_few_inliers_after_lof_is_a_data_error_with_the_counts():
    # contamination 0.5 of 20 images removes ceil(19 x 0.5) = 10, leaving 10 inliers for ipc 11
    with pytest.raises(DataError, match=r"class 'c': 10 inliers \(20 images, 10 LOF outliers"):
        vlcp_clusters(latents(20), 11, 10, 0.5, 2, 0, "c")


def test_duplicate_latents_too_few_distinct_is_a_data_error():
    x = np.repeat(latents(2), 3, axis=0)
    with pytest.raises(DataError, match="only 2 distinct latents among 6 images"):
        full_kmeans(x, 3, 2, 0, "c")


# LOF

# sklearn drops the scores strictly below the contamination percentile: ceil((n - 1) c) rows, which is not
# always round(c n) (13 vs 12 and 5 vs 6 below).
@pytest.mark.parametrize("n, c, expected", [(50, 0.1, 5), (41, 0.1, 4), (50, 0.25, 13), (11, 0.5, 5), (57, 0.2, 12)])
def test_lof_removes_exactly_sklearns_count(n, c, expected):
    x = latents(n, seed=n)
    assert (~lof_inliers(x, 10, c, "c")).sum() == expected
    clusters = vlcp_clusters(x, 3, 10, c, 2, 0, "c")
    assert len(clusters.outliers) == expected and (clusters.assignment >= 0).sum() == n - expected


def test_lof_finds_planted_outliers_and_contamination_zero_keeps_all():
    x = latents(31)
    x[[4, 17, 30]] += 50.0  # three far-away images; 0.1 of 31 → ceil(3.0) = 3 outliers
    assert np.flatnonzero(~lof_inliers(x, 10, 0.1, "c")).tolist() == [4, 17, 30]
    assert lof_inliers(x, 10, 0.0, "c").all()
    assert len(vlcp_clusters(x, 3, 10, 0.0, 2, 0, "c").outliers) == 0
    assert (~lof_inliers(x[:5], 10, 0.25, "c")).sum() == 1  # n_neighbors clamped to 4 below the class size


# the stage

CLASSES = ["0", "1", "2"]
WORDS = "red green blue round square thin thick tall small large bright dark left right center loop".split()


def fake_project(root: Path) -> Path:
    """stages/, params, data/digits/classes.json and a latents folder + captions folder for 3 classes."""
    root.mkdir()
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root, {"ipc": 2, "vlcp": {"prototypes": {"contamination": 0.1, "tpk": 5}},
                        "d4m": {"prototypes": {"km_expand": 2}}})
    (root / "data" / "digits").mkdir(parents=True)
    (root / "data" / "digits" / "classes.json").write_text(json.dumps(CLASSES))
    rng = np.random.default_rng(0)
    sizes = [12, 13, 15]  # 15 rows: chunks of 4 leave a leftover of 3
    labels = torch.tensor([c for c, n in enumerate(sizes) for _ in range(n)])
    paths = [f"{CLASSES[c]}/{i:03d}.png" for c, n in enumerate(sizes) for i in range(n)]
    x = torch.from_numpy(rng.normal(size=(len(paths), 4, 2, 2)).astype(np.float32)) + labels.view(-1, 1, 1, 1) * 3
    write_latents(root / "artifacts" / "digits" / "latents", x, labels, paths)
    (root / "artifacts" / "digits" / "captions").mkdir()
    with open(root / "artifacts" / "digits" / "captions" / "captions.jsonl", "w") as f:
        for path in paths:
            words = " ".join(rng.choice(WORDS, size=4))
            f.write(caption_line(path, path.split("/")[0], f"A handwritten digit {path[0]}, {words}.", "test"))
    record_captions(root / "artifacts" / "digits" / "captions")  # as the caption stage does
    return root


def prototypes_stage(root: Path, method: str, *extra: str, check: bool = True):
    captions = ["--captions", "artifacts/digits/captions"] if method == "vlcp" else []
    return run_stage(root, "prototypes", method, "--latents", "artifacts/digits/latents", "--data", "data/digits",
                     *captions, *extra, "--out", f"artifacts/digits/ipc2/prototypes/{method}", check=check)


def test_stage_writes_both_files_deterministically(tmp_path):
    root = fake_project(tmp_path / "project")
    out = root / "artifacts" / "digits" / "ipc2" / "prototypes"
    lat, _, paths = read_latents(root / "artifacts" / "digits" / "latents")
    x = dict(zip(paths, lat.numpy()))
    captions = {json.loads(line)["path"]: json.loads(line)["caption"]
                for line in (root / "artifacts" / "digits" / "captions" / "captions.jsonl").read_text().splitlines()}

    for method in ("vlcp", "d4m"):
        log = prototypes_stage(root, method).stdout
        assert f"prototypes {method}: 3 classes x 2 centroids of 4x2x2 latents from 40 images" in log
        first = {ext: (out / f"{method}.{ext}").read_bytes() for ext in ("json", "safetensors")}
        prototypes_stage(root, method)
        assert {ext: (out / f"{method}.{ext}").read_bytes() for ext in ("json", "safetensors")} == first
        written = ("vlcp", "d4m") if method == "d4m" else ("vlcp",)  # and no temp file left behind
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{m}.{e}" for m in written for e in ("json",
                                                                                                "safetensors"))

        with safe_open(out / f"{method}.safetensors", "pt") as f:
            assert list(f.keys()) == ["centroids"] and list(f.metadata()) == ["ddpipe"]
            centroids = f.get_tensor("centroids")
        assert centroids.shape == (3, 2, 4, 2, 2) and centroids.dtype == torch.float32

        record = json.loads(first["json"])
        assert {k: record[k] for k in ("method", "ipc", "seed", "latent_shape")} == \
            {"method": method, "ipc": 2, "seed": 0, "latent_shape": [4, 2, 2]}
        assert [c["class"] for c in record["classes"]] == CLASSES
        for c, cls in enumerate(record["classes"]):
            assert cls["prompt"] == f"handwritten digit {cls['class']}"
            assert len(cls["clusters"]) == 2
            members = [m for cl in cls["clusters"] for m in cl["members"]]
            assert sorted(members + cls["outliers"]) == [p for p in paths if p.startswith(f"{cls['class']}/")]
            assert sum(cl["size"] for cl in cls["clusters"]) == len(members)
            for j, cl in enumerate(cls["clusters"]):  # members sit with their own centroid
                rows = np.stack([x[m] for m in cl["members"]])
                assert (nearest_centroid(rows, centroids[c].numpy()) == j).all()
            if method == "vlcp":  # the outliers are exactly the ones sklearn's LOF flags on the class
                class_x = np.stack([x[p] for p in paths if p.startswith(f"{cls['class']}/")])
                lof = LocalOutlierFactor(n_neighbors=10, contamination=0.1)
                flagged = lof.fit_predict(class_x.reshape(len(class_x), -1).astype(np.float64)) == -1
                assert cls["outliers"] == [f"{cls['class']}/{i:03d}.png" for i in np.flatnonzero(flagged)]
                assert cls["outliers"]  # LOF ran
                assert {"handwritten", "digit"} <= set(cls["class_common"])  # in every caption
                for cl in cls["clusters"]:
                    assert cl["text_prototype_path"] in cl["members"]
                    assert cl["text_prototype"] == captions[cl["text_prototype_path"]]
                    assert set(cl) == {"size", "members", "text_prototype", "text_prototype_path", "top_words",
                                       "fallback"}
                    assert all(isinstance(w, str) and isinstance(n, int) for w, n in cl["top_words"])
                    assert not {w for w, _ in cl["top_words"]} & {"a", "handwritten", "digit", cls["class"]}
            else:
                assert cls["outliers"] == [] and "class_common" not in cls
                assert all(set(cl) == {"size", "members", "text_prototype", "text_prototype_path"}
                           and cl["text_prototype"] is None and cl["text_prototype_path"] is None
                           for cl in cls["clusters"])
        params = record["params"]
        if method == "d4m":
            assert params == {"kmeans": "minibatch", "km_expand": 2, "batch_size": 4}
        else:
            assert params["contamination"] == 0.1 and params["tpk"] == 5 and "synthesis" not in params


def test_stage_refuses_captions_for_d4m_and_requires_them_for_vlcp(tmp_path):
    root = fake_project(tmp_path / "project")
    result = prototypes_stage(root, "d4m", "--captions", "artifacts/digits/captions", check=False)
    assert result.returncode == 2 and "d4m uses no captions" in result.stderr
    result = run_stage(root, "prototypes", "vlcp", "--latents", "artifacts/digits/latents", "--data",
                       "data/digits", "--out", "artifacts/digits/ipc2/prototypes/vlcp", check=False)
    assert result.returncode == 2 and "--captions is required" in result.stderr
    assert not (root / "artifacts" / "digits" / "ipc2").exists()


def test_run_in_process_returns_the_record_it_wrote(tmp_path, monkeypatch):
    """prototypes.run called directly: the JSON on disk is the record returned, synthesize reads the pair back,
    and the captions option is checked before anything is read."""
    from stages import prototypes
    from stages.pipeline import params
    from stages.pipeline.errors import PipelineError
    from stages.synthesize import load_prototypes

    root = fake_project(tmp_path / "project")
    monkeypatch.chdir(root)
    p = params.load()
    art = Path("artifacts/digits")
    out = art / "ipc2" / "prototypes" / "vlcp"
    record = prototypes.run(p, "vlcp", art / "latents", Path("data/digits"), art / "captions", out)
    assert record == json.loads(out.with_name("vlcp.json").read_text())
    centroids, loaded = load_prototypes(out, "vlcp", 2, CLASSES)
    assert centroids.shape == (3, 2, 4, 2, 2)
    assert [[c.text_prototype for c in e.clusters] for e in loaded.classes] == \
        [[c["text_prototype"] for c in e["clusters"]] for e in record["classes"]]
    with pytest.raises(PipelineError, match="--captions is required"):
        prototypes.run(p, "vlcp", art / "latents", Path("data/digits"), None, art / "other")
    assert not (art / "other.json").exists()
