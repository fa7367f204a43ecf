"""The effective params: params.yaml validated, with what sections inherit filled in (each method's `recover`
block is the shared `recover` block with its own overrides on top), as the stages see them.

    ddpipe params                   every section
    ddpipe params --section delt    one section
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from stages.pipeline import cli, params
from stages.pipeline.errors import ParamsError


def run(path: Path = Path("params.yaml"), section: str | None = None) -> str:
    """The validated params (or one top-level section of them) as YAML, in params.yaml's order."""
    values = params.load(path).model_dump(mode="json")
    if section is not None:
        if section not in values:
            raise ParamsError(f"{path}: no section {section!r} (there are: {', '.join(values)})")
        values = {section: values[section]}
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=120)


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", help="print only this top-level key (e.g. delt, recover, evaluate)")
    parser.add_argument("--params", default="params.yaml", type=Path, help="the params file (default params.yaml)")
    args = parser.parse_args()
    print(run(args.params, args.section), end="")


if __name__ == "__main__":
    cli.run(main, threads=False)
