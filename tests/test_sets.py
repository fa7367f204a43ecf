"""Distilled sets: baseline@random is seeded and card-carrying; loading checks the card against the files."""
import json
import shutil

import pytest

from stages.data.distilled import load_set
from stages.pipeline.errors import DataError
from tests.conftest import run_stage


def make_random(project, out):
    run_stage(project, "baseline", "random", "--data", "data/digits", "--out", out)
    return project / out


def test_random_subset_is_seeded_and_balanced(prepared):
    a = make_random(prepared, "sets/a")
    b = make_random(prepared, "sets/b")
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*.png"))
    assert (a / "card.json").read_bytes() == (b / "card.json").read_bytes()  # SOURCE_DATE_EPOCH pins `created`
    per_class = {c: len(list((a / c).iterdir())) for c in map(str, range(10))}
    assert set(per_class.values()) == {3}
    # Each picked image is a byte copy of a train image of the same class.
    sample = next((a / "4").iterdir())
    assert sample.read_bytes() == (prepared / "data" / "digits" / "train" / "4" / sample.name).read_bytes()
    card = json.loads((a / "card.json").read_text())
    assert card["classes"] == [str(d) for d in range(10)] and card["params"] == {"ipc": 3, "seed": 0}
    assert card["created"] == "1970-01-01T00:00:00+00:00" and card["versions"]["torch"]


def test_a_set_whose_files_disagree_with_its_card_is_refused(prepared, tmp_path):
    source = make_random(prepared, "sets/c")
    data = prepared / "data" / "digits"
    wrong_count = shutil.copytree(source, tmp_path / "count")
    next((wrong_count / "7").iterdir()).unlink()
    with pytest.raises(DataError, match="holds 29 images, card.json says 30"):
        load_set(wrong_count, data)

    wrong_order = shutil.copytree(source, tmp_path / "order")
    card = json.loads((wrong_order / "card.json").read_text())
    card["classes"] = card["classes"][::-1]
    (wrong_order / "card.json").write_text(json.dumps(card))
    with pytest.raises(DataError, match="classes differ from .*classes.json"):
        load_set(wrong_order, data)

    no_card = shutil.copytree(source, tmp_path / "nocard")
    (no_card / "card.json").unlink()
    with pytest.raises(DataError, match="card.json: missing"):
        load_set(no_card, data)


def test_full_set_reference_cannot_leave_data(prepared, tmp_path):
    run_stage(prepared, "baseline", "full", "--data", "data/digits", "--out", "sets/full")
    card = json.loads((prepared / "sets" / "full" / "card.json").read_text())
    assert card["images_from"] == "data/digits/train" and card["ipc"] is None
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "card.json").write_text(json.dumps({**card, "images_from": "../../etc"}))
    with pytest.raises(DataError, match="images_from = '../../etc': must be a folder under the project's data/"):
        load_set(evil, prepared / "data" / "digits")
