"""Run a method's official code beside ddpipe on the same inputs and compare (docs/parity.md).

    python -m benchmarks.parity sre2l --reference /path/to/SRe2L --project /path/to/ddpipe-project --out parity/sre2l

--reference is a local checkout of the method's code (nothing is downloaded; the files the method needs are
copied into a temporary folder and adapted there, and the adaptations are printed). --project is a ddpipe
project whose data/<ds> and trained teachers are read (never written): they are copied into <out>/project,
where both sets are made, imported, relabelled and evaluated. Writes <out>/parity.json, parity.md,
curves.png, curves/{ddpipe,reference}.csv and logs/. An adaptation whose pattern is missing stops the run with
one `error: ReferenceChangedError: ...` line (exit 2).
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from pathlib import Path

import yaml

from stages.pipeline import cli
from stages.pipeline.errors import ParamsError

HERE = Path(__file__).parent
NOT_ADAPTERS = {"__init__", "__main__", "harness", "compare"}


def adapters() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in NOT_ADAPTERS)


def parse_set(items: list[str]) -> dict:
    """-S a.b=value (YAML value) → nested overrides."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"-S {item!r}: expected key.path=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=adapters())
    parser.add_argument("--reference", required=True, type=Path, help="a local checkout of the method's code")
    parser.add_argument("--project", required=True, type=Path, help="a ddpipe project with data and teachers "
                        "(read only)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the work project and the results")
    parser.add_argument("--reference-commit", help="the checkout's commit, where it is not a git work tree "
                        "(e.g. a `git archive` export)")
    parser.add_argument("--params", type=Path, help="params.yaml to start from (default: the project's)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        help="override a param, e.g. -S ipc=1 (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both sides (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="unlogged timing runs of each side (the fastest "
                        "counts; default 1; 0: only the logged runs are timed, no same-bytes check of ddpipe)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip relabel/evaluate of both sets")
    args = parser.parse_args()
    module = importlib.import_module(f"benchmarks.parity.{args.method}")
    from benchmarks.parity.compare import run

    command = "python -m benchmarks.parity " + shlex.join(sys.argv[1:])
    result = run(module, args.reference.resolve(), args.project.resolve(), args.out.resolve(),
                 args.params.resolve() if args.params else None, parse_set(args.overrides), args.threads,
                 not args.no_evaluate, command, args.reference_commit, args.repeats)
    t = result["time_memory"]
    unlogged = f", wall {t['unlogged']['ratio']} (unlogged)" if "unlogged" in t else ""
    print(f"parity {args.method}: ddpipe/reference wall {t['logged']['ratio']}, CPU {t['logged']['cpu_ratio']} "
          f"(logged){unlogged}; peak RSS {t['peak_rss_mib']['ratio']}; ddpipe logging same bytes: "
          f"{result['ddpipe_logging_same_bytes']}")
    for protocol, r in result.get("evaluation", {}).get("protocols", {}).items():
        print(f"  {protocol}: ddpipe {r['ddpipe'][0]} ± {r['ddpipe'][1]}, reference {r['reference'][0]} ± "
              f"{r['reference'][1]} (difference {r['difference']:+})")
    print(f"→ {args.out / 'parity.md'}")


if __name__ == "__main__":
    cli.run(main)
