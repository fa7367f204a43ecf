"""A stage process starts with only the heavy packages its work needs (docs/performance.md#stage-start-up).

`python -m stages.X` imports its module, and everything that pulls in, before any work; a package imported there
costs every run of the stage. Each check imports one stage module that dvc.yaml runs in a fresh interpreter and
lists the heavy packages left in sys.modules. A package a stage needs only on some paths (torchvision for CIFAR,
transformers for LLaVA, pyarrow for a manifest) is imported inside the function that uses it.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stages.layout import dvc_yaml
from tests.conftest import REPO

HEAVY = ("torch", "torchvision", "diffusers", "transformers", "timm", "pandas", "pyarrow", "scipy", "sklearn",
         "matplotlib", "datasets", "huggingface_hub", "sentence_transformers", "dvclive", "vl_convert", "safetensors")
TORCH = {"torch", "safetensors"}
# diffusers imports transformers, torchvision, scipy and huggingface_hub with its AutoencoderKL
DIFFUSERS = {"diffusers", "transformers", "torchvision", "scipy", "huggingface_hub"}

# The heavy packages each stage module imports at start-up: what every run of it uses (exactly these, so the
# table stays true when an import moves).
NEEDS = {
    "stages.prepare": set(),  # digits: sklearn inside stages/data/sources.py; CIFAR: torchvision there
    "stages.methods.baselines.baseline": set(),  # copies files
    "stages.methods.delt.select": set(),  # copies files (the ranking's CSV is read with pandas inside read_ranking)
    "stages.caption": {"scipy"},  # the attribute captioner; LLaVA's transformers inside its class
    "stages.report": {"pandas", "pyarrow", "matplotlib"},  # pandas imports pyarrow itself
    "stages.plots_page": {"vl_convert"},
    "stages.import_set": TORCH | {"pyarrow"},
    "stages.teacher": TORCH | {"dvclive", "pandas", "pyarrow"},  # dvclive imports pandas
    "stages.methods.delt.rank": TORCH | {"pandas", "pyarrow"},
    "stages.recover": TORCH,
    "stages.methods.rded.realistic_crops": TORCH,
    "stages.methods.edc.statistics": TORCH,
    "stages.relabel": TORCH | {"pyarrow"},  # FKD soft labels are Parquet
    "stages.evaluate": TORCH | {"pyarrow"},
    "stages.diffusion": TORCH | DIFFUSERS,
    "stages.diffusion_check": TORCH,  # the pipeline (diffusers) is loaded inside its function
    "stages.latents": TORCH | DIFFUSERS,
    "stages.prototypes": TORCH | {"sklearn", "scipy", "pandas", "pyarrow"},  # scikit-learn imports scipy and pandas
    "stages.synthesize": TORCH,
    "stages.methods.podd.poster": TORCH | {"pandas", "pyarrow"},
}


def stage_modules() -> list[str]:
    return sorted({dvc_yaml.stage_module(body) for body in dvc_yaml.stage_bodies().values()})


def test_every_stage_module_says_what_it_needs():
    assert sorted(NEEDS) == stage_modules()


@pytest.mark.parametrize("module", sorted(NEEDS))
def test_a_stage_starts_with_only_what_it_needs(module):
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert sorted(loaded & set(HEAVY)) == sorted(NEEDS[module])
