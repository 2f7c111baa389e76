"""The generated-clips directory: what `magvit3d generate` writes and `magvit3d evaluate` / `compare` read.
This module is the one writer and the one reader of that format.

    GEN/generated.json      schema_version, kind "magvit3d-generated", task, dataset (path, split, config hash),
                            image_size [W, H], frames, views, the sampling settings (steps, temperature, seed), the
                            transformer and tokenizer runs, and one record per clip (see ClipRecord), in array order
    GEN/generated_rgb.npy   uint8 (N, V, T, H, W, 3): the decoded generated clips; the given parts (first frames,
                            given views) are in them too, decoded from their tokens
    GEN/target_rgb.npy      uint8 (N, V, T, H, W, 3): the rendered clips the generation is compared with; only when
                            every clip has a sample id (not for class-conditional generation)
    GEN/clips/...           GIF / PNG files for people to look at (not read back)

The whole directory is written under a temporary name and renamed, so it is complete or absent.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from datagen.config import UserError
from datagen.dataset import read_json, write_json_atomic

SCHEMA_VERSION = 1
KIND = "magvit3d-generated"
TASKS = ("predict", "generate", "complete-view")
# info["method"]: what made the clips (the transformer, or the held-out clips' tokens); the report shows the title
METHOD_TITLES = {"model": "model (transformer samples)", "ceiling": "tokenizer ceiling (true tokens decoded)",
                 "copy-latent": "copy last latent frame (its tokens repeated, decoded)",
                 "object-warp": "object warp (last latent frame, the object's tokens moved by its true displacement)"}


@dataclass
class ClipRecord:
    """What one generated clip was made from."""
    sample_id: int | None            # the dataset sample whose tokens conditioned it (None: class-conditional only)
    task: str                        # predict | generate | complete-view
    shape: str                       # class label (given for "generate", the sample's label otherwise)
    family: str
    seed: int                        # the sampling seed of this clip
    given_frames: int = 0            # frames 0..given_frames-1 of every view were given (predict)
    given_views: list[int] = field(default_factory=list)  # views given whole (complete-view)
    track_from: int | None = None    # generate with a track prior: the training sample whose track it was given


@dataclass
class GeneratedSet:
    root: Path
    info: dict
    records: list[ClipRecord]
    rgb: np.ndarray                  # uint8 (N, V, T, H, W, 3), memory-mapped
    target: np.ndarray | None        # same shape, or None

    def __len__(self) -> int:
        return len(self.records)


def write_generated(out: Path, rgb: np.ndarray, records: list[ClipRecord], info: dict,
                    target: np.ndarray | None = None, extra_files=None) -> Path:
    """Write GEN atomically. info: task, dataset, split, dataset_config_hash, image_size, frames, views, steps,
    temperature, seed, transformer, tokenizer (whatever describes the run). extra_files(tmp_dir) may add the
    human-readable files before the rename."""
    out = Path(out)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 6 or rgb.shape[-1] != 3 or len(rgb) != len(records):
        raise ValueError(f"generated rgb must be uint8 (N, V, T, H, W, 3) with N = {len(records)}, got "
                         f"{rgb.dtype} {rgb.shape}")
    if target is not None and (target.shape != rgb.shape or target.dtype != np.uint8):
        raise ValueError(f"target {target.dtype} {target.shape} does not match generated {rgb.shape}")
    for r in records:
        if r.task not in TASKS:
            raise ValueError(f"unknown task {r.task!r}; allowed: {', '.join(TASKS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:   # a failure (disk full, Ctrl-C) leaves neither the temporary directory nor a half-written GEN
        np.save(tmp / "generated_rgb.npy", rgb)
        if target is not None:
            np.save(tmp / "target_rgb.npy", np.asarray(target))
        write_json_atomic(tmp / "generated.json", {
            "schema_version": SCHEMA_VERSION, "kind": KIND, **info, "shape": list(rgb.shape),
            "has_target": target is not None, "clips": [asdict(r) for r in records]})
        if extra_files is not None:
            extra_files(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_generated_dir(path: Path) -> bool:
    return (Path(path) / "generated.json").is_file()


def load_generated(path: Path) -> GeneratedSet:
    """Read GEN (arrays memory-mapped); any inconsistency is a one-line UserError naming the file."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"generated clips directory {root} does not exist")
    meta_path = root / "generated.json"
    if not meta_path.is_file():
        raise UserError(f"{root} holds no generated.json; is it the --out of `magvit3d generate`?")
    info = read_json(meta_path, "generated-clips index")
    if not isinstance(info, dict):
        raise UserError(f"{meta_path} is not a JSON object; is {root} the --out of `magvit3d generate`?")
    if info.get("kind") != KIND or info.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{meta_path}: kind {info.get('kind')!r} schema {info.get('schema_version')!r}; "
                        f"expected {KIND!r} schema {SCHEMA_VERSION}")
    try:
        records = [ClipRecord(**c) for c in info["clips"]]
        if not all(isinstance(n, int) for n in info["shape"]):
            raise TypeError(f"shape {info['shape']!r} is not a list of integers")
    except (KeyError, TypeError) as e:
        raise UserError(f"{meta_path}: malformed clip records ({e})") from None
    for i, r in enumerate(records):
        problem = _record_problem(r)
        if problem:
            raise UserError(f"{meta_path}: clip {i}: {problem}")
    rgb = _load_array(root / "generated_rgb.npy", info["shape"], len(records))
    target = _load_array(root / "target_rgb.npy", info["shape"], len(records)) if info.get("has_target") else None
    return GeneratedSet(root, info, records, rgb, target)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _record_problem(r: ClipRecord) -> str | None:
    """What is wrong with a clip record read from generated.json (its values name files and index arrays)."""
    if r.sample_id is not None and not (_is_int(r.sample_id) and r.sample_id >= 0):
        return f"sample_id {r.sample_id!r} is not a non-negative integer or null"
    if r.task not in TASKS:
        return f"task {r.task!r} is not one of {', '.join(TASKS)}"
    if not isinstance(r.shape, str) or not isinstance(r.family, str):
        return f"shape {r.shape!r} and family {r.family!r} must be strings"
    if not _is_int(r.seed) or not _is_int(r.given_frames) or r.given_frames < 0:
        return f"seed {r.seed!r} and given_frames {r.given_frames!r} must be integers (given_frames >= 0)"
    if not isinstance(r.given_views, list) or not all(_is_int(v) and v >= 0 for v in r.given_views):
        return f"given_views {r.given_views!r} must be a list of view indices"
    return None


def _load_array(path: Path, shape: list[int], n: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path} is missing")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is unreadable or truncated: {e}") from None
    if arr.dtype != np.uint8 or list(arr.shape) != list(shape) or len(arr) != n:
        raise UserError(f"{path} is {arr.dtype} {tuple(arr.shape)}; generated.json says uint8 {tuple(shape)}")
    return arr
