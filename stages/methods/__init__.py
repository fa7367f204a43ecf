"""The methods ddpipe knows, one package each under stages/methods/, and the registry that lists them.

A method package declares itself in its `__init__.py` with `METHOD = Method(...)`: the sets it makes and the
dvc.yaml stages that write them. Everything that lists methods derives from `methods()` / `evaluated_sets()`:
dvc.yaml's relabel/evaluate lists (checked and written by `ddpipe dvc-yaml`), the external-set name check,
the report's reference rows, the results grid's order and the preset checks. Declarations import nothing
heavy: listing the methods imports only these `__init__` modules.

A method that joins a shared stage (recover, prototypes, synthesize) gives that stage its own part in a
`recipe` module (`RECIPE`), loaded here by name, so the shared stages never branch on a method's name.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

Role = Literal["method", "reference", "upper_bound"]


@dataclass(frozen=True)
class EvaluatedSet:
    """One distilled set that relabel@<name> and evaluate@<name> grade."""
    name: str  # its folder under artifacts/<ds>/<budget>/distilled/, its report row, its stage key
    order: int  # its place in dvc.yaml's lists, the report and the results grid
    budget: str = "ipc${ipc}"  # the folder under artifacts/<ds>/ that holds it (dvc.yaml interpolation)
    epochs: str = "${evaluate.epochs}"  # the passes the shared recipe makes over it
    role: Role = "method"  # reference: random real images, the gain's baseline; upper_bound: the whole train set
    summary: str = ""  # one line on this set, where its method's summary covers more sets than this one

    @property
    def own_budget(self) -> bool:
        """Whether the set keeps a budget of its own instead of `ipc` (PoDD's poster, the full set)."""
        return self.budget != "ipc${ipc}"

    def folder(self, params: dict) -> str:
        """Its budget folder with params.yaml's values put in (`params` as loaded from the YAML)."""
        def value(match: re.Match) -> str:
            found: Any = params
            for key in match.group(1).split("."):
                found = found[key]
            return str(found)
        return re.sub(r"\$\{([\w.]+)\}", value, self.budget)


@dataclass(frozen=True)
class Method:
    """A method's declaration (its package's __init__.py)."""
    name: str  # the package's name, stages/methods/<name>
    summary: str  # one line: what it does
    sets: tuple[EvaluatedSet, ...]
    stages: tuple[str, ...]  # the dvc.yaml stages (stage@key) that make its sets, in order
    shared_stages: tuple[str, ...] = ()  # shared stage modules it plugs into through its recipe (recover, ...)
    doc: str = ""  # its page, docs/methods/<name>.md
    notes: dict[str, Any] = field(default_factory=dict)
    preset_keys: tuple[str, ...] = ()  # params a paper preset must set for it (stages/preset.py)
    engine_knobs: bool = True  # on `recover`: its section overrides the engine's shared block (EDC runs its own loop)

    @property
    def page(self) -> str:
        return self.doc or f"docs/methods/{self.name}.md"


@lru_cache(maxsize=1)
def methods() -> tuple[Method, ...]:
    """Every method package's declaration, by its first set's order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            module = importlib.import_module(f"{__name__}.{info.name}")
            method = getattr(module, "METHOD", None)
            if not isinstance(method, Method) or method.name != info.name:
                raise RuntimeError(f"stages/methods/{info.name}/__init__.py: expected METHOD = Method(name="
                                   f"{info.name!r}, ...)")
            found.append(method)
    return tuple(sorted(found, key=lambda m: min(s.order for s in m.sets)))


def method(name: str) -> Method:
    for m in methods():
        if m.name == name:
            return m
    raise KeyError(f"no method package stages/methods/{name}")


def evaluated_sets() -> tuple[EvaluatedSet, ...]:
    """Every set the pipeline grades, in order (the relabel/evaluate foreach of dvc.yaml)."""
    return tuple(sorted((s for m in methods() for s in m.sets), key=lambda s: (s.order, s.name)))


def set_names(role: Role | None = None) -> tuple[str, ...]:
    return tuple(s.name for s in evaluated_sets() if role is None or s.role == role)


def set_role(name: str) -> Role | None:
    """A set's role, None for a set no method declares (an external one)."""
    return next((s.role for s in evaluated_sets() if s.name == name), None)


def joining(stage: str) -> list[str]:
    """The methods whose packages plug into the shared stage `stage` (recover, prototypes, synthesize)."""
    return [m.name for m in methods() if stage in m.shared_stages]


def check_joins(stage: str, name: str, what: str) -> None:
    """`name` must be a method on the shared stage `stage` (one error line naming the others)."""
    if name not in joining(stage):
        from stages.pipeline.errors import PipelineError

        raise PipelineError(f"{stage} {name}: not a method on {what} ({', '.join(joining(stage))})")


def recipe(name: str) -> Any:
    """The part `name` plays in the shared stages (its package's recipe.RECIPE)."""
    return importlib.import_module(f"{__name__}.{name}.recipe").RECIPE
