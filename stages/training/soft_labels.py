"""FKD soft labels on disk: one Parquet file per epoch, one row per image slot in that epoch's order.

Columns: image (index into the set), batch, crop box (top, left, height, width as fractions), flip,
mix partner (in-batch position), λ, cutmix box (y0, y1, x0, x1 in pixels), teacher logits (fp16).
Together with fkd.json (batch size, mix kind, ...) a file is a complete EpochPlan plus its labels.

With `relabel.topk` = k the logits column is replaced by FKD's compression: each crop's k largest logits
(`topk_logits`, fp16, largest first), their class indices (`topk_index`) and one `rest` logit (fp16). The
reader rebuilds a full row: the k stored logits at their classes and `rest` at every other class, where
rest = logsumexp(other logits) - log(C - k). At temperature 1 that is exactly FKD's "marginal smoothing":
the top-k probabilities are the teacher's, and the remaining mass is the teacher's too, spread evenly over
the other classes. With k = C every class is stored and the rebuilt rows are the dense fp16 logits, bit
for bit.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stages.data.augment import EpochPlan
from stages.pipeline.errors import ArtifactError, DataError, PipelineError
from stages.pipeline.outputs import sha256_file


def epoch_file(root: Path, epoch: int) -> Path:
    return root / f"epoch_{epoch:04d}.parquet"


def compress(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fp16 top-k logits [N, k], class indices [N, k], fp16 rest logit [N]) of float logits [N, C]."""
    n, classes = logits.shape
    values, index = logits.float().topk(k, 1)  # largest first; the order is part of the file, not of the labels
    others = logits.float().scatter(1, index, float("-inf"))  # the classes not kept
    rest = others.logsumexp(1) - math.log(classes - k) if k < classes else torch.full((n,), float("-inf"))
    index_type = np.int16 if classes <= np.iinfo(np.int16).max else np.int32
    return (values.to(torch.float16).numpy(), index.numpy().astype(index_type), rest.to(torch.float16).numpy())


def expand(values: np.ndarray, index: np.ndarray, rest: np.ndarray, classes: int) -> torch.Tensor:
    """fp16 [N, C] logits from their top-k form: the kept logits at their classes, `rest` elsewhere."""
    full = torch.from_numpy(rest.astype(np.float16)).view(-1, 1).expand(len(rest), classes).clone()
    return full.scatter_(1, torch.from_numpy(index.astype(np.int64)), torch.from_numpy(values.astype(np.float16)))


def fixed_lists(array: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])


def write_epoch(path: Path, plan: EpochPlan, logits: torch.Tensor, topk: int | None = None) -> None:
    """One epoch's plan and teacher logits; `topk` = k stores FKD's top-k form (module docstring)."""
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
    }
    meta = {"batch_size": str(plan.batch_size), "mix": plan.mix}
    if topk is None:
        columns["logits"] = fixed_lists(logits.to(torch.float16).numpy())
    else:
        values, index, rest = compress(logits, topk)
        columns.update(topk_logits=fixed_lists(values), topk_index=fixed_lists(index), rest=rest)
        meta["classes"] = str(classes)
    table = pa.table(columns).replace_schema_metadata(meta)
    # no dictionary pages: fp16 logits and float boxes rarely repeat, so a dictionary only adds bytes (-27 % a file)
    pq.write_table(table, path, compression="zstd", use_dictionary=False)


def read_epoch(path: Path) -> tuple[EpochPlan, torch.Tensor]:
    """The stored plan and fp16 logits of one epoch, exactly as written."""
    if not path.exists():
        raise DataError(f"{path}: missing; relabel stored fewer epochs than evaluate asks for")
    with pq.ParquetFile(path) as f:  # not read_table: its dataset layer costs ~1 ms an epoch, half of a small read
        table = f.read()
    meta = table.schema.metadata
    lists = ("logits", "topk_logits", "topk_index")
    col = {name: table.column(name).to_numpy() for name in table.column_names if name not in lists}
    if "logits" in table.column_names:
        logits = torch.from_numpy(list_column(table, "logits").copy())
    else:  # top-k form
        logits = expand(list_column(table, "topk_logits"), list_column(table, "topk_index"), col["rest"],
                        int(meta[b"classes"]))
    plan = EpochPlan(
        batch_size=int(meta[b"batch_size"]), mix=meta[b"mix"].decode(),
        order=col["image"].astype(np.int64),
        boxes=np.stack([col[k] for k in ("top", "left", "height", "width")], 1),
        flips=col["flip"].astype(bool), partner=col["partner"].astype(np.int64), lam=col["lam"],
        cut=np.stack([col[k] for k in ("cut_y0", "cut_y1", "cut_x0", "cut_x1")], 1).astype(np.int64))
    return plan, logits


def list_column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)


def read_checked_epoch(path: Path, num_images: int, num_classes: int, batch_size: int, sha256: str | None = None):
    """One stored epoch (plan, logits), checked: a whole Parquet file, one row per image slot, every image
    index inside the set, finite logits for every class, λ in [0, 1]; with `sha256` (fkd.json's record), the
    file's bytes too."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing; relabel stored fewer epochs than evaluate asks for")
    try:
        plan, logits = read_epoch(path)
    except PipelineError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:  # pyarrow's errors derive
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ArtifactError(f"{path}: not a readable FKD epoch file ({first}); run relabel again") from None
    n = len(plan.order)
    if n != num_images or logits.shape != (num_images, num_classes):
        raise ArtifactError(f"{path}: {n} rows with logits {tuple(logits.shape)}, expected {num_images} rows x "
                            f"{num_classes} classes")
    if plan.batch_size != batch_size or plan.mix not in ("cutmix", "mixup", "none"):
        raise ArtifactError(f"{path}: batch_size {plan.batch_size}, mix {plan.mix!r}; expected batch {batch_size}")
    if sorted(plan.order.tolist()) != list(range(num_images)):
        raise ArtifactError(f"{path}: image column is not a permutation of the set's {num_images} images")
    sizes = [s.stop - s.start for s in plan.batches()]
    if (plan.partner < 0).any() or any((plan.partner[s] >= size).any() for s, size in zip(plan.batches(), sizes)):
        raise ArtifactError(f"{path}: partner column points outside its batch")
    if not (np.isfinite(plan.lam).all() and ((plan.lam >= 0) & (plan.lam <= 1)).all()) \
            or not np.isfinite(plan.boxes).all() or not bool(logits.float().isfinite().all()):
        raise ArtifactError(f"{path}: non-finite logits, boxes or λ outside [0, 1]")
    if sha256 is not None and sha256_file(path) != sha256:
        raise ArtifactError(f"{path}: content differs from fkd.json's record (changed after relabel wrote it)")
    return plan, logits
