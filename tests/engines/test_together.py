"""Students trained together (stages/training/together.py) equal their separate runs within float rounding."""
import copy
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stages.data.augment import Augment, plan_epoch
from stages.data.folder import ImageSet
from stages.models import as_input, build
from stages.pipeline.resume import Resume
from stages.training.loop import Optim, hard_loss, make_optimizer, train
from stages.training.together import Together, accuracies, train_together

NORM = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


def students(n: int, arch: str = "convnet", config: dict | None = None) -> list[torch.nn.Module]:
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(build(arch, 10, 16, config or {"width": 16, "depth": 2}))
    return out


def images(seed: int, n: int = 40) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                    torch.arange(n) % 10, [f"{i % 10}/{i}.png" for i in range(n)])


@pytest.mark.parametrize("arch,config", [("convnet", {"width": 16, "depth": 2}),
                                         ("resnetap10", {"width": 8, "norm": "batch"})])
def test_one_step_equals_each_model_alone(arch, config):
    """Forward, each student's gradient of the summed loss (= its own loss's), BatchNorm's running statistics
    and one SGD step: each model's own numbers, to float rounding. (AdamW acts elementwise too, but its first
    step is ±lr wherever a gradient is rounding noise - a conv bias before BatchNorm - so SGD is compared.)"""
    models = students(3, arch, config)
    alone = [copy.deepcopy(m) for m in models]
    group = Together(models)
    x, y = torch.randn(3, 20, 3, 16, 16), torch.randint(0, 10, (3, 20))
    group.train()
    logits = group(x)
    opt = make_optimizer(group, Optim("sgd", 0.1, 0.01))
    opt.zero_grad()
    torch.stack([F.cross_entropy(logits[i], y[i]) for i in range(3)]).sum().backward()
    grads = {n: p.grad for n, p in zip(group.param_names, group.parameters())}
    opt.step()
    for i, m in enumerate(alone):
        m.train()
        out = m(as_input(m, x[i]))
        assert torch.allclose(logits[i], out, atol=1e-5)
        o = make_optimizer(m, Optim("sgd", 0.1, 0.01))
        o.zero_grad()
        F.cross_entropy(out, y[i]).backward()
        for name, p in m.named_parameters():
            assert torch.allclose(grads[name][i], p.grad, atol=1e-6, rtol=1e-4), name
        o.step()
    for member, m in zip(group.members(), alone):
        theirs = m.state_dict()
        for name, value in member.state_dict().items():
            assert torch.allclose(value.float(), theirs[name].float(), atol=1e-6), name
    # the students stay apart: nothing of one reached another
    assert not torch.equal(group.members()[0].state_dict()[name], group.members()[1].state_dict()[name])


def test_accuracies_are_each_students():
    models = students(2)
    group = Together(models)
    val = torch.randn(30, 3, 16, 16), torch.arange(30) % 10
    from stages.training.loop import accuracy

    mine = [a for pair in accuracies(group, *val) for a in pair]
    assert mine == pytest.approx([a for m in models for a in accuracy(m, *val)], abs=1e-6)
    assert mine[:2] != mine[2:]  # two students, two results


def plans_for(draw: ImageSet, rng: np.random.Generator, aug: Augment, batch: int):
    return lambda epoch: (plan_epoch(len(draw), batch, rng, aug), None)


def test_training_together_follows_each_separate_run():
    """train_together over 3 students with their own draws and augmentation streams ends where train() takes
    each alone: the same loss curve and accuracy to rounding, and the students' own histories."""
    aug = Augment((0.5, 1.0), True, "cutmix", 1.0, 16)
    draws = [images(k) for k in range(3)]
    val = (images(9).normalised(*NORM).tensor(), images(9).labels)
    optim = Optim("adamw", 1e-3, 0.01)
    together = train_together(students(3), draws, NORM, 3, 20,
                              [plans_for(d, np.random.default_rng(k), aug, 20) for k, d in enumerate(draws)],
                              hard_loss, optim, val, 3, "together")
    for k, (model, draw) in enumerate(zip(students(3), draws)):
        alone = train(model, draw, NORM, 3, 20, plans_for(draw, np.random.default_rng(k), aug, 20), hard_loss,
                      optim, val, 3, "alone")
        assert together[k].loss == pytest.approx(alone.loss, rel=1e-4)
        assert together[k].top1 == pytest.approx(alone.top1, abs=1.5 / len(val[1]))  # one image's flip at most
        assert together[k].epochs == alone.epochs == [1, 2, 3]
    assert together[0].loss != together[1].loss


@pytest.mark.parametrize("ema", [None, 0.9])
def test_a_killed_group_resumes_to_the_same_bytes(tmp_path, ema):
    """Interrupted after its first epoch, a rerun continues from the saved group state (and weight average)
    and ends with the uninterrupted run's histories."""
    aug = Augment((0.5, 1.0), False, "none", 1.0, 16)
    draws = [images(k) for k in range(2)]
    val = (images(9).normalised(*NORM).tensor(), images(9).labels)

    def run(resume, loss=hard_loss):
        models = students(2)
        rngs = [np.random.default_rng(k) for k in range(2)]
        histories = train_together(models, draws, NORM, 3, 20,
                                   [plans_for(d, r, aug, 20) for d, r in zip(draws, rngs)], loss,
                                   Optim("adamw", 1e-3, 0.01, ema=ema), val, 3, "group", resume=resume, state="g",
                                   rngs=rngs)
        return histories

    whole = run(None)
    calls = []

    def killed(logits, batch):  # two steps per epoch: the fifth call is in the third epoch
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return hard_loss(logits, batch)

    resume = Resume(tmp_path / "out.json", {"k": 1})
    with pytest.raises(KeyboardInterrupt):
        run(resume, killed)
    assert resume.load("g")["epoch"] in (1, 2)  # the first epoch is always saved
    again = run(Resume(tmp_path / "out.json", {"k": 1}))
    for a, b in zip(whole, again):
        assert a.loss == b.loss and a.top1 == b.top1 and a.epochs == b.epochs


def test_students_of_other_draw_sizes_are_refused():
    with pytest.raises(ValueError, match="one size"):
        train_together(students(2), [images(0, 40), images(1, 30)], NORM, 1, 10,
                       [lambda e: None] * 2, hard_loss, Optim("adamw", 1e-3, 0.0), (None, None), 1, "x")


def test_evaluate_with_seeds_together_matches_side_by_side(prepared):
    """The evaluate stage with evaluate.together on (the GPU default, run here on the CPU through the same code)
    writes the metrics the side-by-side students write, per seed to within one validation image, and the
    same bytes twice."""
    from tests.conftest import run_stage, workdir

    out = "artifacts/digits/ipc3"
    metrics = {}
    for mode, runs in ((False, 1), (True, 2)):
        folder = workdir(prepared, f"together-{mode}", {"evaluate": {"epochs": 4, "together": mode,
                                                                    "protocols": ["fkd", "hard"]}})
        run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", f"{out}/distilled/random")
        teacher = str(prepared / "artifacts/digits/teachers/convnet")
        run_stage(folder, "relabel", "--set", f"{out}/distilled/random", "--teacher", teacher, "--data",
                  "data/digits", "--epochs", "4", "--out", f"{out}/soft_labels/random")
        for k in range(runs):
            run_stage(folder, "evaluate", "--set", f"{out}/distilled/random", "--labels",
                      f"{out}/soft_labels/random", "--teacher", teacher, "--data", "data/digits", "--epochs", "4",
                      "--out", f"{out}/metrics/random{k}.json")
        metrics[mode] = [(folder / out / f"metrics/random{k}.json").read_bytes() for k in range(runs)]
    assert metrics[True][0] == metrics[True][1]  # deterministic
    apart, together = (json.loads(m[0]) for m in (metrics[False], metrics[True]))
    val_images = 1 / 360
    for protocol in ("fkd", "hard"):
        a, b = apart["protocols"][protocol]["per_seed_top1"], together["protocols"][protocol]["per_seed_top1"]
        assert len(a) == len(b) == 2 and a == pytest.approx(b, abs=1.5 * val_images)
