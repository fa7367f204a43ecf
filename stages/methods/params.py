"""The `external` section: distilled sets made elsewhere, evaluated beside the methods' own sets (docs/hub.md).
An entry may not take a registered set's name or method (report rows are keyed by method)."""
from __future__ import annotations

import re
from typing import Annotated, Optional

from pydantic import Field

from stages.methods import set_names
from stages.pipeline.params import Section

ORDER = 86


class ExternalSet(Section):
    """A distilled set made elsewhere (an ImageFolder or a Hub export) that import_set@<name> brings in."""
    path: Annotated[str, Field(min_length=1)]  # its folder (class sub-folders of images, or an export's)
    # the method name on its card and in the report; absent or null = the entry's name (an entry is the user's
    # own data, not a knob with a default in params.yaml, so this one key may be left out)
    method: Optional[str] = None


SECTIONS = {"external": dict[str, ExternalSet]}


def check(p) -> None:
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
