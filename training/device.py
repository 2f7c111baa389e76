"""Where a model runs: the device (--device auto|cpu|cuda|mps), torchrun's DDP set-up, and bf16 autocast
(train.precision: on CUDA by default; also on CPUs with bf16 instructions where a preset asks for it).
Shared by training and inference (generate, tokenize, evaluate), so inference needs nothing from the training loop.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from datagen.config import UserError
from training.configs import check_precision

# bf16 on the CPU runs through oneDNN, which caches a kernel per op and shape (1024 by default): the demo in bf16
# peaked at 2.9 GB of RSS instead of 1.6. 128 keep the speed and most of the memory (BENCHMARKS.md "The demo in 20
# minutes"). Read lazily at oneDNN's first kernel, so setting it on import is early enough; a user's value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")


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


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 dot-product instructions (the avx512_bf16 or amx_bf16 flag; Linux's /proc/cpuinfo,
    False where it cannot be read). Without them bf16 autocast on the CPU is emulated and slower than fp32."""
    try:
        text = open(cpuinfo).read()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32": what `precision` (one of PRECISIONS) means on `device`."""
    check_precision(precision)
    if precision in ("bf16", "fp32"):
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if precision == "bf16-native" and device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast_for(device: torch.device, precision: str = "bf16-cuda"):
    """bf16 autocast where `precision` resolves to bf16 on `device`, else a disabled context (fp32, bit-exact)."""
    kind = device.type if device.type in ("cuda", "cpu", "mps") else "cpu"
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    return torch.autocast(kind, enabled=False)
