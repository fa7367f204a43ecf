"""captions.jsonl: one line per train image, {"path", "class", "caption", "captioner"}.

`path` is relative to the train folder ("<class>/<file>"), in the train folder's order.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from stages.pipeline.errors import DataError

FIELDS = ("path", "class", "caption", "captioner")


def caption_line(path: str, class_name: str, caption: str, captioner: str) -> str:
    return json.dumps({"path": path, "class": class_name, "caption": caption, "captioner": captioner},
                      ensure_ascii=False) + "\n"


def parse_line(text: str, where: str) -> dict:
    """One JSONL line → its record; a malformed line names file and line number."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        raise DataError(f"{where}: expected exactly the keys {list(FIELDS)}")
    if not all(isinstance(record[k], str) for k in FIELDS):
        raise DataError(f"{where}: every value must be a string")
    ref = PurePosixPath(record["path"])
    if ref.is_absolute() or ".." in ref.parts or len(ref.parts) != 2:
        raise DataError(f"{where}: path = {record['path']!r}: must be '<class>/<file>' inside the train folder")
    if ref.parts[0] != record["class"]:
        raise DataError(f"{where}: path = {record['path']!r} is not in class folder {record['class']!r}")
    return record


def read_captions(path: str | Path, expected_paths: list[str]) -> dict[str, str]:
    """{train path: caption}, checked: no malformed or duplicate line, every train image captioned, no extras."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: missing; run the caption stage first (dvc repro caption)")
    captions: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            record = parse_line(text, f"{path}:{number}")
            if record["path"] in captions:
                raise DataError(f"{path}:{number}: duplicate caption for {record['path']!r}")
            captions[record["path"]] = record["caption"]
    expected = set(expected_paths)
    extra = sorted(set(captions) - expected)
    if extra:
        raise DataError(f"{path}: caption for {extra[0]!r}, which is not a train image ({len(extra)} such lines)")
    missing = [p for p in expected_paths if p not in captions]
    if missing:
        raise DataError(f"{path}: no caption for train image {missing[0]!r} ({len(missing)} missing)")
    return captions
