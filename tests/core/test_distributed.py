"""Scale-out under torchrun, on CPU with gloo and 2 processes: the real stage modules, compared with one process.

Sharded stages (recover, synthesize, relabel) must write the same bytes as one process; evaluate the same
metrics apart from timing; the DDP teacher the same weights up to float rounding when nothing depends on the
batch split (instance norm), and only rank 0 writes. Both sides run with one thread per process, since the
thread count may change float results.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.pipeline import params
from stages.pipeline.distributed import World
from stages.pipeline.errors import ParamsError
from tests.conftest import REPO, run_stage, stage_env, workdir, write_params

ART = "artifacts/digits"


def launch(folder: Path, nproc: int, module: str, *args: str, threads: int = 1) -> subprocess.CompletedProcess:
    """`python -m stages.<module>` (nproc 1) or `torchrun --standalone --nproc-per-node=<nproc> -m ...`."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc-per-node={nproc}"]
    env = {**stage_env(), "DDPIPE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([*launcher, "-m", f"stages.{module}", *args], cwd=folder, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise AssertionError(f"{nproc} x stages.{module} failed:\n{result.stdout}\n{result.stderr}")
    return result


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_files(one: Path, two: Path) -> None:
    a, b = files(one), files(two)
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []


def no_leftovers(parent: Path, *expected: str) -> None:
    """Only the finished outputs are there: no rank left a temporary folder or file."""
    assert sorted(p.name for p in parent.iterdir()) == sorted(expected)


def with_teachers(folder: Path, prepared: Path) -> Path:
    (folder / ART).mkdir(parents=True)
    (folder / ART / "teachers").symlink_to(prepared / ART / "teachers")
    return folder


# --- the helpers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_and_rows_cover_everything_once_in_order(size):
    items = list(range(10))
    assert [i for r in range(size) for i in World(r, size).shard(items)] == items
    rows = [World(r, size).rows(29) for r in range(size)]
    assert rows[0].start == 0 and rows[-1].stop == 29 and all(a.stop == b.start for a, b in zip(rows, rows[1:]))
    assert max(r.stop - r.start for r in rows) - min(r.stop - r.start for r in rows) <= 1


def test_launcher_renders_into_the_commands_that_scale_out(tmp_path):
    from dvc.repo import Repo

    def commands(launcher: str | None) -> dict:
        folder = tmp_path / (launcher or "default").split()[0]
        folder.mkdir()
        shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
        write_params(folder, {"launcher": launcher} if launcher else {})
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=folder, check=True)
        with Repo(str(folder)) as repo:
            return {stage.name: stage.cmd for stage in repo.index.stages}

    torchrun = "torchrun --standalone --nproc-per-node=2"
    default, scaled = commands(None), commands(torchrun)
    scaled_stages = ("teacher@convnet", "recover@sre2l", "recover@infer", "synthesize@d4m", "relabel@random",
                     "evaluate@random")
    for name in scaled_stages:
        module = name.split("@")[0]
        assert default[name].startswith(f"python -m stages.{module} ")
        assert scaled[name] == default[name].replace("python -m", f"{torchrun} -m", 1)
    for name in ("prepare", "rank", "poster", "report"):  # single-process stages keep their command
        assert scaled[name] == default[name] and default[name].startswith("python -m ")


def test_a_blank_launcher_is_refused(tmp_path):
    write_params(tmp_path, {"launcher": " "})
    with pytest.raises(ParamsError, match="launcher"):
        params.load(tmp_path / "params.yaml", tmp_path / "data")


# --- the stages -----------------------------------------------------------------------------------------

def test_ddp_teacher_matches_one_process_and_only_rank_zero_writes(prepared):
    # Instance norm: no batch statistics, so DDP's averaged gradients equal one process's up to rounding.
    # 1437 images at batch 717: the last batch (3) splits 1 / 2, which exercises the share weighting.
    # Measured (2-core Xeon, AVX-512): weighted, the weights differ by at most 7.5e-8; with the weighting
    # removed, by 3.3e-3. Rounding alone can reach ~2e-5 (one process, 1 vs 2 threads, or batch 700), so the
    # bound sits between the two.
    folder = workdir(prepared, "ddp-teacher", {"models": {"convnet": {"norm": "instance"}},
                                               "teacher": {"epochs": 1, "batch_size": 717}})
    for nproc in (1, 2):
        launch(folder, nproc, "teacher", "--arch", "convnet", "--data", "data/digits", "--out", f"out{nproc}/convnet")
        no_leftovers(folder / f"out{nproc}", "convnet")
    one, two = folder / "out1" / "convnet", folder / "out2" / "convnet"
    assert sorted(files(one)) == sorted(files(two))
    for name in ("metrics.json", "meta.json"):
        assert json.loads((one / name).read_text()).keys() == json.loads((two / name).read_text()).keys()
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert {k: v.shape for k, v in w1.items()} == {k: v.shape for k, v in w2.items()}
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=0, atol=1e-4)


def test_relabel_and_evaluate_split_over_ranks_match_one_process(prepared):
    folder = with_teachers(workdir(prepared, "ddp-eval", {"evaluate": {"epochs": 6, "seeds": 2, "eval_points": 2,
                                                                        "protocols": ["fkd", "hard"]}}), prepared)
    subset = f"{ART}/ipc3/distilled/random"
    run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", subset)
    metrics = {}
    for nproc in (1, 2):
        labels = f"{ART}/ipc3/soft_labels/random{nproc}"
        launch(folder, nproc, "relabel", "--set", subset, "--teacher", f"{ART}/teachers/convnet", "--data",
               "data/digits", "--epochs", "6", "--out", labels)
        out = folder / f"{ART}/ipc3/metrics/random{nproc}.json"
        launch(folder, nproc, "evaluate", "--set", subset, "--labels", labels, "--teacher", f"{ART}/teachers/convnet",
               "--data", "data/digits", "--epochs", "6", "--out", str(out))
        metrics[nproc] = json.loads(out.read_text())
    soft = folder / ART / "ipc3" / "soft_labels"
    assert_same_files(soft / "random1", soft / "random2")
    no_leftovers(soft, "random1", "random2")
    no_leftovers(folder / ART / "ipc3" / "metrics", "random1.json", "random2.json")

    # one process on 2 threads trains its students side by side, one thread each: the same students again
    out = folder / f"{ART}/ipc3/metrics/random-side-by-side.json"
    launch(folder, 1, "evaluate", "--set", subset, "--labels", f"{ART}/ipc3/soft_labels/random1", "--teacher",
           f"{ART}/teachers/convnet", "--data", "data/digits", "--epochs", "6", "--out", str(out), threads=2)
    metrics["side by side"] = json.loads(out.read_text())

    assert metrics[1]["protocols"]["hard"]["per_seed_top1"] != [0.0, 0.0]
    assert metrics[1] == metrics[2] == metrics["side by side"]


@pytest.mark.parametrize("method,override,images", [
    ("sre2l", {"sre2l": {"recover": {"ipc_per_batch": 1}}}, 30),  # 3 batches: 1 + 2 over the ranks
    # 2 base sets per class, each with one compensator (2 jobs, one per rank): 2 x (10 + 10) images
    ("infer", {"infer": {"teachers": ["convnet"], "recover": {"ipc_per_batch": 1}}}, 40),
    # 30 images in class-major batches of 7: 5 batches, cutting across classes, 3 + 2 over the ranks
    ("edc", {"edc": {"observers": ["convnet"], "iterations": 10, "batch_size": 7}}, 30),
])
def test_recover_shards_write_the_images_of_one_process(prepared, method, override, images):
    folder = with_teachers(workdir(prepared, f"ddp-{method}", override), prepared)
    init = {"sre2l": "noise", "infer": "data/digits/train", "edc": "stats"}[method]
    if method == "edc":
        run_stage(folder, "statistics", "--teachers", f"{ART}/teachers", "--data", "data/digits", "--out", "stats")
    stats = {}
    for nproc in (1, 2):
        launch(folder, nproc, "recover", method, "--teachers", f"{ART}/teachers", "--init", init, "--data",
               "data/digits", "--out", f"out{nproc}/{method}", "--stats", f"out{nproc}/{method}.json")
        no_leftovers(folder / f"out{nproc}", method, f"{method}.json")
        stats[nproc] = json.loads((folder / f"out{nproc}" / f"{method}.json").read_text())
    assert_same_files(folder / "out1" / method, folder / "out2" / method)  # images, card (and INFER's tensors)
    assert len(list((folder / "out1" / method).rglob("*.png"))) == images
    assert stats[1] == stats[2]


@pytest.mark.parametrize("method", ["d4m", pytest.param("vlcp", marks=pytest.mark.slow)])
def test_synthesize_shards_write_the_images_of_one_process(prepared, tmp_path, method):
    """VLCP: short and long text prototypes, batched so that a short one has a long batch mate in one process
    and none on its rank - a short prompt's image must not depend on a long batch mate's windows."""
    from safetensors.torch import save_file

    from tests.support.models import tiny_stable_diffusion

    sd = tiny_stable_diffusion(tmp_path / "sd")
    # batch 3 over 20 images: the ranks' batches are made up differently from one process's
    folder = workdir(prepared, f"ddp-{method}", {"ipc": 2, method: {"synthesis": {"steps": 4, "strength": 0.5,
                                                                                 "batch_size": 3}}})
    classes = json.loads((folder / "data/digits/classes.json").read_text())
    prototypes = folder / "prototypes" / method
    prototypes.parent.mkdir()
    save_file({"centroids": torch.randn(len(classes), 2, 4, 16, 16, generator=torch.Generator().manual_seed(0))},
              prototypes.with_name(f"{method}.safetensors"))
    long = "the handwritten digit is bold, slanted to the right, drawn with thick strokes, " * 3
    # classes 5-9 have a long second prototype: one process denoises 4/001 (job 9) beside 5/001, rank 0 alone
    clusters = lambda c: [{"text_prototype": f"a thin digit {c}"},
                          {"text_prototype": f"{long}{c}" if int(c) >= 5 else f"a bold digit {c}"}] \
        if method == "vlcp" else [{}, {}]
    record = {"method": method, "ipc": 2, "params": {},
              "classes": [{"class": c, "clusters": clusters(c)} for c in classes]}
    prototypes.with_name(f"{method}.json").write_text(json.dumps(record))
    for nproc in (1, 2):
        launch(folder, nproc, "synthesize", method, "--diffusion", str(sd), "--prototypes", str(prototypes), "--data",
               "data/digits", "--out", f"out{nproc}/{method}", "--stats", f"out{nproc}/{method}.json")
        no_leftovers(folder / f"out{nproc}", method, f"{method}.json")
    assert len(list((folder / "out1" / method).rglob("*.png"))) == 20
    if method == "d4m":
        assert_same_files(folder / "out1" / method, folder / "out2" / method)
        return
    # The conditioning is the same bytes; the UNet's float rounding can differ with the size of the batch an
    # image is denoised in (here 1 or 2 short prompts), by one level on a few pixels. A short prompt padded to
    # a long batch mate's windows (the bug) changes its image everywhere.
    import numpy as np
    from PIL import Image

    for path in sorted((folder / "out1" / method).rglob("*.png")):
        one, two = (np.asarray(Image.open(root / path.relative_to(folder / "out1" / method)), dtype=np.int16)
                    for root in (folder / "out1" / method, folder / "out2" / method))
        assert np.abs(one - two).max() <= 1 and (one != two).mean() < 0.01, path
