"""DELT (stages/methods/delt, docs/methods/delt.md): the ranking and the medium-first selection of real images,
EarlyLate's rounds (when each rank joins, how long each class runs) and the recipe's span, class-major batches,
and the rank and select stages. The recover stage's DELT run is in tests/engines/test_recover_stage.py."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stages.methods import recipe
from stages.methods.delt.earlylate import class_rounds, iterations_per_rank, join_rounds, round_sizes
from stages.methods.delt.recipe import delt_span
from stages.methods.delt.selection import medium_order, select
from tests.conftest import run_stage, tiny_params, workdir
from tests.support.models import tiny_teacher


def span_params(ipc: int, iterations: int, round_iterations: int, min_iterations: int | None, seed: int = 0):
    """What delt_span reads of the params."""
    return SimpleNamespace(ipc=ipc, seed=seed, delt=SimpleNamespace(
        round_iterations=round_iterations, min_iterations=min_iterations,
        recover=SimpleNamespace(iterations=iterations)))


# selection

def test_medium_order_alternates_outward_from_the_median():
    assert medium_order(7) == [4, 5, 3, 6, 2, 1, 0]
    assert medium_order(6) == [3, 4, 2, 5, 1, 0]
    assert sorted(medium_order(11)) == list(range(11))


def test_selection_criteria():
    scores = np.array([0.5, 0.9, 0.1, 0.7, 0.3])  # ascending positions: 2, 4, 0, 3, 1
    assert select(scores, 2, "top") == [1, 3]
    assert select(scores, 2, "min") == [2, 4]
    assert select(scores, 3, "medium") == [3, 1, 0]  # median position m = 3 → 3, 4, 2 in ascending order
    with pytest.raises(ValueError, match="criterion 'best'"):
        select(scores, 1, "best")


# EarlyLate

def test_earlylate_rounds_match_the_reference_counts():
    assert round_sizes(50, 8) == [7, 7, 6, 6, 6, 6, 6, 6]
    counts = iterations_per_rank(50, 4000, 500)
    assert counts[:7] == [4000] * 7 and counts[7:14] == [3500] * 7 and counts[44:] == [500] * 6
    assert sum(counts) == 115_500  # vs 50 × 4000 = 200,000 for SRe2L: −42.25 %
    assert iterations_per_rank(10, 4000, 500) == [4000, 4000, 3500, 3500, 3000, 2500, 2000, 1500, 1000, 500]
    assert join_rounds(3, 8) == [0, 1, 2]
    assert round_sizes(7, 3) == [3, 2, 2] and join_rounds(7, 3) == [0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("ipc, rounds", [(7, 3), (10, 4), (3, 8), (50, 8), (1, 5)])
def test_join_rounds_fill_the_earlier_rounds_first(ipc, rounds):
    """Rank k joins in a round no earlier than rank k-1's; round r holds round_sizes[r] ranks, the sizes differing
    by at most one with the larger ones first (ranks are best first: the best images get the most updates)."""
    sizes, joins = round_sizes(ipc, rounds), join_rounds(ipc, rounds)
    assert sum(sizes) == ipc == len(joins) and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert joins == sorted(joins) and [joins.count(r) for r in range(rounds)] == sizes
    assert iterations_per_rank(ipc, rounds * 100, 100) == [(rounds - j) * 100 for j in joins]


def test_min_iterations_stops_classes_at_random_rounds():
    rng = np.random.default_rng(0)
    assert class_rounds(5, 400, 100, 400, rng) == [4] * 5  # DELT's scripts: every class runs all rounds
    rounds = class_rounds(200, 400, 100, 200, rng)
    assert set(rounds) == {2, 3, 4}


# the recipe's span: (join, stop) iterations of every image

def test_delt_spreads_the_ipc_over_each_classs_own_rounds():
    """IPC 10, 500 iterations in rounds of 100, min_iterations 200: a class drawing 3 rounds runs all ranks."""
    p = SimpleNamespace(ipc=10, seed=0, delt=SimpleNamespace(round_iterations=100, min_iterations=200,
                                                              recover=SimpleNamespace(iterations=500)))
    labels, ranks = torch.arange(20).repeat_interleave(10), torch.arange(10).repeat(20)
    join, stop = delt_span(p, 20)(labels, ranks)
    assert (stop > join).all()  # every rank of every class runs
    stops = stop.view(20, 10)[:, 0] // 100
    assert set(stops.tolist()) == {2, 3, 4, 5}
    three = int(torch.nonzero(stops == 3)[0])
    assert (join.view(20, 10)[three] // 100).tolist() == join_rounds(10, 3) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    full = int(torch.nonzero(stops == 5)[0])  # a class running every round keeps DELT's usual schedule
    assert (join.view(20, 10)[full] // 100).tolist() == join_rounds(10, 5)


def test_delt_span_without_min_iterations_runs_every_class_through_every_round():
    """The shipped schedule (min_iterations null): IPC 3 over 20 / 5 = 4 rounds, ranks join at 0, 5 and 10, every
    class stops at 20: 45 updates per class, the 450 image-iterations the stage's card records for 10 classes."""
    join, stop = delt_span(span_params(3, 20, 5, None), 10)(torch.arange(10).repeat_interleave(3),
                                                           torch.arange(3).repeat(10))
    assert join.view(10, 3).tolist() == [[0, 5, 10]] * 10 and stop.tolist() == [20] * 30
    assert int((stop - join).sum()) == 450


def test_delt_span_draws_the_classes_rounds_from_the_seed():
    labels, ranks = torch.arange(20).repeat_interleave(10), torch.arange(10).repeat(20)

    def stops(seed):
        return delt_span(span_params(10, 500, 100, 200, seed), 20)(labels, ranks)[1]

    assert torch.equal(stops(0), stops(0))  # the same seed, the same classes stop early
    assert not torch.equal(stops(0), stops(1))


def test_the_recipe_recovers_against_one_teacher_ships_no_labels_and_reports_its_saving(tmp_path):
    p, delt = tiny_params(tmp_path, {"delt": {"teacher": "resnet18_modified"}}), recipe("delt")
    assert delt.teacher_archs(p.delt) == ["resnet18_modified"] and delt.labels is None
    assert delt.unit == "IPC indices"
    record = {"sre2l_image_iterations": 600, "saving_vs_sre2l": 0.25}
    assert delt.summary(record, SimpleNamespace(recover=SimpleNamespace(iterations=20))) == \
        "; vs 600 for SRe2L at the same 20 iterations: 25.0 % fewer"


# class-major batches (delt.batch_order: class)

def test_delts_class_major_batches_hold_whole_classes():
    from stages.recover_engine.engine import (Group, RecoverConfig, group_members, plan_class_groups, plan_groups,
                                              synthesize)

    # IPC 6, ipc_per_batch 2, 3 classes: 6 images a batch, i.e. one whole class (DELT's loader at IPC 50, batch 100)
    groups = plan_class_groups(3, 6, 2)
    assert groups == [Group(0, 6, (0, 1)), Group(0, 6, (1, 2)), Group(0, 6, (2, 3))]
    labels, indices = group_members(groups[1], 3)
    assert labels.tolist() == [1] * 6 and indices.tolist() == list(range(6))
    assert len({g.name for g in groups}) == len({g.seed(0) for g in groups}) == 3
    assert plan_class_groups(3, 4, 4) == plan_groups(0, 4, 4)  # IPC within one batch: the same batch either way
    cfg = RecoverConfig(iterations=3, lr=0.1, r_bn=0.01, first_bn_multiplier=10, r_var=1.0, jitter=0,
                        crop_min_scale=1.0, crop_schedule="fixed", flip=False)
    made = {(int(y), int(i)) for r in synthesize(tiny_teacher(), 3, 8, groups, cfg, [0, 0, 0], [1, 1, 1], seed=1)
            for y, i in zip(r.labels, r.indices)}
    assert made == {(y, i) for y in range(3) for i in range(6)}


def test_class_major_delt_cannot_be_sharded_by_ipc_range():
    from stages.methods.delt.params import Delt

    base = {"ranker": "convnet", "criterion": "medium", "teacher": "convnet", "round_iterations": 5,
            "min_iterations": None, "batch_order": "class",
            "recover": {"iterations": 20, "lr": 0.25, "r_bn": 0.01, "first_bn_multiplier": 10.0, "r_var": 1.0,
                        "jitter": 0, "roll": "symmetric", "crop_min_scale": 0.5, "crop_schedule": "cosine",
                        "flip": False, "ipc_per_batch": 2, "ipc_start": 0, "ipc_end": None, "dwa_steps": 0,
                        "dwa_rho": 0.015, "clamp_start": False}}
    assert Delt.model_validate(base).batch_order == "class"
    with pytest.raises(ValueError, match="batch_order = 'class': batches are whole classes"):
        Delt.model_validate({**base, "recover": {**base["recover"], "ipc_start": 2}})


# the rank and select stages

def test_ranking_csv_is_sorted_and_select_writes_the_medium_order(prepared):
    import pandas as pd

    run_stage(prepared, "rank", "--teacher", "artifacts/digits/teachers/convnet", "--data", "data/digits",
              "--out", "artifacts/digits/ranking.csv")
    table = pd.read_csv(prepared / "artifacts" / "digits" / "ranking.csv", dtype={"class": str})
    assert list(table.columns) == ["path", "class", "label", "score", "rank"]
    assert len(table) == 1437 and table.label.is_monotonic_increasing
    for _, part in table.groupby("label"):
        assert part.score.is_monotonic_decreasing and list(part["rank"]) == list(range(len(part)))
        assert ((0 <= part.score) & (part.score <= 1)).all()
    assert (table["class"] == table.label.astype(str)).all()

    run_stage(prepared, "select", "--ranking", "artifacts/digits/ranking.csv", "--data", "data/digits",
              "--out", "init")
    picked = sorted((prepared / "init" / "5").iterdir())
    assert [p.name[:4] for p in picked] == ["000_", "001_", "002_"]  # ipc 3 in TINY
    scores = table[table.label == 5].set_index("path").score
    ascending = sorted(scores.index, key=lambda path: (scores[path], path))
    m = (len(ascending) + 1) // 2
    expected = [ascending[m], ascending[m + 1], ascending[m - 1]]
    assert [p.name[4:] for p in picked] == [path.split("/")[1] for path in expected]


def test_rank_and_select_runs_are_typed_functions_tests_call_in_process(prepared, monkeypatch):
    from pathlib import Path

    import pandas as pd

    from stages.methods.delt import rank as rank_stage
    from stages.methods.delt import select as select_stage
    from stages.pipeline import params

    monkeypatch.chdir(workdir(prepared, "rank_select_in_process", {"delt": {"criterion": "top"}}))
    data = Path("data/digits")
    table = rank_stage.run(prepared / "artifacts" / "digits" / "teachers" / "convnet", data, Path("ranking.csv"))
    written = pd.read_csv("ranking.csv", dtype={"class": str})
    assert written.path.tolist() == table.path.tolist() and written["rank"].tolist() == table["rank"].tolist()
    assert np.allclose(written.score, table.score, rtol=0, atol=5e-9)  # the CSV keeps 8 decimals

    picks = select_stage.run(params.load(), Path("ranking.csv"), data, Path("init"))
    assert list(picks) == [str(d) for d in range(10)]
    for name, paths in picks.items():  # top: the class's three highest scores, best first, as 000_, 001_, 002_
        scores = written[written["class"] == name].set_index("path").score
        assert [scores[p] for p in paths] == sorted(scores, reverse=True)[:3]
        assert sorted(f.name for f in Path("init", name).iterdir()) == \
            [f"{k:03d}_{p.split('/')[1]}" for k, p in enumerate(paths)]
