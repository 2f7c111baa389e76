"""What every training loop here shares: device choice, torchrun DDP set-up, the learning-rate schedule, the EMA
update, graceful stopping on SIGINT/SIGTERM, RNG state for bit-exact resume, and the metrics log
(RUN/metrics.jsonl + TensorBoard events in RUN/tensorboard).

Used by training/train_tokenizer.py and training/train_transformer.py.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from pathlib import Path

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


def lr_at(step: int, t) -> float:
    """Linear warm-up to t.lr over t.warmup_steps, then cosine decay to t.lr * t.min_lr_ratio at step t.steps."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, copy_prefixes: tuple[str, ...] = ()) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter; parameters whose name starts with one of
    copy_prefixes are copied instead of averaged. Buffers are always copied."""
    for (name, e), p in zip(ema.named_parameters(), model.parameters()):
        if copy_prefixes and name.startswith(copy_prefixes):
            e.copy_(p)
        else:
            e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class GracefulStop:
    """While training, SIGINT and SIGTERM only set a flag that the loop checks between steps, so the checkpoint
    saved on the way out is never of a half-applied optimizer step. A second signal interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


@contextlib.contextmanager
def checkpoint_on_interrupt(stop: GracefulStop, bar, metrics, save, current_step, log, main: bool = True):
    """Wraps a training loop. Ctrl-C / SIGTERM (raised as KeyboardInterrupt at a step boundary by the loop, or at
    once on a second signal) saves a checkpoint on the writing rank and re-raises; either way the signal handlers
    are restored and the progress bar and metrics log closed. current_step() gives the step reached."""
    try:
        yield
    except KeyboardInterrupt:
        stop.restore()
        if main:
            save()
            metrics.close()
        bar.close()
        log(f"interrupted at step {current_step()}; checkpoint saved, rerun with --resume to continue")
        raise
    stop.restore()
    bar.close()
    if metrics is not None:
        metrics.close()


def rng_state() -> dict:
    """The global torch RNG state (and CUDA's), saved with a checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsLog:
    """Rows appended to RUN/metrics.jsonl and mirrored as TensorBoard scalars ("val/<key>" for rows with
    split == "val", "train/<key>" otherwise). start_step > 0 (a resumed run) purges TensorBoard events past it."""

    def __init__(self, out: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(out) / "metrics.jsonl"
        self.writer = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=start_step or None)

    def log(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        prefix = "val" if row.get("split") == "val" else "train"
        for key, value in row.items():
            if key not in ("step", "split", "seconds") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        self.writer.close()
