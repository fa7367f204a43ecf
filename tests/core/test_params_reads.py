"""Every params key a stage's code reads is listed in the stage's dvc.yaml `params:` (stages/layout/params_reads.py,
read with ast): else `dvc exp run -S key=value` reruns nothing and the result is silently stale, as when prepare
read prepare.crops unlisted."""
from __future__ import annotations

from pathlib import Path

from stages.layout import params_reads
from stages.layout.dvc_yaml import DVC_YAML


def reads(stage: str) -> set[str]:
    report = next(r for r in params_reads.reports() if r.stage == stage)
    return {key for read in report.reads for key in read.keys}


def without(tmp_path, line: str, after: str = "") -> Path:
    """dvc.yaml less the first line that starts with `line` after `after`, written to tmp_path."""
    text = DVC_YAML.read_text()
    start = text.index("\n" + line, text.index(after)) + 1
    (tmp_path / "dvc.yaml").write_text(text[:start] + text[text.index("\n", start) + 1:])
    return tmp_path / "dvc.yaml"


def test_every_key_a_stage_reads_is_listed():
    assert params_reads.unlisted() == [], "add these keys to the stage's params in dvc.yaml"


def test_every_listed_key_is_read_or_interpolated():
    """The other way (harmless, but dvc.yaml lists only what a stage reads), and proof the analysis sees reads:
    if it lost them, listed keys would show up here."""
    unread = {r.stage: [e for e in r.unread() if e not in r.interpolated] for r in params_reads.reports()}
    assert {s: e for s, e in unread.items() if e} == {}


def test_an_unlisted_read_is_reported(tmp_path):
    found = params_reads.unlisted(without(tmp_path, "      - prepare.image_size"))
    assert found and all(line.startswith("prepare: prepare.image_size (stages.prepare:") for line in found)


def test_dynamic_gpu_and_recover_reads_are_reported(tmp_path):
    """getattr(p, method) is covered by the templated section only; gpu is read where accel's functions run;
    a method's recover reads the shared block."""
    synthesize = params_reads.unlisted(without(tmp_path, "        - ${item}", "  synthesize:"))
    assert any(line.startswith("synthesize: *.synthesis.steps (stages.synthesize:") for line in synthesize)
    relabel = params_reads.unlisted(without(tmp_path, "        - gpu", "  relabel:"))
    assert {line.split(" (")[0] for line in relabel} == {"relabel: gpu", "relabel_external: gpu"}  # one list
    recover = params_reads.unlisted(without(tmp_path, "        - recover", "  recover:"))
    assert any(line.startswith("recover: recover.lr (") for line in recover)


def test_what_the_analysis_resolves():
    relabel = reads("relabel")  # model_dump(include=...) and helpers annotated `cfg: Evaluate`
    assert {k for k in relabel if k.startswith("evaluate.")} == {
        "evaluate.batch_size", "evaluate.crop_scale", "evaluate.flip", "evaluate.mix", "evaluate.mix_alpha"}
    recover = reads("recover")  # engine_config(section): an unannotated parameter bound by its callers
    assert {"*.recover.lr", "recover.lr", "delt.round_iterations", "infer.ipc_init"} <= recover
    assert {"models.*.width", "teacher.source.*.weights", "gpu"} <= reads("teacher")
    assert "prepare.crops" in reads("prepare")
    # params.load's validation (class_names against the data, the launcher, the checks) is not a read
    assert not {"class_names", "launcher", "teacher.archs", "gpu"} & reads("prepare")
    assert "gpu" not in reads("select")  # it imports the models package but runs no model
