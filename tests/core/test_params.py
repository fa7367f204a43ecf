"""params.yaml is validated at load: one message naming the key and the value.

The faults the issue lists (unknown key, wrong type, ipc 0 / negative / above the smallest class, unknown
method, arch, dataset or captioner, contradictory settings) run as real stage runs in
tests/robustness/test_faults_input.py; these are the loader's other checks, in-process.
"""

import pytest

from stages.pipeline import params
from stages.pipeline.errors import ParamsError
from tests.conftest import default_params, write_params

import yaml


def load_with(tmp_path, override: dict | None = None, raw: dict | None = None):
    if raw is not None:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    else:
        write_params(tmp_path, override)
    return params.load(tmp_path / "params.yaml", tmp_path / "data")


def test_the_shipped_params_are_valid(tmp_path):
    p = load_with(tmp_path)
    assert p.dataset == "digits" and p.ipc == 10


@pytest.mark.parametrize("override, expected", [
    ({"ipc": 2.5}, "ipc = 2.5"),
    ({"prepare": {"image_size": 0}}, "prepare.image_size = 0"),
    ({"prepare": {"on_corrupt": "ignore"}}, "prepare.on_corrupt = 'ignore'"),
    ({"evaluate": {"students": ["convnet", "nonet"]}}, "arch 'nonet' is not registered"),
    ({"evaluate": {"students": []}}, "evaluate.students = []"),
    ({"evaluate": {"protocols": ["fkd", "magic"]}}, "evaluate.protocols.1 = 'magic'"),
    ({"evaluate": {"crop_scale": [0.8, 0.2]}}, "evaluate.crop_scale = [0.8, 0.2]: must be [min, max]"),
    ({"evaluate": {"teacher": "resnetap10"}}, "evaluate.teacher = 'resnetap10': not one of teacher.archs"),
    ({"models": {"vgg_tiny": {"width": 8, "norm": "batch"}}}, "models.vgg_tiny"),
])
def test_bad_values_name_key_and_value(tmp_path, override, expected):
    with pytest.raises(ParamsError) as err:
        load_with(tmp_path, override)
    assert expected in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "params.yaml"))


def test_missing_key_is_named(tmp_path):
    raw = default_params()
    del raw["evaluate"]["temperature"]
    with pytest.raises(ParamsError, match=r"missing key 'evaluate.temperature'"):
        load_with(tmp_path, raw=raw)


def test_torchvision_archs_are_registered(tmp_path):
    p = load_with(tmp_path, {"teacher": {"archs": ["convnet", "resnet18"], "source": {"resnet18": "train"}},
                             "models": {"resnet18": None}, "infer": {"teachers": ["resnet18"]},
                             "edc": {"observers": ["resnet18"]}})
    assert p.teacher.archs == ["convnet", "resnet18"]


@pytest.mark.parametrize("override, expected", [
    ({"teacher": {"archs": ["convnet", "resnet18"], "source": {"resnet18": "train"}}},
     "models.resnet18: missing; arch 'resnet18' is used"),  # dvc.yaml reads models.<arch>
    ({"teacher": {"archs": ["convnet", "resnet18"]}, "models": {"resnet18": None}},
     "teacher.source.resnet18 = None: every arch in archs needs a source"),
    ({"teacher": {"source": {"convnet": "pretrained"}}}, "teacher.source.convnet"),
    ({"teacher": {"source": {"convnet": {"type": "hub", "weights": "x"}}}}, "teacher.source.convnet"),
    ({"teacher": {"source": {"convnet": {"type": "file", "weights": "x.pt", "std": [1, 0, 1]}}}},
     "teacher.source.convnet: std = [1.0, 0.0, 1.0]: three per-channel values"),
])
def test_teacher_sources_are_validated(tmp_path, override, expected):
    with pytest.raises(ParamsError, match=expected.replace("[", "\\[").replace("]", "\\]")):
        load_with(tmp_path, override)


def test_a_timm_teacher_needs_no_registered_arch(tmp_path):
    p = load_with(tmp_path, {"teacher": {"archs": ["convnet", "rn18_timm"],
                                         "source": {"rn18_timm": {"type": "timm", "weights": "resnet18.a1_in1k"}}},
                             "models": {"rn18_timm": None}, "infer": {"teachers": ["convnet", "rn18_timm"]},
                             "edc": {"observers": ["convnet", "rn18_timm"]}})
    assert p.teacher.source["rn18_timm"].type == "timm"


def test_ipc_up_to_the_smallest_class_is_accepted_once_data_exists(tmp_path):
    from tests.fuzz import data_meta

    data_meta(tmp_path / "data" / "digits", {"0": 140, "1": 12, "2": 150})
    assert load_with(tmp_path, {"ipc": 12}).ipc == 12  # 13 is refused (robustness/test_faults_input.py)


def test_not_a_mapping(tmp_path):
    (tmp_path / "params.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        params.load(tmp_path / "params.yaml", tmp_path / "data")
