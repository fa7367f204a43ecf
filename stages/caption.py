"""caption (VLCP step 1): one caption per train image → captions.jsonl.

Captioners (params `caption.captioner`):
attributes  offline and deterministic: colours, brightness, size, position and shape words
            measured from the pixels (stages/captions/attributes.py). Made for digits (ink strokes on a
            background: stroke width, closed loops, slant); on any other dataset it warns, since its
            words would describe a photo as strokes and loops: photos need `llava`
llava       LLaVA-1.5 through transformers, greedy decoding (stages/captions/llava.py)

Lines follow the train folder's order. The stage resumes: progress goes to a hidden partial file
next to the output (DVC deletes the outputs themselves before a run), flushed to disk after every
batch; a rerun keeps its lines if the settings match, and the finished file is renamed into place.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stages.captions import attributes
from stages.captions.jsonl import caption_line, parse_line
from stages.data.folder import read_classes
from stages.data.prepared import split_items
from stages.pipeline import cli, params
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import write_json
from stages.pipeline.progress import progress

ATTRIBUTE_BATCH = 256  # attribute captions are independent: this only sets how often progress is saved


def settings(p: params.Params, subjects: list[str]) -> dict:
    """Everything that decides the captions besides the images; a partial file is resumed only under equal settings."""
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


def progress_files(out: Path) -> tuple[Path, Path]:
    """The hidden partial captions file next to `out`, and the settings it was made with."""
    partial = out.with_name(f".{out.name}.partial")
    return partial, partial.with_name(partial.name + ".json")


def resume(out: Path, expected: list[str], config: dict) -> int:
    """Keep the partial file's valid lines (whole batches of the same settings); returns how many.

    A torn last line (a kill mid-write) is dropped. Lines that do not continue the expected path order,
    or were made under other settings, mean starting over.
    """
    partial, sidecar = progress_files(out)
    if not partial.exists() or not sidecar.exists():
        return 0
    try:
        same = json.loads(sidecar.read_text()) == config
    except ValueError:
        same = False
    if not same:
        print(f"{partial}: made with other caption settings; starting over")
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


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset> (captions its train folder)")
    parser.add_argument("--out", required=True, type=Path, help="captions JSONL to write")
    args = parser.parse_args()
    p = params.load()
    classes = read_classes(args.data)
    subjects = params.class_prompts(p, classes)
    train = args.data / "train"
    items = split_items(train, classes)
    paths = [item.name for item in items]
    config = settings(p, subjects)
    if warning := misfit(p.caption.captioner, p.dataset):
        print(warning, file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial, sidecar = progress_files(args.out)
    done = resume(args.out, paths, config)
    if done:
        print(f"resumed: {done} of {len(items)} already captioned")
    else:
        partial.write_bytes(b"")
        write_json(sidecar, config)

    if done < len(items):
        batch_size, captioner = open_captioner(p)
        with open(partial, "ab") as f, progress(total=len(items), initial=done, desc="caption", unit="img") as bar:
            for start in range(done, len(items), batch_size):
                batch = items[start:start + batch_size]
                captions = captioner([item.load() for item in batch], [subjects[item.label] for item in batch])
                f.write("".join(caption_line(paths[start + i], classes[item.label], text, config["captioner"])
                                for i, (item, text) in enumerate(zip(batch, captions))).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
    os.replace(partial, args.out)
    sidecar.unlink()
    print(f"caption: {len(items)} images by {config['captioner']} → {args.out}")


if __name__ == "__main__":
    cli.run(main)
