"""The evaluation recipe's EDC knobs (evaluate.zeta, ema, loss): each does what EDC's code does, and only that."""
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stages.data.augment import Augment, plan_epoch
from stages.data.folder import ImageSet
from stages.models import build
from stages.training.loop import Batch, Optim, WeightAverage, cosine, hard_loss, mse_ce_loss, train

NORM = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


@pytest.mark.parametrize("zeta, last", [(1.0, 0.0), (1.5, 0.25), (2.0, 0.5)])
def test_the_smoothing_schedule_ends_where_edc_s_does(zeta, last):
    """lr factor 0.5 (1 + cos(pi s / (zeta T))): zeta 1 is the cosine to 0; EDC's zeta 2 ends at half the lr."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = cosine(optimizer, 100, zeta)
    factors = []
    for _ in range(100):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert factors[0] == 1.0 and optimizer.param_groups[0]["lr"] == pytest.approx(last, abs=1e-9)
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_the_weight_average_is_an_ema_swapped_in_and_back():
    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    average = WeightAverage(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()
    trained = [p.detach().clone() for p in model.parameters()]
    with average.swapped():
        for p, s in zip(model.parameters(), start):
            assert torch.allclose(p, s + 0.1)  # 0.9 x start + 0.1 x (start + 1)
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))


def test_mse_ce_is_edc_s_mse_gt():
    logits, target = torch.randn(4, 10), torch.randn(4, 10)
    labels = torch.tensor([1, 2, 3, 4])
    batch = Batch(torch.zeros(4, 3, 2, 2), labels, labels.flip(0), 0.3, target)
    expected = F.mse_loss(logits, target) + 0.025 * F.cross_entropy(logits, labels)  # own labels, as EDC's code
    assert mse_ce_loss(logits, target, batch, 0.025) == pytest.approx(expected.item())


def images(seed: int, n: int = 40) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                    torch.arange(n) % 10, [f"{i % 10}/{i}.png" for i in range(n)])


def run(optim: Optim):
    torch.manual_seed(0)
    model = build("convnet", 10, 16, {"width": 16, "depth": 2})
    rng = np.random.default_rng(0)
    aug = Augment((0.5, 1.0), False, "none", 1.0, 16)
    val = (images(9).normalised(*NORM).tensor(), images(9).labels)
    history = train(model, images(0), NORM, 4, 20, lambda e: (plan_epoch(40, 20, rng, aug), None), hard_loss,
                    optim, val, 4, "t")
    return model, history


def test_ema_changes_what_is_validated_not_what_is_trained():
    plain_model, plain = run(Optim("adamw", 1e-2, 0.0))
    ema_model, ema = run(Optim("adamw", 1e-2, 0.0, ema=0.99))
    assert all(torch.equal(a, b) for a, b in zip(plain_model.state_dict().values(), ema_model.state_dict().values()))
    assert plain.loss == ema.loss and plain.top1 != ema.top1  # 8 steps at 0.99: the average is near the init


def test_evaluate_runs_the_edc_recipe_end_to_end(prepared):
    """evaluate with EDC's recipe (MSE + CE, EMA, zeta 2) on the side-by-side and the together paths."""
    from tests.conftest import run_stage, workdir

    out = "artifacts/digits/ipc3"
    results = {}
    for together in (False, True):
        folder = workdir(prepared, f"edc-recipe-{together}", {"evaluate": {
            "epochs": 4, "protocols": ["fkd", "hard"], "loss": "mse_ce", "ema": 0.99, "zeta": 2.0,
            "together": together}})
        run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", f"{out}/distilled/random")
        teacher = str(prepared / "artifacts/digits/teachers/convnet")
        run_stage(folder, "relabel", "--set", f"{out}/distilled/random", "--teacher", teacher, "--data",
                  "data/digits", "--epochs", "4", "--out", f"{out}/soft_labels/random")
        run_stage(folder, "evaluate", "--set", f"{out}/distilled/random", "--labels", f"{out}/soft_labels/random",
                  "--teacher", teacher, "--data", "data/digits", "--epochs", "4", "--out", f"{out}/metrics/r.json")
        results[together] = json.loads((folder / out / "metrics/r.json").read_text())["protocols"]
    for protocol in ("fkd", "hard"):
        assert results[False][protocol]["per_seed_top1"] == pytest.approx(results[True][protocol]["per_seed_top1"],
                                                                          abs=1.5 / 360)
