"""Training phases of the diffusion stage that survive a kill and resume to the same bits.

A phase (VAE, UNet, fine-tune) saves, together: the model, its optimiser and lr schedule, the EMA if any,
the rest of the current epoch's batch order, the stage's torch generator (batches, noise, timesteps,
posterior samples and condition dropout all draw from it, never from hidden state) and the global torch
RNG (which initialises the next phase's model), and the loss curve. A rerun restores all of it and draws
exactly the numbers the interrupted run would have drawn.

Saves are time-based, every `DDPIPE_CHECKPOINT_SECONDS` (default 600 s), and at the end of every phase:
a step costs milliseconds on the digits and seconds for Stable Diffusion, so no fixed step interval suits
both, while a time interval bounds both the work a kill loses and the share of time spent saving. Where
the saves fall does not change the result, so the interval is an environment variable, not a param (DVC
reruns nothing for it).
"""
from __future__ import annotations

import time

import torch

from stages.pipeline.errors import env_number
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume

EVERY_ENV = "DDPIPE_CHECKPOINT_SECONDS"


def interval() -> float:
    return env_number(EVERY_ENV, 600.0, "seconds >= 0 between checkpoints (0 = every step)")


class Batches:
    """Index batches drawn epoch by epoch from seeded permutations of range(n); `order` (what is left of
    the current permutation) is the state a resumed run needs to continue the same sequence."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.order = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if len(self.order) < self.batch_size:
            self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.gen)])
        batch, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return batch


class Phase:
    """`for idx in Phase(...).run(steps, desc)`: the batches of the steps not done yet. The loop body
    trains on idx and appends its loss to `.losses`; after it, the phase is saved when due."""

    def __init__(self, name: str, resume: Resume | None, model: torch.nn.Module, optimizer, scheduler,
                 batches: Batches, gen: torch.Generator, ema=None):
        self.name, self.resume, self.model, self.optimizer, self.scheduler = name, resume, model, optimizer, scheduler
        self.batches, self.gen, self.ema = batches, gen, ema
        self.step, self.losses = 0, []
        state = resume.load(name) if resume is not None else None
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            batches.order = state["order"]
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.step, self.losses = state["step"], state["losses"]
            print(f"diffusion: resumed {name} at step {self.step} from {resume.folder}")

    def run(self, steps: int, desc: str):
        every, last = interval(), time.monotonic()
        for step in progress(range(self.step, steps), initial=self.step, total=steps, desc=desc):
            yield self.batches.next()
            self.step = step + 1
            if self.resume is not None and (self.step == steps or time.monotonic() - last >= every):
                self.save()
                last = time.monotonic()

    def save(self) -> None:
        self.resume.save(self.name, {
            "step": self.step, "losses": self.losses, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "order": self.batches.order.clone(),
            "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state()})
