"""VLCP (stages/methods/vlcp, docs/methods/vlcp.md): text prototypes (the member caption that best carries its
cluster's distinctive words) and its recipe for the shared prototypes and synthesize stages - LOF then full
k-means, the knobs it records, its clusters' record and each cluster's caption as its img2img prompt. The caption
stage is in test_caption.py here; the prototypes and synthesize stages in tests/engines/."""
from types import SimpleNamespace

import numpy as np

from stages.clustering.kmeans import Clusters, vlcp_clusters
from stages.methods import recipe
from stages.methods.vlcp.text_prototypes import class_text_prototypes, name_words, pick_caption, stopwords, tokens
from tests.conftest import tiny_params

VLCP = recipe("vlcp")

# text prototypes

CAPTIONS = [
    "A fluffy cat sleeping on grass.",                      # cluster 0
    "The fluffy cat has a striped tail on a hot day.",      # cluster 0
    "Striped, STRIPED fluffy cat with striped paws.",       # cluster 0
    "A fluffy cat with black ears.",                        # cluster 1
    "A black fluffy cat, black nose.",                      # cluster 1
    "A fluffy kitten.",                                     # cluster 1
    "Zebra zebra zebra zebra, an outlier.",                 # LOF outlier
]
PATHS = [f"cat/{i}.png" for i in range(len(CAPTIONS))]
ASSIGNMENT = np.array([0, 0, 0, 1, 1, 1, -1])
NEAREST = np.array([0, 5])
CLASS_WORDS = name_words("a photo of a cat", "cat")


def prototypes(threshold=0.7, tpk=30):
    return class_text_prototypes("cat", PATHS, CAPTIONS, ASSIGNMENT, NEAREST, CLASS_WORDS, threshold, tpk)


def test_tokens_and_pinned_stopwords():
    assert tokens("A Red-Car, in 3D! don't") == ["a", "red", "car", "in", "d", "don", "t"]
    assert len(stopwords()) == 179 and {"the", "a", "don", "t", "wouldn't"} <= stopwords()
    assert CLASS_WORDS == {"a", "photo", "of", "cat"}


def test_dominant_word_picks_its_caption_and_excluded_words_never_score():
    common, (first, second) = prototypes()
    # fluffy: 6 of 6 inlier captions, cat: 5 of 6 >= 0.7 x 6 (a class-name word may be common too); the
    # outlier's words are not counted
    assert common == ["cat", "fluffy"]
    # "striped" x4 (case-insensitive) dominates cluster 0: row 1 scores 4+1+1+1 (tail, hot, day) over row 2's 4+1
    assert (first.caption, first.path, first.fallback) == (CAPTIONS[1], "cat/1.png", False)
    assert first.top_words[0] == ("striped", 4)
    assert ("hot", 1) in first.top_words  # a token, not dropped as a substring of "photo" (the reference would)
    assert (second.caption, second.top_words[0]) == (CAPTIONS[3], ("black", 3))  # ties row 4, the first wins
    for proto in (first, second):
        words = {w for w, _ in proto.top_words}
        assert not words & (stopwords() | CLASS_WORDS | {"fluffy", "zebra"})
        assert proto.caption in CAPTIONS[:6] and PATHS[CAPTIONS.index(proto.caption)] == proto.path
    assert prototypes() == (common, [first, second])  # deterministic


def test_top_word_ties_go_by_word_and_caption_ties_to_the_first_member():
    _, (first, _) = prototypes(tpk=3)
    assert first.top_words == [("striped", 4), ("day", 1), ("grass", 1)]
    assert first.path == "cat/1.png"  # rows 1 and 2 both score 4 + 0; row 1 comes first


def test_class_common_threshold_is_document_frequency():
    common, _ = prototypes(threshold=0.3)  # black: 2 of 6 captions >= 1.8; striped: 2 of 6
    assert common == ["black", "cat", "fluffy", "striped"]


def test_no_top_words_falls_back_to_the_member_nearest_the_centroid():
    captions = ["A fluffy cat.", "The fluffy cat!", "a CAT, fluffy"]
    proto = pick_caption(["c/0", "c/1", "c/2"], captions, stopwords() | CLASS_WORDS | {"fluffy"}, 30, nearest=1)
    assert (proto.caption, proto.path, proto.top_words, proto.fallback) == ("The fluffy cat!", "c/1", [], True)


# the recipe

def test_the_recorded_knobs_are_the_section_and_the_pinned_stopwords(tmp_path):
    p = tiny_params(tmp_path, {"vlcp": {"prototypes": {"contamination": 0.2, "tpk": 7}}})
    assert VLCP.prototype_params(p) == {"lof_neighbors": 10, "contamination": 0.2, "n_init": 10, "threshold": 0.7,
                                        "tpk": 7, "stopwords": "stopwords_en.txt (NLTK English, 179 words)"}


def test_cluster_drops_the_lof_outliers_then_runs_full_kmeans(tmp_path):
    x = np.random.default_rng(0).normal(size=(31, 4, 2, 2)).astype(np.float32)
    x[[4, 17, 30]] += 50.0  # three far-away images: contamination 0.1 of 31 drops ceil(3.0) = 3
    p = tiny_params(tmp_path / "lof", {"ipc": 3, "vlcp": {"prototypes": {"contamination": 0.1, "n_init": 2}}})
    clusters = VLCP.cluster(p, x, 5, "c")
    assert clusters.outliers.tolist() == [4, 17, 30] and (clusters.assignment[clusters.outliers] == -1).all()
    expected = vlcp_clusters(x, 3, 10, 0.1, 2, 5, "c")
    assert np.array_equal(clusters.centroids, expected.centroids)
    assert np.array_equal(clusters.assignment, expected.assignment)
    assert all(clusters.assignment[row] == j for j, row in enumerate(clusters.nearest))  # nearest: a member
    p = tiny_params(tmp_path / "none", {"ipc": 3, "vlcp": {"prototypes": {"contamination": 0.0, "n_init": 2}}})
    assert len(VLCP.cluster(p, x, 5, "c").outliers) == 0  # contamination 0 keeps every image (VLCP's CIFAR)


def test_the_record_carries_each_clusters_text_prototype_and_its_prompt_is_that_caption(tmp_path):
    p = tiny_params(tmp_path)  # threshold 0.7, tpk 30: as prototypes() above
    assert VLCP.captions is True  # the prototypes stage requires the captions folder for vlcp
    clusters = Clusters(np.zeros((2, 4, 2, 2), np.float32), ASSIGNMENT, NEAREST)
    members = [[PATHS[i] for i in np.flatnonzero(ASSIGNMENT == j)] for j in range(2)]
    record = VLCP.describe(p, "cat", "a photo of a cat", PATHS, clusters, members, dict(zip(PATHS, CAPTIONS)))
    common, (first, second) = prototypes()
    assert record["class_common"] == common == ["cat", "fluffy"]
    assert [c["text_prototype"] for c in record["clusters"]] == [first.caption, second.caption] == \
        [CAPTIONS[1], CAPTIONS[3]]
    assert record["clusters"][0] == {"size": 3, "members": members[0], "text_prototype": CAPTIONS[1],
                                     "text_prototype_path": "cat/1.png",
                                     "top_words": [list(w) for w in first.top_words], "fallback": False}
    cluster = SimpleNamespace(text_prototype=CAPTIONS[1])
    assert VLCP.prompt("a photo of a cat", cluster) == CAPTIONS[1]  # the caption, not the class prompt
    records = [{"outliers": ["a", "b"], "clusters": [{"fallback": True}, {"fallback": False}]},
               {"outliers": ["c"], "clusters": [{"fallback": True}]}]
    assert VLCP.summary(records) == ", 3 LOF outliers, 2 text fallbacks"
