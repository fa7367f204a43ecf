"""recover@<method>: the methods on the recover engine (SRe2L, DELT, INFER, ...), each a recipe over the one
engine (stages/recover_engine): its package's recipe.py says where its images start and how long each runs.

sre2l  images start as N(0, 1) noise and are optimised against one teacher (docs/methods/sre2l.md).
delt   images start as the real images `select` picked; EarlyLate: rank k joins in round
       join(k) of iterations/round_iterations, so late joiners get fewer updates (docs/methods/delt.md#earlylate).
infer  ipc_init real base images per class, plus one compensator per teacher per base set: an
       additive image shared by all classes, optimised so that every base + compensator reads as its
       own class (docs/methods/infer.md). The set ships the teachers' mean logits of every image as static labels.
edc    random real train images, refined so that the observers (one per iteration, in turn) classify them
       and see the statistics the `statistics` stage measured on the real set (docs/methods/edc.md).

Writes the set (<class>/<k>.png, lossless, k = IPC index) with card.json, and `--stats` (image-
iterations; the saving against SRe2L at the same iterations); wall time and rate go to the run log. Under
torchrun each rank recovers its block of the batches (INFER: of the (teacher, base-set batch) jobs) into one
temporary folder and rank 0 finishes the card and stats: the images are those of a single process.

Interrupted runs resume (stages/recover_engine/finished.py): every finished batch (INFER: (teacher, batch) job,
with its compensator, the one thing that crosses jobs) is kept in `.<out>.resume/`, keyed by the method's
params and inputs, and a rerun recovers only the rest. A batch depends on its own seed alone, so the set
is the same bytes however often the run stopped; DELT's rounds need no saving (every image's (join, stop)
comes from the params). A non-finite loss stops the run with DivergedError; nothing is saved as images.

`--losses <csv>` (opt-in, not used by dvc.yaml) writes every iteration's cross-entropy, BN term and total per
batch, for reading only: the images are the same bytes with or without it (the parity harness, docs/parity.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from stages import methods
from stages.data.folder import read_classes
from stages.data.prepared import inputs_of
from stages.pipeline import cli, distributed, params, runlog
from stages.pipeline.artifacts import read_data_meta
from stages.pipeline.outputs import write_json
from stages.pipeline.errors import ParamsError
from stages.pipeline.params import Params
from stages.models.teachers import Teachers
from stages.recover_engine.driver import write_set_card
from stages.recover_engine.engine import LOSS_COLUMNS, logging_losses
from stages.recover_engine.finished import FinishedBatches
from stages.pipeline import outputs


def run(p: Params, method: str, teachers_dir: Path, init: str, data: Path, out: Path, stats: Path,
        losses: Path | None = None) -> dict | None:
    """The recover stage: `method`'s images (and labels, if its recipe ships some) from its teachers into the set
    `out`, resuming finished batches; writes the card and `stats` and returns the stats (None on a torchrun rank
    other than 0). `init` is `noise` (sre2l), the select stage's init set (delt), the train folder of the
    bases (infer) or the statistics folder (edc, whose starts come from data/train): what the recipe reads.
    `losses`: the opt-in per-iteration loss CSV."""
    methods.check_joins("recover", method, "the recover engine")
    outputs.claim(f"recover {method}", {"--out": (out, outputs.set_kind(method)),
                                        "--stats": (stats, outputs.json_kind("synthesis stats", method=method,
                                                                             images=None)),
                                        "--losses": (losses, outputs.file_kind("recover losses", ".csv",
                                                                               ",".join(LOSS_COLUMNS)))},
                  {"--teachers": teachers_dir, "--init": None if init == "noise" else Path(init), "--data": data})
    if losses is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ParamsError(f"--losses {losses}: one process only (not under torchrun)")
    recipe, section = methods.recipe(method), getattr(p, method)
    data_meta = read_data_meta(data)
    classes, size = read_classes(data), data_meta.image_size
    teachers = Teachers(teachers_dir, recipe.teacher_archs(section), data_meta)
    # what decides the images: the method's params and its inputs (teacher weights by hash, the init or
    # train folder by listing, the data's meta.json), so other params or inputs start afresh
    settings = {"method": method, "ipc": p.ipc, "seed": p.seed, method: section.model_dump(),
                "teachers": teachers.card()}
    inputs = [data / "meta.json"] + ([inputs_of(init)] if init != "noise" else [])

    log = logging_losses(losses) if losses is not None else contextlib.nullcontext()
    with log, distributed.world() as world, distributed.shared_dir(world, out) as tmp:
        finished = FinishedBatches(world, out, settings, inputs)
        record = recipe.make(p, init, teachers, classes, size, tmp, world, finished, data)
        if not world.main:
            return None
        images, work, seconds = write_set_card(tmp, p, method, classes, teachers, record, recipe.labels)
    rate = work / max(seconds, 1e-9)
    stats_json = {"method": method, "images": images, "image_iterations": work,
                  **{k: record[k] for k in ("sre2l_image_iterations", "saving_vs_sre2l") if k in record}}
    write_json(stats, stats_json)
    finished.clear()
    runlog.record("recover", out, seconds, method=method, images=images, image_iterations=work,
                  image_iterations_per_second=round(rate, 1))
    print(f"recover {method}: {images} images, {work:,} image-iterations in {seconds:.1f} s "
          f"({rate:.0f}/s){recipe.summary(record, section)} → {out}")
    return stats_json


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=methods.joining("recover"), help="a method on the recover engine")
    parser.add_argument("--teachers", required=True, type=Path, help="artifacts/<ds>/teachers")
    parser.add_argument("--init", required=True, help="starting images: `noise` (sre2l), the select stage's "
                        "init set (delt), the real train folder the bases are drawn from (infer), or the statistics "
                        "folder (edc; its real starts come from --data's train split)")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="distilled set folder")
    parser.add_argument("--stats", required=True, type=Path, help="synthesis stats JSON (work done) to write")
    parser.add_argument("--losses", type=Path, help="optional: write every iteration's losses (batch, iteration, lr, "
                        "ce, bn, total) to this CSV; the images do not change (one process only)")
    args = parser.parse_args()
    run(params.load(), args.method, args.teachers, args.init, args.data, args.out, args.stats, args.losses)


if __name__ == "__main__":
    cli.run(main)
