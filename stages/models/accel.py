"""GPU speed-ups, on CUDA only: bf16 autocast, channels-last weights and (opt-in) torch.compile.

On any other device every function here is the identity, so CPU runs keep their bytes. `params.load` sets
`settings` from params.yaml's `gpu` section. What stays fp32 under autocast: the weights and optimizer
state, BatchNorm's running statistics (autocast leaves batch_norm in fp32), the BN-matching statistics and
the recover loss (stages/recover_engine), and every loss (logits are cast back before it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Settings:
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False


settings = Settings()


def configure(gpu) -> None:
    """Take the `gpu` section of params.yaml (any object with bf16, channels_last and compile)."""
    global settings
    settings = Settings(gpu.bf16, gpu.channels_last, gpu.compile)


def on_gpu(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def autocast(device: torch.device | str):
    """bf16 autocast around forward passes on CUDA; nothing elsewhere."""
    if on_gpu(device) and settings.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Channels-last weights on CUDA (cuDNN's bf16 convolutions run in NHWC); inputs follow the weights'
    format (stages.models.as_input). In place, idempotent."""
    if on_gpu(device) and settings.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compiled(model: nn.Module, device: torch.device | str) -> nn.Module:
    """torch.compile on CUDA when gpu.compile is on (off by default: not measured to pay for its compile
    time at the step counts of these stages)."""
    return torch.compile(model) if on_gpu(device) and settings.compile else model
