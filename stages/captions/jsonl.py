"""The captions folder: captions.jsonl, one line per train image, {"path", "class", "caption", "captioner"},
and its content record SHA256SUMS.

`path` is relative to the train folder ("<class>/<file>"), in the train folder's order. The folder is an input
artifact (made here or fetched): every fault names the file and line (ArtifactError), and once the lines check
out, the record refuses a file changed since the caption stage wrote it.
"""
from __future__ import annotations

import json
from pathlib import Path

from stages.pipeline.artifacts import SUMS, verify_record, write_record
from stages.pipeline.paths import relative
from stages.pipeline.errors import ArtifactError

FIELDS = ("path", "class", "caption", "captioner")
FILE = "captions.jsonl"  # inside the captions folder, beside its SHA256SUMS
HINT = "run the caption stage first (dvc repro caption)"


def caption_line(path: str, class_name: str, caption: str, captioner: str) -> str:
    return json.dumps({"path": path, "class": class_name, "caption": caption, "captioner": captioner},
                      ensure_ascii=False) + "\n"


def parse_line(text: str, where: str) -> dict:
    """One JSONL line → its record; a malformed line names file and line number."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ArtifactError(f"{where}: expected exactly the keys {list(FIELDS)}, found {found}")
    if not all(isinstance(record[k], str) for k in FIELDS):
        raise ArtifactError(f"{where}: every value must be a string")
    ref = relative(record["path"], where)
    if len(ref.parts) != 2:
        raise ArtifactError(f"{where}: path {record['path']!r}: must be '<class>/<file>' inside the train folder")
    if ref.parts[0] != record["class"]:
        raise ArtifactError(f"{where}: path {record['path']!r} is not in class folder {record['class']!r}")
    return record


def record_captions(folder: Path) -> None:
    """The captions folder's content record (SHA256SUMS over captions.jsonl), which read_captions checks."""
    write_record(folder, [FILE])


def read_captions(folder: str | Path, expected_paths: list[str]) -> dict[str, str]:
    """{train path: caption} from a captions folder, checked: no malformed or duplicate line, every train
    image captioned, no extras; then the folder's record (as for every recorded kind: a broken line is reported
    by what is wrong with it, a valid file changed since the caption stage wrote it by the record)."""
    folder = Path(folder)
    path = folder / FILE
    if folder.is_file():  # captions were one file before they had a record
        raise ArtifactError(f"{folder}: a file; captions are a folder ({FILE} + {SUMS}): {HINT}")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {HINT}")
    captions: dict[str, str] = {}
    line_of: dict[str, int] = {}
    expected = set(expected_paths)
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArtifactError(f"{path}:{number}: not UTF-8 ({e.reason} at byte {e.start})") from None
        record = parse_line(text, f"{path}:{number}")
        if record["path"] in captions:
            raise ArtifactError(f"{path}:{number}: duplicate caption for {record['path']!r} "
                                f"(first at line {line_of[record['path']]})")
        if record["path"] not in expected:
            raise ArtifactError(f"{path}:{number}: caption for {record['path']!r}, which is not a train image")
        captions[record["path"]], line_of[record["path"]] = record["caption"], number
    missing = [p for p in expected_paths if p not in captions]
    if missing:
        raise ArtifactError(f"{path}: no caption for train image {missing[0]!r} ({len(missing)} missing)")
    if FILE not in verify_record(folder, "the captions folder"):  # last: lines that parse but were changed
        raise ArtifactError(f"{folder / SUMS}: does not list {FILE}; {HINT}")
    return captions
