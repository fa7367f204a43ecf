"""params.yaml is validated at load: one message naming the key and the value.

The faults the issue lists (unknown key, wrong type, ipc 0 / negative / above the smallest class, unknown
method, arch, dataset or captioner, contradictory settings) run as real stage runs in test_faults_input.py;
these are the loader's other checks, in-process.
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
    p = load_with(tmp_path, {"teacher": {"archs": ["convnet", "resnet18"]}, "infer": {"teachers": ["resnet18"]}})
    assert p.teacher.archs == ["convnet", "resnet18"]


def test_ipc_up_to_the_smallest_class_is_accepted_once_data_exists(tmp_path):
    from tests.fuzz import data_meta

    data_meta(tmp_path / "data" / "digits", {"0": 140, "1": 12, "2": 150})
    assert load_with(tmp_path, {"ipc": 12}).ipc == 12  # 13 is refused (test_faults_input.py)


def test_not_a_mapping(tmp_path):
    (tmp_path / "params.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        params.load(tmp_path / "params.yaml", tmp_path / "data")
