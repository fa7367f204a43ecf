"""One validated read path per artifact kind a stage reads.

Every file a stage reads may be damaged or come from someone else (`dvc pull`, `dvc import`, a shared set).
Each kind is read here (or by the module named below, which uses these helpers) and checked before any value
is used: bytes must be UTF-8, JSON must parse without NaN/Infinity, each JSON kind has a pydantic schema, CSV
rows are typed, counted and de-duplicated, and every name that becomes a path is one safe path component.
A fault is one `PipelineError` naming the file (and line or key), which `cli.run` prints as
`error: <Kind>: ...` with exit 2.

Kinds and where they are read (docs/hardening.md lists what each check refuses):
  params.yaml                  stages/pipeline/params.py (load)
  images                       stages/data/folder.py (decode_rgb, with the pixel limit below)
  classes.json, data meta.json read_classes, read_data_meta (here)
  ranking.csv                  stages/methods/delt/ranking.py (read_ranking)
  card.json, SHA256SUMS        stages/pipeline/card.py (read_card, verify_content)
  labels safetensors           stages/data/distilled.py (read_labels, with labels_metadata here)
  FKD Parquet, fkd.json        read_fkd_meta (here), stages/training/soft_labels.py (read_checked_epoch)
  evaluate's metrics JSON      stages/evaluation/metrics.py (read_metrics), read by report
  captions folder (+ record)   stages/captions/jsonl.py (read_captions)
  latents + index.csv          stages/data/latents_folder.py (read_latents)
  teacher weights + meta.json  stages/models/__init__.py (load_checkpoint, with TeacherMeta here)
  diffusion folder             stages/generation/pipeline_folder.py (check_pipeline_folder)
  prototypes JSON + tensors    stages/synthesize.py (load_prototypes, with stages/clustering/record.py)
  resume state                 stages/pipeline/resume.py (Resume)
  content records              write_record, verify_record (here): SHA256SUMS for teachers, captions, latents, ...
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.pipeline.errors import ArtifactError, DataError, PipelineError, ResourceError
from stages.pipeline.outputs import sha256_file

M = TypeVar("M", bound=BaseModel)

# --- names that become paths -------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def component(name: Any, source: str, error: type[PipelineError] = DataError) -> str:
    """`name` as one safe path component (a class name, a file stem): a non-empty string without '/', '\\',
    control characters or a leading '.', not '.' or '..', at most 255 bytes. `source` says where it was read."""
    if not isinstance(name, str) or not name or _UNSAFE.search(name) or name.startswith(".") \
            or re.match(r"^[A-Za-z]:", name) or len(name.encode("utf-8", "surrogatepass")) > 255:
        raise error(f"{source}: name {name!r} is not a single safe path component (no '/', '\\', '..', leading '.', "
                    "control characters or drive prefix; at most 255 bytes)")
    return name


def class_names(names: Any, source: str, error: type[PipelineError] = DataError) -> list[str]:
    """A class list: a non-empty list of unique safe names."""
    if not isinstance(names, list) or not names:
        raise error(f"{source}: expected a non-empty list of class names, got {type(names).__name__}")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        component(name, f"{source}[{i}]", error)
        if name in seen:
            raise error(f"{source}[{i}]: class {name!r} listed twice (first at [{seen[name]}])")
        seen[name] = i
    return names


# --- bytes, text, JSON --------------------------------------------------------------------------------------

def read_text(path: Path, error: type[PipelineError] = ArtifactError, hint: str = "") -> str:
    """The file's text; missing or not UTF-8 is an error naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: missing{'; ' + hint if hint else ''}") from None
    except IsADirectoryError:
        raise error(f"{path}: a folder, expected a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, source: str, error: type[PipelineError] = ArtifactError) -> Any:
    """Strict JSON: NaN, Infinity and -Infinity (which Python's json accepts) are refused."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise error(f"{source}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except ValueError as e:
        raise error(f"{source}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{source}: not valid JSON (nested too deeply)") from None


def read_json(path: Path, error: type[PipelineError] = ArtifactError, hint: str = "") -> Any:
    return parse_json(read_text(path, error, hint), str(path), error)


def validated(model: type[M], raw: Any, source: str, error: type[PipelineError] = ArtifactError) -> M:
    """`raw` through `model`; the first fault as `<source>: <key>: <message>`."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(map(str, first["loc"])) or "(top level)"
        raise error(f"{source}: {key}: {first['msg'].removeprefix('Value error, ')}") from None


def read_model(model: type[M], path: Path, error: type[PipelineError] = ArtifactError, hint: str = "") -> M:
    return validated(model, read_json(path, error, hint), str(path), error)


# --- the prepared dataset: classes.json and meta.json -------------------------------------------------------

class FileList(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    count: Annotated[int, Field(ge=0)]
    files: list[str]


class DataMeta(BaseModel):
    """data/<ds>/meta.json as `prepare` writes it. Extra keys are kept (a newer prepare may add some)."""
    model_config = ConfigDict(extra="allow", strict=True)

    dataset: str
    image_size: Annotated[int, Field(gt=0, le=1 << 16)]
    classes: list[str]
    classes_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    train_counts: dict[str, Annotated[int, Field(gt=0)]]
    val_counts: dict[str, Annotated[int, Field(ge=0)]]
    mean: Annotated[list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]], Field(min_length=3, max_length=3)]
    skipped: FileList
    ignored: FileList

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str]) -> list[str]:
        try:
            return class_names(value, "classes")
        except DataError as e:
            raise ValueError(str(e).removeprefix("classes")) from None


HINT = "run the prepare stage first (dvc repro prepare)"


def read_classes(data_dir: str | Path) -> list[str]:
    """data/<ds>/classes.json: a non-empty list of unique names, each one safe path component."""
    path = Path(data_dir) / "classes.json"
    return class_names(read_json(path, DataError, HINT), str(path))


def read_data_meta(data_dir: str | Path) -> DataMeta:
    """data/<ds>/meta.json, validated and checked against classes.json (names, order and hash)."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    meta = read_model(DataMeta, path, DataError, HINT)
    classes_path = data_dir / "classes.json"
    classes = read_classes(data_dir)
    if meta.classes != classes:
        raise DataError(f"{path}: classes differ from {classes_path}; run prepare again")
    if meta.classes_sha256 != sha256_file(classes_path):
        raise DataError(f"{path}: classes_sha256 {meta.classes_sha256[:12]}... does not hash {classes_path}; "
                        "run prepare again")
    for key in ("train_counts", "val_counts"):
        if sorted(getattr(meta, key)) != sorted(classes):  # JSON keys are written sorted, not in class order
            raise DataError(f"{path}: {key}: keys are not the classes of {classes_path}")
    if meta.skipped.count != len(meta.skipped.files) or meta.ignored.count != len(meta.ignored.files):
        raise DataError(f"{path}: skipped/ignored count differs from its file list")
    return meta


# --- teacher meta.json ---------------------------------------------------------------------------------------

class TeacherMeta(BaseModel):
    """A teacher's meta.json: what rebuilding the model and feeding it needs."""
    model_config = ConfigDict(extra="allow", strict=True)

    arch: Annotated[str, Field(min_length=1)]
    config: Optional[dict]
    num_classes: Annotated[int, Field(gt=0)]
    image_size: Annotated[int, Field(gt=0, le=1 << 16)]
    classes_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    mean: Annotated[list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]], Field(min_length=3, max_length=3)]


# --- labels safetensors metadata ------------------------------------------------------------------------------

def label_paths(metadata: Optional[dict], path: Path) -> list[str]:
    """A labels file's `paths` metadata: a JSON list of unique '<class>/<file>' strings."""
    from stages.pipeline.paths import relative

    if not metadata or "paths" not in metadata:
        raise ArtifactError(f"{path}: no 'paths' metadata (which image each row labels)")
    rows = parse_json(metadata["paths"], f"{path}: metadata 'paths'")
    if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
        raise ArtifactError(f"{path}: metadata 'paths' is not a list of strings")
    seen: set[str] = set()
    for i, ref in enumerate(rows):
        relative(ref, f"{path}: metadata 'paths'[{i}]")
        if ref in seen:
            raise ArtifactError(f"{path}: metadata 'paths'[{i}]: {ref!r} listed twice")
        seen.add(ref)
    return rows


# --- FKD labels: fkd.json and the epoch Parquet files ---------------------------------------------------------

class FkdMeta(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    epochs: Annotated[int, Field(gt=0)]
    batch_size: Annotated[int, Field(gt=0)]
    num_images: Annotated[int, Field(gt=0)]
    # the content record: sha256 of each epoch file (absent in labels made before it existed: not checked)
    files: Optional[dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]] = None


def fkd_files(labels_dir: Path) -> dict[str, str]:
    """fkd.json's `files`: every epoch file's sha256, so a changed or swapped epoch is refused when read."""
    return {p.name: sha256_file(p) for p in sorted(Path(labels_dir).glob("epoch_*.parquet"))}


def read_fkd_meta(labels_dir: Path) -> FkdMeta:
    meta = read_model(FkdMeta, Path(labels_dir) / "fkd.json", ArtifactError, "run relabel for this set first")
    if meta.files is not None and len(meta.files) != meta.epochs:
        raise ArtifactError(f"{Path(labels_dir) / 'fkd.json'}: files lists {len(meta.files)} epochs, epochs = "
                            f"{meta.epochs}")
    return meta


# --- images: a pixel limit ---------------------------------------------------------------------------------------

PIXELS_ENV = "DDPIPE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (about 0.25 GB of RGB)


def max_pixels() -> int:
    """The most pixels one image may have before it is decoded (DDPIPE_MAX_PIXELS; 0 = no limit)."""
    from stages.pipeline.errors import env_number

    return int(env_number(PIXELS_ENV, DEFAULT_MAX_PIXELS, "a pixel count (0 = no limit)"))


def check_pixels(path: Path, size: tuple[int, int]) -> None:
    limit = max_pixels()
    width, height = size
    if limit and width * height > limit:
        raise ResourceError(f"{path}: {width}x{height} = {width * height:,} pixels, above the limit of {limit:,} "
                            f"({PIXELS_ENV}); decoding it would take {3 * width * height / 2 ** 20:,.0f} MiB")


# --- content records: SHA256SUMS for folders read as inputs ----------------------------------------------------

SUMS = "SHA256SUMS"


def write_record(folder: Path, files: list[str] | None = None) -> None:
    """`folder/SHA256SUMS` over `files` (default: every file in it), in `sha256sum` format."""
    folder = Path(folder)
    if files is None:
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file() and p.name != SUMS)
    (folder / SUMS).write_text("".join(f"{sha256_file(folder / f)}  {f}\n" for f in sorted(files)))


def verify_record(folder: Path, what: str) -> list[str]:
    """Check `folder`'s files against its SHA256SUMS; a missing list, a changed or missing file is refused.
    Returns the files listed. Files not listed (a newer stage's extras) are not read by the caller's check."""
    folder = Path(folder)
    sums = folder / SUMS
    if not sums.is_file():
        raise ArtifactError(f"{sums}: missing; {what} {folder} has no content record (made before records existed, "
                            "or fetched in part): rebuild it or fetch the whole folder (dvc pull)")
    listed = parse_sums(sums, read_text(sums))
    for name, digest in listed.items():
        target = folder / name
        if not target.is_file():
            raise ArtifactError(f"{target}: missing (listed in {sums}); fetch the whole folder again (dvc pull)")
        if sha256_file(target) != digest:
            raise ArtifactError(f"{target}: content differs from {sums} (changed after {what} was made)")
    return list(listed)


def parse_sums(sums: Path, text: str) -> dict[str, str]:
    """{path: sha256} from a SHA256SUMS text: each line '<64 hex>  <path>', the path inside the list's folder
    (no '..', absolute path or symlink out of it), listed once."""
    from stages.pipeline.paths import inside

    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name:
            raise ArtifactError(f"{sums}:{number}: {line[:80]!r} is not '<sha256>  <path inside the folder>'")
        inside(sums.parent, name, f"{sums}:{number}")
        if name in listed:
            raise ArtifactError(f"{sums}:{number}: {name!r} listed twice")
        listed[name] = digest
    return listed
