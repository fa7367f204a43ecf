"""img2img throughput at synthesize@d4m's defaults: the stage's batched calls against one image per call.

Both sides run stages.generation.img2img.generate (the stock StableDiffusionImg2ImgPipeline) on the same
latents, prompts and per-image seeded generators as synthesize@d4m (params.yaml `d4m.synthesis`: steps,
strength, guidance, negative prompt, batch size; `ipc` x classes images), then to_uint8 at the dataset's size:
  batched  `d4m.synthesis.batch_size` images per pipeline call, as the stage does
  naive    one pipeline call per image
Faster = more images/s; ratio = batched / naive. The images agree up to float rounding (printed).

    python benchmarks/diffusion.py [--diffusion artifacts/digits/diffusion] [--quick]

Without the --diffusion folder, a model of the diffusion stage's default architecture (params.yaml
`diffusion.train`: VAE and UNet channels, the MiniLM text encoder) is built by stages.generation.ldm with
random weights and saved and loaded like a trained one: images/s does not depend on the weights' values.
The device is the stages' choice (CUDA when available).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (it reads TQDM_* then): bars garble tables
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download: the text encoder is a local folder

import torch

from stages.generation import ldm
from stages.generation.img2img import denoising_steps, generate, to_uint8
from stages.pipeline import params
from stages.pipeline.artifacts import write_record
from stages.pipeline.seeds import derive_seed
from stages.prepare import open_source
from stages.generation.img2img import load_pipeline


def untrained_pipeline(p, folder: Path) -> Path:
    """The diffusion stage's train-mode model (stages/diffusion.py train_mode), built but not trained."""
    t = p.diffusion.train
    resolution = p.diffusion.resolution or p.prepare.image_size  # train mode: the prepared size
    torch.manual_seed(0)
    vae = ldm.build_vae(t.vae_channels, resolution)
    tokenizer, text_encoder = ldm.load_text_encoder(t.text_window)
    unet = ldm.build_unet(t.unet_channels, resolution // 2 ** (len(t.vae_channels) - 1),
                          text_encoder.config.hidden_size)
    ldm.assemble(vae, unet, tokenizer, text_encoder).save_pretrained(folder, safe_serialization=True)
    write_record(folder)  # the content record the stages check, as the diffusion stage writes it
    return folder


def run(pipe, latents, prompts, gens, s, batch_size: int, size: int) -> tuple[torch.Tensor, float]:
    """synthesize's loop (without the PNG writes): images as uint8 and the seconds they took."""
    out = []
    began = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        images = generate(pipe, latents[i:i + batch_size], prompts[i:i + batch_size], s.negative_prompt,
                          s.strength, s.guidance, s.steps, gens()[i:i + batch_size])
        out.append(to_uint8(images, size))  # generate returns CPU tensors: the clock sees finished work
    return torch.cat(out), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", default="artifacts/digits/diffusion", type=Path,
                        help="a diffusion stage output; an untrained model of the default architecture if absent")
    parser.add_argument("--data", default="data/digits", type=Path, help="for classes.json and the image size")
    parser.add_argument("--images", type=int, help="images per side (default: ipc x classes, what the stage makes)")
    parser.add_argument("--quick", action="store_true", help="10 steps (7 denoising), 4 images, batch 4")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("DDPIPE_THREADS", os.cpu_count() or 1)))
    p = params.load()
    s = p.d4m.synthesis
    if (args.data / "classes.json").exists():
        classes = json.loads((args.data / "classes.json").read_text())
        size = json.loads((args.data / "meta.json").read_text())["image_size"]
    else:  # the classes prepare would write, without writing them
        classes, size = open_source(p).classes, p.prepare.image_size
    jobs = [(c, k) for c in range(len(classes)) for k in range(p.ipc)]
    if args.images:  # spread over the classes, as the stage's jobs are
        jobs = [(c % len(classes), c // len(classes)) for c in range(args.images)]
    batch_size = s.batch_size
    if args.quick:
        s, jobs, batch_size = s.model_copy(update={"steps": 10}), jobs[::len(jobs) // 4][:4], 4

    with tempfile.TemporaryDirectory(prefix="bench-diffusion-") as scratch:
        if (args.diffusion / "model_index.json").exists():
            folder, source = args.diffusion, f"{args.diffusion} (trained by the diffusion stage)"
        else:
            folder = untrained_pipeline(p, Path(scratch) / "diffusion")
            t = p.diffusion.train
            source = (f"untrained model of the default architecture (diffusion.train: VAE {t.vae_channels}, "
                      f"UNet {t.unet_channels}, MiniLM text encoder), random weights - "
                      f"images/s does not depend on training ({args.diffusion} absent)")
        pipe = load_pipeline(folder)
    device = pipe.unet.device
    latent = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    # the prototypes' stand-in: img2img noises them to `strength` first, so their values do not change the work
    latents = torch.randn((len(jobs), *latent), generator=torch.Generator().manual_seed(0))
    prompts = [params.class_prompts(p, classes)[c] for c, _ in jobs]
    def gens():  # synthesize's per-image generators, fresh for each side
        return [torch.Generator().manual_seed(derive_seed(p.seed, "d4m", classes[c], k)) for c, k in jobs]

    # Warm-up outside the clocks (first-call costs: kernel selection, allocator) at both batch shapes.
    for n in {1, min(batch_size, len(jobs))}:
        generate(pipe, latents[:n], prompts[:n], s.negative_prompt, s.strength, s.guidance, 4,
                 [torch.Generator().manual_seed(0) for _ in range(n)])
    batched, batched_s = run(pipe, latents, prompts, gens, s, batch_size, size)
    single, single_s = run(pipe, latents, prompts, gens, s, 1, size)
    assert batched.shape == single.shape == (len(jobs), size, size, 3) and batched.dtype == single.dtype
    differ = (batched.int() - single.int()).abs()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"diffusion: {source}")
    print(f"machine: {torch.get_num_threads()} threads of {os.cpu_count()} cores, device {name}, torch "
          f"{torch.__version__}")
    print(f"d4m.synthesis{' (--quick: fewer steps and images)' if args.quick else ''}: {len(jobs)} images, "
          f"steps {s.steps} x strength {s.strength} = {denoising_steps(s.steps, s.strength)} denoising steps, "
          f"guidance {s.guidance}, latents {list(latent)} -> {size} px, {pipe.scheduler.__class__.__name__}")
    print(f"outputs: batched and one-at-a-time pixels differ in {int((differ > 0).sum())} of {differ.numel()} values, "
          f"by at most {differ.max().item()} of 255 (float rounding of batched kernels)")
    print(f"batched (batch {batch_size}): {len(jobs) / batched_s:8.2f} images/s")
    print(f"one image per call:   {len(jobs) / single_s:8.2f} images/s")
    print(f"ratio batched / one-at-a-time: {single_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
