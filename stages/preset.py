"""Apply a paper setting: `python -m stages.preset NAME` merges presets/NAME.yaml into params.yaml.

Comments in params.yaml are kept; a key the preset sets takes the preset's comment (where the value comes
from). Nested block mappings merge key by key; a flow mapping or a list in the preset (`{type: file, ...}`,
`[a, b]`) replaces the value whole. The merged params are validated before anything is written, and the
change is printed as a diff. A preset must set every key of REQUIRED (and models.<arch> for each arch it
uses), so a digits value never survives silently where the papers have one; `--list` lists the presets.
"""
from __future__ import annotations

import difflib
import io
import sys
import tempfile
from pathlib import Path

from stages.pipeline import cli
from stages.pipeline.errors import ParamsError

PRESETS = Path(__file__).resolve().parents[1] / "presets"

# The knobs every preset decides (the list: resolution, teacher source and arch, iterations, batch,
# epochs, temperature, crop scale, IPC), for the SRe2L family it configures.
REQUIRED = (
    "dataset", "ipc", "prepare.image_size", "prepare.root", "prepare.classes",
    "teacher.archs", "teacher.source",
    "evaluate.students", "evaluate.teacher", "evaluate.epochs", "evaluate.batch_size", "evaluate.optimizer",
    "evaluate.lr", "evaluate.weight_decay", "evaluate.temperature", "evaluate.crop_scale", "evaluate.flip",
    "evaluate.mix", "evaluate.mix_alpha", "rded.observer", "rded.factor",
    "sre2l.teacher", "delt.ranker", "delt.teacher", "delt.round_iterations", "infer.teachers",
)
# The recover engine's knobs every preset decides for each method on the engine: in the method's own `recover`
# overrides, or once in the shared `recover` block.
RECOVER_KNOBS = ("iterations", "lr", "r_bn", "jitter", "crop_min_scale", "crop_schedule", "flip", "ipc_per_batch")
# A teacher trained here (source `train`) also needs the papers' squeeze recipe.
REQUIRED_TRAIN = tuple(f"teacher.{k}" for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                                                  "crop_scale", "flip"))


def yaml_rt():
    from ruamel.yaml import YAML

    y = YAML()  # round-trip: comments, order and flow style kept
    y.width = 4096
    y.preserve_quotes = True
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def lookup(tree, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def missing_keys(preset) -> list[str]:
    from stages import methods

    absent = [k for k in REQUIRED if not lookup(preset, k)[0]]
    absent += [f"{m.name}.recover.{k}" for m in methods.methods() if "recover" in m.shared_stages and m.engine_knobs
               for k in RECOVER_KNOBS
               if not (lookup(preset, f"{m.name}.recover.{k}")[0] or lookup(preset, f"recover.{k}")[0])]
    absent += [k for m in methods.methods() for k in m.preset_keys if not lookup(preset, k)[0]]
    _, archs = lookup(preset, "teacher.archs")
    _, sources = lookup(preset, "teacher.source")
    _, students = lookup(preset, "evaluate.students")
    for arch in [*(archs or []), *(students or [])]:
        if not lookup(preset, f"models.{arch}")[0]:
            absent.append(f"models.{arch}")
    if isinstance(sources, dict) and any(sources.get(a) == "train" for a in archs or []):
        absent += [k for k in REQUIRED_TRAIN if not lookup(preset, k)[0]]
    return absent


def is_whole(value) -> bool:
    """Replaced whole rather than merged: a scalar, a list, or a mapping written in flow style."""
    from ruamel.yaml.comments import CommentedMap

    return not isinstance(value, CommentedMap) or value.fa.flow_style()


def merge(target, preset) -> None:
    for key, value in preset.items():
        # blank lines that end a section stay at its end: those after this key's old comment, or (a new
        # last key) those after the last key's
        gap = trailing_blank_lines(target, key) if key in target else blank_lines_after(target)
        if key in target and isinstance(target[key], dict) and not is_whole(value) and not is_whole(target[key]):
            merge(target[key], value)
        else:
            target[key] = value
        comment = preset.ca.items.get(key)
        if comment is not None and is_whole(value):
            if comment[2] is not None:
                comment[2].value = comment[2].value.rstrip("\n") + "\n" + gap
            target.ca.items[key] = comment


def trailing_blank_lines(target, key) -> str:
    token = (target.ca.items.get(key) or [None] * 3)[2]
    if token is None:
        return ""
    text = token.value.rstrip("\n")
    return token.value[len(text) + 1:]


def blank_lines_after(target) -> str:
    """Remove and return the blank lines after the last key's comment (a key appended goes above them)."""
    last = list(target)[-1] if len(target) else None
    token = (target.ca.items.get(last) or [None] * 3)[2] if last is not None else None
    if token is None or not token.value.endswith("\n\n"):
        return ""
    text = token.value.rstrip("\n")
    gap = token.value[len(text) + 1:]
    token.value = text + "\n"
    return gap


def load_preset(name: str):
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ParamsError(f"preset {name!r}: no {path} (presets: {known})")
    preset = yaml_rt().load(path.read_text())
    if not isinstance(preset, dict):
        raise ParamsError(f"{path}: expected a mapping of params keys")
    absent = missing_keys(preset)
    if absent:
        raise ParamsError(f"{path}: does not set {', '.join(absent)} (a preset decides every key of "
                          "stages/preset.py REQUIRED, so no digits value is kept silently)")
    return preset


def apply(name: str, params_path: Path = Path("params.yaml"), data_root: Path = Path("data"),
          overrides: dict | None = None) -> str:
    """Merge preset `name` (then `overrides`, a plain nested dict) into params_path; returns the diff."""
    from stages.pipeline import params

    y = yaml_rt()
    before = params_path.read_text()
    tree = y.load(before)
    merge(tree, load_preset(name))
    if overrides:
        merge(tree, y.load(io.StringIO(_dump_plain(overrides))))
    out = io.StringIO()
    y.dump(tree, out)
    after = out.getvalue()
    with tempfile.TemporaryDirectory() as tmp:  # validate before writing anything
        candidate = Path(tmp) / params_path.name
        candidate.write_text(after)
        try:
            params.load(candidate, data_root)
        except ParamsError as e:
            raise ParamsError(f"preset {name!r}: the merged params are not valid: "
                              f"{str(e).replace(str(candidate), str(params_path))}") from None
    params_path.write_text(after)
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                        f"a/{params_path}", f"b/{params_path}"))


def _dump_plain(tree: dict) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)


def run(name: str | None, params_path: Path = Path("params.yaml"), list_only: bool = False) -> str:
    """The preset command: merge presets/<name>.yaml into params_path, or (no name, or list_only) list the
    presets with their first comment line. Prints and returns the diff, the note that nothing changed, or the list."""
    if list_only or not name:
        text = "".join(f"{path.stem:28s} {path.read_text().splitlines()[0].lstrip('# ')}\n"
                       for path in sorted(PRESETS.glob("*.yaml")))
    else:
        text = apply(name, params_path) or f"{params_path}: already at preset {name}\n"
    sys.stdout.write(text)
    return text


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("name", nargs="?", help="a preset in presets/ (without .yaml)")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    args = parser.parse_args()
    run(args.name, args.params, args.list)


if __name__ == "__main__":
    cli.run(main)
