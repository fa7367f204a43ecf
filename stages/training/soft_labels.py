"""FKD soft labels on disk: one Parquet file per epoch, one row per image slot in that epoch's order.

Columns: image (index into the set), batch, crop box (top, left, height, width as fractions), flip,
mix partner (in-batch position), λ, cutmix box (y0, y1, x0, x1 in pixels), teacher logits (fp16).
Together with fkd.json (batch size, mix kind, ...) a file is a complete EpochPlan plus its labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stages.data.augment import EpochPlan
from stages.pipeline.errors import DataError


def epoch_file(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:04d}.parquet"


def write_epoch(path: Path, plan: EpochPlan, logits: torch.Tensor) -> None:
    n, classes = logits.shape
    batch = np.concatenate([np.full(s.stop - s.start, b, np.int32) for b, s in enumerate(plan.batches())])
    columns = {
        "image": plan.order.astype(np.int32),
        "batch": batch,
        **{k: plan.boxes[:, i] for i, k in enumerate(("top", "left", "height", "width"))},
        "flip": plan.flips,
        "partner": plan.partner.astype(np.int32),
        "lam": plan.lam,
        **{k: plan.cut[:, i].astype(np.int16) for i, k in enumerate(("cut_y0", "cut_y1", "cut_x0", "cut_x1"))},
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.to(torch.float16).numpy().reshape(-1)),
                                                    classes),
    }
    table = pa.table(columns).replace_schema_metadata({"batch_size": str(plan.batch_size), "mix": plan.mix})
    # no dictionary pages: fp16 logits and float boxes rarely repeat, so a dictionary only adds bytes (-27 % a file)
    pq.write_table(table, path, compression="zstd", use_dictionary=False)


def read_epoch(path: Path) -> tuple[EpochPlan, torch.Tensor]:
    """The stored plan and fp16 logits of one epoch, exactly as written."""
    if not path.exists():
        raise DataError(f"{path}: missing; relabel stored fewer epochs than evaluate asks for")
    with pq.ParquetFile(path) as f:  # not read_table: its dataset layer costs ~1 ms an epoch, half of a small read
        table = f.read()
    meta = table.schema.metadata
    col = {name: table.column(name).to_numpy() for name in table.column_names if name != "logits"}
    logits = table.column("logits").combine_chunks()
    classes = logits.type.list_size
    values = logits.flatten().to_numpy(zero_copy_only=False).reshape(-1, classes)
    plan = EpochPlan(
        batch_size=int(meta[b"batch_size"]), mix=meta[b"mix"].decode(),
        order=col["image"].astype(np.int64),
        boxes=np.stack([col[k] for k in ("top", "left", "height", "width")], 1),
        flips=col["flip"].astype(bool), partner=col["partner"].astype(np.int64), lam=col["lam"],
        cut=np.stack([col[k] for k in ("cut_y0", "cut_y1", "cut_x0", "cut_x1")], 1).astype(np.int64))
    return plan, torch.from_numpy(values.copy())
