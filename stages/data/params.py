"""The `prepare` section: where the dataset comes from and how it is written to data/<ds>."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import Field

from stages.pipeline.params import Fraction, Positive, Section

ORDER = 10


class Prepare(Section):
    image_size: Positive
    val_fraction: Fraction
    crops: Annotated[int, Field(ge=2)]  # photos only: crops per class, train + val
    root: Optional[str]
    download: bool
    classes: Optional[list[str]]
    on_corrupt: Literal["fail", "skip"]
    # (BaseModel has a .copy) false: a manifest of the source files instead of PNG copies (imagefolder only)
    copy_: bool = Field(alias="copy")


class ExternalSet(Section):
    """A distilled set made elsewhere (an ImageFolder or a Hub export) that import_set@<name> brings in."""
    path: Annotated[str, Field(min_length=1)]  # its folder (class sub-folders of images, or an export's)
    # the method name on its card and in the report; absent or null = the entry's name (an entry is the user's
    # own data, not a knob with a default in params.yaml, so this one key may be left out)
    method: Optional[str] = None


SECTIONS = {"prepare": Prepare, "external": dict[str, ExternalSet]}


def check(p) -> None:
    if p.dataset in ("cifar10", "cifar100", "imagefolder") and p.prepare.root is None:
        raise ValueError(f"prepare.root = None: dataset {p.dataset!r} needs a source folder")
    from stages.methods import set_names  # the sets the method packages declare (dvc.yaml's relabel/evaluate)

    builtin = set_names()  # an external set may not reuse their names or outputs
    methods = set(builtin)
    for name, entry in p.external.items():
        method = entry.method or name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in builtin:
            raise ValueError(f"external.{name}: the name must be letters, digits, '_', '.', '-' and not one "
                             f"of the built-in sets {list(builtin)}")
        if method in methods:
            raise ValueError(f"external.{name}.method = {method!r}: already names another evaluated set; "
                             f"pick another (e.g. '{method}-external'), report rows are keyed by method")
        methods.add(method)
