"""params.yaml, loaded through one validated schema assembled from the packages that read it.

Defaults live in params.yaml, not here: every field is required, so a missing key is an error too.
An unknown key, a wrong type or an impossible value stops with one message naming key and value.

The core holds the keys every stage shares (launcher, dataset, ipc, seed, class names and prompt). Each
other section lives beside the code that reads it, in a `params` module of its package: a shared package
(`stages/<package>/params.py`, e.g. the recover engine's `recover` block) or a method's
(`stages/methods/<name>/params.py`). Such a module defines `SECTIONS` (key -> pydantic model, in params.yaml
order), `ORDER` (where its sections go among the others) and optionally `check(params)` (cross-section rules,
raising ValueError), `check_data(params, counts)` (rules that need the prepared data's class sizes),
`resolve(raw, sections)` (fills, before validation, what a section inherits from another: the methods' `recover`
from the shared block) and `apply(params)` (settings that act on the process, e.g. the GPU's). The core finds
these modules by looking, and imports none of them by name: a new method is its package, not an edit here.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Annotated, Literal, Optional

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

import stages
from stages.pipeline.errors import ParamsError, PipelineError
from stages.pipeline.launcher import check_launcher

Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def check_scale(value: list[float]) -> list[float]:
    if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
        raise ValueError("must be [min, max] with 0 < min <= max <= 1")
    return value


def placeholder(template: str, field: str, what: str) -> str:
    if "{" + field + "}" not in template:
        raise ValueError(f"must contain {{{field}}} (where {what} goes)")
    try:  # any other placeholder ({}, {0}, {other}, a stray brace) would fail only when a stage formats it
        template.format(**{field: ""})
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(f"only {{{field}}} may be a placeholder (double a literal brace: {{{{ }}}}); "
                         f"found {type(e).__name__}: {e}") from None
    return template


def _packages() -> list[str]:
    """`stages.<package>` and `stages.methods.<name>` for every package of either kind (the core excepted)."""
    names = []
    for info in pkgutil.iter_modules(stages.__path__):
        if info.ispkg and info.name != "pipeline":
            names.append(f"stages.{info.name}")
            if info.name == "methods":
                methods = importlib.import_module("stages.methods")
                names += [f"stages.methods.{m.name}" for m in pkgutil.iter_modules(methods.__path__) if m.ispkg]
    return names


@lru_cache(maxsize=1)
def section_modules() -> tuple[ModuleType, ...]:
    """Every package's `params` module, in their ORDER (then by name)."""
    found = [importlib.import_module(f"{package}.params") for package in _packages()
             if importlib.util.find_spec(f"{package}.params") is not None]
    return tuple(sorted(found, key=lambda m: (m.ORDER, m.__name__)))


def resolve(raw: dict) -> dict:
    """params.yaml as read, with what sections inherit filled in (each module's `resolve`), ready to validate."""
    sections = {key: model for module in section_modules() for key, model in module.SECTIONS.items()}
    for module in section_modules():
        if hasattr(module, "resolve"):
            module.resolve(raw, sections)
    return raw


class Params(Section):
    """The shared keys; `schema()` adds every package's sections to these."""
    launcher: Annotated[str, AfterValidator(check_launcher)]  # dvc.yaml: `${launcher} -m stages.<stage>`
    dataset: Literal["digits", "photos", "cifar10", "cifar100", "imagefolder"]
    ipc: Positive
    seed: Annotated[int, Field(ge=0, lt=2 ** 32)]  # what numpy and scikit-learn accept as a seed
    class_names: Optional[list[str]]
    class_prompt: str

    _name = field_validator("class_prompt")(lambda p: placeholder(p, "name", "the class name"))

    @model_validator(mode="after")
    def _consistent(self) -> "Params":
        for module in section_modules():
            if hasattr(module, "check"):
                module.check(self)
        return self


@lru_cache(maxsize=1)
def schema() -> type[Params]:
    """Params with every package's sections, in params.yaml's order."""
    fields = {}
    for module in section_modules():
        for key, model in module.SECTIONS.items():
            if key in fields or key in Params.model_fields:
                raise RuntimeError(f"params section {key!r} defined twice ({module.__name__})")
            fields[key] = (model, ...)
    return create_model("Params", __base__=Params, **fields)


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    if first["type"] == "missing":
        return f"{source}: missing key {key!r}"
    if not key:  # a model-level check already names its key and value
        return f"{source}: {msg}"
    if isinstance(first["input"], dict):  # a section-level check names its field within the section
        return f"{source}: {key}.{msg}"
    return f"{source}: {key} = {first['input']!r}: {msg}"


class _UniqueKeys(yaml.SafeLoader):
    """safe_load, except that a key given twice is an error (plain YAML loaders keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the keys written here; `<<: *anchor` merges may be overridden
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A parser error in one line: where and what (PyYAML's own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(e, "problem", None) or " ".join(str(e).split()))


# The most values a YAML document may expand to, counting each alias as a copy of what it names: a few KB of
# nested aliases ("billion laughs") would otherwise expand into gigabytes when validated. The shipped
# params.yaml has about 430.
MAX_NODES = 100_000


def expanded_size(node: yaml.Node, source: str, error: type[PipelineError] = ParamsError) -> int:
    """How many values `node` expands to, aliases repeated (memoised per node, so counting is linear); a
    document that holds itself through an alias, or expands past MAX_NODES, is refused."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    open_nodes: set[int] = set()
    while stack:
        current, done = stack.pop()
        key = id(current)
        children = [] if isinstance(current, yaml.ScalarNode) else \
            [n for pair in current.value for n in pair] if isinstance(current, yaml.MappingNode) else current.value
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_NODES:
                raise error(f"{source}: expands to more than {MAX_NODES:,} values (YAML aliases repeat what they "
                            "name); refused before it is built")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise error(f"{source}: a YAML alias inside the value it names (a recursive document); refused")
        open_nodes.add(key)
        stack.append((current, True))
        for child in children:
            if id(child) in open_nodes:
                raise error(f"{source}: a YAML alias inside the value it names (a recursive document); refused")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(node)]


def load_yaml(text: str, source: str, error: type[PipelineError] = ParamsError):
    """YAML text as Python values: no key given twice, and the expanded size bounded (MAX_NODES) before a
    single value is built. Every fault is one `error` naming `source`."""
    loader = _UniqueKeys(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node, source, error)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise error(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise error(f"{source}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def load(path: str | Path = "params.yaml", data_root: str | Path = "data") -> Params:
    """Load and validate params; once `prepare` ran, also check `ipc` against the class sizes."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    raw = load_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        params = schema().model_validate(resolve(raw))
    except ValidationError as e:
        raise ParamsError(_describe(e, str(path))) from None
    check_ipc(params, Path(data_root) / params.dataset / "meta.json", str(path))
    for module in section_modules():  # a package's settings that act on the process (e.g. models' gpu)
        if hasattr(module, "apply"):
            module.apply(params)
    return params


def class_prompts(params: Params, classes: list[str]) -> list[str]:
    """How each class is named in prompts and captions: class_prompt with class_names (or folder names)."""
    names = params.class_names or classes
    return [params.class_prompt.format(name=name) for name in names]


def check_ipc(params: Params, meta_path: Path, source: str = "params.yaml") -> None:
    """ipc must not exceed the smallest train class, and the packages' own rules on the class sizes hold
    (e.g. an explicit INFER ipc_init fits the budget): known once `prepare` wrote meta.json."""
    if not meta_path.exists():
        return
    from stages.pipeline.artifacts import read_data_meta  # imports pydantic models only; avoids a cycle

    counts = read_data_meta(meta_path.parent).train_counts
    try:
        for module in section_modules():
            if hasattr(module, "check_data"):
                module.check_data(params, counts)
    except ValueError as e:
        raise ParamsError(f"{source}: {e}") from None
    if params.class_names is not None and len(params.class_names) != len(counts):
        raise ParamsError(f"{source}: class_names has {len(params.class_names)} names, the data has "
                          f"{len(counts)} classes")
    smallest = min(counts, key=counts.get)
    if params.ipc > counts[smallest]:
        raise ParamsError(
            f"{source}: ipc = {params.ipc}: above the smallest class size "
            f"({counts[smallest]} train images in class {smallest!r})"
        )
