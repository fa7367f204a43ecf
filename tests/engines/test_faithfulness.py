"""Guards against a recover that silently does not optimise (docs/faithfulness.md): gradients reach the
pixels through every augmentation, a missing autograd kernel is an error, a set that did not move is refused,
and the report flags noise and near-copies. DELT's EarlyLate windows are in tests/methods/delt/test_delt.py."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stages.models import build
from stages.recover_engine.bn_matching import BNStatisticsLoss
from stages.recover_engine.engine import RecoverConfig, augment, crop_min, recover_batch
from tests.conftest import REPO


def config(**changes) -> RecoverConfig:
    base = dict(iterations=10, lr=0.1, r_bn=0.01, first_bn_multiplier=10, r_var=1.0, jitter=0, crop_min_scale=1.0,
                crop_schedule="fixed", flip=False)
    return RecoverConfig(**{**base, **changes})


def test_a_backward_through_an_op_without_autograd_kernel_is_an_error_in_tests():
    """pyproject's filterwarnings turns PyTorch's warning into an error (any op, not just roi_align)."""
    lib = torch.library.Library("ddpipe_test", "DEF")
    lib.define("double_it(Tensor x) -> Tensor")
    lib.impl("double_it", lambda x: x * 2, "CPU")  # a CPU kernel and no autograd kernel, like the bare roi_align
    x = torch.rand(3, requires_grad=True)
    with pytest.raises(UserWarning, match="an autograd kernel was not registered"):
        torch.ops.ddpipe_test.double_it(x).sum().backward()


def test_the_bare_roi_align_kernel_fails_a_test_that_backpropagates_through_it(tmp_path):
    """The old crop path (the kernel loaded without torchvision's Python package) under pytest's own config."""
    (tmp_path / "test_old_crop.py").write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import torch
        from stages.data.augment import roi_align_kernel

        def test_crop_gradient():
            kernel = roi_align_kernel(differentiable=False)
            assert "torchvision" not in sys.modules  # the bare kernel, without its autograd registration
            x = torch.rand(2, 3, 8, 8, requires_grad=True)
            rois = torch.tensor([[0, 0, 0, 8, 8], [1, 2, 2, 6, 6]], dtype=torch.float32)
            kernel(x, rois, 1.0, 8, 8, 1, True).sum().backward()
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir",
                             str(REPO), "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=", "-q",
                             str(tmp_path / "test_old_crop.py")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout and "an autograd kernel was not registered" in result.stdout


def grad_through(cfg: RecoverConfig, t: int, seed: int):
    """The augmentation at iteration t as a function of the pixels alone (the same draw on every call)."""
    return lambda x: augment(x, cfg, t, np.random.default_rng(seed))


@pytest.mark.parametrize("name, cfg, t", [
    ("crop, fixed", config(crop_min_scale=0.3), 0),
    ("crop, cosine, mid-run", config(crop_min_scale=0.08, crop_schedule="cosine"), 5),
    ("crop, cosine, last iteration", config(crop_min_scale=0.08, crop_schedule="cosine"), 9),
    ("flip", config(flip=True), 0),
    ("roll", config(jitter=2), 0),
    ("crop + flip + roll", config(crop_min_scale=0.5, flip=True, jitter=3), 3),
])
def test_gradients_through_every_recover_augmentation_are_exact(name, cfg, t):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    for seed in range(3):  # several draws: flipped and not, different boxes and shifts
        assert torch.autograd.gradcheck(grad_through(cfg, t, seed), (x,), eps=1e-6, atol=1e-5), name
    assert crop_min(cfg, t) < 1 or "crop" not in name  # the crop cases really crop


def test_the_recover_loss_gives_every_active_pixel_a_finite_non_zero_gradient():
    """CE + r_bn · BN loss through a teacher, after crop, flip and roll: what recover differentiates."""
    torch.manual_seed(1)
    teacher = build("convnet", 3, 8, {"width": 8, "depth": 2, "norm": "batch"}).double().eval()
    cfg = config(crop_min_scale=0.5, crop_schedule="cosine", flip=True, jitter=2)
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    with BNStatisticsLoss(teacher, cfg.first_bn_multiplier, cfg.r_var) as bn:
        for t in range(cfg.iterations):
            x.grad = None
            loss = F.cross_entropy(teacher(augment(x, cfg, t, np.random.default_rng(t))), torch.arange(6) % 3)
            (loss + cfg.r_bn * bn.loss()).backward()
            assert torch.isfinite(x.grad).all() and (x.grad.abs().flatten(1).sum(1) > 0).all(), t


def test_the_engine_turns_a_missing_autograd_kernel_into_a_clear_error(monkeypatch):
    from stages.pipeline.errors import NotOptimisedError
    from stages.recover_engine import engine as recover

    lib = torch.library.Library("ddpipe_engine_test", "DEF")
    lib.define("same(Tensor x) -> Tensor")
    lib.impl("same", lambda x: x.clone(), "CPU")
    monkeypatch.setattr(recover, "augment", lambda x, cfg, t, rng: torch.ops.ddpipe_engine_test.same(x))
    teacher = build("convnet", 3, 8, {"width": 8, "depth": 1, "norm": "batch"}).eval()
    with pytest.raises(NotOptimisedError, match=r"batch 7: no gradient reaches the pixels \(ddpipe_engine_test::same"):
        recover_batch(teacher, torch.rand(3, 3, 8, 8), torch.arange(3), torch.zeros(3, dtype=torch.long), config(),
                      [0, 0, 0], [1, 1, 1], np.random.default_rng(0), where="batch 7")


def test_assert_moved_names_the_method_class_and_ranks_that_stayed():
    from stages.pipeline.errors import NotOptimisedError
    from stages.recover_engine.movement import assert_moved

    before = torch.zeros(4, 5, 5, 3, dtype=torch.uint8)
    after = before.clone()
    after[0] += 9  # rank 0 of class a moved; ranks 1 (class a) and 0, 1 (class b) did not
    owners, ranks = ["class a", "class a", "class b", "class b"], [0, 1, 0, 1]
    with pytest.raises(NotOptimisedError, match=r"recover delt: 3 of 4 images .* class a: rank 1 \(0.000\); "
                                                r"class b: rank 0 \(0.000\), 1 \(0.000\);"):
        assert_moved("delt", before, after, owners, ranks)
    meant = torch.tensor([True, False, False, False])  # images with an empty EarlyLate window are not checked
    assert assert_moved("delt", before, after, owners, ranks, meant).tolist() == [9, 0, 0, 0]


def test_the_report_marks_noise_and_near_copy_sets_and_says_why():
    import pandas as pd

    from stages.report import flag_sets, markdown

    rows = [("random", 10, 1.0, 0.38), ("sre2l", 10, 1.0, 0.68), ("delt", 10, 0.97, 0.50),
            ("vlcp", 10, 0.12, 0.45), ("podd", 0.89, 0.5, 0.99), ("full", "all", 1.0, 0.40)]
    table = pd.DataFrame([{"method": m, "protocol": "fkd", "ipc": ipc, "top1": 0.5, "top1_std": 0.01,
                           "top1_best": 0.5, "top1_best_std": 0.01, "top5": 0.9, "seeds": 2, "images": 100,
                           "pixels": 1, "bytes": 1, "student": "convnet", "epochs": 30, "teacher_fidelity": fid,
                           "intra_class_cosine": cos, "gain_vs_random": 0.0, "hlr": 0.0, "hlr_std": 0.0, "lrs": 0.5,
                           "lrs_std": 0.0, "ars": 0.5, "ars_std": 0.0, "label_bytes": 1, "budget_fraction": 0.01,
                           "draws": 2 if m == "random" else None} for m, ipc, fid, cos in rows])
    table["flag"] = flag_sets(table, 10, noise_factor=2.0, copies_margin=0.2)
    flags = dict(zip(table.method, table.flag))
    assert flags["random"] == flags["delt"] == flags["full"] == ""  # 0.50 is within 0.2 of random's 0.38
    assert flags["sre2l"] == "near-copies: intra-class cosine 0.680, more than 0.2 above real images' 0.380"
    assert flags["vlcp"] == "noise: the teacher reads 12.0 % of its images as their class, under 2 x chance (10.0 %)"
    assert flags["podd"].startswith("near-copies: intra-class cosine 0.990") and "real images' 0.400" in flags["podd"]
    text = markdown(table, "t")
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["sre2l"].endswith("| ⚠ near-copies |") and rows["vlcp"].endswith("| ⚠ noise |")
    assert rows["delt"].endswith("|  |") and rows["podd"].endswith("| ⚠ near-copies |")
    assert "- ⚠ vlcp (IPC 10): noise: the teacher reads 12.0 %" in text
    table["flag"] = flag_sets(table, 10, noise_factor=1.0, copies_margin=0.6)  # looser: nothing flagged
    assert not table.flag.any() and "Flagged sets" not in markdown(table, "t")


def test_a_set_that_teaches_hard_students_nothing_is_noise_whatever_the_teacher_reads():
    """The offline diffusion model on photos: the teacher reads 30 % of the images as their class (over 2 x
    chance) but `hard` students reach 12 % (chance 10 %): noise, said on every row of the set."""
    import pandas as pd

    from stages.report import flag_sets

    rows = [("random", "fkd", 0.60), ("random", "hard", 0.40), ("d4m", "fkd", 0.30), ("d4m", "hard", 0.12),
            ("vlcp", "fkd", 0.50), ("vlcp", "hard", 0.16)]
    table = pd.DataFrame([{"method": m, "protocol": pr, "ipc": 10, "top1": top1, "teacher_fidelity": 0.3,
                           "intra_class_cosine": 0.4} for m, pr, top1 in rows])
    flags = flag_sets(table, 10, noise_factor=2.0, copies_margin=0.2, hard_margin=0.05)
    assert flags[:2] == ["", ""] and flags[4:] == ["", ""]  # vlcp: 16 % is 6 points above chance
    assert flags[2] == flags[3] == ("noise: students trained on its images with hard labels reach 12.0 %, within "
                                    "5.0 points of chance (10.0 %)")
    assert flag_sets(table, 10, 2.0, 0.2, hard_margin=0.07)[4] != ""  # a wider margin takes vlcp too


@pytest.mark.parametrize("roll, shifts", [("symmetric", set(range(-2, 3))), ("positive", {0, 1, 2})])
def test_the_roll_range_is_a_param(roll, shifts):
    """ddpipe rolls by [-jitter, jitter]; the references' torch.roll by randint(0, jitter) is `positive`."""
    x = torch.zeros(1, 3, 9, 9)
    x[..., 4, 4] = 1  # one lit pixel: where it lands is the shift
    seen = set()
    for seed in range(60):
        y, xx = torch.nonzero(augment(x, config(jitter=2, roll=roll), 0, np.random.default_rng(seed))[0, 0])[0]
        seen |= {int(y) - 4, int(xx) - 4}
    assert seen == shifts
    # the default draws what it drew before the param existed: numpy's integers(-j, j + 1) for (dx, dy)
    rng = np.random.default_rng(5)
    dx, dy = rng.integers(-2, 3, size=2).tolist()
    assert torch.equal(augment(x, config(jitter=2), 0, np.random.default_rng(5)), torch.roll(x, (dx, dy), (2, 3)))
