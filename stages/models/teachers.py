"""The teachers a stage reads together (recover's methods, RDED's observer), checked against the data."""
from __future__ import annotations

from pathlib import Path

from stages.models import load_checkpoint
from stages.pipeline.artifacts import DataMeta
from stages.pipeline.errors import PipelineError
from stages.pipeline.outputs import sha256_file


class Teachers:
    """The teachers a method reads, from artifacts/<ds>/teachers/<arch>, checked against the data."""

    def __init__(self, root: Path, archs: list[str], data_meta: DataMeta):
        self.models, self.meta, self.sha256 = [], [], []
        for arch in archs:
            model, meta = load_checkpoint(root / arch, data_meta.classes_sha256)
            if meta["image_size"] != data_meta.image_size:
                raise PipelineError(f"{root / arch / 'meta.json'}: image_size = {meta['image_size']}, data is "
                                    f"{data_meta.image_size} px; retrain the teacher")
            self.models.append(model)
            self.meta.append(meta)
            self.sha256.append(sha256_file(root / arch / "model.safetensors"))
        norms = {(tuple(m["mean"]), tuple(m["std"])) for m in self.meta}
        if len(norms) > 1:  # one image file must mean the same pixels to every teacher
            raise PipelineError(f"teachers {archs} use different normalisations {sorted(norms)}")
        self.archs, self.mean, self.std = archs, self.meta[0]["mean"], self.meta[0]["std"]

    def card(self) -> dict:
        return {"archs": self.archs, "sha256": self.sha256}
