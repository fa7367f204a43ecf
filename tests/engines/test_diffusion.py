"""The diffusion side of D4M/VLCP: a tiny Stable Diffusion built from configs and saved with save_pretrained
goes through the `pretrained` path a user runs (with VLCP's fine-tune), then latents → prototypes →
synthesize; img2img step counts and strength edge cases; VLCP's long-prompt encoding. No hub is touched."""
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from stages.data.latents_folder import read_latents
from stages.generation import img2img, text
from tests.conftest import run_stage, workdir
from tests.support.models import WINDOW, tiny_stable_diffusion


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture(scope="module")
def pipe(sd_dir):
    loaded = StableDiffusionImg2ImgPipeline.from_pretrained(sd_dir, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    return loaded


# --- img2img: steps and strength ------------------------------------------------------------------------

def count_steps(pipe, monkeypatch) -> list:
    """The timestep of every scheduler step (one UNet evaluation each)."""
    calls = []
    step = pipe.scheduler.step
    monkeypatch.setattr(pipe.scheduler, "step", lambda out, t, *a, **k: calls.append(int(t)) or step(out, t, *a, **k))
    return calls


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("steps,strength", [(10, 0.7), (10, 0.35), (7, 1.0), (50, 0.7)])
def test_img2img_runs_int_steps_times_strength_denoising_steps(pipe, monkeypatch, scheduler, steps, strength):
    """DDIM (our trained model's sampler) runs exactly int(steps x strength) steps. PNDM (SD-1.5's default)
    runs one more: its step list repeats an early timestep to start the multistep method, so the stock
    img2img slice keeps one extra entry — the reference pipelines inherit the same count."""
    from diffusers import DDIMScheduler

    if scheduler == "DDIMScheduler":
        monkeypatch.setattr(pipe, "scheduler", DDIMScheduler.from_config(pipe.scheduler.config))
    calls = count_steps(pipe, monkeypatch)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    images = img2img.generate(pipe, latents, ["a digit", "a digit"], "", strength, 3.0, steps, gens)
    expected = int(steps * strength)
    assert img2img.denoising_steps(steps, strength) == expected
    if scheduler == "DDIMScheduler":
        assert len(calls) == len(set(calls)) == expected
    else:
        assert len(calls) == expected + 1
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("strength", [0.0, 0.05])
def test_strength_without_a_denoising_step_decodes_the_prototype(pipe, monkeypatch, strength):
    """int(steps x strength) = 0: the stock pipeline fails on an empty timestep list; we decode the prototype."""
    calls = count_steps(pipe, monkeypatch)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    images = img2img.generate(pipe, latents, ["a digit"], "", strength, 3.0, 10, [torch.Generator()])
    assert calls == [] and torch.equal(images, img2img.decode(pipe, latents))


def test_strength_one_starts_from_noise(pipe):
    """At strength 1 the prototype barely matters: two very different prototypes, the same noise → close images."""
    a, b = torch.zeros(1, 4, 16, 16), torch.full((1, 4, 16, 16), 3.0)
    run = lambda z, s: img2img.generate(pipe, z, ["a digit"], "", s, 1.0, 10, [torch.Generator().manual_seed(0)])
    assert (run(a, 1.0) - run(b, 1.0)).abs().mean() < 0.25 * (run(a, 0.5) - run(b, 0.5)).abs().mean()


def test_same_generator_same_image_whatever_the_batch(pipe):
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batch = img2img.generate(pipe, latents, ["one", "two", "three"], "", 0.6, 4.0, 10, gens())
    alone = img2img.generate(pipe, latents[1:2], ["two"], "", 0.6, 4.0, 10, gens()[1:2])
    assert torch.allclose(batch[1], alone[0], atol=1e-5)


# --- VLCP's long prompts --------------------------------------------------------------------------------

def test_a_short_prompt_is_encoded_exactly_as_the_plain_encoder(pipe):
    prompt = "a bold handwritten digit three"
    assert text.token_count(pipe.tokenizer, prompt) <= WINDOW
    [(ours, negative)] = text.encode(pipe, [prompt], "")
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=WINDOW, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(ours, pipe.text_encoder(ids)[0])
    stock, stock_negative = pipe.encode_prompt(prompt, "cpu", 1, True, "")
    assert torch.equal(ours, stock) and torch.equal(negative, stock_negative)


def test_a_long_prompt_is_encoded_window_by_window_and_concatenated(pipe):
    long = "the handwritten digit three is bold, slanted to the right, drawn with thick strokes, " * 3
    length = text.token_count(pipe.tokenizer, long)
    assert length > 2 * WINDOW
    [(embeds, negative)] = text.encode(pipe, [long], "cartoon")
    assert embeds.shape == negative.shape == (1, length, 32)
    ids = pipe.tokenizer([long], truncation=False, return_tensors="pt").input_ids
    with torch.no_grad():
        for start in range(0, length, WINDOW):
            window = pipe.text_encoder(ids[:, start:start + WINDOW])[0]
            # (the prompt and the negative go through in one batch: equal up to float summation order)
            assert torch.allclose(embeds[:, start:start + WINDOW], window, atol=1e-6)
    # the UNet takes any sequence length: a long prompt generates
    image = img2img.generate(pipe, torch.zeros(1, 4, 16, 16), [long], "cartoon", 0.5, 4.0, 4, [torch.Generator()])
    assert image.shape == (1, 3, 32, 32)


def test_a_short_prompt_beside_a_long_one_is_encoded_and_drawn_as_alone(pipe):
    """Batch make-up never changes an image: a short caption is not padded to its long batch mate's windows."""
    short, other = "a bold handwritten digit three", "a thin digit seven"
    long = "the handwritten digit three is bold, slanted to the right, drawn with thick strokes, " * 3
    prompts = [short, long, other]
    mixed = text.encode(pipe, prompts, "cartoon")
    assert [e.shape[1] for e, _ in mixed] == [WINDOW, text.token_count(pipe.tokenizer, long), WINDOW]
    for prompt, (embeds, negative) in zip(prompts, mixed):
        [(alone, alone_negative)] = text.encode(pipe, [prompt], "cartoon")
        assert embeds.shape == alone.shape == negative.shape
        assert torch.allclose(embeds, alone, atol=1e-6) and torch.allclose(negative, alone_negative, atol=1e-6)
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    gens = lambda: [torch.Generator().manual_seed(20 + i) for i in range(3)]
    batch = img2img.generate(pipe, latents, prompts, "cartoon", 0.6, 4.0, 6, gens())
    for i in range(3):
        alone = img2img.generate(pipe, latents[i:i + 1], prompts[i:i + 1], "cartoon", 0.6, 4.0, 6, gens()[i:i + 1])
        assert torch.allclose(batch[i], alone[0], atol=1e-5), prompts[i]


# --- the pretrained path, end to end through the stages ----------------------------------------------------

def test_pretrained_stable_diffusion_through_the_stages(prepared, sd_dir):
    """diffusion (pretrained + VLCP fine-tune) → latents → prototypes → synthesize, as dvc.yaml runs them."""
    folder = workdir(prepared, "sd-project", {
        "ipc": 2,
        "diffusion": {"mode": "pretrained", "pretrained": str(sd_dir), "resolution": 32,
                      "finetune": {"epochs": 1, "batch_size": 128, "ema_decay": 0.99},
                      "check": {"samples": 1, "steps": 3}},
        "d4m": {"synthesis": {"steps": 4, "strength": 0.5}},
        "vlcp": {"synthesis": {"steps": 4, "strength": 0.5}},
    })
    (folder / "artifacts" / "digits").mkdir(parents=True)
    (folder / "artifacts" / "digits" / "teachers").symlink_to(prepared / "artifacts" / "digits" / "teachers")
    art = "artifacts/digits"
    run_stage(folder, "caption", "--data", "data/digits", "--out", f"{art}/captions")
    run_stage(folder, "diffusion", "--data", "data/digits", "--captions", f"{art}/captions",
              "--out", f"{art}/diffusion", "--metrics", f"{art}/diffusion.json")
    record = json.loads((folder / art / "diffusion.json").read_text())
    assert record["mode"] == "pretrained" and record["finetune"]["steps"] == 12  # ceil(1437 / 128)
    fine_tuned = StableDiffusionImg2ImgPipeline.from_pretrained(folder / art / "diffusion", local_files_only=True)
    original = StableDiffusionImg2ImgPipeline.from_pretrained(sd_dir, local_files_only=True)
    assert fine_tuned.text_encoder.__class__.__name__ == "CLIPTextModel"
    assert not torch.equal(fine_tuned.unet.conv_in.weight, original.unet.conv_in.weight)  # the UNet learned
    assert torch.equal(fine_tuned.vae.encoder.conv_in.weight, original.vae.encoder.conv_in.weight)  # frozen

    log = run_stage(folder, "diffusion_check", "--diffusion", f"{art}/diffusion", "--teacher",
                    f"{art}/teachers/convnet", "--data", "data/digits", "--out", f"{art}/diffusion_check").stderr
    check = json.loads((folder / art / "diffusion_check" / "metrics.json").read_text())
    assert check["samples"] == 10 and 0 <= check["teacher_fidelity"] <= 1
    # flags.noise_factor 2 x chance (10 classes): a model drawing noise says so, in metrics.json and as a warning
    assert check["noise_threshold"] == 0.2 and check["noise"] == (check["teacher_fidelity"] < 0.2)
    assert ("warning: diffusion_check:" in log) == check["noise"]
    with Image.open(folder / art / "diffusion_check" / "samples.png") as grid:
        assert grid.size == (16 * 4, 10 * 16 * 4)

    run_stage(folder, "latents", "--diffusion", f"{art}/diffusion", "--data", "data/digits", "--out", f"{art}/latents")
    latents, labels, paths = read_latents(folder / art / "latents")
    assert latents.shape == (1437, 4, 16, 16) and len(paths) == 1437 and labels.max() == 9

    for method in ("d4m", "vlcp"):
        extra = ["--captions", f"{art}/captions"] if method == "vlcp" else []
        run_stage(folder, "prototypes", method, "--latents", f"{art}/latents", "--data", "data/digits", *extra,
                  "--out", f"{art}/ipc2/prototypes/{method}")
        run_stage(folder, "synthesize", method, "--diffusion", f"{art}/diffusion", "--prototypes",
                  f"{art}/ipc2/prototypes/{method}", "--data", "data/digits", "--out", f"{art}/ipc2/distilled/{method}",
                  "--stats", f"{art}/ipc2/synthesis/{method}.json")
        distilled = folder / art / "ipc2" / "distilled" / method
        files = sorted(distilled.rglob("*.png"))
        assert len(files) == 20 and all(Image.open(f).size == (16, 16) for f in files)
        card = json.loads((distilled / "card.json").read_text())
        assert card["method"] == method and card["num_images"] == 20 and card["synthesis"]["denoising_steps"] == 2
        prompts = card["synthesis"]["prompts"]["3"]
        if method == "d4m":
            assert prompts == ["handwritten digit 3"] * 2
        else:  # VLCP prompts with member captions of class 3
            captions = {json.loads(line)["caption"] for line in (folder / art / "captions" / "captions.jsonl").open()
                        if json.loads(line)["class"] == "3"}
            assert set(prompts) <= captions


# --- each stage's run(...) called in this process, on a two-class project of six 16 px images ------------------

SMALL = {"ipc": 1, "diffusion": {"train": {"vae_steps": 2, "unet_steps": 2, "batch_size": 4}}}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """data/digits (classes 0 and 1, three train images each, classes.json and meta.json as prepare writes
    them), params for tiny models, and the captions folder caption.run makes."""
    import numpy as np

    from stages import caption
    from stages.pipeline import params
    from tests.conftest import write_params
    from tests.fuzz import data_meta
    from tests.tiny import TINY, merge

    folder = tmp_path_factory.mktemp("in-process")
    data = folder / "data" / "digits"
    rng = np.random.default_rng(0)
    for c in "01":
        (data / "train" / c).mkdir(parents=True)
        for i in range(3):
            pixels = np.clip(rng.normal(100 + 80 * int(c), 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / "train" / c / f"{i}.png")
    data_meta(data, {"0": 3, "1": 3})
    write_params(folder, merge(TINY, SMALL))
    caption.run(params.load(folder / "params.yaml", folder / "data"), data, folder / "captions")
    return folder


def small_params(small: Path, monkeypatch, **override):
    from stages.pipeline import params
    from tests.conftest import write_params
    from tests.tiny import TINY, merge

    monkeypatch.chdir(small)  # the run log goes to artifacts/runs.jsonl under it
    write_params(small, merge(TINY, {**SMALL, **override}))
    return params.load(small / "params.yaml", small / "data")


def test_diffusion_run_in_process(small, tmp_path, monkeypatch):
    from stages import diffusion
    from stages.generation.pipeline_folder import check_pipeline_folder

    p = small_params(small, monkeypatch)
    out, metrics = tmp_path / "diffusion", tmp_path / "diffusion.json"
    result = diffusion.run(p, small / "data" / "digits", small / "captions", out, metrics)
    assert result == json.loads(metrics.read_text())
    assert result["mode"] == "train" and result["images"] == 6 and result["captioned"] is True
    assert result["vae"]["steps"] == 2 and result["vae"]["latent_shape"] == [4, 8, 8]
    check_pipeline_folder(out)  # complete, and every file matches the content record it wrote
    assert not (tmp_path / ".diffusion.resume").exists()


def test_latents_run_in_process(small, sd_dir, tmp_path, monkeypatch):
    from stages import latents

    p = small_params(small, monkeypatch)
    returned = latents.run(p, sd_dir, small / "data" / "digits", tmp_path / "latents")
    stored, labels, paths = read_latents(tmp_path / "latents")
    assert returned.shape == (6, 4, 16, 16) and torch.equal(returned, stored)  # the VAE works at 32 px
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and paths[3] == "1/0.png"


def test_synthesize_run_in_process(small, sd_dir, tmp_path, monkeypatch):
    from stages import synthesize
    from stages.prototypes import write_outputs

    p = small_params(small, monkeypatch, d4m={"synthesis": {"steps": 2, "strength": 0.5}})
    prefix = tmp_path / "prototypes" / "d4m"
    record = {"method": "d4m", "ipc": 1, "seed": 0, "params": {"kmeans": "full"}, "latent_shape": [4, 16, 16],
              "classes": [{"class": c, "clusters": [{"text_prototype": None}]} for c in "01"]}
    write_outputs(prefix, record, torch.randn(2, 1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))
    out, stats = tmp_path / "set", tmp_path / "stats.json"
    result = synthesize.run(p, "d4m", sd_dir, prefix, small / "data" / "digits", out, stats)
    assert result == json.loads(stats.read_text()) == {"method": "d4m", "images": 2, "denoising_steps": 1}
    assert sorted(f.relative_to(out).as_posix() for f in out.rglob("*.png")) == ["0/000.png", "1/000.png"]
    assert all(Image.open(f).size == (16, 16) for f in out.rglob("*.png"))
    card = json.loads((out / "card.json").read_text())
    assert card["synthesis"]["prompts"] == {"0": ["handwritten digit 0"], "1": ["handwritten digit 1"]}
    assert card["params"]["prototypes"] == {"kmeans": "full"}


def test_diffusion_check_run_in_process(small, sd_dir, tmp_path, monkeypatch):
    from stages import diffusion_check
    from stages.models import build, save_checkpoint
    from stages.pipeline.outputs import sha256_file
    from tests.tiny import TINY

    p = small_params(small, monkeypatch)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    config = TINY["models"]["convnet"]
    torch.manual_seed(0)
    save_checkpoint(build("convnet", 2, 16, config), teacher, {
        "arch": "convnet", "config": config, "num_classes": 2, "image_size": 16,
        "classes_sha256": sha256_file(small / "data" / "digits" / "classes.json"), "mean": [0.5] * 3,
        "std": [0.25] * 3})
    metrics = diffusion_check.run(p, sd_dir, teacher, small / "data" / "digits", tmp_path / "check")
    assert metrics == json.loads((tmp_path / "check" / "metrics.json").read_text())
    assert metrics["samples"] == 2 and metrics["prompts"] == ["handwritten digit 0", "handwritten digit 1"]
    assert metrics["noise"] == (metrics["teacher_fidelity"] < metrics["noise_threshold"])  # 2 x chance = 1.0
    with Image.open(tmp_path / "check" / "samples.png") as grid:
        assert grid.size == (16 * 4, 2 * 16 * 4)  # one row per class, one sample each, x4
