"""caption (VLCP step 1): one caption per train image → artifacts/<ds>/captions/ (captions.jsonl + SHA256SUMS).

Captioners (params `caption.captioner`):
attributes  offline and deterministic: colours, brightness, size, position and shape words
            measured from the pixels (stages/captions/attributes.py). Made for digits (ink strokes on a
            background: stroke width, closed loops, slant); on any other dataset it warns, since its
            words would describe a photo as strokes and loops: photos need `llava`
llava       LLaVA-1.5 through transformers, greedy decoding (stages/captions/llava.py)

Lines follow the train folder's order. The stage resumes: progress goes to a partial file in the
resume folder `.captions.resume/` beside the output (stages/pipeline/resume.py; DVC deletes the outputs
themselves before a run), synced to disk after every batch; a rerun under the same settings and inputs keeps
its whole batches, and the finished file is moved into the output folder beside its content record.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from stages.captions import attributes
from stages.captions.jsonl import FILE, caption_line, parse_line, record_captions
from stages.data.files import read_classes
from stages.data.splits import Item, inputs_of, split_items
from stages.pipeline import cli, params
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume
from stages.pipeline import outputs

ATTRIBUTE_BATCH = 256  # attribute captions are independent: this only sets how often progress is saved
PARTIAL = "captions.partial.jsonl"  # in the Resume folder: the lines so far, synced after every batch


def settings(p: params.Params, subjects: list[str]) -> dict:
    """Everything that decides the captions besides the images: part of the Resume key (a partial file is
    resumed only under equal settings)."""
    c = p.caption
    if c.captioner == "attributes":
        return {"captioner": attributes.VERSION, "subjects": subjects}
    # LLaVA pads each batch to its longest prompt, so the batch size is part of what the captions depend on.
    return {"captioner": f"llava:{c.llava.model}", "subjects": subjects, "question": c.llava.question,
            "batch_size": c.llava.batch_size, "max_new_tokens": c.llava.max_new_tokens}


def misfit(captioner: str, dataset: str) -> str | None:
    """The warning when the captioner's words do not fit the dataset's kind of image."""
    if captioner == "attributes" and dataset != "digits":
        return (f"warning: caption: the attributes captioner describes digits (strokes, loops, slant); on dataset "
                f"{dataset!r} its captions will not fit the images - use caption.captioner: llava")
    return None


def open_captioner(p: params.Params):
    """(batch size, captioner(images, subjects) → captions)."""
    c = p.caption
    if c.captioner == "attributes":
        return ATTRIBUTE_BATCH, lambda images, subjects: [attributes.describe(a, s) for a, s in zip(images, subjects)]
    from stages.captions.llava import LlavaCaptioner  # imports transformers only when needed

    return c.llava.batch_size, LlavaCaptioner(c.llava.model, c.llava.question, c.llava.max_new_tokens)


def keep_valid_lines(partial: Path, expected: list[str], config: dict) -> int:
    """Keep the partial file's valid lines (whole batches); returns how many.

    A torn last line (a kill mid-write) is dropped. Lines that do not continue the expected path order, or
    were made by another captioner, mean starting over (other settings never get here: Resume's key).
    """
    if not partial.exists():
        return 0
    lines = partial.read_bytes().split(b"\n")[:-1]  # the piece after the last newline is torn (or empty)
    for k, raw in enumerate(lines):
        try:
            record = parse_line(raw.decode("utf-8"), f"{partial}:{k + 1}")
        except (ArtifactError, UnicodeDecodeError) as e:
            print(f"{partial}:{k + 1}: unreadable ({e}); starting over")
            return 0
        if k >= len(expected) or record["path"] != expected[k] or record["captioner"] != config["captioner"]:
            print(f"{partial}:{k + 1}: {record['path']!r} by {record['captioner']!r} is not the next train image "
                  f"by {config['captioner']!r}; starting over")
            return 0
    kept = len(lines) - len(lines) % config.get("batch_size", 1)  # a partly written batch is redone whole
    with open(partial, "r+b") as f:
        f.truncate(sum(len(line) + 1 for line in lines[:kept]))
    return kept


@dataclass
class Work:
    """What captioning needs: the train images in folder order, their names, class names and subjects."""
    items: list[Item]
    paths: list[str]
    classes: list[str]
    subjects: list[str]
    config: dict


def caption_from(p: params.Params, work: Work, partial: Path, done: int) -> None:
    """Caption work.items[done:] batch by batch, appending to `partial`, each batch synced to disk."""
    items, paths = work.items, work.paths
    batch_size, captioner = open_captioner(p)
    with open(partial, "ab") as f, progress(total=len(items), initial=done, desc="caption", unit="img") as bar:
        for start in range(done, len(items), batch_size):
            batch = items[start:start + batch_size]
            captions = captioner([item.load() for item in batch], [work.subjects[item.label] for item in batch])
            f.write("".join(caption_line(paths[start + i], work.classes[item.label], text, work.config["captioner"])
                            for i, (item, text) in enumerate(zip(batch, captions))).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))


def run(p: params.Params, data: Path, out: Path) -> Path:
    """The caption stage: caption data/<ds>/train into the folder `out` (captions.jsonl + its SHA256SUMS),
    resuming a killed or failed run's whole batches. Returns the captions file."""
    outputs.claim("caption", {"--out": (out, outputs.CAPTIONS)}, {"--data": data})
    classes = read_classes(data)
    subjects = params.class_prompts(p, classes)
    items = split_items(data / "train", classes)
    work = Work(items, [item.name for item in items], classes, subjects, settings(p, subjects))
    if warning := misfit(p.caption.captioner, p.dataset):
        print(warning, file=sys.stderr)

    resume = Resume(out, work.config, [data / "classes.json", inputs_of(data / "train")])
    partial = resume.path(PARTIAL)
    done = keep_valid_lines(partial, work.paths, work.config)
    if done:
        print(f"resumed: {done} of {len(items)} already captioned")
    else:
        partial.write_bytes(b"")
    if done < len(items):
        caption_from(p, work, partial, done)
    with atomic_dir(out) as tmp:
        os.replace(partial, tmp / FILE)
        record_captions(tmp)
    resume.clear()
    print(f"caption: {len(items)} images by {work.config['captioner']} → {out}")
    return out / FILE


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset> (captions its train folder)")
    parser.add_argument("--out", required=True, type=Path, help="the captions folder to write (captions.jsonl)")
    args = parser.parse_args()
    run(params.load(), args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
