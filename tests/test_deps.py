"""dvc.yaml deps name the code each stage runs: its module and the `stages` modules it imports, transitively
(read with ast), as files, or as a package folder when the stage runs every module in it. So an edit reruns
only the stages whose code it touched: a comment in stages/delt reruns `select`, one in the training loop the
teachers, relabel and evaluate. `python -m tests.test_deps` prints each stage's expected code deps."""
from __future__ import annotations

import re

import yaml

from tests.imports import ROOT, closure, module_file


def stage_bodies() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def stage_module(body: dict) -> str | None:
    found = re.search(r"-m (stages(?:\.\w+)+)", body["cmd"])
    return found.group(1) if found else None


def code_files(module: str) -> set[str]:
    """The files a stage module runs: every module of its import closure, and the data files beside them
    that their source names (e.g. clustering's stopword list)."""
    files = set()
    for name in closure(module):
        path = module_file(name)
        files.add(path.relative_to(ROOT).as_posix())
        text = path.read_text()
        files |= {p.relative_to(ROOT).as_posix() for p in path.parent.iterdir()
                  if p.is_file() and p.suffix not in (".py", ".pyc") and p.name in text}
    return files


def expected_deps(module: str) -> list[str]:
    """Files, folded into their package folder when the stage runs all of it (stages/ itself never folds)."""
    files, deps = code_files(module), set()
    for f in files:
        folder = (ROOT / f).parent
        if folder == ROOT / "stages":
            deps.add(f)
            continue
        members = {p.relative_to(ROOT).as_posix() for p in folder.iterdir()
                   if p.is_file() and p.suffix != ".pyc" and not p.name.startswith(".")}
        deps.add(folder.relative_to(ROOT).as_posix() if members <= files else f)
    return sorted(deps)


def declared_code(body: dict) -> list[str]:
    return sorted(d for d in body.get("deps", []) if d.startswith("stages/"))


def test_every_stage_depends_on_exactly_the_code_it_runs():
    wrong = {}
    for name, body in stage_bodies().items():
        module = stage_module(body)
        assert module, f"{name}: no `-m stages.<module>` in its cmd"
        declared, expected = set(declared_code(body)), set(expected_deps(module))
        if declared != expected:
            wrong[name] = f"missing {sorted(expected - declared)}, not run {sorted(declared - expected)}"
    assert not wrong, "dvc.yaml deps differ from the code the stages import (`python -m tests.test_deps " \
        "--write` rewrites them):\n" + "\n".join(f"{k}: {v}" for k, v in wrong.items())


def test_methods_stay_apart():
    """A method's package is a dep of its own stages only; the training loop of the teacher and the evaluates."""
    runs = {name: declared_code(b) for name, b in stage_bodies().items()}

    def users(path: str) -> set[str]:
        return {s for s, deps in runs.items() if any(path == d or path.startswith(d + "/") for d in deps)}

    assert users("stages/delt/selection.py") == {"select"}
    assert users("stages/podd/rat_bptt.py") == {"poster"}
    assert users("stages/training/loop.py") == {"teacher", "evaluate", "evaluate_external"}


def write() -> None:
    """Rewrite every stage's `stages/...` deps in dvc.yaml in place (the other lines stay as they are)."""
    bodies, lines, out, stage, in_stages, i = stage_bodies(), (ROOT / "dvc.yaml").read_text().split("\n"), [], None, \
        False, 0
    while i < len(lines):
        line = lines[i]
        in_stages = line.startswith("stages:") or (in_stages and not re.match(r"^\S", line))
        named = re.match(r"^  (\w+):\s*$", line)
        stage = named.group(1) if in_stages and named else stage
        dep = re.match(r"^(\s+)- stages/", line)
        if in_stages and dep:
            while i < len(lines) and re.match(r"^\s+- stages/", lines[i]):
                i += 1
            out += [f"{dep.group(1)}- {d}" for d in expected_deps(stage_module(bodies[stage]))]
            continue
        out.append(line)
        i += 1
    (ROOT / "dvc.yaml").write_text("\n".join(out))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        write()
    for name, body in stage_bodies().items():
        print(f"{name}:\n" + "".join(f"  - {d}\n" for d in expected_deps(stage_module(body))))
