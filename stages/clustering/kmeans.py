"""Per-class k-means in flattened latent space (docs/methods/d4m.md, docs/methods/vlcp.md#prototypes).

D4M   `minibatch`: sklearn MiniBatchKMeans fed by streaming partial_fit on chunks of km_expand x ipc rows in a
      seeded shuffled order, the first chunk initialising the centres (the reference's online k-means). The
      reference flushes the leftover rows of the last class only; here every class's leftover chunk is fed.
      `full`: KMeans with n_init restarts.
VLCP  LocalOutlierFactor drops a `contamination` fraction of the class (0 skips it), then full KMeans on the inliers.

Everything runs on one thread: sklearn's OpenMP k-means adds thread-local partial sums in lock order, so with
several threads the centroids can differ in the last bits from run to run (and the output bytes with them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.neighbors import LocalOutlierFactor
from threadpoolctl import threadpool_limits

from stages.pipeline.errors import DataError


@dataclass
class Clusters:
    """One class's clustering; rows index the class's latents in the order they were given."""

    centroids: np.ndarray  # float32 [k, C, h, w]
    assignment: np.ndarray  # int64 [n]: cluster of each row, -1 for an LOF outlier
    nearest: np.ndarray  # int64 [k]: the member row nearest each centroid, -1 for an empty cluster

    def members(self, cluster: int) -> np.ndarray:
        return np.flatnonzero(self.assignment == cluster)

    @property
    def outliers(self) -> np.ndarray:
        return np.flatnonzero(self.assignment == -1)


def _flat(latents: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(latents.reshape(len(latents), -1), dtype=np.float64)


def _check_rows(x: np.ndarray, k: int, name: str, what: str) -> None:
    if len(x) < k:
        raise DataError(f"class {name!r}: {what}, fewer than ipc = {k} clusters")
    distinct = len(np.unique(x, axis=0))
    if distinct < k:  # k-means would return duplicate centres or empty clusters
        raise DataError(f"class {name!r}: only {distinct} distinct latents among {what}, fewer than ipc = {k}")


def _finish(x: np.ndarray, centers: np.ndarray, assignment: np.ndarray, shape: tuple) -> Clusters:
    """Centroids back to latent shape, and the member nearest each centroid (the text fallback)."""
    nearest = np.full(len(centers), -1, dtype=np.int64)
    for j, center in enumerate(centers):
        rows = np.flatnonzero(assignment == j)
        if len(rows):
            nearest[j] = rows[np.argmin(((x[rows] - center) ** 2).sum(1))]  # ties: the first row
    return Clusters(centers.astype(np.float32).reshape(len(centers), *shape), assignment.astype(np.int64), nearest)


def stream_chunks(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Rows 0..n-1 in a seeded shuffled order, cut into consecutive chunks of batch_size; the last chunk holds
    the leftover rows (fewer than batch_size) and is kept."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def minibatch_kmeans(latents: np.ndarray, k: int, km_expand: int, seed: int, name: str) -> Clusters:
    """D4M's online k-means. The first chunk has min(n, km_expand x k) >= k rows, enough to initialise k centres;
    later chunks, the leftover included, may be smaller."""
    x = _flat(latents)
    _check_rows(x, k, name, f"{len(x)} images")
    batch = km_expand * k
    # partial_fit initialises once from the first chunk (k-means++), so n_init="auto" (= 1) is what runs.
    model = MiniBatchKMeans(n_clusters=k, batch_size=batch, n_init="auto", random_state=seed)
    with threadpool_limits(limits=1):
        for rows in stream_chunks(len(x), batch, seed):
            model.partial_fit(x[rows])
        assignment = model.predict(x)  # partial_fit's labels_ cover the last chunk only
    return _finish(x, model.cluster_centers_, assignment, latents.shape[1:])


def full_kmeans(latents: np.ndarray, k: int, n_init: int, seed: int, name: str, what: str | None = None) -> Clusters:
    x = _flat(latents)
    _check_rows(x, k, name, what or f"{len(x)} images")
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    with threadpool_limits(limits=1):
        model.fit(x)
    return _finish(x, model.cluster_centers_, model.labels_, latents.shape[1:])


def lof_inliers(latents: np.ndarray, neighbors: int, contamination: float, name: str) -> np.ndarray:
    """Boolean mask of the rows LOF keeps; contamination 0 keeps every row (LOF is not run).

    sklearn drops the rows whose score lies strictly below the contamination percentile of the scores, i.e.
    ceil((n - 1) x contamination) rows when the scores are distinct (a tie at the cut keeps more).
    """
    n = len(latents)
    if contamination == 0:
        return np.ones(n, dtype=bool)
    k = min(neighbors, n - 1)  # LOF needs neighbours other than the point itself
    if k < 1:
        raise DataError(f"class {name!r}: {n} image, LOF needs at least 2 (or set vlcp.contamination: 0)")
    lof = LocalOutlierFactor(n_neighbors=k, contamination=contamination)
    with threadpool_limits(limits=1):
        return lof.fit_predict(_flat(latents)) == 1


def vlcp_clusters(latents: np.ndarray, k: int, neighbors: int, contamination: float, n_init: int, seed: int,
                  name: str) -> Clusters:
    """LOF, then full k-means on the inliers; outliers get assignment -1."""
    if len(latents) < k:
        raise DataError(f"class {name!r}: {len(latents)} images, fewer than ipc = {k} clusters")
    keep = lof_inliers(latents, neighbors, contamination, name)
    what = (f"{keep.sum()} inliers ({len(keep)} images, {len(keep) - keep.sum()} LOF outliers at "
            f"contamination {contamination})")
    inner = full_kmeans(latents[keep], k, n_init, seed, name, what)
    rows = np.flatnonzero(keep)  # inlier index → class row
    assignment = np.full(len(latents), -1, dtype=np.int64)
    assignment[rows] = inner.assignment
    nearest = np.where(inner.nearest >= 0, rows[np.maximum(inner.nearest, 0)], -1)
    return Clusters(inner.centroids, assignment, nearest)
