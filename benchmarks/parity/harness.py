"""The parity harness: a method's official code run beside ddpipe on the same inputs (docs/parity.md).

Reference code is never copied into the project: the user names a local checkout at run time, the harness copies
the files a method needs into a temporary folder, applies the method's short DECLARED list of mechanical
adaptations (device strings, class count, normalisation, image size, paths, ddpipe's teacher), prints that list,
runs the reference there with wall time and peak memory measured, and parses its loss lines. An adaptation whose
pattern is not found stops the run with one `error: ReferenceChangedError: ...` line naming the file and the
pattern (exit 2): the reference changed and the adapter must be looked at, never silently skipped.

The method-independent pieces live here; a method is one adapter module beside this one (sre2l.py), see
`compare.py` for the flow every adapter goes through.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.pipeline.errors import ParamsError, PipelineError

REPO = Path(__file__).resolve().parents[2]  # the ddpipe code being compared (this checkout)


class ReferenceChangedError(PipelineError):
    """The reference checkout lacks a file or an adaptation's pattern: the reference changed, update the adapter."""


class RunError(PipelineError):
    """A command the harness ran (the reference, or a ddpipe stage) exited non-zero."""


@dataclass(frozen=True)
class Adaptation:
    """One mechanical change to a copied reference file: `pattern` (literal, or a regex with `regex=True`) becomes
    `replacement` (taken literally, no backslash escapes). `count` = how many matches are expected (0: one or
    more, all replaced). `why` is printed with every run."""
    file: str
    pattern: str
    replacement: str
    why: str
    regex: bool = False
    count: int = 0

    def describe(self) -> str:
        pattern = " ".join(self.pattern.split())
        replacement = " ".join(self.replacement.split())
        def short(s: str) -> str:
            return s if len(s) <= 70 else s[:67] + "..."

        kind = "regex" if self.regex else "literal"
        return f"{self.file}: {kind} {short(pattern)!r} -> {short(replacement)!r}  ({self.why})"


def copy_reference(checkout: Path, files: list[str], dest: Path) -> Path:
    """Copy `files` (relative to the checkout) into `dest`, keeping their relative paths; returns dest."""
    if not checkout.is_dir():
        raise ReferenceChangedError(f"--reference {checkout}: no such folder (a checkout of the reference code)")
    for rel in files:
        src = checkout / rel
        if not src.is_file():
            raise ReferenceChangedError(f"{checkout}: {rel}: not in the checkout (the reference changed, or the "
                                        "checkout is of another repository)")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return dest


def apply_adaptations(root: Path, adaptations: list[Adaptation]) -> list[str]:
    """Apply every adaptation to the copies under `root`, in order; returns the printed lines. A pattern not found
    (or found another number of times than declared) raises ReferenceChangedError before anything runs."""
    lines = []
    for i, a in enumerate(adaptations, 1):
        path = root / a.file
        if not path.is_file():
            raise ReferenceChangedError(f"{a.file}: adaptation {i} names a file that was not copied")
        text = path.read_text()
        found = len(re.findall(a.pattern, text)) if a.regex else text.count(a.pattern)
        if found == 0:
            raise ReferenceChangedError(f"{a.file}: adaptation {i} pattern {a.pattern!r} not found ({a.why}); "
                                        "the reference changed, update the adapter")
        if a.count and found != a.count:
            raise ReferenceChangedError(f"{a.file}: adaptation {i} pattern {a.pattern!r} found {found} times, "
                                        f"expected {a.count} ({a.why}); the reference changed, update the adapter")
        text = re.sub(a.pattern, lambda _m: a.replacement, text) if a.regex else text.replace(a.pattern, a.replacement)
        path.write_text(text)
        lines.append(f"  {i:2d}. {a.describe()} [{found}x]")
    return lines


def write_shims(root: Path, shims: dict[str, str]) -> list[str]:
    """Extra files the adaptations call (e.g. the module that loads ddpipe's teacher); returns printed lines."""
    lines = []
    for rel, text in shims.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        first = next((line.strip('"# ') for line in text.splitlines() if line.strip()), "")
        lines.append(f"  shim {rel}: {first}")
    return lines


def refuse_unexpressible(section: str, fixed: dict[str, tuple], reference: str = "the reference") -> None:
    """ddpipe knobs the reference has no flag for ({knob: (ddpipe's value, the reference's fixed behaviour)}) must
    be at its behaviour for the comparison: the first that is not is a ParamsError naming `section`.knob."""
    for knob, (ours, theirs) in fixed.items():
        if ours != theirs:
            raise ParamsError(f"{section}.{knob} = {ours!r}: {reference} has no such knob (it always runs as "
                              f"{theirs!r}); set it to {theirs!r} for the comparison")


@dataclass
class Measured:
    """A finished command: wall seconds, CPU seconds (user + system: less sensitive than wall time to other work on
    a shared machine), peak resident memory of the process (and its waited children) in MiB."""
    command: list[str]
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    log: Path
    output: str = field(repr=False, default="")
    load: tuple[float, float] = (0.0, 0.0)  # the machine's 1-minute load average at start and at exit


def run_measured(command: list[str], cwd: Path, log: Path, env: dict | None = None) -> Measured:
    """Run `command` to completion with stdout+stderr to `log`; wall time, and peak RSS from the kernel's
    accounting of that child (os.wait4's rusage: ru_maxrss in KiB on Linux, user + system CPU time).
    Exit != 0 raises RunError."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    with open(log, "w") as out:
        began = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "(no output)")
        raise RunError(f"{' '.join(map(str, command[:4]))} ... exited {proc.returncode} in {cwd}: {last} "
                       f"(log: {log})")
    return Measured([str(c) for c in command], seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, log,
                    text, (round(load, 2), round(os.getloadavg()[0], 2)))


def child_env(threads: int, extra_path: list[Path] = ()) -> dict:
    """The environment both sides run in: the same thread count, ddpipe's code (this checkout) importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), DDPIPE_THREADS=str(threads),
               TQDM_DISABLE="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), str(REPO), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


@dataclass(frozen=True)
class LossFormat:
    """How a reference prints its losses: `start` matches the line that opens one iteration's record (group 1:
    the iteration), `fields` maps a column to a regex whose group 1 is its value. A batch ends where the
    iteration count goes back (a new batch starts from iteration 0)."""
    start: str
    fields: dict[str, str]


def parse_losses(text: str, fmt: LossFormat) -> list[dict]:
    """One row per printed iteration: batch (0, 1, ... in print order), iteration, and every field found."""
    rows: list[dict] = []
    batch, last = -1, None
    start = re.compile(fmt.start)
    fields = {name: re.compile(pattern) for name, pattern in fmt.fields.items()}
    for line in text.splitlines():
        if m := start.search(line):
            t = int(m.group(1))
            if last is None or t <= last:
                batch += 1
            rows.append({"batch": batch, "iteration": t})
            last = t
            continue
        if rows:
            for name, pattern in fields.items():
                if name not in rows[-1] and (m := pattern.search(line)):
                    rows[-1][name] = float(m.group(1))
                    break
    return rows


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def collect_images(src: Path, pattern: str, classes: list[str], dest: Path) -> dict[str, int]:
    """The reference's images as an ImageFolder ddpipe's import reads: every file under `src` whose path
    (relative, '/'-separated) matches `pattern` (named groups `label`: the class index, `index`: the IPC index)
    is copied, bytes unchanged, to <dest>/<class name>/<index><suffix>. Returns images per class."""
    regex = re.compile(pattern)
    if dest.exists():
        shutil.rmtree(dest)
    counts = dict.fromkeys(classes, 0)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        m = regex.fullmatch(path.relative_to(src).as_posix())
        if not m:
            continue
        label = int(m["label"])
        if not 0 <= label < len(classes):
            raise RunError(f"{path}: class index {label} outside the {len(classes)} classes")
        target = dest / classes[label] / f"{int(m['index'])}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        counts[classes[label]] += 1
    if not sum(counts.values()):
        raise RunError(f"{src}: no image matches {pattern!r}: the reference wrote nothing the adapter recognises")
    return counts


def python() -> str:
    return sys.executable
