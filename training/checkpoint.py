"""Checkpoints: safetensors weights + JSON config (+ optimizer state for resume). No pickled code is ever loaded.

    RUN/checkpoints/step_000400/model.safetensors   model weights
                               ema.safetensors     EMA weights (when kept)
                               disc.safetensors    discriminator + LeCAM state (when used)
                               config.json         the full run config + what produced it
                               train_state.pt      optimizer/scheduler/RNG state, loaded with weights_only=True
    RUN/checkpoints/latest.json                    {"step": 400, "dir": "step_000400"}

A checkpoint directory is written under a temp name and renamed, and latest.json is replaced atomically, so a
run killed mid-save still has its previous checkpoint.
"""
from __future__ import annotations

import os
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


def save_checkpoint(run: Path, step: int, config: dict, weights: dict[str, dict],
                    train_state: dict | None = None) -> Path:
    """weights: {"model": state_dict, "ema": ..., ...}, each written as <name>.safetensors."""
    root = checkpoint_root(run)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, state in weights.items():
        save_file(_state_to_cpu(state), str(tmp / f"{name}.safetensors"))
    write_json_atomic(tmp / "config.json", {"step": step, **config})
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json_atomic(root / "latest.json", {"step": step, "dir": final.name})
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-KEEP_LAST]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    path = checkpoint_root(run) / "latest.json"
    if not path.exists():
        return None
    info = read_json(path, "checkpoint pointer")
    ckpt = checkpoint_root(run) / info["dir"]
    if not ckpt.is_dir():
        raise UserError(f"{path} points to {ckpt}, which does not exist")
    return ckpt


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


def load_config_json(ckpt: Path) -> dict:
    return read_json(Path(ckpt) / "config.json", "checkpoint config")


def load_train_state(ckpt: Path) -> dict:
    path = Path(ckpt) / "train_state.pt"
    if not path.exists():
        raise UserError(f"{ckpt} has no train_state.pt; it cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is unreadable: {e}") from None


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
