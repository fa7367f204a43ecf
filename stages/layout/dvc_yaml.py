"""dvc.yaml's generated parts: each stage's code deps, and the sets relabel and evaluate grade.

Code deps are kept at package granularity: a stage depends on its own module (a top-level stage module) or
method package, and on every shared package its module imports, transitively (read with ast, nothing is
imported): `stages/pipeline`, `stages/data`, ... as folders. A shared stage that methods plug into through
their recipes (recover, prototypes, synthesize) depends on `stages/methods/${key}` (its foreach key) and on
what those recipes import, another method's package included (EDC's recipe imports RDED's selection). So an
edit reruns the stages whose code it touched, and a D4M edit never reruns a teacher. The evaluated sets are
the registry's (stages/methods): one entry per set, in its order, in relabel/evaluate's foreach and in the
student curves plots.

The top-level `artifacts:` section names what `dvc artifacts get <repo> <name>` fetches: a model per teacher in
params.yaml's teacher.archs (`teacher-<arch>`) and a dataset per distilled set the registry declares (`<set>`;
not `full`, which is a reference to data/<ds>). DVC interpolates params in an artifact's path, so the paths
carry ${dataset}, ${ipc} and ${podd.ipc} and follow those params by themselves; DVC has no foreach there, so
the list of names is written here and needs `--write` after a change to teacher.archs or the registry.

    ddpipe dvc-yaml --check     exit 1 and list what differs (tests run this)
    ddpipe dvc-yaml --write     rewrite those parts of dvc.yaml in place; every other line stays
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from stages import methods
from stages.layout.import_graph import ROOT, closure, module_file

DVC_YAML = ROOT / "dvc.yaml"
PARAMS_YAML = ROOT / "params.yaml"
METHOD_KEY = {"foreach-dict": "${key}", "foreach-list": "${item}"}


def stage_bodies(path: Path = DVC_YAML) -> dict[str, dict]:
    stages = yaml.safe_load(path.read_text())["stages"]
    return dict(stages)


def stage_module(body: dict) -> str | None:
    found = re.search(r"-m (stages(?:\.\w+)+)", body.get("do", body)["cmd"])
    return found.group(1) if found else None


def unit(module: str) -> str:
    """The dep a module is part of: a top-level module's file, a package's folder, a method package's folder."""
    path = module_file(module).relative_to(ROOT)
    parts = path.parts
    if len(parts) == 2 or (parts[1] == "methods" and len(parts) == 3):  # stages/x.py, stages/methods/__init__.py
        return path.as_posix()
    return "/".join(parts[:3] if parts[1] == "methods" else parts[:2])


def runs(module: str) -> set[str]:
    """`module`, the packages `python -m` imports first, and everything they import, transitively."""
    parts = module.split(".")
    return set().union(*(closure(".".join(parts[:i])) for i in range(2, len(parts) + 1)))


def code_deps(body: dict) -> list[str]:
    """The code deps a stage's module implies (its foreach key standing for a method where methods plug in)."""
    module = stage_module(body)
    deps = {unit(m) for m in runs(module)}
    role = module.rsplit(".", 1)[-1]
    joined = [m for m in methods.methods() if role in m.shared_stages]
    if joined:  # a shared stage: each method's recipe, its package standing as the foreach key
        for m in joined:
            deps |= {unit(r) for r in runs(f"stages.methods.{m.name}.recipe")}
        # each joined method's own package stands as the foreach key; another method's package a recipe imports
        # (EDC's RDED starts) stays a dep of every item, so its edits rerun the stage
        deps -= {f"stages/methods/{m.name}" for m in joined}
        foreach = body.get("foreach")
        deps.add(f"stages/methods/{METHOD_KEY['foreach-dict' if isinstance(foreach, dict) else 'foreach-list']}")
    return sorted(deps)


def declared(body: dict) -> list[str]:
    return sorted(d for d in (body.get("do", body).get("deps") or []) if d.startswith("stages/"))


def evaluated_foreach() -> dict[str, dict[str, str]]:
    """relabel/evaluate's foreach as the registry has it: set name → {dir, epochs}."""
    return {s.name: {"dir": s.budget, "epochs": s.epochs} for s in methods.evaluated_sets()}


CURVE = re.compile(r"^(\s+)artifacts/\$\{dataset\}/[^/\s]+/curves/[\w.-]+\.csv: (\w+)\s*$")


def curve_files() -> list[str]:
    """The student curves evaluate writes, one per registered set (the student_curves plots' y keys)."""
    return [f"artifacts/${{dataset}}/{s.budget}/curves/{s.name}.csv" for s in methods.evaluated_sets()]


def student_plots(path: Path = DVC_YAML) -> dict[str, list[str]]:
    plots = yaml.safe_load(path.read_text()).get("plots") or []
    return {name: list(spec["y"]) for entry in plots if isinstance(entry, dict) for name, spec in entry.items()
            if isinstance(spec, dict) and spec.get("template") == "student_curves"}


def artifact_name(text: str) -> str:
    """`text` as a DVC artifact name (letters, digits, -, _, /; a letter or digit at each end)."""
    return re.sub(r"[^A-Za-z0-9_/-]", "-", text).strip("-_/")


def artifacts(params_path: Path = PARAMS_YAML) -> dict[str, dict]:
    """dvc.yaml's `artifacts:` as the teachers (teacher.archs) and the registry's distilled sets make it."""
    archs = yaml.safe_load(params_path.read_text())["teacher"]["archs"]
    found = {f"teacher-{artifact_name(arch)}": {
        "path": f"artifacts/${{dataset}}/teachers/{arch}", "type": "model",
        "desc": f"teacher@{arch}: the {arch} teacher's weights (model.safetensors, meta.json) and metrics",
        "labels": ["teacher", artifact_name(arch)]} for arch in archs}
    owner = {s.name: m for m in methods.methods() for s in m.sets}
    for s in methods.evaluated_sets():
        if s.role != "upper_bound":  # the full train set's folder is a card pointing at data/<ds>
            m, kind = owner[s.name], "distilled" if s.role == "method" else s.role
            found[artifact_name(s.name)] = {
                "path": f"artifacts/${{dataset}}/{s.budget}/distilled/{s.name}", "type": "dataset",
                "desc": f"{s.name} ({kind} set): {s.summary or m.summary}",
                "labels": list(dict.fromkeys([m.name, s.name, kind]))}
    return found


def artifacts_lines(params_path: Path = PARAMS_YAML) -> list[str]:
    lines = ["artifacts:"]
    for name, a in artifacts(params_path).items():
        lines += [f"  {name}:", f"    path: {a['path']}", f"    type: {a['type']}",
                  f"    desc: {json.dumps(a['desc'], ensure_ascii=False)}", f"    labels: [{', '.join(a['labels'])}]"]
    return lines


ARTIFACTS_HEADER = """\
# Named outputs: `dvc artifacts get <repo> <name>` fetches one (a version registered as a git tag, e.g.
# `git tag -a delt@v1.0.0 -m ...`; docs/sharing-and-scale-out.md). Written by `ddpipe dvc-yaml --write` from
# teacher.archs and the method registry; the paths follow dataset, ipc and podd.ipc by themselves."""


def differences(path: Path = DVC_YAML, params_path: Path = PARAMS_YAML) -> list[str]:
    bodies, wrong = stage_bodies(path), []
    for name, files in student_plots(path).items():
        if files != curve_files():
            wrong.append(f"plot {name!r}: draws {files}, the method registry's sets {curve_files()}")
    for name, body in bodies.items():
        if stage_module(body) is None:
            wrong.append(f"{name}: no `-m stages.<module>` in its cmd")
            continue
        have, want = set(declared(body)), set(code_deps(body))
        if have != want:
            wrong.append(f"{name}: code deps missing {sorted(want - have)}, not run {sorted(have - want)}")
    for name in ("relabel", "evaluate"):
        have = bodies.get(name, {}).get("foreach")
        if have != evaluated_foreach():
            wrong.append(f"{name}: foreach lists {list(have or {})}, the method registry {list(evaluated_foreach())}"
                         " (dir and epochs as the registry's sets)")
    have, want = yaml.safe_load(path.read_text()).get("artifacts") or {}, artifacts(params_path)
    if have != want:
        changed = [n for n in want if n in have and have[n] != want[n]]
        missing, extra = [n for n in want if n not in have], [n for n in have if n not in want]
        wrong.append(f"artifacts: missing {missing}, not made {extra}, changed {changed} (from teacher.archs and "
                     "the method registry)")
    return wrong


def write(path: Path = DVC_YAML, params_path: Path = PARAMS_YAML) -> None:
    """Rewrite every stage's `stages/...` deps, relabel's foreach (evaluate aliases it), the student curves
    plots' files and `artifacts:` in place (a missing `artifacts:` goes at the end); a stage
    whose deps list has no `stages/...` entry yet (a new method's block) gets them at the end of the list."""
    bodies, lines, out, stage, i = stage_bodies(path), path.read_text().split("\n"), [], None, 0
    in_stages = False
    while i < len(lines):
        line = lines[i]
        in_stages = line.startswith("stages:") or (in_stages and not re.match(r"^\S", line))
        named = re.match(r"^  (\w+):\s*$", line)
        stage = named.group(1) if in_stages and named else stage
        listed = re.match(r"^\s+deps:\s*(#.*)?$", line)
        if in_stages and listed:  # a new stage's deps list without code deps yet: they go at its end
            end = i + 1
            while end < len(lines) and re.match(r"^\s+- ", lines[end]):
                end += 1
            items = lines[i + 1:end]
            indent = re.match(r"^(\s+)- ", items[0]).group(1) if items else None
            if indent and not any(re.match(r"^\s+- stages/", item) for item in items):
                out += [line, *items, *(f"{indent}- {d}" for d in code_deps(bodies[stage]))]
                i = end
                continue
        dep = re.match(r"^(\s+)- stages/", line)
        if in_stages and dep:
            while i < len(lines) and re.match(r"^\s+- stages/", lines[i]):
                i += 1
            out += [f"{dep.group(1)}- {d}" for d in code_deps(bodies[stage])]
            continue
        curve = CURVE.match(line)
        if curve:
            while i < len(lines) and CURVE.match(lines[i]):
                i += 1
            out += [f"{curve.group(1)}{f}: {curve.group(2)}" for f in curve_files()]
            continue
        sets = re.match(r"^(\s+)foreach: &evaluated_sets", line)
        if in_stages and sets:
            out.append(line)
            i += 1
            while i < len(lines) and re.match(r"^\s+[\w.-]+: \{dir: ", lines[i]):
                i += 1
            out += [f'{sets.group(1)}  {n}: {{dir: "{v["dir"]}", epochs: "{v["epochs"]}"}}'
                    for n, v in evaluated_foreach().items()]
            continue
        if line.startswith("artifacts:"):
            i += 1
            while i < len(lines) and re.match(r"^\s+\S", lines[i]):
                i += 1
            out += artifacts_lines(params_path)
            continue
        out.append(line)
        i += 1
    if not any(line.startswith("artifacts:") for line in out):  # at the end: `stages:` stays before `plots:`
        while out and not out[-1].strip():
            out.pop()
        out += ["", *ARTIFACTS_HEADER.split("\n"), *artifacts_lines(params_path), ""]
    path.write_text("\n".join(out))


def run(check: bool, write_file: bool) -> list[str]:
    if write_file:
        write()
    wrong = differences()
    for line in wrong:
        print(line)
    if not wrong:
        print("dvc.yaml: code deps, evaluated sets and artifacts match the code, the method registry and params.yaml")
    return wrong


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="ddpipe dvc-yaml", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="list what differs; exit 1 if anything does (default)")
    action.add_argument("--write", action="store_true", help="rewrite the generated parts of dvc.yaml in place")
    args = parser.parse_args()
    raise SystemExit(1 if run(check=not args.write, write_file=args.write) else 0)


if __name__ == "__main__":
    main()
