"""The fuzz harness's machinery: run a stage's main (or a reader) in this process through cli.run, and make
damaged variants of a file.

A stage started with `python -m` costs ~3 s of imports; in-process it costs what its reading does, so a few
hundred damaged inputs fit in CI. cli.run is the same path a stage's `__main__` takes: a PipelineError
becomes `error: <Kind>: ...` and SystemExit(2); anything else escapes as the traceback a user would see.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from stages.pipeline import cli


@dataclass
class Outcome:
    code: int | str  # exit status, or "traceback"
    stdout: str
    stderr: str


def run_inprocess(main: Callable[[], None], argv: list[str] = (), cwd: Path | None = None) -> Outcome:
    """`main` as `python -m stages.<x> argv...` would run it from `cwd`, without a new interpreter."""
    saved = sys.argv, os.getcwd(), signal.getsignal(signal.SIGTERM), os.environ.copy()
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["stage", *argv]
    os.environ.update({"DDPIPE_THREADS": "1", "TQDM_DISABLE": "1", "DDPIPE_RUN_LOG": os.devnull})
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.run(main)
                code: int | str = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # noqa: BLE001 - what the user would see as a traceback
                code = "traceback"
                err.write(traceback.format_exc())
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        signal.signal(signal.SIGTERM, saved[2])
        os.environ.clear()
        os.environ.update(saved[3])
    return Outcome(code, out.getvalue(), err.getvalue())


def tree_digest(path: Path) -> str:
    """Every file under `path` (or the file), names and bytes: equal digests = equal outputs."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        h.update(file.relative_to(path.parent).as_posix().encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def leftovers(out: Path) -> list[str]:
    """The output, or a temp file or folder beside it, that a refused run left behind."""
    out = Path(out)
    found = [out.name] if out.exists() else []
    if out.parent.exists():
        found += sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp"))
    return found


def judge(outcome: Outcome, damaged: str, ok: Callable[[], bool], out: Path | None = None) -> str | None:
    """None when the case ended well: exit 2 with one `error:` line naming the damaged file and nothing left
    behind, or exit 0 with `ok()` (the output equals the undamaged run's). Else what went wrong."""
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    if outcome.code == 2:
        if len(errors) != 1:
            return f"exit 2 with {len(errors)} error lines: {outcome.stderr[-400:]}"
        if damaged not in errors[0]:
            return f"error line does not name {damaged!r}: {errors[0]}"
        if out is not None and leftovers(out):
            return f"left behind: {leftovers(out)}"
        return None
    if outcome.code == 0:
        return None if ok() else "exit 0 with another output than the undamaged input gives"
    return f"exit {outcome.code}: {outcome.stderr[-1200:]}"


# --- damaged variants ----------------------------------------------------------------------------------------

def byte_damage(data: bytes) -> dict[str, bytes]:
    """Truncations, a non-UTF-8 byte, a NUL, a flipped byte, emptiness and a huge tail."""
    n = len(data)
    cases = {f"truncated-{k}of8": data[:n * k // 8] for k in (0, 1, 3, 5, 7)}
    cases["truncated-1byte"] = data[:-1] if not data.endswith(b"\n") else data[:-2] + b"\n"
    cases["non-utf8"] = data[:n // 2] + b"\xff\xfe\xc3" + data[n // 2:]
    cases["nul-byte"] = data[:n // 3] + b"\0" + data[n // 3:]
    cases["flipped-byte"] = data[:n // 2] + bytes([data[n // 2] ^ 0x55]) + data[n // 2 + 1:] if n else b"x"
    cases["garbage"] = bytes(range(256)) * 4
    return cases


WRONG = {"string": "x", "null": None, "list": [], "object": {}, "negative": -1, "huge": 10 ** 30,
         "bool": True, "float": 1e308}


def json_damage(obj, depth: int = 1) -> dict[str, bytes]:
    """For a JSON object: each key missing, each value of each wrong type, NaN and Infinity in place of each
    value, an extra key, a duplicated key; for a list value: an entry duplicated, emptied. Nested objects get
    the same one level down (`depth`)."""
    cases: dict[str, bytes] = {}

    def dump(value) -> bytes:
        return json.dumps(value, indent=2, allow_nan=True).encode()

    def walk(node, prefix: tuple, level: int):
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            name = "/".join((*prefix, key))

            def put(new, how, key=key):
                cases[f"{name}:{how}"] = dump(replace(obj, (*prefix, key), new))

            cases[f"{name}:missing"] = dump(replace(obj, (*prefix, key), _DELETE))
            for how, wrong in WRONG.items():
                if wrong != value and type(wrong) is not type(value):
                    put(wrong, how)
            put(float("nan"), "nan")
            put(float("inf"), "inf")
            if isinstance(value, list) and value:
                put(value + value[:1], "duplicate-entry")
                put([], "empty")
            if isinstance(value, dict) and level < depth:
                walk(value, (*prefix, key), level + 1)
        cases[f"{'/'.join(prefix) or 'top'}:extra-key"] = dump(replace(obj, (*prefix, "zz_unknown"), 1))

    walk(obj, (), 0)
    if isinstance(obj, dict) and obj:
        text = dump(obj)
        first = next(iter(obj))
        cases["duplicate-key"] = text[:-1].rstrip() + b',\n  ' + json.dumps(first).encode() + b": " + \
            json.dumps(WRONG["string"]).encode() + b"\n}"
    if isinstance(obj, list) and obj:
        cases["duplicate-entry"] = dump(obj + obj[:1])
        cases["wrong-entry"] = dump([*obj[:-1], 7])
        cases["empty-list"] = dump([])
    cases["not-an-object"] = dump("just a string")
    return cases


_DELETE = object()


def replace(obj, path: tuple, value):
    """A deep copy of `obj` with the key at `path` set to `value` (or deleted)."""
    import copy

    new = copy.deepcopy(obj)
    node = new
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return new


# --- valid files for tests that need a prepared dataset without preparing one --------------------------------

def data_meta(data_dir: Path, train_counts: dict[str, int]) -> Path:
    """classes.json and a meta.json as `prepare` writes them, for the classes and train counts given."""
    from stages.pipeline.outputs import sha256_file, write_json

    data_dir.mkdir(parents=True, exist_ok=True)
    classes = list(train_counts)
    write_json(data_dir / "classes.json", classes)
    write_json(data_dir / "meta.json", {
        "dataset": "digits", "image_size": 16, "classes": classes,
        "classes_sha256": sha256_file(data_dir / "classes.json"), "train_counts": train_counts,
        "val_counts": dict.fromkeys(classes, 1), "mean": [0.5] * 3, "std": [0.25] * 3,
        "skipped": {"count": 0, "files": []}, "ignored": {"count": 0, "files": []}})
    return data_dir / "meta.json"


# The stage-run kinds cost ~0.2-0.7 s a case: CI runs a fixed share of them, the slow run all.
FULL = pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow, id="all")])


def share(cases: dict, every: int, full: bool) -> dict:
    """All cases (the slow run), or every `every`-th in their fixed order (CI)."""
    if full or every <= 1:
        return cases
    return {k: v for i, (k, v) in enumerate(cases.items()) if i % every == 0}


def report(kind: str, results: dict[str, str | None], started: float) -> None:
    failed = {k: v for k, v in results.items() if v is not None}
    line = f"{kind}: {len(results)} cases, {len(results) - len(failed)} ok, {time.perf_counter() - started:.1f} s"
    if os.environ.get("DDPIPE_FUZZ_LOG"):
        with open(os.environ["DDPIPE_FUZZ_LOG"], "a") as f:
            f.write(line + "\n")
    print(line)
    assert not failed, "\n".join(f"{k}: {v}" for k, v in list(failed.items())[:15])
