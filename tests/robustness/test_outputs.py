"""No stage deletes or replaces what it did not create (issue 30, point 1).

Every stage that takes an output path runs `outputs.claim` before any work: an output that is, contains or
sits inside one of its inputs, the project (params.yaml, .git, ...) or another stage's artifact, or that
already holds something this stage does not write, is refused with one `error: ParamsError: <arg> ...` line,
and nothing in the project changes. The table below runs each stage's main, in-process as `python -m` would,
with each output argument set to each of its inputs and every folder above them.
"""
from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from stages.pipeline import outputs
from tests.conftest import TINY, merge, write_params
from tests.fuzz import run_inprocess, tree_digest

A = "artifacts/digits"
SET = f"{A}/ipc3/distilled/mine"
DATA = "data/digits"
TEACHER = f"{A}/teachers/convnet"

# stage: (module, argv before the outputs, {output argument: a fresh path}, the inputs it names)
STAGES = {
    "prepare": ("stages.prepare", [], {"--out": "data/new"}, ["ext/source"]),
    "teacher": ("stages.teacher", ["--arch", "convnet", "--data", DATA], {"--out": f"{A}/teachers/new"}, [DATA]),
    "baseline": ("stages.methods.baselines.baseline", ["random", "--data", DATA],
                 {"--out": f"{A}/ipc3/distilled/random"}, [DATA]),
    "rank": ("stages.methods.delt.rank", ["--teacher", TEACHER, "--data", DATA], {"--out": f"{A}/new.csv"},
             [TEACHER, DATA]),
    "select": ("stages.methods.delt.select", ["--ranking", f"{A}/ranking.csv", "--data", DATA],
               {"--out": f"{A}/ipc3/init/top"}, [f"{A}/ranking.csv", DATA]),
    "recover": ("stages.recover", ["delt", "--teachers", f"{A}/teachers", "--init", f"{A}/ipc3/init/medium",
                                   "--data", DATA],
                {"--out": f"{A}/ipc3/distilled/delt", "--stats": f"{A}/ipc3/synthesis/delt.json"},
                [f"{A}/teachers", f"{A}/ipc3/init/medium", DATA]),
    "rded": ("stages.methods.rded.realistic_crops", ["--teachers", f"{A}/teachers", "--data", DATA],
             {"--out": f"{A}/ipc3/distilled/rded"}, [f"{A}/teachers", DATA]),
    "caption": ("stages.caption", ["--data", DATA], {"--out": f"{A}/captions2"}, [DATA]),
    "diffusion": ("stages.diffusion", ["--data", DATA, "--captions", f"{A}/captions"],
                  {"--out": f"{A}/diffusion2", "--metrics": f"{A}/diffusion2.json"}, [DATA, f"{A}/captions"]),
    "diffusion_check": ("stages.diffusion_check", ["--diffusion", f"{A}/diffusion", "--teacher", TEACHER,
                                                   "--data", DATA],
                        {"--out": f"{A}/diffusion_check"}, [f"{A}/diffusion", TEACHER, DATA]),
    "latents": ("stages.latents", ["--diffusion", f"{A}/diffusion", "--data", DATA], {"--out": f"{A}/latents2"},
                [f"{A}/diffusion", DATA]),
    "prototypes": ("stages.prototypes", ["d4m", "--latents", f"{A}/latents", "--data", DATA],
                   {"--out": f"{A}/ipc3/prototypes/new"}, [f"{A}/latents", DATA]),
    "synthesize": ("stages.synthesize", ["d4m", "--diffusion", f"{A}/diffusion", "--prototypes",
                                         f"{A}/ipc3/prototypes/d4m", "--data", DATA],
                   {"--out": f"{A}/ipc3/distilled/d4m", "--stats": f"{A}/ipc3/synthesis/d4m.json"},
                   [f"{A}/diffusion", f"{A}/ipc3/prototypes/d4m.json", f"{A}/ipc3/prototypes/d4m.safetensors", DATA]),
    "poster": ("stages.methods.podd.poster", ["--data", DATA],
               {"--out": f"{A}/podd1/distilled/podd", "--stats": f"{A}/podd1/synthesis/podd.json"}, [DATA]),
    "relabel": ("stages.relabel", ["--set", SET, "--teacher", TEACHER, "--data", DATA, "--epochs", "2"],
                {"--out": f"{A}/ipc3/soft_labels/new"}, [SET, TEACHER, DATA]),
    "evaluate": ("stages.evaluate", ["--set", SET, "--labels", f"{A}/ipc3/soft_labels/mine", "--teacher", TEACHER,
                                     "--data", DATA, "--epochs", "2"],
                 {"--out": f"{A}/ipc3/metrics/new.json", "--curves": f"{A}/ipc3/curves/new.csv"},
                 [SET, f"{A}/ipc3/soft_labels/mine", TEACHER, DATA]),
    "import_set": ("stages.import_set", ["mine", "--data", DATA], {"--out": f"{A}/ipc3/distilled/imported"},
                   [DATA, "ext/mine"]),
    "export_hub": ("stages.export_hub", ["--set", SET, "--data", DATA], {"--out": "hub/mine"},
                   [SET, DATA, f"{A}/ipc3/metrics/mine.json", f"{A}/ipc3/soft_labels/mine"]),
    "report": ("stages.report", ["--metrics", f"{A}/ipc3/metrics", "--sets", f"{A}/ipc3/distilled", "--data", DATA],
               {"--out": f"{A}/ipc3/report", "--summary": f"{A}/summary.json", "--table": f"{A}/results.csv"},
               [f"{A}/ipc3/metrics", f"{A}/ipc3/distilled", DATA]),
    "plots_page": ("stages.plots_page", [], {"--out": "artifacts/plots_page.html"}, []),
}
# `verify` writes nothing: it takes no output path.

# Existing things no stage above created, each refused as any stage's output.
FOREIGN = ["params.yaml", ".", "..", f"{A}/ipc3/distilled/other", f"{TEACHER}/sub", f"{DATA}/new", "notes.txt"]


def layout(root: Path) -> None:
    """A project with one small stand-in file per artifact: claim runs before anything is read."""
    files = {
        f"{DATA}/classes.json": "[]", f"{DATA}/meta.json": "{}", f"{DATA}/train/0/a.png": "x",
        f"{TEACHER}/meta.json": "{}", f"{TEACHER}/model.safetensors": "x", f"{A}/ranking.csv": "path\n",
        f"{A}/ipc3/init/medium/selection.json": "{}", f"{SET}/card.json": json.dumps({"method": "mine"}),
        f"{A}/ipc3/distilled/other/card.json": json.dumps({"method": "other"}),
        f"{A}/ipc3/soft_labels/mine/fkd.json": "{}", f"{A}/ipc3/metrics/mine.json": '{"protocols": {}}',
        f"{A}/captions/captions.jsonl": "", f"{A}/diffusion/model_index.json": "{}",
        f"{A}/latents/latents.safetensors": "x", f"{A}/latents/index.csv": "row\n",
        f"{A}/ipc3/prototypes/d4m.json": "{}", f"{A}/ipc3/prototypes/d4m.safetensors": "x",
        "ext/mine/0/a.png": "x", "ext/source/train/0/a.png": "x", "notes.txt": "mine", "notes.json": '{"mine": 1}',
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    write_params(root, merge(TINY, {"external": {"mine": {"path": "ext/mine", "method": "mine"}},
                                    "dataset": "imagefolder", "prepare": {"root": "ext/source"}}))


# prototypes' --out is a prefix (<out>.json, <out>.safetensors): refused where those names would land inside
# an input or an artifact, or on a file that is not a prototypes record.
PREFIX = {"prototypes": [f"{A}/latents/new", f"{DATA}/new", f"{DATA}/meta", f"{A}/ipc3/metrics/mine",
                         f"{TEACHER}/model", "notes", ".", ".."]}


def candidates(inputs: list[str], stage: str = "") -> list[str]:
    """Each input, every folder above it up to the project, and the foreign things."""
    if stage in PREFIX:
        return PREFIX[stage]
    found = []
    for name in inputs:
        path = Path(name)
        found += [path.as_posix()] + [p.as_posix() for p in path.parents if p != Path(".")]
    return list(dict.fromkeys(found + FOREIGN))


def main_of(module: str):
    return importlib.import_module(module).main


def argv(stage: str, replace: dict[str, str] | None = None) -> list[str]:
    _, args, outs, _ = STAGES[stage]
    out_args = []
    for arg, path in {**outs, **(replace or {})}.items():
        out_args += [arg, path]
    return [*args, *out_args]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outputs") / "project"
    folder.mkdir()
    layout(folder)
    return folder


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_output_argument_is_refused_over_inputs_parents_and_foreign_artifacts(root, stage):
    module, _, outs, inputs = STAGES[stage]
    before = tree_digest(root.parent)
    tried = []
    for arg in outs:
        for value in candidates(inputs, stage):
            outcome = run_inprocess(main_of(module), argv(stage, {arg: value}), root)
            errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
            assert outcome.code == 2 and len(errors) == 1, (stage, arg, value, outcome.code, outcome.stderr[-800:])
            assert errors[0].startswith(f"error: ParamsError: {arg.split()[0]} {value}"), (stage, arg, value, errors)
            tried.append(f"{arg} {value}")
    assert tree_digest(root.parent) == before, f"{stage} changed the project"
    assert len(tried) == len(outs) * len(candidates(inputs, stage))


class Claimed(Exception):
    pass


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_claims_its_outputs_first_and_accepts_fresh_ones(root, stage, monkeypatch):
    """Every stage calls claim before any work, and its usual (fresh) output paths pass it."""
    module, _, outs, _ = STAGES[stage]
    seen = {}
    original = outputs.claim

    def spy(name, claimed, inputs):
        original(name, claimed, inputs)
        seen.update({arg: path for arg, (path, _) in claimed.items() if path is not None})
        raise Claimed()

    monkeypatch.setattr(outputs, "claim", spy)
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", [module, *argv(stage)])
    with pytest.raises(Claimed):
        main_of(module)()
    assert {arg.split(" ")[0] for arg in seen} == set(outs)


def test_export_hub_over_the_folder_of_two_sets_deletes_nothing(tmp_path, monkeypatch):
    """The reported loss: `export_hub --set .../ipc2/distilled/toy --out .../ipc2` exited 0 and deleted the sets
    and their soft labels. Now one line, and every file is still there."""
    from stages import export_hub
    from tests.pipeline.test_hub import make_set

    set_dir, data, _ = make_set(tmp_path)
    shutil.copytree(set_dir, set_dir.with_name("other"))
    ipc_dir = set_dir.parent.parent
    before = tree_digest(ipc_dir)
    outcome = run_inprocess(export_hub.main, ["--set", str(set_dir), "--out", str(ipc_dir), "--data", str(data)],
                            tmp_path)
    assert outcome.code == 2, outcome.stderr
    assert outcome.stderr.strip() == (f"error: ParamsError: --out {ipc_dir}: contains the input --set {set_dir}; "
                                      "export_hub writes only its own output there, and would replace what it holds "
                                      "(choose another path)")
    assert tree_digest(ipc_dir) == before
    outcome = run_inprocess(export_hub.main, ["--set", str(set_dir), "--out", str(set_dir.with_name("other"))],
                            tmp_path)
    assert outcome.stderr.strip().startswith(f"error: ParamsError: --out {set_dir.with_name('other')}: already holds "
                                             "a distilled set (card.json), not a Hub dataset folder")
    assert tree_digest(ipc_dir) == before


def test_a_stage_replaces_its_own_output_and_a_link_not_its_target(tmp_path, monkeypatch):
    """What claim lets through: a stage's own previous output, an empty folder, a fresh path; and atomic_dir
    replaces a symlinked output by removing the link, never the folder it points to."""
    from stages.pipeline.outputs import atomic_dir, claim, set_kind

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "card.json").write_text('{"method": "random"}')
    (tmp_path / "empty").mkdir()
    for name in ("mine", "empty", "fresh/deep"):
        claim("baseline@random", {"--out": (tmp_path / name, set_kind("random"))}, {"--data": tmp_path / "data"})
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep.txt").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with atomic_dir(tmp_path / "link") as tmp:
        (tmp / "new.txt").write_text("new")
    assert (tmp_path / "target" / "keep.txt").read_text() == "keep"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link" / "new.txt").is_file()


def test_an_output_name_too_long_for_the_temp_folder_is_refused_not_a_traceback(tmp_path):
    """atomic_dir writes `.<name>.tmp-<8>` beside the output: a 250-byte name would fail in mkdtemp."""
    from stages.methods.baselines import baseline

    write_params(tmp_path, TINY)
    name = "x" * 250
    outcome = run_inprocess(baseline.main, ["random", "--data", "data/digits", "--out", f"sets/{name}"], tmp_path)
    assert outcome.code == 2 and outcome.stderr.strip() == (
        f"error: ParamsError: --out sets/{name}: the name {'x' * 40!r}... is 250 bytes; with the 14 ddpipe adds for "
        "its temp and progress folders it must stay within the 255-byte limit of a file name")
    assert not (tmp_path / "sets").exists()
