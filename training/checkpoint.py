"""Checkpoints: safetensors weights + JSON config (+ optimizer state for resume). No pickled code is ever loaded.

    RUN/checkpoints/step_000400/model.safetensors   model weights
                               ema.safetensors     EMA weights (when kept)
                               disc.safetensors    discriminator + LeCAM state (when used)
                               config.json         the full run config + what produced it
                               train_state.pt      optimizer/scheduler/RNG state, loaded with weights_only=True
    RUN/checkpoints/latest.json                    {"step": 400, "dir": "step_000400"}

A checkpoint directory is written under a temp name (.tmp-step_NNNNNN-PID), fsynced and renamed, and latest.json
is replaced atomically, so a run killed mid-save still has its previous checkpoint (a leftover temp directory is
never read and is removed by the next save). Weights holding nan/inf are never saved. Every loader turns a missing,
truncated, mis-shaped or malformed file into a one-line UserError naming it.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from datagen.config import UserError
from datagen.dataset import read_json, write_json_atomic

KEEP_LAST = 2


def checkpoint_root(run: Path) -> Path:
    return Path(run) / "checkpoints"


def _state_to_cpu(state: dict) -> dict:
    # safetensors wants contiguous tensors that don't share memory
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _first_non_finite(weights: dict[str, dict]) -> str | None:
    """'<name> tensor <key>' of the first floating-point tensor holding nan or inf, else None."""
    for name, state in weights.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return f"{name} tensor {key!r}"
    return None


class TrainingDiverged(UserError):
    """A non-finite loss, gradient or weight: the run stops and nothing more is saved, so the run's latest
    checkpoint is the last good one. (A UserError: the CLI prints it as one line and exits non-zero.)"""


def last_checkpoint_note(run: Path) -> str:
    """'last good checkpoint: step N in RUN/checkpoints/step_...' (or that there is none yet), for error messages."""
    found = latest_step(run)
    if found is None:
        return f"no checkpoint was saved in {Path(run) / 'checkpoints'} before it"
    return f"last good checkpoint: step {found[0]} in {found[1]}"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file too large, permission denied). An OSError, so the CLI
    prints it as one line naming the file, with exit status 1 (the machine failed, not the input)."""


def _os_cause(e: BaseException) -> tuple[int, str]:
    """(errno, reason) of the OS error behind e: an OSError in its cause/context chain (torch.save raises a
    RuntimeError from the failed write), or safetensors' "I/O error: File too large (os error 27)" text."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno, seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    m = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(e))
    if m:
        return int(m.group(2)), m.group(1)
    return errno.EIO, " ".join(str(e).split())[:200]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_owner_alive(path: Path) -> bool:
    """A .tmp-step_NNNNNN-PID directory whose writer is still running (not this process)."""
    try:
        pid = int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(run: Path) -> int:
    """Remove half-written checkpoint directories (.tmp-step_*) left by a killed run; returns how many."""
    root = checkpoint_root(run)
    stale = [p for p in root.glob(".tmp-step_*") if p.is_dir() and not _tmp_owner_alive(p)] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def save_checkpoint(run: Path, step: int, config: dict, weights: dict[str, dict],
                    train_state: dict | None = None) -> Path:
    """weights: {"model": state_dict, "ema": ..., ...}, each written as <name>.safetensors.

    Everything is written into RUN/checkpoints/.tmp-step_NNNNNN-PID, fsynced, and only then renamed to
    step_NNNNNN and recorded in latest.json (atomically replaced): a run killed at any moment leaves either the
    new checkpoint complete or the previous one as latest, never a half-written one that --resume would pick up.
    Weights holding nan/inf are never saved (TrainingDiverged). A failed write (disk full, file too large)
    removes the partial directory and raises CheckpointWriteError naming the file; the previous checkpoint stays."""
    root = checkpoint_root(run)
    bad = _first_non_finite(weights)
    if bad is not None:
        raise TrainingDiverged(f"refusing to save the checkpoint of step {step}: the {bad} holds nan/inf; "
                               f"{last_checkpoint_note(run)} (lower train.lr or check the data)")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(run)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    current = tmp
    try:
        tmp.mkdir()
        for name, state in weights.items():
            current = tmp / f"{name}.safetensors"
            save_file(_state_to_cpu(state), str(current))
            _fsync(current)
        current = tmp / "config.json"
        write_json_atomic(current, {"step": step, **config})
        if train_state is not None:
            current = tmp / "train_state.pt"
            with open(current, "wb") as f:  # a Python file, so a failed write keeps its OSError (errno, reason)
                torch.save(train_state, f)
                f.flush()
                os.fsync(f.fileno())
        current = tmp
        _fsync(tmp)
        if final.exists():  # the same step saved again (a resumed run): move the old one aside first
            old = root / f".tmp-step_{step:06d}-{os.getpid()}-old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        current = root / "latest.json"
        write_json_atomic(current, {"step": step, "dir": final.name})
        _fsync(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and not isinstance(e, UserError):
            code, reason = _os_cause(e)
            prev = latest_step(run)
            raise CheckpointWriteError(code, f"could not write the checkpoint of step {step} ({reason}); "
                                       + (f"the previous checkpoint (step {prev[0]}, {prev[1]}) is intact" if prev
                                          else "no earlier checkpoint exists"), str(current)) from None
        raise
    # keep the newest KEEP_LAST - 1 earlier checkpoints; later-numbered ones are orphans of a run killed before it
    # updated latest.json, now superseded by this (resumed) one
    earlier = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name < final.name)
    later = [p for p in root.glob("step_*") if p.is_dir() and p.name > final.name]
    for old in earlier[:len(earlier) - (KEEP_LAST - 1)] + later:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    path = checkpoint_root(run) / "latest.json"
    if not path.exists():
        return None
    info = read_json(path, "checkpoint pointer")
    if not isinstance(info, dict) or not re.fullmatch(r"step_\d+", str(info.get("dir"))):
        raise UserError(f"checkpoint pointer {path} is malformed (expected {{\"step\": N, \"dir\": \"step_...\"}})")
    ckpt = checkpoint_root(run) / info["dir"]
    if not ckpt.is_dir():
        raise UserError(f"{path} points to {ckpt}, which does not exist")
    return ckpt


def latest_step(run: Path) -> tuple[int, Path] | None:
    """(step, directory) of the run's latest checkpoint, or None when it has none or it is unreadable (for
    messages; never raises)."""
    try:
        latest = latest_checkpoint(run)
        return (int(load_config_json(latest)["step"]), latest) if latest is not None else None
    except (UserError, OSError):
        return None


def checkpoint_to_resume(run: Path, resume: bool, kind: str, log=print) -> Path | None:
    """The checkpoint a training command continues from: None for a fresh run; an existing run without --resume is
    a one-line UserError (so a typo in --out never silently continues or overwrites someone's run)."""
    run = Path(run)
    latest = latest_checkpoint(run) if run.exists() else None
    if latest is not None and not resume:
        raise UserError(f"{run} already holds a {kind} run (step {load_config_json(latest)['step']}); "
                        f"pass --resume to continue it or choose another --out")
    if resume and latest is None:
        log(f"--resume: no checkpoint in {run} yet; starting from step 0")
    return latest


def load_weights(path: Path, module: torch.nn.Module, what: str = "model") -> None:
    """Load safetensors weights into `module`; a missing or wrong-shaped tensor is a one-line UserError."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"checkpoint file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise UserError(f"checkpoint {path} is unreadable: {e}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise UserError(f"checkpoint {path} lacks {len(missing)} {what} tensor(s), e.g. {missing[0]!r}")
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise UserError(f"checkpoint {path} has {len(unexpected)} unknown tensor(s), e.g. {unexpected[0]!r}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise UserError(f"checkpoint {path}: tensor {k!r} has shape {tuple(v.shape)}, "
                            f"the {what} expects {tuple(own[k].shape)}")
    module.load_state_dict(state)


# config sections each kind of checkpoint must carry (what the commands that load it read)
REQUIRED_SECTIONS = {"tokenizer": ("model", "data"), "transformer": ("model", "tasks", "tokens", "layout"),
                     "probe": ("model", "data")}


def load_config_json(ckpt: Path) -> dict:
    """RUN/checkpoints/step_N/config.json; a file that is not JSON, not an object, without an integer step or
    without the sections its kind needs is a one-line UserError naming it."""
    path = Path(ckpt) / "config.json"
    config = read_json(path, "checkpoint config")
    if not isinstance(config, dict) or not isinstance(config.get("step"), int):
        raise UserError(f"checkpoint config {path} is malformed: expected a JSON object with an integer \"step\"")
    missing = [k for k in REQUIRED_SECTIONS.get(config.get("kind"), ()) if not isinstance(config.get(k), dict)]
    if missing:
        raise UserError(f"checkpoint config {path} is malformed: section {missing[0]!r} is missing or not an object")
    return config


def load_run(run: Path, kind: str) -> tuple[Path, dict]:
    """(latest checkpoint, its config) of a finished or saved run of `kind` (tokenizer, transformer, probe): what
    every reader of a trained model starts from. A missing run, one without a checkpoint, or a run of another
    kind (a tokenizer run passed as --transformer) is a one-line UserError saying which run to pass."""
    run = Path(run)
    train = f"`magvit3d train-{kind}`"
    if not run.is_dir():
        raise UserError(f"no {kind} checkpoint in {run}: it does not exist; train one with {train}")
    latest = latest_checkpoint(run)
    if latest is None:
        raise UserError(f"no {kind} checkpoint in {run} (no checkpoints/latest.json); train one with "
                        f"`magvit3d train-{kind} --out {run}`")
    saved = load_config_json(latest)
    if saved.get("kind") != kind:
        raise UserError(f"{run} is a {saved.get('kind', 'unknown')!r} run, not a {kind} run; pass the --out of {train}")
    return latest, saved


def load_model_weights(latest: Path, model: torch.nn.Module, what: str = "model") -> torch.nn.Module:
    """A checkpoint's weights into `model` for inference: the EMA weights when the run kept them, else the raw
    ones."""
    ema = Path(latest) / "ema.safetensors"
    load_weights(ema if ema.exists() else Path(latest) / "model.safetensors", model, what)
    return model


def load_train_state(ckpt: Path) -> dict:
    path = Path(ckpt) / "train_state.pt"
    if not path.exists():
        raise UserError(f"{ckpt} has no train_state.pt; it cannot be resumed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except pickle.UnpicklingError as e:  # weights_only refused a global: not a plain tensor state (tampered?)
        first = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise UserError(f"{path} is not a plain optimizer/RNG state; refused to unpickle it"
                        + (f" ({first})" if first else "")) from None
    except Exception as e:  # noqa: BLE001 - truncated or not a torch file
        raise UserError(f"{path} is unreadable (truncated or not a torch.save file: {' '.join(str(e).split())[:200]})"
                        ) from None
    if not isinstance(state, dict) or "optimizer" not in state:
        raise UserError(f"{path} is malformed: expected a dict with the optimizer state")
    return state


def require_same(saved: dict, wanted: dict, where: Path, keys: list[str]) -> None:
    """The named config sections of a checkpoint must equal the ones asked for (one line naming the first)."""
    for key in keys:
        if saved.get(key) != wanted.get(key):
            a, b = saved.get(key), wanted.get(key)
            detail = ""
            if isinstance(a, dict) and isinstance(b, dict):
                diffs = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                detail = f" ({'; '.join(diffs[:3])})"
            raise UserError(f"checkpoint {where} was made with a different {key} config{detail}")
