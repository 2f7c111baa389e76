"""What every training loop here shares: device choice, torchrun DDP set-up, the learning-rate schedule, the EMA
update, graceful stopping on SIGINT/SIGTERM, the check that stops a diverged run (a non-finite loss or gradient)
before it can be applied or saved, RNG state for bit-exact resume, and the metrics log (RUN/metrics.jsonl +
TensorBoard events in RUN/tensorboard).

Used by training/train_tokenizer.py, training/train_transformer.py and evaluation/probe.py.
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

from datagen.config import Interrupted, UserError
from training.device import autocast_for, init_distributed, pick_device  # noqa: F401 - re-exported


def lr_at(step: int, t) -> float:
    """Linear warm-up to t.lr over t.warmup_steps, then cosine decay to t.lr * t.min_lr_ratio at step t.steps."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(groups: list[dict], t) -> torch.optim.AdamW:
    """AdamW over parameter groups (a model's param_groups(weight_decay): which weights decay) with the train
    section's lr and betas."""
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))


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
    saved on the way out is never of a half-applied optimizer step. A second signal interrupts at once
    (`immediate` is then set, and nothing is saved: the step in flight may be half applied)."""

    def __init__(self):
        self.requested = False
        self.immediate = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            self.immediate = True
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class TrainingDiverged(UserError):
    """A non-finite loss, gradient or weight: the run stops and nothing more is saved, so the run's latest
    checkpoint is the last good one. (A UserError: the CLI prints it as one line and exits non-zero.)"""


def last_checkpoint_note(run: Path) -> str:
    """'last good checkpoint: step N in RUN/checkpoints/step_...' (or that there is none yet), for error messages."""
    from training import checkpoint as ckpt

    found = ckpt.latest_step(run)
    if found is None:
        return f"no checkpoint was saved in {Path(run) / 'checkpoints'} before it"
    return f"last good checkpoint: step {found[0]} in {found[1]}"


def _value(x: torch.Tensor) -> str:
    v = float(x)
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def backward_checked(loss: torch.Tensor, params, grad_clip: float, step: int, run: Path, what: str = "loss",
                     hint: str = "lower train.lr or check the data") -> torch.Tensor:
    """loss.backward(), then clip the gradients to grad_clip (0: only measure their norm); a non-finite loss or
    gradient norm raises TrainingDiverged naming the step (numbered as in metrics.jsonl: the step being trained is
    step + 1) and the last good checkpoint, before the optimizer could apply it. Checked after backward so that
    under DDP, where gradients are averaged over ranks, every rank sees the bad step and stops together.
    Returns the gradient norm (before clipping)."""
    loss.backward()
    params = [p for p in params if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    finite = torch.isfinite(loss.detach().float()) & torch.isfinite(norm)
    if not bool(finite):
        bad = (f"{what} is {_value(loss.detach())}" if not torch.isfinite(loss.detach()).all()
               else f"the gradient norm of the {what} is {_value(norm)}")
        raise TrainingDiverged(f"{bad} at step {step + 1}; {last_checkpoint_note(run)} (nothing after it was saved; "
                               f"{hint})")
    return norm


@contextlib.contextmanager
def checkpoint_on_interrupt(stop: GracefulStop, bar, metrics, save, current_step, log, main: bool = True,
                            run: Path | None = None):
    """Wraps a training loop. Ctrl-C / SIGTERM (raised as KeyboardInterrupt at a step boundary by the loop) saves
    a checkpoint on the writing rank and raises Interrupted, whose one line says so; a second signal (which
    interrupts mid-step) saves nothing, so the last checkpoint stays the latest. Any other error (a diverged loss, a failed write) saves nothing either;
    an OSError (disk full, file too large, permissions) gets the step and the last checkpoint added to its reason
    (the CLI prints it as one line naming the file, exit status 1). Either way the signal handlers are restored and the progress bar and metrics log closed.
    current_step() gives the step reached; run (the run directory) is named in the messages."""
    try:
        yield
    except KeyboardInterrupt:
        # One message, carried by the exception (the CLI prints it; the demo replaces it with its own advice).
        # Rerunning without --resume is refused (checkpoint.checkpoint_to_resume), so the advice names --resume.
        stop.restore()
        if stop.immediate:
            where = f"; {last_checkpoint_note(run)}" if run is not None else ""
            raise Interrupted(f"interrupted in the middle of step {current_step() + 1}; nothing saved{where}; rerun "
                              f"the same command with --resume to continue from there") from None
        if main:
            try:
                save()
            except OSError as e:
                raise _write_failed(e, current_step(), run) from None
        where = f" in {Path(run) / 'checkpoints'}" if run is not None else ""
        raise Interrupted(f"interrupted at step {current_step()}; checkpoint saved{where}; rerun the same command "
                          f"with --resume to continue") from None
    except OSError as e:
        raise _write_failed(e, current_step(), run) from None
    finally:
        stop.restore()
        bar.close()
        if metrics is not None:
            with contextlib.suppress(Exception):
                metrics.close()


def _write_failed(e: OSError, step: int, run: Path | None) -> OSError:
    """An OSError of the training loop (disk full while logging, ...) with the step and last checkpoint added to its
    reason; a checkpoint's own write error already says all that. The CLI prints an OSError as one line naming the
    file, exit status 1."""
    from training.checkpoint import CheckpointWriteError

    if isinstance(e, CheckpointWriteError):
        return e
    note = f"; {last_checkpoint_note(run)}" if run is not None else ""
    return OSError(e.errno, f"{e.strerror or e}; training stopped at step {step}{note}", e.filename)


def write_summary(out: Path, summary: dict) -> None:
    """RUN/summary.json, atomically; a failed write (disk full) is an OSError naming the file (the CLI: one line,
    exit status 1; the run's checkpoints are already saved by then)."""
    from datagen.dataset import naming, write_json_atomic

    path = Path(out) / "summary.json"
    with naming(path, "; the run's checkpoints are saved"):
        write_json_atomic(path, summary)


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
        self._drop_rows_after(start_step)
        self.writer = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=start_step or None)

    def _drop_rows_after(self, step: int) -> None:
        """A run killed after logging steps it never checkpointed logs them again when resumed: drop the rows past
        the checkpoint it resumes from (and a partial last line of a kill mid-write), so every step appears once."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(errors="replace").splitlines()
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                keep.append(line)
        if len(keep) != len(lines):
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(f"{line}\n" for line in keep))
            os.replace(tmp, self.path)

    def log(self, row: dict) -> None:
        from datagen.dataset import naming

        with naming(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        prefix = "val" if row.get("split") == "val" else "train"
        for key, value in row.items():
            if key not in ("step", "split", "seconds") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        self.writer.close()
