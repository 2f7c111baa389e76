"""Where a model runs: the device (--device auto|cpu|cuda|mps), torchrun's DDP set-up, and bf16 autocast on CUDA.
Shared by training and inference (generate, tokenize, evaluate), so inference needs nothing from the training loop.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from datagen.config import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UserError("--device mps: no Apple MPS device is available; use --device auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; allowed: auto, cpu, cuda, mps")
    return torch.device(name)


def init_distributed(device: str) -> tuple[int, int, torch.device | None]:
    """(rank, world size, device) under torchrun (WORLD_SIZE > 1), else (0, 1, None). NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    return dist.get_rank(), world, torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; a disabled context elsewhere (CPU training stays fp32 and bit-exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
