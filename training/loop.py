"""The training skeleton every run shares: `Trainer` owns device and DDP, the optimizer (AdamW over the model's own
parameter groups), the EMA, resume (checking the checkpoint's kind and config), the step / log / validate /
checkpoint cadence, graceful stopping on SIGINT/SIGTERM, the check that stops a diverged run (a non-finite loss or
gradient) before it can be applied or saved, RNG state for bit-exact resume, the metrics log (RUN/metrics.jsonl +
TensorBoard events in RUN/tensorboard) and RUN/summary.json. A `TrainTask` supplies the rest: how to build its
model, one step's loss, validation and its own state.

Used by training/train_tokenizer.py, training/train_transformer.py and evaluation/probe.py.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from datagen.config import Interrupted, UserError
from datagen.dataset import naming, write_json_atomic
from training import checkpoint as ckpt
from training.checkpoint import CheckpointWriteError, TrainingDiverged, last_checkpoint_note  # noqa: F401 - re-exported
from training.device import autocast_for, init_distributed, pick_device, resolve_precision  # noqa: F401 - re-exported
from training.progress import step_bar


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
    if isinstance(e, CheckpointWriteError):
        return e
    note = f"; {last_checkpoint_note(run)}" if run is not None else ""
    return OSError(e.errno, f"{e.strerror or e}; training stopped at step {step}{note}", e.filename)


def write_summary(out: Path, summary: dict) -> None:
    """RUN/summary.json, atomically; a failed write (disk full) is an OSError naming the file (the CLI: one line,
    exit status 1; the run's checkpoints are already saved by then)."""
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
        from torch.utils.tensorboard import SummaryWriter   # (imported when a run starts: it is slow to import)

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
        with naming(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        prefix = "val" if row.get("split") == "val" else "train"
        for key, value in row.items():
            if key not in ("step", "split", "seconds") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        self.writer.close()


class TrainTask:
    """What one kind of training run supplies to the Trainer: how to build its model, one step's loss, validation
    and its own state. The Trainer does the rest (device and DDP, optimizer, EMA, resume, the step / log /
    validate / checkpoint cadence, interrupts, divergence checks and the summary)."""
    kind = ""                                  # "tokenizer" | "transformer" | "probe": recorded in every checkpoint
    label = ""                                 # the progress bar's name
    same_sections: tuple[str, ...] = ()        # config sections a resumed run must match
    loss_name = "loss"                         # named when the loss diverges
    diverged_hint = "lower train.lr or check the data"
    ema_copy_prefixes: tuple[str, ...] = ()    # parameters the EMA copies instead of averaging
    weights_name = "model"                     # named when the checkpoint's weights don't fit the model
    val_split = "val"                          # the split validation reads ("train" when the data has no val split)

    def build(self, tr: "Trainer") -> torch.nn.Module:
        """The model on tr.device (and anything trained beside it), built after torch.manual_seed(train.seed)."""
        raise NotImplementedError

    def start(self, tr: "Trainer") -> None:
        """After resume: data, validation inputs, anything the loop needs (tr.step is the first step to train)."""

    def train_module(self, tr: "Trainer") -> torch.nn.Module:
        """The module the forward pass runs through (compiled, say); the Trainer wraps it in DDP under torchrun."""
        return tr.model

    def loss(self, tr: "Trainer", step: int) -> tuple[torch.Tensor, dict]:
        """One step's batch through tr.train_model -> (loss, the row logged for the step: tensors or numbers)."""
        raise NotImplementedError

    def after_step(self, tr: "Trainer", step: int, parts: dict) -> None:
        """After the optimizer step, before the EMA update (a discriminator's own step, say)."""

    def validate(self, tr: "Trainer", model: torch.nn.Module) -> dict:
        raise NotImplementedError

    def validation_line(self, val: dict) -> str:
        raise NotImplementedError

    def postfix(self, row: dict) -> dict:
        """What the progress bar shows after a logged step."""
        return {"loss": f"{row['loss']:.4f}"}

    def weights(self) -> dict:
        """Weights saved beside the model and its EMA: {name: state_dict}."""
        return {}

    def train_state(self) -> dict:
        """Optimizer state saved beside the model's optimizer and the RNG state."""
        return {}

    def load_state(self, latest: Path, state: dict) -> None:
        """Restore what weights() and train_state() saved, from checkpoint `latest` (train_state.pt = state)."""

    def summary(self, tr: "Trainer") -> dict:
        """RUN/summary.json (and the return value of the train_* function)."""
        raise NotImplementedError


class Trainer:
    """The training skeleton every run shares. Under torchrun (WORLD_SIZE > 1) it runs DDP; only rank 0 logs,
    validates and saves. --resume continues bit for bit on the CPU: model, EMA, optimizer, RNG state and the
    task's own state come back from the latest checkpoint, and the data order is a function of the step."""

    def __init__(self, task: TrainTask, t, out: Path, run_config: dict, *, resume: bool = False,
                 device: str = "auto", progress: bool = True, max_steps_this_run: int | None = None, log=print):
        self.task, self.t, self.out, self.run_config, self.log = task, t, Path(out), run_config, log
        latest = ckpt.checkpoint_to_resume(self.out, resume, task.kind, log)
        self.rank, self.world, ddp_device = init_distributed(device)
        self.main = self.rank == 0
        self.progress = progress and (self.main or self.world == 1)
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        self.device = ddp_device or pick_device(device)
        self.precision = resolve_precision(t.precision, self.device)   # "bf16" or "fp32": train.precision here
        self.model = task.build(self)
        self.ema = copy.deepcopy(self.model).eval() if t.ema_decay > 0 else None
        self.opt = adamw(self.model.param_groups(t.weight_decay), t)
        self.step = self._resume(latest) if latest is not None else 0
        self.start_step = self.step
        self.stop_at = t.steps if max_steps_this_run is None else min(t.steps, self.step + max_steps_this_run)
        self.last_val: dict = {}
        self.t0 = self.seconds = 0.0
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        task.start(self)
        self.train_model = self.ddp(task.train_module(self))

    def autocast(self):
        """The context a task's forward passes run in: bf16 autocast when self.precision is bf16."""
        return autocast_for(self.device, self.precision)   # resolved once: no /proc/cpuinfo read per step

    def ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` wrapped in DistributedDataParallel under torchrun, else itself."""
        if self.world <= 1:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _resume(self, latest: Path) -> int:
        saved = ckpt.load_config_json(latest)
        if saved.get("kind") != self.task.kind:
            raise UserError(f"{latest} is a {saved.get('kind', 'unknown')!r} checkpoint, not a {self.task.kind}")
        ckpt.require_same(saved, self.run_config, latest, list(self.task.same_sections))
        ckpt.load_weights(latest / "model.safetensors", self.model, self.task.weights_name)
        if self.ema is not None:
            ckpt.load_weights(latest / "ema.safetensors", self.ema, "EMA model")
        state = ckpt.load_train_state(latest)
        self.opt.load_state_dict(state["optimizer"])
        self.task.load_state(latest, state)
        if "rng" in state:
            restore_rng_state(state["rng"])
        self.log(f"resuming {self.out} from step {saved['step']}")
        return int(saved["step"])

    def save(self) -> None:
        weights = {"model": self.model.state_dict(), **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                   **self.task.weights()}
        state = {"optimizer": self.opt.state_dict(), "rng": rng_state(), **self.task.train_state()}
        ckpt.save_checkpoint(self.out, self.step, self.run_config, weights, state)

    def fit(self) -> dict:
        """Train from self.step to stop_at; returns the summary (also RUN/summary.json, written by rank 0)."""
        t, task = self.t, self.task
        metrics = MetricsLog(self.out, self.step) if self.main else None
        if self.main and self.step < self.stop_at:   # (says where it runs: `auto` may or may not have found a GPU)
            ranks = f", DDP over {self.world} ranks" if self.world > 1 else ""
            self.log(f"{task.label}: training on {self.device.type} ({self.precision}{ranks}), "
                     f"steps {self.step}..{self.stop_at}")
        bar = step_bar(t.steps, self.step, task.label, self.progress, self.log)
        self.model.train()
        self.t0, stop = time.perf_counter(), GracefulStop()
        with checkpoint_on_interrupt(stop, bar, metrics, self.save, lambda: self.step, self.log, self.main,
                                     run=self.out):
            while self.step < self.stop_at:
                if stop.requested:  # Ctrl-C or SIGTERM (schedulers send it before killing): stop at a step boundary
                    raise KeyboardInterrupt
                parts = self._train_step()
                self.step += 1
                bar.update(1)
                if self.main:
                    self._after_step(parts, metrics, bar)
        return self._finish()

    def _train_step(self) -> dict:
        t, task, step = self.t, self.task, self.step
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, t)
        loss, parts = task.loss(self, step)
        self.opt.zero_grad(set_to_none=True)
        backward_checked(loss, self.model.parameters(), t.grad_clip, step, self.out, task.loss_name,
                         task.diverged_hint)  # stops on nan/inf before the optimizer applies it
        self.opt.step()
        task.after_step(self, step, parts)
        if self.ema is not None:
            ema_update(self.ema, self.model, t.ema_decay, task.ema_copy_prefixes)
        return parts

    def _after_step(self, parts: dict, metrics: "MetricsLog", bar) -> None:
        """Rank 0, after step self.step: log, validate and save on their cadence."""
        t, step = self.t, self.step
        if step % t.log_every == 0 or step == self.stop_at:
            row = {"step": step, **{k: v.item() if torch.is_tensor(v) else v for k, v in parts.items()},
                   "lr": lr_at(step - 1, t), "seconds": round(time.perf_counter() - self.t0, 3)}
            metrics.log(row)
            bar.set_postfix(**self.task.postfix(row))
        if step % t.val_every == 0 or step == t.steps:
            self.last_val = self.validate()
            metrics.log(self.last_val)
            bar.write(self.task.validation_line(self.last_val))
        if step % t.ckpt_every == 0 or step == self.stop_at:
            self.save()

    def validate(self) -> dict:
        """{"step", "split", ...the task's validation of the EMA model (the raw one without EMA)}."""
        return {"step": self.step, "split": self.task.val_split,
                **self.task.validate(self, self.ema if self.ema is not None else self.model)}

    def _finish(self) -> dict:
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
            if not self.main:
                return {"run": str(self.out), "step": self.step, "rank": self.rank}
        self.seconds = time.perf_counter() - self.t0
        summary = {**self.task.summary(self), "precision": self.precision}
        write_summary(self.out, summary)
        return summary
