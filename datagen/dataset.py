"""The dataset on disk (schema version 2, SCHEMA_VERSION): layout, dataset.json, meta.json, splits, atomic writes, reading.

    DATASET/
      dataset.json                  schema_version, versions, full config, camera rig, splits, counts
      samples/000123/meta.json      ground truth of one sample (see build_meta)
      samples/000123/view0/rgb/0000.png, view0/mask/0000.png, ...
      packed/<split>_rgb.npy        uint8 (N, V, T, H, W, 3)
      packed/<split>_index.json     sample ids, labels, 3D positions, 2D centres, cameras, in pack order

A sample directory is complete or absent: it is rendered into samples/.tmp-000123 and renamed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from datagen import __version__
from datagen.config import UserError, to_dict

SCHEMA_VERSION = 2  # 2: positions are the centre of mass (cone origin h/4 above its base)
TMP_PREFIX = ".tmp-"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with
# errnos that mean "the storage refused the write", not a bug: reported as one line, finished work is kept
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO})


class WriteFailed(OSError):
    """Writing into the dataset failed (disk full, quota, file size limit, read-only or failing disk); everything
    committed before stays intact. An OSError whose filename is the file that failed and whose strerror says what
    stopped and what to do, so the CLI prints it as one line ('FILE: REASON; ...') with exit status 1."""


@contextmanager
def write_errors(doing: str, kept: str):
    """Turn an OSError of the storage (see WRITE_ERRNOS) inside the block into a WriteFailed whose text reads
    '<file>: <reason> (disk full, quota or file size limit?); <doing> stopped; <kept>'. Other errors pass unchanged."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise WriteFailed(e.errno, f"{e.strerror or e} (disk full, quota or file size limit?); {doing} stopped; {kept}",
                          e.filename) from None


def sample_name(sample_id: int) -> str:
    return f"{sample_id:06d}"


def sample_dir(root: Path, sample_id: int) -> Path:
    return Path(root) / "samples" / sample_name(sample_id)


def tmp_sample_dir(root: Path, sample_id: int) -> Path:
    return Path(root) / "samples" / f"{TMP_PREFIX}{sample_name(sample_id)}"


def frame_path(sample_root: Path, view: str, kind: str, frame: int) -> Path:
    return Path(sample_root) / view / kind / f"{frame:04d}.png"


@contextmanager
def naming(path, note: str = ""):
    """An OSError inside the block that carries no file name of its own (a failed write: EFBIG, ENOSPC) is raised
    again naming `path`, with `note` added to its reason, so the CLI prints it as one line 'FILE: REASON'."""
    try:
        yield
    except OSError as e:
        if e.filename is not None and not note:
            raise
        raise OSError(e.errno, f"{e.strerror or e}{note}", e.filename or str(path)) from None


def write_json_atomic(path: Path, data, indent: int | None = 1) -> None:
    """Write JSON to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming(path), open(tmp, "w") as f:
            json.dump(data, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: Path, what: str = "file"):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


def config_hash(config_dict: dict) -> str:
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:16]


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [f"{prefix}: {a!r} vs {b!r}"]


def split_ids(num_samples: int, fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Deterministic split by sample id: a seeded permutation cut by the fractions (largest-remainder
    rounding); every split with a positive fraction gets at least one sample when there are enough."""
    names = list(fractions)
    exact = np.array([fractions[n] * num_samples for n in names])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: num_samples - counts.sum()]:
        counts[i] += 1
    for i, n in enumerate(names):  # a positive fraction never yields an empty split
        if fractions[n] > 0 and counts[i] == 0 and num_samples >= len(names):
            counts[i] = 1
            counts[int(np.argmax(counts))] -= 1
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5317])).permutation(num_samples)
    out, start = {}, 0
    for n, c in zip(names, counts):
        out[n] = sorted(int(i) for i in perm[start:start + c])
        start += c
    return out


def empty_splits_warning(splits: dict[str, list[int]], fractions: dict[str, float]) -> str | None:
    """One line when a split meant to hold clips (fraction > 0) got none, which happens with fewer clips than
    splits (split_ids gives every such split one clip otherwise); None when all have clips. Training validates on
    val, and generate/evaluate/reconstruct read test by default, so an empty split is said at render and pack time."""
    empty = [name for name, ids in splits.items() if not ids and fractions.get(name, 0) > 0]
    if not empty:
        return None
    total = sum(len(ids) for ids in splits.values())
    wanted = sum(1 for f in fractions.values() if f > 0)
    return (f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: {total} clip(s) for "
            f"{wanted} splits; training validates on val and generate/evaluate/reconstruct read test, so render "
            f"at least {wanted} clips (-n {wanted}) or change dataset.splits")


def build_dataset_json(cfg, blender_version: str) -> dict:
    from datagen.spec import camera_tracks

    cfg_dict = to_dict(cfg)
    tracks = camera_tracks(cfg) if cfg.cameras.motion != "jitter" else None
    rig = [{"name": c.name, "position": list(c.position), "target": list(c.target)} for c in cfg.cameras.rig]
    if tracks is not None:
        for entry, tr in zip(rig, tracks):
            entry["K"] = tr.K.tolist()
            entry["R0"], entry["t0"] = tr.R[0].tolist(), tr.t[0].tolist()
    splits = split_ids(cfg.dataset.num_samples, cfg.dataset.splits, cfg.dataset.seed)
    return {
        "schema_version": SCHEMA_VERSION,
        "toolkit_version": __version__,
        "blender_version": blender_version,
        "config": cfg_dict,
        "config_hash": config_hash(cfg_dict),
        "image_size": [cfg.render.resolution, cfg.render.resolution],
        "frames": cfg.render.frames,
        "fps": cfg.render.fps,
        "views": [c.name for c in cfg.cameras.rig],
        "camera_rig": {"lens_mm": cfg.cameras.lens_mm, "sensor_mm": cfg.cameras.sensor_mm,
                       "motion": cfg.cameras.motion, "cameras": rig, **_projection_keys(cfg)},
        "classes": {"shape": list(cfg.objects.shapes), "family": list(cfg.trajectories.families)},
        "splits": splits,
        "counts": {"samples": cfg.dataset.num_samples, **{k: len(v) for k, v in splits.items()}},
    }


def _projection_keys(cfg) -> dict:
    """The orthographic camera's keys for dataset.json's camera_rig; none for a perspective rig (as before)."""
    if cfg.cameras.projection == "perspective":
        return {}
    return {"projection": cfg.cameras.projection, "ortho_scale": cfg.cameras.ortho_scale}


def check_same_config(root: Path, cfg) -> dict | None:
    """The existing dataset.json of `root`, or None; UserError when it was made with a different config."""
    path = Path(root) / "dataset.json"
    if not path.exists():
        return None
    existing = read_json(path, "dataset.json")
    if not isinstance(existing, dict):
        raise UserError(f"{path} is not a JSON object; choose another output directory")
    if existing.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} has schema_version {existing.get('schema_version')!r}; this toolkit reads {SCHEMA_VERSION}")
    new = to_dict(cfg)
    if existing.get("config") != new:
        diffs = _diff_keys(existing.get("config"), new)
        raise UserError(f"{root} holds a dataset with a different config ({'; '.join(diffs[:3])}"
                        f"{'; ...' if len(diffs) > 3 else ''}); choose another output directory")
    return existing


def complete_sample_ids(root: Path) -> set[int]:
    """Ids of the sample directories that exist (complete by construction: they appear by rename)."""
    folder = Path(root) / "samples"
    if not folder.is_dir():
        return set()
    return {int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}


def remove_stale_tmp(root: Path, ids) -> int:
    """Delete leftover temp directories of these sample ids (from an interrupted render); returns the count."""
    n = 0
    for i in ids:
        p = tmp_sample_dir(root, i)
        if p.exists():
            shutil.rmtree(p)
            n += 1
    return n


def incomplete_pngs(sample_root: Path, views: list[str], kinds: list[str],
                    frames: int) -> tuple[list[Path], list[Path]]:
    """(missing, truncated) frame PNGs of one sample directory. A PNG whose write was cut short (disk full, a file
    size limit: Blender reports 'Saved' all the same) lacks the IEND chunk at its end; only the tail is read."""
    missing, truncated = [], []
    for v in views:
        for kind in kinds:
            for f in range(frames):
                p = frame_path(sample_root, v, kind, f)
                try:
                    with open(p, "rb") as fh:
                        size = fh.seek(0, os.SEEK_END)
                        fh.seek(max(0, size - len(PNG_END)))
                        tail = fh.read()
                except FileNotFoundError:
                    missing.append(p)
                    continue
                if tail != PNG_END:
                    truncated.append(p)
    return missing, truncated


def mask_stats(sample_root: Path, views: list[str], frames: int) -> dict:
    """Per view and frame: visibility (mask non-empty), mask area in px, and mask box [x0, y0, x1, y1]
    in pixel-edge coordinates (a pixel (i, j) spans [j, j+1] x [i, i+1]); None where invisible."""
    from PIL import Image

    vis, area, box = [], [], []
    for v in views:
        vis.append([]), area.append([]), box.append([])
        for f in range(frames):
            m = np.asarray(Image.open(frame_path(sample_root, v, "mask", f)))
            vis[-1].append(bool((m > 127).any()))
            area[-1].append(int((m > 127).sum()))
            box[-1].append(mask_box(m))
    return {"visibility": vis, "mask_area": area, "mask_bbox": box}


def read_mask(sample_root: Path, view: str, frame: int) -> np.ndarray:
    """The object mask of one frame of one view as bool (H, W): the pixels > 127 of view/mask/FFFF.png (as
    mask_stats counts them). Masks are not packed: they live only beside the rendered PNGs, so this raises
    FileNotFoundError when the samples/ folder is gone."""
    from PIL import Image

    with Image.open(frame_path(sample_root, view, "mask", frame)) as im:
        return np.asarray(im) > 127


def mask_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] of a 0/255 mask (pixels > 127) in pixel-edge coordinates; None when empty."""
    m = mask > 127
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def build_meta(spec: dict, masks: dict) -> dict:
    """meta.json of one sample from its spec and the rendered masks' statistics."""
    from datagen.camera import CameraTrack, project

    r = spec["render"]
    loc = np.asarray(spec["object"]["location"])
    views, centres = [], []
    for c in spec["cameras"]:
        tr = CameraTrack(c["name"], np.array(c["K"]), np.array(c["R"]), np.array(c["t"]), r["width"], r["height"],
                         c.get("projection", "perspective"))
        P = tr.P
        views.append({"name": c["name"], "K": c["K"], "R": c["R"], "t": c["t"], "P": P.tolist(),
                      "lens_mm": c["lens_mm"], "sensor_mm": c["sensor_mm"],
                      **{k: c[k] for k in ("projection", "ortho_scale") if k in c}})
        centres.append([project(P[f], loc[f]).tolist() for f in range(len(loc))])
    o = spec["object"]
    return {
        "schema_version": SCHEMA_VERSION,
        "sample_id": spec["sample_id"],
        "seed": spec["seed"],
        "shape": {"name": o["shape"], "dimensions": o["dimensions"], "bbox_offset": o["bbox_offset"],
                  "size": o["size"]},
        "material": o["material"],
        "ground": spec["ground"],
        "lights": spec["lights"],
        "world": spec["world"],
        "trajectory": {"family": spec["trajectory"]["family"], "params": spec["trajectory"]["params"],
                       "position": o["location"], "rotation": o["rotation"], "spin": o["spin"]},
        "frames": r["frames"],
        "fps": r["fps"],
        "image_size": [r["width"], r["height"]],
        "views": views,
        "centers_2d": centres,
        **masks,
    }


def load_dataset_json(root: Path) -> dict:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset directory not found: {root}")
    info = read_json(root / "dataset.json", "dataset.json")
    if not isinstance(info, dict):
        raise UserError(f"{root / 'dataset.json'} is not a JSON object; is {root} a magvit3d dataset?")
    if info.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{root / 'dataset.json'} has schema_version {info.get('schema_version')!r}; "
                        f"this toolkit reads {SCHEMA_VERSION}")
    return info


def load_meta(root: Path, sample_id: int) -> dict:
    return read_json(sample_dir(root, sample_id) / "meta.json", "meta.json")
