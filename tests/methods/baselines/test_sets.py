"""Distilled sets: baseline@random is seeded and card-carrying; loading checks the card against the files."""
import json
import shutil

import pytest

from stages.data.distilled import load_set
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import sha256_file
from tests.conftest import run_stage


def make_random(project, out):
    run_stage(project, "baseline", "random", "--data", "data/digits", "--out", out)
    return project / out


def test_random_subset_is_seeded_and_balanced(prepared):
    a = make_random(prepared, "sets/a")
    b = make_random(prepared, "sets/b")
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*.png"))
    assert (a / "card.json").read_bytes() == (b / "card.json").read_bytes()  # no timestamp in a card
    per_class = {c: len(list((a / "draw0" / c).iterdir())) for c in map(str, range(10))}
    assert set(per_class.values()) == {3}
    # Each picked image is a byte copy of a train image of the same class.
    sample = next((a / "draw0" / "4").iterdir())  # random: one subset per student seed
    assert sample.read_bytes() == (prepared / "data" / "digits" / "train" / "4" / sample.name).read_bytes()
    card = json.loads((a / "card.json").read_text())
    assert card["classes"] == [str(d) for d in range(10)] and card["params"] == {"ipc": 3, "seed": 0, "draws": 2}
    assert "created" not in card and card["versions"]["torch"]


def test_a_set_whose_files_disagree_with_its_card_is_refused(prepared, tmp_path):
    source = make_random(prepared, "sets/c")
    data = prepared / "data" / "digits"
    sums = (source / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 60 and all(len(line.split("  ")[0]) == 64 for line in sums)  # `sha256sum -c` format
    assert json.loads((source / "card.json").read_text())["content"]["files"] == 60  # two draws of 30

    removed = shutil.copytree(source, tmp_path / "removed")
    next((removed / "draw0" / "7").iterdir()).unlink()
    with pytest.raises(ArtifactError, match=r"1 file\(s\) of the set are missing, e.g. \['draw0/7/"):
        load_set(removed, data)

    changed = shutil.copytree(source, tmp_path / "changed")
    victim = sorted((changed / "draw0" / "3").iterdir())[0]
    shutil.copyfile(sorted((changed / "draw0" / "5").iterdir())[0], victim)  # still a valid PNG, another digit
    with pytest.raises(ArtifactError, match=f"{victim}: content differs from SHA256SUMS"):
        load_set(changed, data)

    added = shutil.copytree(source, tmp_path / "added")
    shutil.copyfile(victim, added / "draw0" / "3" / "extra.png")
    extra = r"not in SHA256SUMS were added after the set was made, e.g. \['draw0/3/extra.png'\]"
    with pytest.raises(ArtifactError, match=extra):
        load_set(added, data)

    relisted = shutil.copytree(changed, tmp_path / "relisted")  # the list redone by hand to hide the change
    names = [line.split("  ", 1)[1] for line in sums]
    (relisted / "SHA256SUMS").write_text("".join(f"{sha256_file(relisted / n)}  {n}\n" for n in names))
    with pytest.raises(ArtifactError, match="SHA256SUMS: does not match .*card.json"):
        load_set(relisted, data)

    wrong_count = shutil.copytree(source, tmp_path / "count")
    card = json.loads((wrong_count / "card.json").read_text())
    (wrong_count / "card.json").write_text(json.dumps({**card, "num_images": 31}))
    with pytest.raises(ArtifactError, match="holds 30 images, card.json says 31"):
        load_set(wrong_count, data)

    wrong_order = shutil.copytree(source, tmp_path / "order")
    card = json.loads((wrong_order / "card.json").read_text())
    card["classes"] = card["classes"][::-1]
    (wrong_order / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="classes differ from .*classes.json"):
        load_set(wrong_order, data)

    no_card = shutil.copytree(source, tmp_path / "nocard")
    (no_card / "card.json").unlink()
    with pytest.raises(ArtifactError, match="card.json: missing"):
        load_set(no_card, data)


def test_full_set_reference_cannot_leave_data(prepared, tmp_path):
    run_stage(prepared, "baseline", "full", "--data", "data/digits", "--out", "sets/full")
    card = json.loads((prepared / "sets" / "full" / "card.json").read_text())
    assert card["images_from"] == "data/digits/train" and card["ipc"] is None
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "card.json").write_text(json.dumps({**card, "images_from": "../../etc"}))
    shutil.copyfile(prepared / "sets" / "full" / "SHA256SUMS", evil / "SHA256SUMS")  # lists nothing: no own files
    with pytest.raises(ArtifactError, match="card.json: images_from: path '../../etc' leaves its folder"):
        load_set(evil, prepared / "data" / "digits")


def test_baseline_run_is_a_typed_function_tests_call_in_process(prepared, monkeypatch):
    from pathlib import Path

    from stages.methods.baselines import baseline
    from stages.pipeline import params
    from tests.conftest import workdir

    folder = workdir(prepared, "baseline_in_process")
    monkeypatch.chdir(folder)
    p, data = params.load(), Path("data/digits")
    card = baseline.run(p, "random", data, Path("random"))
    assert card == json.loads(Path("random/card.json").read_text()) and card["draws"] == p.evaluate.seeds == 2
    draws = [{f.relative_to(Path("random", f"draw{k}")).as_posix() for f in Path("random", f"draw{k}").rglob("*.png")}
             for k in range(2)]
    assert [len(d) for d in draws] == [30, 30] and draws[0] != draws[1]  # a subset per student seed
    assert all(sum(f.startswith(f"{c}/") for f in d) == 3 for d in draws for c in map(str, range(10)))
    full = baseline.run(p, "full", data, Path("full"))
    assert full["num_images"] == 1437 and full["images_from"] == "data/digits/train"
    assert not list(Path("full").rglob("*.png"))  # by reference: the train set stays where it is
