"""evaluate's metrics JSON (ipc<N>/metrics/<set>.json): its schema and its one read path, used by report and
the Hub export."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.pipeline.artifacts import read_model
from stages.pipeline.errors import ArtifactError


Accuracy = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class MeanStd(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    mean: Accuracy
    std: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ProtocolMetrics(BaseModel):
    """One protocol's results over the seeds."""
    model_config = ConfigDict(extra="allow", strict=True)

    top1: MeanStd
    top5: MeanStd
    top1_best: MeanStd
    per_seed_top1: Annotated[list[Accuracy], Field(min_length=1)]


class EvaluateMetrics(BaseModel):
    """A metrics JSON as evaluate writes it: the keys report reads. Extra keys are kept; `students`, `draws` and
    `label_bytes` may be absent (files made before evaluate wrote them)."""
    model_config = ConfigDict(extra="allow", strict=True)

    method: Annotated[str, Field(min_length=1)]
    ipc: Optional[Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0, allow_inf_nan=False)]]  # None: full
    images: Annotated[int, Field(gt=0)]
    pixels: Annotated[int, Field(gt=0)]
    bytes: Annotated[int, Field(ge=0)]
    train_bytes: Annotated[int, Field(gt=0)]
    label_bytes: Optional[dict[str, Optional[Annotated[int, Field(ge=0)]]]] = None
    draws: Optional[Annotated[int, Field(gt=0)]] = None
    seeds: Annotated[int, Field(gt=0)]
    epochs: Annotated[int, Field(gt=0)]
    student: Annotated[str, Field(min_length=1)]
    protocols: dict[str, ProtocolMetrics]
    students: Optional[dict[str, dict[str, ProtocolMetrics]]] = None
    teacher_fidelity: Accuracy
    intra_class_cosine: Optional[Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)]]

    @model_validator(mode="after")
    def _every_student_and_seed(self) -> "EvaluateMetrics":
        """`protocols` is the first student's entry of `students`; every student has results for the same
        protocols, each from `seeds` seeds (report compares sets seed by seed)."""
        if self.students is not None:
            if self.students.get(self.student) != self.protocols:
                raise ValueError(f"students.{self.student}: differs from protocols (the results of student "
                                 f"{self.student!r})")
            for arch, results in self.students.items():
                if set(results) != set(self.protocols):
                    raise ValueError(f"students.{arch}: protocols {sorted(results)}, expected those of protocols: "
                                     f"{sorted(self.protocols)}")
        for arch, results in (self.students or {self.student: self.protocols}).items():
            for protocol, r in results.items():
                if len(r.per_seed_top1) != self.seeds:
                    raise ValueError(f"students.{arch}.{protocol}.per_seed_top1: {len(r.per_seed_top1)} values, "
                                     f"seeds = {self.seeds}")
        return self


def read_metrics(path: Path) -> EvaluateMetrics:
    return read_model(EvaluateMetrics, path, ArtifactError, "run the evaluate stage for this set first")
