"""SRe2L (stages/methods/sre2l, docs/methods/sre2l.md): images from noise against one teacher. Its recipe and
params here; the engine it runs is tested in tests/engines/ (test_recover_engine.py, test_recover_stage.py)."""
import pytest

from stages.methods import recipe
from stages.pipeline.errors import PipelineError
from tests.conftest import tiny_params
from tests.support.recover import recover
from tests.support.recover import recover_project as workdir


def test_the_recipe_starts_from_noise_only_against_its_one_teacher(tmp_path):
    p, sre2l = tiny_params(tmp_path, {"sre2l": {"teacher": "resnet18_modified"}}), recipe("sre2l")
    assert sre2l.teacher_archs(p.sre2l) == ["resnet18_modified"] and sre2l.labels is None
    with pytest.raises(PipelineError, match=r"recover sre2l: --init init: SRe2L starts from noise \(--init noise\)"):
        # refused before anything is read
        sre2l.make(p, "init", None, [], 8, tmp_path / "out", None, None, tmp_path / "data")
    assert not (tmp_path / "out").exists()


def test_its_recover_block_is_the_shared_one_with_its_own_overrides(tmp_path):
    """sre2l.recover sets only what it changes (r_bn 1 on small data); the rest follows the shared `recover`."""
    p = tiny_params(tmp_path, {"recover": {"lr": 0.5, "jitter": 1}})
    assert p.sre2l.recover.r_bn == 1.0 and p.delt.recover.r_bn == 0.01  # its own override; DELT keeps the shared
    assert p.sre2l.recover.lr == 0.5 and p.sre2l.recover.jitter == 1  # inherited from the shared block
    assert p.delt.recover.jitter == 0  # DELT's own override wins over the shared block


def test_sre2l_refuses_an_init_folder(prepared):
    folder = workdir(prepared, "noinit")
    result = recover(folder, "sre2l", "data/digits/train", "out", check=False)
    assert result.returncode == 2 and "SRe2L starts from noise (--init noise)" in result.stderr
    assert not (folder / "out").exists()
