"""Image sets too big for memory: a lazy uint8 view that decodes only the rows indexed, and the budget
that decides when a set is streamed.

`LazyImages[idx]` returns exactly what indexing the in-memory N x 3 x H x W tensor would (same pixels,
same shape), so every output is the same bytes in either mode. A background thread pool decodes the
next batch while the current one trains: `render` announces the next batch of its plan (`prefetch`),
and a contiguous slice (`images[a:b]`, the pattern of batched inference) reads ahead the next slice.
At most the batch being served and one batch ahead are held decoded.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stages.pipeline.errors import DataError, env_number

MEMORY_ENV = "DDPIPE_MEMORY_GB"


def memory_budget() -> int:
    """Bytes a stage may spend on one decoded image set before it streams it instead.

    An environment variable, not a param: a set gives the same bytes streamed or in memory, so changing
    the budget must not make DVC rerun anything. Default: a quarter of the machine's physical memory
    (room for the model, the batches, and other stages `dvc queue start -j N` runs beside this one).
    """
    quarter = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    gb = env_number(MEMORY_ENV, quarter / 2 ** 30, "a number of GB >= 0 (0 streams every set)")
    return int(gb * 2 ** 30)


class LazyImages:
    """uint8 N x 3 x H x W view of image files, decoded on indexing (int, slice, index array/tensor)."""

    dtype = torch.uint8

    def __init__(self, files: list[Path], height: int, width: int, decode: Callable[[Path], np.ndarray],
                 workers: int | None = None):
        self.files = files
        self.shape = torch.Size((len(files), 3, height, width))
        self._decode = decode
        self._pool = ThreadPoolExecutor(max(1, workers or torch.get_num_threads()), thread_name_prefix="decode")
        self._ahead: tuple[bytes, list[Future]] | None = None
        self._lock = threading.Lock()
        self._served = 0  # rows of the last batch handed out
        self.decoded = 0  # images decoded so far (tests and memory measurements read it)
        self.largest_batch = 0  # most rows held decoded at once: the batch handed out + the one ahead

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} x 3 x {self.shape[2]} x {self.shape[3]}, decoded on demand)"

    def __getitem__(self, index) -> torch.Tensor:
        rows = self._rows(index)
        batch = self._take(rows.ravel())
        if isinstance(index, slice) and rows.ndim == 1 and len(rows) and np.all(np.diff(rows) == 1):
            self.prefetch(np.arange(rows[-1] + 1, min(rows[-1] + 1 + len(rows), len(self))))  # read ahead
        return batch.view(*rows.shape, *self.shape[1:])

    def prefetch(self, index) -> None:
        """Start decoding these rows in the background; the next request for exactly them is served from it."""
        rows = np.asarray(index, dtype=np.int64).ravel()
        self._drop_ahead()
        if len(rows):
            self._check_bounds(rows)
            self._ahead = (rows.tobytes(), [self._pool.submit(self._decode_row, int(r)) for r in rows])
            self.largest_batch = max(self.largest_batch, self._served + len(rows))

    def _rows(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(len(self))[index]
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        rows = np.asarray(index)
        if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"LazyImages: index with ints, slices or integer arrays, not {rows.dtype}")
        rows = np.where(rows < 0, rows + len(self), rows).astype(np.int64)
        self._check_bounds(rows)
        return rows

    def _check_bounds(self, rows: np.ndarray) -> None:
        bad = rows[(rows < 0) | (rows >= len(self))]
        if bad.size:
            raise IndexError(f"LazyImages: row {int(bad[0])} out of range for {len(self)} images")

    def _take(self, rows: np.ndarray) -> torch.Tensor:
        arrays = self._arrays(rows)
        if not arrays:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def _arrays(self, rows: np.ndarray) -> list[np.ndarray]:
        """The decoded rows, from the batch decoded ahead when it is exactly these rows."""
        if self._ahead is not None and self._ahead[0] == rows.tobytes():
            futures, self._ahead = self._ahead[1], None
        else:  # not announced: decode now, still in parallel
            futures = [self._pool.submit(self._decode_row, int(r)) for r in rows]
        self._served = len(rows)
        self.largest_batch = max(self.largest_batch, len(rows) + (len(self._ahead[1]) if self._ahead else 0))
        return [f.result() for f in futures]

    def _decode_row(self, row: int) -> np.ndarray:
        path, (_, _, h, w) = self.files[row], self.shape
        array = self._decode(path)
        with self._lock:
            self.decoded += 1
        if array.shape != (h, w, 3):  # checked here, not by a header scan up front: that would open
            # every file (minutes for ImageNet) before any work, and the first epoch decodes them all anyway
            raise DataError(f"{path}: is {array.shape[1]}x{array.shape[0]}, other images are {w}x{h}")
        return array

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            for future in self._ahead[1]:
                future.cancel()
            self._ahead = None


class BatchView:
    """`fn` applied to rows of `source` (a tensor or LazyImages) on indexing: a whole-set transform
    (normalisation, resizing) that never holds the whole transformed set. Indexing, `len` and
    slicing are what `predict` and the trainers use; `tensor()` materialises it for the few
    algorithms that need every image at once."""

    def __init__(self, source, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.source, self.fn = source, fn

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self.fn(self.source[index:index + 1])[0] if index >= 0 else self[len(self) + index]
        return self.fn(self.source[index])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self[0:1].shape[1:]))

    def tensor(self, batch_size: int = 512) -> torch.Tensor:
        return torch.cat([self[i:i + batch_size] for i in range(0, len(self), batch_size)])
