"""params.yaml, loaded through one validated schema.

Defaults live in params.yaml, not here: every field is required, so a missing key is an error too.
An unknown key, a wrong type or an impossible value stops with one message naming key and value.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.pipeline.errors import ParamsError
from stages.models import OUR_ARCHS, is_registered
from stages.synthesis.schedules import infer_budget

Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_scale(value: list[float]) -> list[float]:
    if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
        raise ValueError("must be [min, max] with 0 < min <= max <= 1")
    return value


class Prepare(Section):
    image_size: Positive
    val_fraction: Fraction
    crops: Annotated[int, Field(ge=2)]  # photos only: crops per class, train + val
    root: Optional[str]
    download: bool
    classes: Optional[list[str]]
    on_corrupt: Literal["fail", "skip"]


class ArchConfig(Section):
    width: Positive
    depth: Optional[Positive] = None
    norm: Literal["batch", "instance"]


class Teacher(Section):
    archs: Annotated[list[str], Field(min_length=1)]
    epochs: Positive
    batch_size: Positive
    lr: PositiveFloat
    momentum: NonNegFloat
    weight_decay: NonNegFloat
    crop_scale: list[float]
    flip: bool

    _scale = field_validator("crop_scale")(_check_scale)

    @field_validator("archs")
    @classmethod
    def _registered(cls, archs: list[str]) -> list[str]:
        for arch in archs:
            if not is_registered(arch):
                raise ValueError(f"arch {arch!r} is not registered (ours or a torchvision model name)")
        return archs


class Evaluate(Section):
    student: str
    teacher: str
    protocols: Annotated[list[Literal["fkd", "teacher", "hard", "static"]], Field(min_length=1)]
    seeds: Positive
    epochs: Positive
    full_epochs: Positive
    batch_size: Union[Literal["auto"], Positive]
    optimizer: Literal["adamw", "sgd"]
    lr: PositiveFloat
    weight_decay: NonNegFloat
    temperature: PositiveFloat
    crop_scale: list[float]
    flip: bool
    mix: Literal["cutmix", "mixup", "none"]
    mix_alpha: PositiveFloat
    eval_points: Positive

    _scale = field_validator("crop_scale")(_check_scale)

    @field_validator("student")
    @classmethod
    def _registered(cls, arch: str) -> str:
        if not is_registered(arch):
            raise ValueError(f"arch {arch!r} is not registered (ours or a torchvision model name)")
        return arch


class Recover(Section):
    """The recover engine's knobs (research/sre2l_family.md §0.3), shared by sre2l, delt and infer."""
    iterations: Positive
    lr: PositiveFloat
    r_bn: NonNegFloat
    first_bn_multiplier: NonNegFloat
    r_var: NonNegFloat
    jitter: NonNegInt
    crop_min_scale: Annotated[float, Field(gt=0, le=1)]
    crop_schedule: Literal["fixed", "cosine"]
    flip: bool
    ipc_per_batch: Positive
    ipc_start: NonNegInt
    ipc_end: Optional[Positive]
    dwa_steps: NonNegInt
    dwa_rho: NonNegFloat

    @model_validator(mode="after")
    def _range(self) -> "Recover":
        if self.ipc_end is not None and self.ipc_end <= self.ipc_start:
            raise ValueError(f"ipc_end = {self.ipc_end}: must be above ipc_start = {self.ipc_start}")
        if self.ipc_start % self.ipc_per_batch:
            raise ValueError(f"ipc_start = {self.ipc_start}: must be a multiple of ipc_per_batch = "
                             f"{self.ipc_per_batch} so shards reproduce a single run exactly")
        return self


class Sre2l(Section):
    teacher: str
    recover: Recover


class Delt(Section):
    ranker: str
    criterion: Literal["top", "min", "medium"]
    teacher: str
    round_iterations: Positive
    min_iterations: Optional[Positive]
    recover: Recover

    @model_validator(mode="after")
    def _rounds(self) -> "Delt":
        total = self.recover.iterations
        if total % self.round_iterations:
            raise ValueError(f"round_iterations = {self.round_iterations}: must divide recover.iterations = {total}")
        low = self.min_iterations
        if low is not None and (low > total or low % self.round_iterations):
            raise ValueError(f"min_iterations = {low}: must be a multiple of round_iterations = "
                             f"{self.round_iterations} and at most recover.iterations = {total}")
        return self


class Infer(Section):
    teachers: Annotated[list[str], Field(min_length=1)]
    ipc_init: Optional[Positive]
    recover: Recover


UnitFloat = Annotated[float, Field(ge=0, le=1)]


def _placeholder(template: str, field: str, what: str) -> str:
    if "{" + field + "}" not in template:
        raise ValueError(f"must contain {{{field}}} (where {what} goes)")
    return template


class Llava(Section):
    model: Optional[str]  # hub id or local folder of a transformers LLaVA checkpoint
    question: str  # {subject} = the class prompt of the image's class
    batch_size: Positive
    max_new_tokens: Positive

    _subject = field_validator("question")(lambda q: _placeholder(q, "subject", "the class"))


class Caption(Section):
    captioner: Literal["attributes", "llava"]
    llava: Llava


class DiffusionTrain(Section):
    """train mode: a small latent diffusion model built from configs and trained in the stage."""
    vae_channels: Annotated[list[Positive], Field(min_length=1)]
    vae_steps: Positive
    vae_lr: PositiveFloat
    kl_weight: NonNegFloat
    unet_channels: Annotated[list[Positive], Field(min_length=1)]
    unet_steps: Positive
    unet_lr: PositiveFloat
    batch_size: Positive
    text_window: Positive


class Finetune(Section):
    """pretrained mode: VLCP's optional fine-tune of the UNet on (image, caption) pairs."""
    epochs: NonNegInt
    lr: PositiveFloat
    ema_decay: UnitFloat
    batch_size: Positive


class DiffusionCheck(Section):
    """Text-to-image samples per class that the evaluate teacher classifies (diffusion_check)."""
    samples: Positive
    guidance: NonNegFloat
    steps: Positive


class Diffusion(Section):
    mode: Literal["train", "pretrained"]
    pretrained: str
    resolution: Optional[Positive]
    caption_fraction: UnitFloat
    p_uncond: Annotated[float, Field(ge=0, lt=1)]
    check: DiffusionCheck
    train: DiffusionTrain
    finetune: Finetune


class Latents(Section):
    posterior: Literal["sample", "mean"]
    batch_size: Positive


class Img2Img(Section):
    strength: UnitFloat
    guidance: NonNegFloat
    steps: Positive
    negative_prompt: str
    batch_size: Positive


class D4mPrototypes(Section):
    kmeans: Literal["minibatch", "full"]
    km_expand: Positive
    n_init: Positive


class VlcpPrototypes(Section):
    lof_neighbors: Positive
    contamination: Annotated[float, Field(ge=0, le=0.5)]
    n_init: Positive
    threshold: Annotated[float, Field(gt=0, le=1)]
    tpk: Positive


class D4m(Section):
    prototypes: D4mPrototypes
    synthesis: Img2Img


class Vlcp(Section):
    prototypes: VlcpPrototypes
    synthesis: Img2Img


class PoddInner(Section):
    """The ConvNet (instance norm) trained in RaT-BPTT's inner loop and in PoDD's own evaluation."""
    width: Positive
    depth: Optional[Positive]
    lr: PositiveFloat


class PoddEval(Section):
    runs: Positive
    steps: Positive


class Podd(Section):
    ipc: PositiveFloat
    poster_width: Optional[Positive]
    poster_height: Optional[Positive]
    poster_class_num_x: Optional[Positive]
    poster_class_num_y: Optional[Positive]
    patch_num_x: Positive
    patch_num_y: Positive
    order: Literal["text", "identity", "random"]
    text_encoder: Optional[str]
    inner: PoddInner
    window: Positive
    minwindow: NonNegInt
    totwindow: Positive
    distill_batch_size: Positive
    batch_size: Positive
    epochs: Positive
    lr: PositiveFloat
    label_lr_scale: PositiveFloat
    clip_coef: Annotated[float, Field(ge=0, lt=1)]
    zca: bool
    zca_reg: NonNegFloat
    augment: list[Literal["flip", "rotate"]]
    train_y: bool
    comp_ipc: Positive
    checkpoint_every: Positive
    eval: PoddEval

    @model_validator(mode="after")
    def _consistent(self) -> "Podd":
        if self.minwindow + self.window > self.totwindow:
            raise ValueError(f"totwindow = {self.totwindow}: below minwindow + window = "
                             f"{self.minwindow} + {self.window}")
        for a, b in (("poster_width", "poster_height"), ("poster_class_num_x", "poster_class_num_y")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ValueError(f"{a} = {getattr(self, a)}, {b} = {getattr(self, b)}: set both or neither")
        crops = self.patch_num_x * self.patch_num_y
        if self.distill_batch_size > crops:
            raise ValueError(f"distill_batch_size = {self.distill_batch_size}: above the {crops} crops of "
                             f"patch_num_x x patch_num_y = {self.patch_num_x} x {self.patch_num_y}")
        return self


class Params(Section):
    launcher: Annotated[str, Field(pattern=r"\S")]  # read by dvc.yaml only: `${launcher} -m stages.<stage>`
    dataset: Literal["digits", "photos", "cifar10", "cifar100", "imagefolder"]
    ipc: Positive
    seed: Annotated[int, Field(ge=0)]
    class_names: Optional[list[str]]
    class_prompt: str
    prepare: Prepare
    models: dict[str, ArchConfig]
    teacher: Teacher
    evaluate: Evaluate
    sre2l: Sre2l
    delt: Delt
    infer: Infer
    caption: Caption
    diffusion: Diffusion
    latents: Latents
    d4m: D4m
    vlcp: Vlcp
    podd: Podd

    _name = field_validator("class_prompt")(lambda p: _placeholder(p, "name", "the class name"))

    @model_validator(mode="after")
    def _consistent(self) -> "Params":
        for name, config in self.models.items():
            if name not in OUR_ARCHS:
                raise ValueError(f"models.{name} = {config.model_dump()}: not one of our architectures "
                                 f"{sorted(OUR_ARCHS)} (torchvision archs take no config)")
        for arch in [*self.teacher.archs, self.evaluate.student]:
            if arch in OUR_ARCHS and arch not in self.models:
                raise ValueError(f"models.{arch} = None: arch {arch!r} is used but has no config")
        if self.evaluate.teacher not in self.teacher.archs:
            raise ValueError(
                f"evaluate.teacher = {self.evaluate.teacher!r}: not one of teacher.archs {self.teacher.archs}"
            )
        for key, arch in [("delt.ranker", self.delt.ranker), ("delt.teacher", self.delt.teacher),
                          ("sre2l.teacher", self.sre2l.teacher),
                          *((f"infer.teachers[{i}]", a) for i, a in enumerate(self.infer.teachers))]:
            if arch not in self.teacher.archs:
                raise ValueError(f"{key} = {arch!r}: not one of teacher.archs {self.teacher.archs}")
        if len(set(self.infer.teachers)) != len(self.infer.teachers):
            raise ValueError(f"infer.teachers = {self.infer.teachers}: lists a teacher twice")
        for key, section in [("sre2l", self.sre2l), ("delt", self.delt)]:
            end = section.recover.ipc_end
            if end is not None and end > self.ipc:
                raise ValueError(f"{key}.recover.ipc_end = {end}: above ipc = {self.ipc}")
        if self.dataset in ("cifar10", "cifar100", "imagefolder") and self.prepare.root is None:
            raise ValueError(f"prepare.root = None: dataset {self.dataset!r} needs a source folder")
        if self.caption.captioner == "llava" and not self.caption.llava.model:
            raise ValueError("caption.llava.model = None: captioner 'llava' needs a model id or folder")
        return self


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


def load(path: str | Path = "params.yaml", data_root: str | Path = "data") -> Params:
    """Load and validate params; once `prepare` ran, also check `ipc` against the class sizes."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeys)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_describe(e, str(path))) from None
    check_ipc(params, Path(data_root) / params.dataset / "meta.json", str(path))
    return params


def class_prompts(params: Params, classes: list[str]) -> list[str]:
    """How each class is named in prompts and captions: class_prompt with class_names (or folder names)."""
    names = params.class_names or classes
    return [params.class_prompt.format(name=name) for name in names]


def check_ipc(params: Params, meta_path: Path, source: str = "params.yaml") -> None:
    """ipc must not exceed the smallest train class, and an explicit INFER ipc_init must fit the budget
    (both known once `prepare` wrote meta.json)."""
    if not meta_path.exists():
        return
    counts = json.loads(meta_path.read_text())["train_counts"]
    try:
        infer_budget(params.ipc, len(counts), len(params.infer.teachers), params.infer.ipc_init)
    except ValueError as e:
        raise ParamsError(f"{source}: infer.{e}") from None
    if params.class_names is not None and len(params.class_names) != len(counts):
        raise ParamsError(f"{source}: class_names has {len(params.class_names)} names, the data has "
                          f"{len(counts)} classes")
    grid = (params.podd.poster_class_num_x, params.podd.poster_class_num_y)
    if grid[0] is not None and grid[0] * grid[1] != len(counts):
        raise ParamsError(f"{source}: podd.poster_class_num_x x poster_class_num_y = {grid[0]} x {grid[1]}: "
                          f"must equal the {len(counts)} classes")
    smallest = min(counts, key=counts.get)
    if params.ipc > counts[smallest]:
        raise ParamsError(
            f"{source}: ipc = {params.ipc}: above the smallest class size "
            f"({counts[smallest]} train images in class {smallest!r})"
        )
