"""Architectures build and round-trip through safetensors checkpoints (no pickle)."""
import json

import pytest
import torch

from stages.models import build, load_checkpoint, save_checkpoint
from stages.pipeline.errors import PipelineError


@pytest.mark.parametrize("arch, config, size", [
    ("convnet", {"width": 8, "depth": 3, "norm": "batch"}, 16),
    ("convnet", {"width": 8, "depth": None, "norm": "instance"}, 32),
    ("resnet18_modified", {"width": 4, "norm": "batch"}, 16),
    ("resnetap10", {"width": 4, "norm": "instance"}, 16),
    ("resnet18", None, 32),
])
def test_forward_shape(arch, config, size):
    model = build(arch, 7, size, config).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_resnet18_modified_at_width_64_matches_the_paper_network():
    params = sum(p.numel() for p in build("resnet18_modified", 100, 32, {"width": 64, "norm": "batch"}).parameters())
    assert params == 11_220_132  # torchvision resnet18(num_classes=100) with a 3x3 stem: 11.22 M


def test_checkpoint_round_trip_and_class_order_check(tmp_path):
    model = build("convnet", 10, 16, {"width": 8, "depth": 2, "norm": "batch"}).eval()
    meta = {"arch": "convnet", "config": {"width": 8, "depth": 2, "norm": "batch"}, "num_classes": 10,
            "image_size": 16, "classes_sha256": "a" * 64, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint(model, tmp_path, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path, "a" * 64)
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(model(x), loaded(x)) and loaded_meta == meta
    with pytest.raises(PipelineError, match="trained on another class order"):
        load_checkpoint(tmp_path, "d" * 64)


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    save_checkpoint(build("convnet", 10, 16, {"width": 8, "depth": 2, "norm": "batch"}), tmp_path,
                    {"arch": "convnet", "config": {"width": 8, "depth": 2, "norm": "batch"}, "num_classes": 10,
                     "image_size": 16, "classes_sha256": "a" * 64, "mean": [0.5] * 3, "std": [0.25] * 3})
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["config"]["width"] = 16
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PipelineError, match="does not fit arch 'convnet'"):
        load_checkpoint(tmp_path)



def test_probes_read_the_penultimate_features_and_measure_diversity():
    from stages.models.probes import intra_class_cosine, logits_and_features, teacher_view

    model = build("resnet18_modified", 3, 16, {"width": 4, "norm": "batch"}).eval()
    logits, features = logits_and_features(model, torch.randn(5, 3, 16, 16))
    assert logits.shape == (5, 3) and features.shape == (5, 32)  # 8 × width channels before the head
    assert logits_and_features(build("convnet", 3, 16, {"width": 8, "depth": 2, "norm": "batch"}),
                               torch.randn(2, 3, 16, 16))[1].shape == (2, 8 * 4 * 4)

    labels = torch.tensor([0, 0, 1, 1])
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert intra_class_cosine(same, labels) == pytest.approx(1.0)
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert intra_class_cosine(orthogonal, labels) == pytest.approx(0.0)
    view = teacher_view(model, torch.randn(4, 3, 16, 16), labels)
    assert 0 <= view["teacher_fidelity"] <= 1 and -1 <= view["intra_class_cosine"] <= 1
    no_pairs = teacher_view(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert no_pairs["intra_class_cosine"] is None
