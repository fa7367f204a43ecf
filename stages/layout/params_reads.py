"""The params.yaml keys each dvc.yaml stage's code reads, found with ast (no stage code runs), against the
keys the stage lists in `params:`. A read key the stage does not list is a silent stale result: `dvc exp run
-S key=value` reruns nothing.

What a stage runs: the functions reachable from the top-level code of the modules its `python -m` module runs
(dvc_yaml.runs: its imports, transitively, and its packages), plus, in a shared stage (recover, prototypes,
synthesize), the recipes of the methods that join it. A name reaches the functions it resolves to through the
module's imports and defs; `obj.name` reaches every function or method of that name (recipes and properties are
duck-typed), so the reach is generous: a function that could run counts.

A read is an attribute chain on a params value, mapped to its longest prefix that is a params path
(`p.prepare.crops.bit_length()` → prepare.crops). Params values are: a name annotated `Params` or a section's
model (`cfg: Evaluate` → evaluate; a model at several paths, as `Img2Img` at d4m.synthesis and vlcp.synthesis,
reads as either: any one listed covers it), a class field or property so annotated (`self.p`, `ev.cfg`), a local
assigned one (`cfg = p.podd`) and a parameter a caller hands one to (`engine_config(section)`); a section handed
to anything else (a library) is read whole, one returned under its annotation where it is used.
`x.model_dump(include=/exclude=)` reads the fields it dumps; `name in p.external` reads that entry.
`getattr(p, method)` and `p.models[arch]` are dynamic: their key reads as `*` (`*.synthesis.steps`, `models.*`),
which only an ancestor or a templated entry at that place covers (`${item}.synthesis`, `models.${item}`). A
method's `recover` is the shared block with its overrides merged in: sre2l.recover.lr also reads recover.lr.

Not a stage's read: `params.load` itself. Every stage validates the whole file through it (the schema, each
package's `check` and `check_data`, ipc and class_names against the data); a bad value stops every stage and a
good one changes no output, so load is not followed. Its one effect on the process is the `apply` hook that
gives `gpu` to stages.models.accel: a stage reads `gpu` where it reaches one of accel's functions (APPLIED).
Nor is what only an error message says (inside a `raise`): no output is written then.

Covered: a read key the stage lists, or an ancestor of it (`rded` covers rded.crops); a templated entry covers
each instance's key (`${key}` in recover: sre2l, delt, infer; `models.${item}` over teacher.archs), and a key
dvc.yaml interpolates into the stage (its cmd, deps, outs, foreach items: `data/${dataset}`) covers it too: a new
value changes the stage itself, so dvc reruns it. A foreach stage's reads and entries are pooled over its
instances (recover's three recipes against `${key}` as sre2l, delt and infer).

    python -m stages.layout.params_reads    unlisted reads (exit 1 if any), dynamic reads, listed keys unread
"""
from __future__ import annotations

import ast
import re
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel

from stages import methods
from stages.layout.dvc_yaml import DVC_YAML, runs, stage_bodies, stage_module
from stages.layout.import_graph import ROOT, module_file
from stages.pipeline.params import schema

VALIDATION = {"stages.pipeline.params.load"}  # every stage's validation of the whole file: not followed
APPLIED = {"stages.models.accel": "gpu"}  # state params.load's apply hook sets from a key: reaching it reads it
SHARED_RECOVER = "recover"  # the block a method's `recover` overrides (stages.recover_engine.params.resolve)


# --- the schema: every params path, and where each model class sits ------------------------------------------

@dataclass
class Schema:
    fields: dict[str, dict[str, str]] = field(default_factory=dict)  # a model's path → {attribute: key}
    dicts: set[str] = field(default_factory=set)  # paths whose keys are free (models, teacher.source, external)
    classes: dict[str, set[str]] = field(default_factory=dict)  # model class name → the paths it sits at

    def walk(self, annotation, path: str) -> None:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Annotated:
            self.walk(args[0], path)
        elif origin in (typing.Union, types.UnionType):
            for arg in args:
                self.walk(arg, path)
        elif origin is dict:
            self.dicts.add(path)
            self.walk(args[1], join(path, "*"))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            self.classes.setdefault(annotation.__name__, set()).add(path)
            keys = {name: f.alias or name for name, f in annotation.model_fields.items()}  # copy_ → copy
            self.fields[path] = keys
            for name, f in annotation.model_fields.items():
                self.walk(f.annotation, join(path, keys[name]))

    def step(self, nodes: set[str], seg: str) -> tuple[str, set[str]] | None:
        """One attribute (or key) down from the candidate paths: (the key, the candidates below); None: no such
        field. `*` stands for any field of a model or key of a dict; a dict takes any key, unless a model has
        the field (`getattr(p, m).teacher` is a method's teacher, not models.teacher)."""
        if seg == "*":
            below = {join(n, k) for n in nodes for k in self.fields.get(n, {}).values()}
            below |= {join(n, "*") for n in nodes if n in self.dicts}
            return ("*", below) if below else None
        keys = {n: self.fields[n].get(seg, seg if seg in self.fields[n].values() else None)
                for n in nodes if n in self.fields}
        if any(keys.values()):
            key = next(k for k in keys.values() if k)
            return key, {join(n, key) for n, k in keys.items() if k}
        below = {join(n, "*") for n in nodes if n in self.dicts}
        return (seg, below) if below else None


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@lru_cache(maxsize=1)
def params_schema() -> Schema:
    s = Schema()
    s.walk(schema(), "")
    return s


def resolve(root: str, segs: list[str]) -> tuple[str, list[str], set[str]]:
    """A params path and the segments after it → (the longest params path they name, the segments left over,
    the schema paths it may be: several where a segment is `*`)."""
    s, path, nodes = params_schema(), "", {""}
    segs = [*filter(None, root.split(".")), *segs]
    for i, seg in enumerate(segs):
        down = s.step(nodes, seg)
        if down is None:
            return path, segs[i:], nodes
        path, nodes = join(path, down[0]), down[1]
    return path, [], nodes


def is_section(nodes: set[str]) -> bool:
    s = params_schema()
    return any(n in s.fields or n in s.dicts for n in nodes)


# --- the code: each module's imports and functions, and what reaches what -------------------------------------

@dataclass(eq=False)
class Function:
    module: str
    node: ast.AST  # a def, or the module itself (its top-level code)
    parent: Function | None = None  # the def it is nested in: its names are in scope
    method: bool = False  # defined in a class: `obj.f(a)` hands `a` to its second parameter

    @property
    def name(self) -> str:
        return getattr(self.node, "name", "<module>")

    def params(self) -> list[ast.arg]:
        if isinstance(self.node, ast.Module):
            return []
        a = self.node.args
        return [*a.posonlyargs, *a.args, *a.kwonlyargs][1 if self.method else 0:]

    def own_nodes(self):
        """Its own code: not that of the defs and methods inside it (a class body and lambdas are its own)."""
        todo = list(ast.iter_child_nodes(self.node))
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                todo += [*node.decorator_list, *node.args.defaults]
                continue
            yield node
            todo += [n for n in ast.iter_child_nodes(node) if not isinstance(node, ast.ClassDef)
                     or not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@dataclass
class Module:
    name: str
    imports: dict[str, str]  # local name → the dotted module or module.attribute it stands for
    functions: list[Function]  # the module's top-level code first
    typed: dict[str, tuple[str, ast.expr]]  # each class field and property by name: (its class, its annotation)
    classes: set[str]


@lru_cache(maxsize=None)
def parse(name: str) -> Module:
    path = module_file(name)
    tree = ast.parse(path.read_text(), str(path))
    imports, classes = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                            for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    module = Module(name, imports, [Function(name, tree)], {}, classes)

    def collect(node: ast.AST, parent: Function | None, in_class: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decorators = {getattr(d, "id", None) for d in child.decorator_list}
                fn = Function(name, child, parent, bool(in_class) and "staticmethod" not in decorators)
                module.functions.append(fn)
                if in_class and "property" in decorators and child.returns is not None:
                    module.typed[child.name] = (in_class, child.returns)
                collect(child, fn, None)
            elif isinstance(child, ast.ClassDef):
                classes.add(child.name)
                module.typed.update({n.target.id: (child.name, n.annotation) for n in child.body
                                     if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)})
                collect(child, parent, child.name)
            elif isinstance(child, ast.stmt):
                collect(child, parent, in_class)

    collect(tree, None, None)
    return module


class Program:
    """The modules one stage runs, their functions by name and what a name in one of them stands for."""

    def __init__(self, names: set[str]):
        self.modules = {n: parse(n) for n in sorted(names)}
        self.by_name: dict[str, list[Function]] = {}
        for m in self.modules.values():
            for fn in m.functions[1:]:
                self.by_name.setdefault(fn.name, []).append(fn)
        self.classes = set().union(*(m.classes for m in self.modules.values()))

    def targets(self, fn: Function, node: ast.expr) -> list[Function]:
        """The functions a name or attribute in `fn`'s code may stand for."""
        module = self.modules[fn.module]
        if isinstance(node, ast.Name):
            scope = fn if not isinstance(fn.node, ast.Module) else None
            while True:  # a def in this def or an enclosing one, then the module's, then an imported one
                found = [f for f in module.functions[1:] if f.parent is scope and f.name == node.id and not f.method]
                if found or scope is None:
                    break
                scope = scope.parent
            owner, _, attr = module.imports.get(node.id, "").rpartition(".")
            return found or [f for f in self.by_name.get(attr, []) if f.module == owner and f.parent is None]
        if isinstance(node, ast.Attribute):
            owner = module.imports.get(node.value.id) if isinstance(node.value, ast.Name) else None
            if owner in self.modules:  # `params.load`: that module's function
                return [f for f in self.by_name.get(node.attr, []) if f.module == owner and f.parent is None]
            if owner is None:  # `obj.f`: any function or method of that name
                return self.by_name.get(node.attr, [])
        return []

    def reachable(self) -> list[Function]:
        """Every function the modules' top-level code may call, transitively (params.load's validation aside)."""
        todo, seen = [m.functions[0] for m in self.modules.values()], {}
        while todo:
            fn = todo.pop()
            if id(fn) in seen or f"{fn.module}.{fn.name}" in VALIDATION:
                continue
            seen[id(fn)] = fn
            todo += [t for node in fn.own_nodes() if isinstance(node, (ast.Name, ast.Attribute))
                     and isinstance(node.ctx, ast.Load) for t in self.targets(fn, node)]
        return list(seen.values())


def model_paths(annotation: ast.expr | None) -> set[str]:
    """The params paths of the section models an annotation names (`Params`, `params.Params`, `Evaluate | None`)."""
    found, classes = set(), params_schema().classes
    for node in ast.walk(annotation) if annotation is not None else ():
        names = re.findall(r"\w+", node.value) if isinstance(node, ast.Constant) and isinstance(node.value, str) \
            else [getattr(node, "id", None) or getattr(node, "attr", None)]
        found |= set().union(*(classes.get(n, set()) for n in names))
    return found


# --- the reads ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Read:
    keys: tuple[str, ...]  # the params path read (alternatives: any one listed covers it)
    module: str
    line: int

    def __str__(self) -> str:
        return f"{' | '.join(self.keys)} ({self.module}:{self.line})"


class Scan:
    """One function's reads, and the sections it hands to other functions' parameters."""

    def __init__(self, program: Program, fn: Function, env: dict[str, set[str]], typed: dict[str, set[str]]):
        self.program, self.fn, self.env, self.typed = program, fn, env, typed
        self.reads: list[Read] = []
        self.handed: list[tuple[Function, str, set[str]]] = []

    def run(self) -> Scan:
        for _ in range(2):  # a local assigned from a later line's local: the second pass knows it
            self.reads, self.handed = [], []
            for node in ([self.fn.node] if isinstance(self.fn.node, ast.Module) else self.fn.node.body):
                self.scan(node)
        return self

    def chain(self, node: ast.expr) -> tuple[set[str], list[str], list[ast.expr]] | None:
        """A chain on a params value: (its root paths, its segments, the sub-expressions to scan on their own)."""
        if isinstance(node, ast.Name):
            return (self.env[node.id], [], []) if node.id in self.env else None
        if isinstance(node, ast.Attribute):
            inner = self.chain(node.value)
            if inner:
                return inner[0], [*inner[1], node.attr], inner[2]
            return (self.typed[node.attr], [], [node.value]) if node.attr in self.typed else None
        if isinstance(node, ast.Subscript):  # x["key"], x[name]
            inner, key = self.chain(node.value), node.slice
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2:
            inner, key = self.chain(node.args[0]), node.args[1]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" and node.args:  # dict.get
            inner, key = self.chain(node.func.value), node.args[0]
        else:
            return None
        if inner is None:
            return None
        seg = key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else "*"
        return inner[0], [*inner[1], seg], [*inner[2], key]

    def section(self, node: ast.expr) -> set[str] | None:
        """The paths a whole section (a model or a dict of them) stands for; None: not one."""
        found = self.chain(node)
        resolved = [resolve(root, found[1]) for root in found[0]] if found else []
        if resolved and all(not left and is_section(nodes) for _, left, nodes in resolved):
            return {path for path, _, _ in resolved}
        return None

    def read(self, node: ast.expr, keys: set[str]) -> None:
        self.reads.append(Read(tuple(sorted(keys)), self.fn.module, node.lineno))
        shared = {SHARED_RECOVER + k.partition(".recover")[2] for k in keys
                  if k.split(".")[1:2] == ["recover"] and not k.startswith(SHARED_RECOVER + ".")}
        if shared:  # a method's recover, merged from the shared block
            self.reads.append(Read(tuple(sorted(shared)), self.fn.module, node.lineno))

    def scan(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return  # a function of its own
        if isinstance(node, ast.ClassDef):
            for child in node.body:
                self.scan(child)
            return
        if isinstance(node, ast.Raise):
            return  # what an error message says: no output is written
        if isinstance(node, ast.Assign):
            self.assign(node)
            return
        if isinstance(node, ast.Return) and node.value is not None and self.section(node.value) is not None \
                and model_paths(getattr(self.fn.node, "returns", None)):
            return  # a section returned as its annotation says: read where it is used (`ev.cfg.lr`)
        if isinstance(node, ast.Compare) and all(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and self.section(node.comparators[0]) is not None:  # `name in p.external`: that entry
            key = node.left.value if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) else "*"
            self.read(node, {join(path, key) for path in self.section(node.comparators[0])})
            self.scan(node.left)
            return
        found = self.chain(node) if isinstance(node, ast.expr) else None
        if found:
            self.read(node, {resolve(root, found[1])[0] for root in found[0]})
            for sub in found[2]:
                self.scan(sub)
        elif isinstance(node, ast.Call):
            self.call(node)
        else:
            for child in ast.iter_child_nodes(node):
                self.scan(child)

    def assign(self, node: ast.Assign) -> None:
        """`cfg = p.podd`, `a, cfg = x, p.podd`: the name stands for the section from here (not a read)."""
        pairs = [(t, node.value) for t in node.targets]
        if len(pairs) == 1 and isinstance(pairs[0][0], ast.Tuple) and isinstance(node.value, ast.Tuple) \
                and len(pairs[0][0].elts) == len(node.value.elts):
            pairs = list(zip(pairs[0][0].elts, node.value.elts))
        for target, value in pairs:
            paths = self.section(value) if isinstance(target, ast.Name) else None
            if paths is not None:
                self.env[target.id] = self.env.get(target.id, set()) | paths
            else:
                self.scan(value)
            if not isinstance(target, ast.Name):
                self.scan(target)

    def call(self, node: ast.Call) -> None:
        """A section handed to a function of ours binds its parameter; to a class of ours, its typed field;
        to anything else (a library) it is read whole."""
        if self.dump(node):
            return
        targets = self.program.targets(self.fn, node.func)
        for i, arg in enumerate([*node.args, *node.keywords]):
            value = arg.value if isinstance(arg, ast.keyword) else arg
            paths = self.section(value)
            if paths is None:
                self.scan(value)
                continue
            bound = False
            for target in targets:
                names = [a.arg for a in target.params()]
                name = arg.arg if isinstance(arg, ast.keyword) else names[i] if i < len(names) else None
                if name in names:
                    self.handed.append((target, name, paths))
                    bound = True
            if not bound and getattr(node.func, "id", None) not in self.program.classes and paths != {""}:
                self.read(value, paths)
        self.scan(node.func)

    def dump(self, node: ast.Call) -> bool:
        """`section.model_dump(include={...} | exclude={...})` reads the fields it dumps."""
        paths = self.section(node.func.value) if getattr(node.func, "attr", None) == "model_dump" else None
        if paths is None:
            return False
        words = {k.arg: {e.value for e in getattr(k.value, "elts", ()) if isinstance(e, ast.Constant)}
                 for k in node.keywords}
        nodes = set().union(*(resolve(path, [])[2] for path in paths))
        fields = set(params_schema().fields.get(nodes.pop(), {}).values()) if len(nodes) == 1 else set()
        for key in (words.get("include", fields) - words.get("exclude", set())) if fields else [""]:
            self.read(node, {join(path, key) if key else path for path in paths})
        return True


@lru_cache(maxsize=None)
def code_reads(modules: frozenset[str]) -> list[Read]:
    """What the code reachable from `modules`' top-level code reads."""
    program = Program(modules)
    functions = sorted(program.reachable(), key=depth)  # a def after the defs it is nested in
    typed = {}
    for m in program.modules.values():
        for attr, (cls, annotation) in m.typed.items():  # the sections' own fields aside
            if model_paths(annotation) and cls not in params_schema().classes:
                typed.setdefault(attr, set()).update(model_paths(annotation))
    bound: dict[tuple[int, str], set[str]] = {}  # (function, parameter) → the sections callers hand it
    while True:
        scans: dict[int, Scan] = {}
        for fn in functions:  # its names: the enclosing def's, then its parameters (annotated, or as handed)
            env = {k: set(v) for k, v in scans[id(fn.parent)].env.items()} if fn.parent is not None \
                and id(fn.parent) in scans else {}
            for a in fn.params():
                paths = model_paths(a.annotation) or bound.get((id(fn), a.arg))
                if paths:
                    env[a.arg] = set(paths)
            scans[id(fn)] = Scan(program, fn, env, typed).run()
        grown = False
        for target, name, paths in (h for s in scans.values() for h in s.handed):
            # an annotated parameter is what its annotation says (`path: Path` is no section, whatever a
            # same-named function elsewhere is handed); only an unannotated one takes what callers hand it
            annotated = any(a.arg == name and a.annotation is not None for a in target.params())
            if not annotated and not paths <= bound.get((id(target), name), set()):
                bound.setdefault((id(target), name), set()).update(paths)
                grown = True
        if not grown:
            break
    reads = [r for s in scans.values() for r in s.reads]
    for module, key in APPLIED.items():
        used = [fn.node.lineno for fn in functions if fn.module == module and not isinstance(fn.node, ast.Module)]
        if used:
            reads.append(Read((key,), module, min(used)))
    return reads


def depth(fn: Function) -> int:
    return 0 if fn.parent is None else 1 + depth(fn.parent)


# --- dvc.yaml: what each stage runs and lists ------------------------------------------------------------------

def stage_modules(body: dict) -> frozenset[str]:
    """The modules a stage runs: its module's, and in a shared stage each joining method's recipe's."""
    module = stage_module(body)
    role = module.rsplit(".", 1)[-1]
    recipes = [f"stages.methods.{m.name}.recipe" for m in methods.methods() if role in m.shared_stages]
    return frozenset(runs(module).union(*(runs(r) for r in recipes)))


def instances(body: dict, params_yaml: dict) -> list[dict]:
    """A stage's foreach as {key, item} per instance (one with neither for a plain stage)."""
    foreach = body.get("foreach")
    if isinstance(foreach, str):  # ${teacher.archs}: a params value
        found = params_yaml
        for key in re.fullmatch(r"\$\{([\w.]+)\}", foreach).group(1).split("."):
            found = found[key]
        foreach = found
    if isinstance(foreach, dict):
        return [{"key": k, "item": v} for k, v in foreach.items()]
    return [{"item": v} for v in foreach] if isinstance(foreach, list) else [{}]


def listed(body: dict, params_yaml: dict) -> set[str]:
    """The params paths a stage lists: each templated entry for every instance, and as `*` (the dynamic reads)."""
    entries = []
    for e in body.get("do", body).get("params") or []:
        entries += [e] if isinstance(e, str) else (e.get("params.yaml") or []) if isinstance(e, dict) else []
    out = {".".join("*" if "${" in seg else seg for seg in e.split(".")) for e in entries}
    for instance in instances(body, params_yaml):
        out |= {e for e in (substitute(entry, instance) for entry in entries) if "${" not in e}
    return out


def substitute(text: str, instance: dict) -> str:
    """`${key}`, `${item}`, `${item.field}` put in (what else is templated stays as it is)."""
    def value(m: re.Match) -> str:
        found = instance
        for key in m.group(1).split("."):
            found = found.get(key) if isinstance(found, dict) else None
        return str(found) if isinstance(found, (str, int)) else m.group(0)
    return re.sub(r"\$\{([\w.]+)\}", value, text)


def interpolated(body: dict) -> set[str]:
    """The params a stage interpolates (into its cmd, deps, outs, foreach items): a change changes the stage.
    Not a foreach over a params value (`${external}`): only what `${item...}` puts in lands in the stage."""
    written = {k: v for k, v in body.items() if not (k == "foreach" and isinstance(v, str))}
    return {v for v in re.findall(r"\$\{([\w.]+)\}", yaml.safe_dump(written))
            if v.split(".")[0] not in ("key", "item")}


def covered(key: str, entries: set[str]) -> bool:
    parts = key.split(".")
    return any(parts[:len(e.split("."))] == e.split(".") for e in entries)


def overlaps(a: str, b: str) -> bool:
    """One path is under the other, `*` matching any key."""
    return all(x == y or "*" in (x, y) for x, y in zip(a.split("."), b.split(".")))


@dataclass
class StageReport:
    stage: str
    reads: list[Read]
    entries: set[str]  # its params list (templated entries for every instance, and with `*`)
    interpolated: set[str]

    def unlisted(self) -> list[Read]:
        return [r for r in self.reads if not any(covered(k, self.entries | self.interpolated) for k in r.keys)]

    def dynamic(self) -> list[Read]:
        return [r for r in self.reads if any("*" in k.split(".") for k in r.keys)]

    def unread(self) -> list[str]:
        """Listed entries that no read is under or above (harmless: a change reruns the stage for nothing)."""
        return sorted(e for e in self.entries if not any(overlaps(e, k) for r in self.reads for k in r.keys))


def reports(path: Path = DVC_YAML, params_path: Path = ROOT / "params.yaml") -> list[StageReport]:
    params_yaml = yaml.safe_load(params_path.read_text())
    return [StageReport(name, sorted(set(code_reads(stage_modules(body))), key=str), listed(body, params_yaml),
                        interpolated(body)) for name, body in stage_bodies(path).items()]


def unlisted(path: Path = DVC_YAML) -> list[str]:
    """`stage: key (module:line)` for every read key the stage does not list."""
    return [f"{r.stage}: {read}" for r in reports(path) for read in r.unlisted()]


def grouped(stage: str, reads: list[Read]) -> list[str]:
    """`stage: key (module:line, ...)`, one line per key."""
    places: dict[str, list[str]] = {}
    for r in reads:
        places.setdefault(" | ".join(r.keys), []).append(f"{r.module}:{r.line}")
    return [f"{stage}: {key} ({', '.join(where)})" for key, where in places.items()]


def main() -> None:
    found = reports()
    for title, lines in (("read but not listed in the stage's params",
                          [line for r in found for line in grouped(r.stage, r.unlisted())]),
                         ("dynamic reads, covered by a templated entry or an ancestor",
                          [line for r in found for line in grouped(r.stage, r.dynamic())]),
                         ("listed but not read by the code (harmless: a change reruns the stage for nothing)",
                          [f"{r.stage}: {e}" for r in found for e in r.unread()])):
        print(f"{title}: {len(lines)}")
        for line in lines:
            print(f"  {line}")
    raise SystemExit(1 if any(r.unlisted() for r in found) else 0)


if __name__ == "__main__":
    main()
