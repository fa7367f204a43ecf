"""The shared recover engine (stages/recover_engine, docs/methods/sre2l.md#the-recover-engine) that sre2l, delt and
infer plug into: BN-statistics matching, a recover that fits its teacher, late joiners, divergence, sharding by
IPC range, DWA. The methods' own parts are under tests/methods/ (DELT's selection and EarlyLate, INFER's budget
and compensators)."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stages.models import build
from stages.recover_engine.bn_matching import BNStatisticsLoss
from tests.support.models import tiny_teacher


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


def test_the_start_is_clamped_after_the_first_step_unless_clamp_start(tmp_path):
    """clamp_start false (SRe2L's reference): iteration 0 reads the raw noise, and the images are in range after;
    true: iteration 0 reads the clamped noise. Starts made of pixels give the same bytes either way."""
    import csv

    from stages.recover_engine.engine import RecoverConfig, logging_losses, recover_batch

    teacher = tiny_teacher()
    labels = torch.tensor([0, 1, 2])
    noise = torch.randn(3, 3, 8, 8) * 3  # far outside [0, 1] at mean 0, std 1
    pixels = torch.rand(3, 3, 8, 8)
    kept = noise.clone()
    first_ce, out = {}, {}
    for clamp in (False, True):
        cfg = RecoverConfig(iterations=2, lr=0.1, r_bn=0.01, first_bn_multiplier=10, r_var=1.0, jitter=0,
                            crop_min_scale=1.0, crop_schedule="fixed", flip=False, clamp_start=clamp)
        log = tmp_path / f"{clamp}.csv"
        with logging_losses(log):
            recovered = recover_batch(teacher, noise, labels, torch.zeros(3, dtype=torch.long), cfg, [0, 0, 0],
                                      [1, 1, 1], np.random.default_rng(0))
        first_ce[clamp] = float(next(csv.DictReader(open(log)))["ce"])
        assert recovered.min() >= 0 and recovered.max() <= 1
        out[clamp] = recover_batch(teacher, pixels, labels, torch.zeros(3, dtype=torch.long), cfg, [0, 0, 0],
                                   [1, 1, 1], np.random.default_rng(0))
    with torch.no_grad():
        assert first_ce[False] == pytest.approx(F.cross_entropy(teacher(noise), labels).item(), rel=1e-5)
        assert first_ce[True] == pytest.approx(F.cross_entropy(teacher(noise.clamp(0, 1)), labels).item(), rel=1e-5)
    assert torch.equal(out[False], out[True])
    assert torch.equal(noise, kept)  # the caller's start is not written to


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
