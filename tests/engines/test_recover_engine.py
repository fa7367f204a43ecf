"""Invariants of the SRe2L-family building blocks (docs/methods/sre2l.md)."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stages.models import build
from stages.recover_engine.bn_matching import BNStatisticsLoss
from stages.methods.delt.selection import medium_order, select
from stages.methods.delt.earlylate import iterations_per_rank, join_rounds, round_sizes


def test_bn_loss_is_zero_when_batch_statistics_equal_running_statistics():
    torch.manual_seed(0)
    model = build("convnet", 10, 16, {"width": 8, "depth": 1, "norm": "batch"}).eval()
    x = torch.randn(32, 3, 16, 16)
    first_bn = model[1]
    with torch.no_grad():  # make the running statistics those of exactly this batch's BN input
        conv_out = model[0](x)
        first_bn.running_mean.copy_(conv_out.mean((0, 2, 3)))
        first_bn.running_var.copy_(conv_out.var((0, 2, 3), unbiased=False))
    with BNStatisticsLoss(model) as bn:
        model(x)
        assert bn.loss().item() == pytest.approx(0.0, abs=1e-5)
        model(x + 1.0)  # shifted batch: the mean term is ‖1 + …‖, clearly non-zero
        assert bn.loss().item() > 1.0


def test_bn_loss_weights_the_first_layer_and_the_variance_term():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).eval()
    x = torch.zeros(4, 2, 3, 3)
    x[:, 0] = 2.0  # channel 0: mean 2, var 0 ; running stats: mean 0, var 1
    with BNStatisticsLoss(model, first_multiplier=10.0, r_var=0.5) as bn:
        model(x)
        loss = bn.loss().item()
    # BN 1 input: mean (2, 0), var (0, 0) → ‖mean‖ = 2, ‖var − 1‖ = √2 ; BN 2 sees BN 1's output.
    first = 2.0 + 0.5 * 2 ** 0.5
    with torch.no_grad():
        y = model[0](x)
    second = torch.linalg.vector_norm(y.mean((0, 2, 3))).item() + 0.5 * torch.linalg.vector_norm(
        y.permute(1, 0, 2, 3).reshape(2, -1).var(1, unbiased=False) - 1).item()
    assert loss == pytest.approx(10 * first + second, rel=1e-5)


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


def test_earlylate_rounds_match_the_reference_counts():
    assert round_sizes(50, 8) == [7, 7, 6, 6, 6, 6, 6, 6]
    counts = iterations_per_rank(50, 4000, 500)
    assert counts[:7] == [4000] * 7 and counts[7:14] == [3500] * 7 and counts[44:] == [500] * 6
    assert sum(counts) == 115_500  # vs 50 × 4000 = 200,000 for SRe2L: −42.25 %
    assert iterations_per_rank(10, 4000, 500) == [4000, 4000, 3500, 3500, 3000, 2500, 2000, 1500, 1000, 500]
    assert join_rounds(3, 8) == [0, 1, 2]


def tiny_teacher():
    torch.manual_seed(1)
    model = build("convnet", 3, 8, {"width": 8, "depth": 2, "norm": "batch"})
    model.train()
    with torch.no_grad():  # give the BN layers non-trivial running statistics
        for _ in range(20):
            model(torch.randn(16, 3, 8, 8) * 0.5 + 0.2)
    return model.eval()


def test_recover_fits_the_teacher_and_keeps_pixels_valid():
    from stages.recover_engine.engine import RecoverConfig, recover_batch

    teacher = tiny_teacher()
    cfg = RecoverConfig(iterations=150, lr=0.1, r_bn=0.01, first_bn_multiplier=10, r_var=1.0, jitter=1,
                        crop_min_scale=0.5, crop_schedule="cosine", flip=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    init = torch.randn(6, 3, 8, 8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    out = recover_batch(teacher, init, labels, torch.zeros(6, dtype=torch.long), cfg, mean, std,
                        np.random.default_rng(0))
    with torch.no_grad():
        before = F.cross_entropy(teacher(init), labels).item()
        after = F.cross_entropy(teacher(out), labels).item()
        predicted = teacher(out).argmax(1)
    assert after < before and torch.equal(predicted, labels)  # every image now reads as its own class
    pixels = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_late_joiners_are_untouched_before_their_round():
    from stages.recover_engine.engine import RecoverConfig, recover_batch

    teacher = tiny_teacher()
    cfg = RecoverConfig(iterations=10, lr=0.1, r_bn=0.01, first_bn_multiplier=10, r_var=1.0, jitter=0,
                        crop_min_scale=1.0, crop_schedule="fixed", flip=False)
    init = torch.rand(3, 3, 8, 8)  # inside the valid range for mean 0, std 1
    labels = torch.tensor([0, 1, 2])
    never = torch.tensor([0, 5, 10])  # the third image joins after the last iteration
    out = recover_batch(teacher, init, labels, never, cfg, [0, 0, 0], [1, 1, 1], np.random.default_rng(0))
    assert torch.equal(out[2], init[2])
    assert not torch.equal(out[0], init[0]) and not torch.equal(out[1], init[1])


def test_recover_reports_a_non_finite_loss_with_its_iteration():
    from stages.pipeline.errors import DivergedError
    from stages.recover_engine.engine import RecoverConfig, recover_batch

    cfg = RecoverConfig(iterations=3, lr=0.1, r_bn=float("inf"), first_bn_multiplier=10, r_var=1.0, jitter=0,
                        crop_min_scale=1.0, crop_schedule="fixed", flip=False)
    with pytest.raises(DivergedError, match=r"recover: loss = inf at iteration 0 \(the first non-finite one\)"):
        recover_batch(tiny_teacher(), torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long),
                      cfg, [0, 0, 0], [1, 1, 1], np.random.default_rng(0))


@pytest.mark.parametrize("dwa_steps", [0, 3])
def test_a_run_sharded_into_two_ipc_ranges_produces_the_same_images(dwa_steps):
    from stages.pipeline.errors import PipelineError
    from stages.recover_engine.engine import RecoverConfig, plan_groups, synthesize

    teacher = tiny_teacher()
    cfg = RecoverConfig(iterations=8, lr=0.1, r_bn=0.01, first_bn_multiplier=10, r_var=1.0, jitter=1,
                        crop_min_scale=0.5, crop_schedule="cosine", flip=True, dwa_steps=dwa_steps, dwa_rho=0.05)

    def run(start, end):
        results = synthesize(teacher, 3, 8, plan_groups(start, end, 2), cfg, [0, 0, 0], [1, 1, 1], seed=7)
        return {(int(y), int(i)): img for r in results for y, i, img in zip(r.labels, r.indices, r.images)}

    whole = run(0, 6)
    shards = {**run(0, 2), **run(2, 6)}
    assert whole.keys() == shards.keys() == {(y, i) for y in range(3) for i in range(6)}
    assert all(torch.equal(whole[k], shards[k]) for k in whole)
    with pytest.raises(PipelineError, match="ipc_start = 3: must be a multiple of ipc_per_batch"):
        plan_groups(3, 6, 2)


def test_ranking_csv_is_sorted_and_select_writes_the_medium_order(prepared):
    import pandas as pd

    from tests.conftest import run_stage

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


def test_infer_budget_matches_the_papers_counts_and_is_enforced():
    from stages.methods.infer.budget import infer_budget

    # docs/methods/infer.md#budget: (ipc, C, M) → ipc_init bases per class, M compensators per base set
    assert infer_budget(10, 100, 4) == (9, 4)  # 9·104 = 936 ≤ 1000
    assert infer_budget(50, 100, 4) == (48, 4)
    assert infer_budget(10, 10, 4) == (7, 4) and infer_budget(50, 10, 4) == (35, 4)
    assert infer_budget(10, 1000, 3) == (9, 3) and infer_budget(50, 1000, 3) == (49, 3)
    for ipc in range(1, 60):
        for classes, teachers in ((10, 2), (10, 4), (100, 4), (1000, 3)):
            bases, per_set = infer_budget(ipc, classes, teachers)
            assert bases * (classes + per_set) <= ipc * classes
    assert infer_budget(1, 10, 2) == (1, 0)  # IPC 1: the formula gives no base; keep one, no compensator fits
    with pytest.raises(ValueError, match=r"ipc_init = 9: 9·\(10 classes \+ 2 teachers\) = 108 .* budget ipc·C = 100"):
        infer_budget(10, 10, 2, ipc_init=9)


def test_compensators_are_one_additive_image_per_base_set_that_lowers_the_loss():
    from stages.recover_engine.engine import RecoverConfig, recover_compensators

    teacher = tiny_teacher()
    cfg = RecoverConfig(iterations=150, lr=0.1, r_bn=0.01, first_bn_multiplier=10, r_var=1.0, jitter=1,
                        crop_min_scale=1.0, crop_schedule="fixed", flip=False)
    torch.manual_seed(3)
    bases = torch.rand(2, 3, 3, 8, 8) * 0.6 + 0.2  # 2 base sets x 3 classes, inside [0, 1] (mean 0, std 1)
    u, images = recover_compensators(teacher, bases, cfg, [0, 0, 0], [1, 1, 1], np.random.default_rng(0))
    assert u.shape == (2, 3, 8, 8) and images.shape == bases.shape
    assert torch.allclose(images, (bases + u[:, None]).clamp(0, 1))  # one additive image per base set
    labels = torch.arange(3).repeat(2)
    with torch.no_grad():
        before = F.cross_entropy(teacher(bases.flatten(0, 1)), labels)
        after = F.cross_entropy(teacher(images.flatten(0, 1)), labels)
    assert after < before  # one image shared by all classes can only do so much on random bases


def test_dwa_moves_a_copy_of_the_teacher_by_rho_and_leaves_bn_statistics():
    from stages.recover_engine.engine import directed_weight_adjustment

    teacher = tiny_teacher()
    original = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    perturbed = directed_weight_adjustment(teacher, x, y, steps=4, rho=0.05)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in original.items())  # the teacher is untouched
    moved = perturbed.state_dict()
    delta = torch.cat([(moved[k] - original[k]).flatten() for k, _ in teacher.named_parameters()])
    assert 0.04 < torch.linalg.vector_norm(delta).item() <= 0.05 + 1e-6
    assert all(torch.equal(moved[k], original[k]) for k in original if "running" in k)
    with torch.no_grad():  # ascent: the batch's cross-entropy went up
        assert F.cross_entropy(perturbed(x), y) > F.cross_entropy(teacher(x), y)


def test_min_iterations_stops_classes_at_random_rounds():
    from stages.methods.delt.earlylate import class_rounds

    rng = np.random.default_rng(0)
    assert class_rounds(5, 400, 100, 400, rng) == [4] * 5  # DELT's scripts: every class runs all rounds
    rounds = class_rounds(200, 400, 100, 200, rng)
    assert set(rounds) == {2, 3, 4}


def test_static_labels_are_mixed_with_the_images_lambda():
    from stages.data.augment import Augment, plan_epoch
    from stages.evaluate import static_labels

    logits = torch.randn(10, 4)
    plan = plan_epoch(10, 4, np.random.default_rng(0), Augment((0.5, 1.0), False, "mixup", 1.0, 8))
    mixed = static_labels(plan, logits)
    for batch in plan.batches():
        lam = float(plan.lam[batch][0])
        own = logits[plan.order[batch]]
        assert torch.allclose(mixed[batch], lam * own + (1 - lam) * own[plan.partner[batch]])
    plain = plan_epoch(10, 4, np.random.default_rng(0), Augment((0.5, 1.0), False, "none", 1.0, 8))
    assert torch.equal(static_labels(plain, logits), logits[plain.order])


def test_rank_and_select_runs_are_typed_functions_tests_call_in_process(prepared, monkeypatch):
    from pathlib import Path

    import pandas as pd

    from stages.methods.delt import rank as rank_stage
    from stages.methods.delt import select as select_stage
    from stages.pipeline import params
    from tests.conftest import workdir

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
