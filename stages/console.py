"""ddpipe: the commands a user runs by hand. Each is an existing module's own command line (the same arguments
and --help as `python -m <module>`); dvc.yaml keeps calling the modules with `python -m`.

    ddpipe <command> [arguments]    ddpipe <command> --help
"""
from __future__ import annotations

import importlib
import sys

# command: (the module whose main it runs, one line for `ddpipe --help`); a module is imported only when run
COMMANDS = {
    "verify": ("stages.verify", "check a distilled set: its card, files against SHA256SUMS, class order, images"),
    "import": ("stages.import_set", "bring an external set (params.yaml `external`) in as a ddpipe set"),
    "export": ("stages.export_hub", "write a set as a Hugging Face dataset folder (and upload it with --repo-id)"),
    "preset": ("stages.preset", "merge a paper setting from presets/ into params.yaml (--list lists them)"),
    "report": ("stages.report", "the results table, plots and grids from evaluate's metrics"),
    "params": ("stages.show_params", "print the validated, effective params (--section NAME: one section)"),
    "dvc-yaml": ("stages.layout.dvc_yaml", "check (--check) or rewrite (--write) dvc.yaml's generated parts"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join([__doc__.strip(), "", "commands:", *lines])


def run(argv: list[str]) -> None:
    """Run `argv[0]`'s module main with the rest as its arguments (its errors: one line, exit 2)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    from stages.pipeline import cli
    from stages.pipeline.errors import ParamsError

    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        cli.report(ParamsError(f"ddpipe: unknown command {command!r} (one of: {', '.join(COMMANDS)})"))
    module = importlib.import_module(COMMANDS[command][0])
    cli.PROG = f"ddpipe {command}"
    sys.argv = [cli.PROG, *args]
    cli.run(module.main, threads="torch" in sys.modules)  # a module that computes with torch imports it


def main() -> None:
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
