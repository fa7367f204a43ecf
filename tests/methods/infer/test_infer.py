"""INFER (stages/methods/infer, docs/methods/infer.md): the budget (base images per class, compensators per base
set), the recipe (M teachers, static labels), the compensators the engine optimises, and the recover stage's
INFER runs on the shared prepared digits."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stages.data.distilled import load_set
from stages.methods import recipe
from stages.methods.infer.budget import infer_budget
from stages.recover_engine.engine import RecoverConfig, recover_compensators
from tests.conftest import tiny_params
from tests.support.models import tiny_teacher
from tests.support.recover import recover
from tests.support.recover import recover_project as workdir


# the budget

def test_infer_budget_matches_the_papers_counts_and_is_enforced():
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


def test_an_explicit_ipc_init_is_kept_up_to_the_budget_and_a_tiny_budget_keeps_what_fits():
    assert infer_budget(10, 10, 2) == (8, 2)  # the formula: 100 // 12
    assert infer_budget(10, 10, 2, ipc_init=5) == (5, 2)  # an explicit ipc_init is kept, not the formula's
    assert infer_budget(10, 10, 2, ipc_init=8) == (8, 2)  # 8·12 = 96 ≤ 100: at the edge of the budget, accepted
    # one class, four teachers, IPC 2: the formula gives no base; one base and the one compensator that fits
    assert infer_budget(2, 1, 4) == (1, 1)
    assert infer_budget(2, 10, 4) == (1, 4)  # 20 // 14 = 1 base, all 4 compensators: 14 ≤ 20


# the recipe

def test_the_recipe_recovers_against_every_listed_teacher_and_ships_static_labels(tmp_path):
    p = tiny_params(tmp_path, {"infer": {"teachers": ["resnet18_modified", "convnet"]}})
    infer = recipe("infer")
    assert infer.teacher_archs(p.infer) == ["resnet18_modified", "convnet"]  # M = 2, in the listed order
    assert infer.labels == "labels.safetensors" and infer.unit == "base sets"


# the compensators

def test_compensators_are_one_additive_image_per_base_set_that_lowers_the_loss():
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


# the recover stage

def test_infer_at_ipc_1_keeps_one_real_base_per_class(prepared):
    folder = workdir(prepared, "infer1", {"ipc": 1})
    recover(folder, "infer", "data/digits/train", "out")
    card, images = load_set(folder / "out", folder / "data" / "digits")
    assert card.num_images == 10 and card.synthesis["compensators_per_base_set"] == 0
    assert torch.equal(images.labels, torch.arange(10))


def test_infer_twice_writes_the_same_bytes(prepared):
    """Every file, compensators' safetensors header included (its metadata is one key: a hash map
    with several keys is serialised in any order)."""
    runs = []
    for name in ("again_a", "again_b"):
        folder = workdir(prepared, name, {"ipc": 2})
        recover(folder, "infer", "data/digits/train", "out")
        runs.append({p.relative_to(folder / "out").as_posix(): p.read_bytes()
                     for p in sorted((folder / "out").rglob("*")) if p.is_file()})
    assert "compensators.safetensors" in runs[0] and runs[0] == runs[1]
