"""Verify a rendered dataset on disk: layout, metadata, images, and that the masks agree with the camera math.

The projection check is the one that catches convention bugs (a flipped axis, a wrong focal length, an
off-by-half-pixel centre): for every view and frame, the object's 8 bounding-box corners are projected with
that frame's P from meta.json, and the mask's box (pixel-edge coordinates, as datagen.dataset.mask_stats
computes it) must lie inside the projected corners' 2D box, expanded by `tolerance_px`.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from datagen.camera import PROJECTIONS, in_image, project, projection_matrix
from datagen.config import UserError
from datagen.dataset import PNG_END, TMP_PREFIX, frame_path, load_dataset_json, mask_box, sample_dir, sample_name
from datagen.spec import world_corners

# the keys datagen.dataset.build_dataset_json and build_meta write
DATASET_KEYS = ("schema_version", "toolkit_version", "blender_version", "config", "config_hash", "image_size",
                "frames", "fps", "views", "camera_rig", "classes", "splits", "counts")
META_KEYS = ("schema_version", "sample_id", "seed", "shape", "material", "ground", "lights", "world", "trajectory",
             "frames", "fps", "image_size", "views", "centers_2d", "visibility", "mask_area", "mask_bbox")
VIEW_KEYS = ("name", "K", "R", "t", "P")
IMAGE_MODES = {"rgb": ("RGB",), "mask": ("L",), "depth": ("I;16", "I;16B", "I;16L", "I")}
MAX_FRAME_ERRORS = 3  # per sample and check: the first few, then a count, so one bad sample stays readable


class SampleError(Exception):
    """A sample is too broken to check further (its meta.json is unreadable or malformed)."""


def decode_png(path: Path, what: str = "image") -> Image.Image:
    """Read and fully decode one PNG; UserError (one line, naming the file) when it is missing or truncated.
    Pillow stops reading once it has all pixels, so a file cut off after them is caught by its missing IEND."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"missing {what} {path}") from None
    if not data.endswith(PNG_END):
        raise UserError(f"{what} {path} does not decode: truncated (no IEND chunk at the end)")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()  # decodes every pixel: a file cut inside the pixel data raises here, not at open
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{what} {path} does not decode: {e}") from None
    return im


def _load_image(path: Path, kind: str, size: tuple[int, int]) -> np.ndarray:
    """Decode one frame PNG and check its size and mode; raises SampleError with a one-line reason."""
    try:
        im = decode_png(path, f"{kind} image")
    except UserError as e:
        raise SampleError(str(e)) from None
    if im.mode not in IMAGE_MODES[kind]:
        raise SampleError(f"{kind} image {path} has mode {im.mode}, expected {' or '.join(IMAGE_MODES[kind])}")
    if im.size != size:
        raise SampleError(f"{kind} image {path} is {im.size[0]}x{im.size[1]}, expected {size[0]}x{size[1]}")
    return np.asarray(im)


def _array(meta: dict, key_path: str, shape: tuple) -> np.ndarray:
    """A numeric array out of meta by dotted path, checked against `shape` (None = any size)."""
    node = meta
    for k in key_path.split("."):
        node = node[k] if isinstance(node, dict) and k in node else None
        if node is None:
            raise SampleError(f"meta.json lacks {key_path}")
    try:
        a = np.asarray(node, dtype=np.float64)
    except (TypeError, ValueError):
        raise SampleError(f"meta.json {key_path} is not a numeric array") from None
    if a.ndim != len(shape) or any(s is not None and s != g for s, g in zip(shape, a.shape)):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise SampleError(f"meta.json {key_path} has shape {'x'.join(map(str, a.shape))}, expected {want}")
    return a


def check_meta(meta: dict, sample_id: int, info: dict) -> dict:
    """Parse one meta.json against dataset.json; returns its arrays. Raises SampleError on the first problem."""
    if not isinstance(meta, dict):
        raise SampleError("meta.json is not a JSON object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise SampleError(f"meta.json lacks keys {missing}")
    if meta["sample_id"] != sample_id:
        raise SampleError(f"meta.json says sample_id {meta['sample_id']!r}")
    T, views = info["frames"], info["views"]
    V = len(views)
    if meta["frames"] != T or meta["image_size"] != list(info["image_size"]):
        raise SampleError(f"meta.json has frames={meta['frames']!r} image_size={meta['image_size']!r}, dataset.json "
                          f"has frames={T} image_size={info['image_size']}")
    if not isinstance(meta["views"], list) or [v.get("name") if isinstance(v, dict) else None
                                               for v in meta["views"]] != views:
        raise SampleError(f"meta.json views do not match dataset.json views {views}")
    for i, v in enumerate(meta["views"]):
        if any(k not in v for k in VIEW_KEYS):
            raise SampleError(f"meta.json views[{i}] lacks keys {[k for k in VIEW_KEYS if k not in v]}")
    a = {
        "dims": _array(meta, "shape.dimensions", (3,)),
        "bbox_offset": _array(meta, "shape.bbox_offset", (3,)),
        "position": _array(meta, "trajectory.position", (T, 3)),
        "rotation": _array(meta, "trajectory.rotation", (T, 4)),
        "K": np.stack([_array(v, "K", (3, 3)) for v in meta["views"]]),
        "R": np.stack([_array(v, "R", (T, 3, 3)) for v in meta["views"]]),
        "t": np.stack([_array(v, "t", (T, 3)) for v in meta["views"]]),
        "P": np.stack([_array(v, "P", (T, 3, 4)) for v in meta["views"]]),
        "centers_2d": _array(meta, "centers_2d", (V, T, 2)),
        "visibility": _array(meta, "visibility", (V, T)).astype(bool),
    }
    boxes = meta["mask_bbox"]
    if not (isinstance(boxes, list) and len(boxes) == V and all(isinstance(b, list) and len(b) == T for b in boxes)):
        raise SampleError(f"meta.json mask_bbox is not a {V}x{T} list")
    # P must be K[R|t] (orthographic: K[R_1 t_1; R_2 t_2; 0 0 0 1]), and the stored 2D centres the projection of
    # the stored positions
    projections = [v.get("projection", "perspective") for v in meta["views"]]
    if any(p not in PROJECTIONS for p in projections):
        raise SampleError(f"meta.json views have projections {projections}; allowed: {', '.join(PROJECTIONS)}")
    P_ref = np.stack([projection_matrix(a["K"][v], a["R"][v], a["t"][v], projections[v]) for v in range(V)])
    if not np.allclose(a["P"], P_ref, rtol=1e-6, atol=1e-6 * np.abs(P_ref).max()):
        raise SampleError("meta.json P is not K[R|t]" + (" (orthographic)" if "orthographic" in projections else ""))
    c_ref = np.stack([[project(a["P"][v, f], a["position"][f]) for f in range(T)] for v in range(V)])
    if not np.allclose(a["centers_2d"], c_ref, atol=1e-3, equal_nan=True):
        bad = np.nanmax(np.abs(a["centers_2d"] - c_ref))
        raise SampleError(f"meta.json centers_2d differ from projecting the trajectory with P by up to {bad:.3g} px")
    return a


def _frame_errors(label: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = f" (and {len(items) - MAX_FRAME_ERRORS} more frames)" if len(items) > MAX_FRAME_ERRORS else ""
    return [f"{label}: {'; '.join(items[:MAX_FRAME_ERRORS])}{more}"]


def check_sample(root: Path, sample_id: int, info: dict, tolerance_px: float, check_images: bool) -> dict:
    """All checks of one sample: {"errors": [one-line str], "max_box_excess_px": float, "frames_checked": int}."""
    d = sample_dir(root, sample_id)
    out = {"errors": [], "max_box_excess_px": 0.0, "frames_checked": 0}
    try:
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise SampleError(f"meta.json is missing: {d / 'meta.json'}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SampleError(f"meta.json {d / 'meta.json'} is not valid JSON: {e}") from None
        a = check_meta(meta, sample_id, info)
    except SampleError as e:
        out["errors"].append(str(e))
        return out

    W, H = info["image_size"]
    T, views = info["frames"], info["views"]
    kinds = ["rgb", "mask"] + (["depth"] if info["config"]["render"].get("depth") else [])
    # file counts first: a missing or extra frame is reported once per folder, not per frame
    for v in views:
        for kind in kinds:
            folder = d / v / kind
            have = sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []
            want = [frame_path(d, v, kind, f).name for f in range(T)]
            if have != want:
                gone, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
                out["errors"].append(f"{v}/{kind} has {len(have)} PNGs, expected {T}"
                                     + (f"; missing {gone[:3]}" if gone else "") + (f"; extra {extra[:3]}" if extra else ""))
    if out["errors"] or not check_images:
        return out

    corners = world_corners(a["dims"], a["bbox_offset"], a["position"], a["rotation"])  # (T, 8, 3)
    outside, empty, disagree, unreadable = [], [], [], []
    for vi, v in enumerate(views):
        for f in range(T):
            try:
                for kind in kinds:
                    if kind != "mask":
                        _load_image(frame_path(d, v, kind, f), kind, (W, H))
                mask = _load_image(frame_path(d, v, "mask", f), "mask", (W, H))
            except SampleError as e:
                unreadable.append(str(e))
                continue
            out["frames_checked"] += 1
            box = mask_box(mask)
            if bool(a["visibility"][vi, f]) != (box is not None) or meta["mask_bbox"][vi][f] != box:
                disagree.append(f"{v} frame {f} meta visibility={bool(a['visibility'][vi, f])} "
                                f"bbox={meta['mask_bbox'][vi][f]} vs mask {box}")
            uv = project(a["P"][vi, f], corners[f])
            if box is not None and np.isfinite(uv).all():  # a corner behind the camera: unbounded box, skip
                proj = [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()]
                excess = max(proj[0] - box[0], proj[1] - box[1], box[2] - proj[2], box[3] - proj[3], 0.0)
                out["max_box_excess_px"] = max(out["max_box_excess_px"], float(excess))
                if excess > tolerance_px:
                    outside.append(f"{v} frame {f} mask box {box} exceeds projected box "
                                   f"[{', '.join(f'{x:.1f}' for x in proj)}] by {excess:.2f} px")
            elif box is None:
                centre = project(a["P"][vi, f], a["position"][f])
                if in_image(centre, W, H):
                    empty.append(f"{v} frame {f} (projected centre {centre[0]:.1f}, {centre[1]:.1f})")
    out["errors"] += unreadable[:MAX_FRAME_ERRORS]
    if len(unreadable) > MAX_FRAME_ERRORS:
        out["errors"].append(f"and {len(unreadable) - MAX_FRAME_ERRORS} more unreadable images")
    out["errors"] += _frame_errors(f"mask outside the projected object box (tolerance {tolerance_px} px)", outside)
    out["errors"] += _frame_errors("mask empty although the object centre projects inside the image", empty)
    out["errors"] += _frame_errors("meta visibility/mask_bbox disagree with the mask on disk", disagree)
    return out


def _layout_errors(root: Path, info: dict) -> tuple[list[dict], list[int], list[int]]:
    """Dataset-level errors, the ids to check (complete dirs) and the missing ids."""
    errors = []
    missing_keys = [k for k in DATASET_KEYS if k not in info]
    if missing_keys:
        raise UserError(f"{root / 'dataset.json'} lacks keys {missing_keys}; not a dataset written by this toolkit")
    n = int(info["counts"]["samples"])
    folder = root / "samples"
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    for p in entries:
        if p.name.startswith(TMP_PREFIX):
            sid = p.name[len(TMP_PREFIX):]
            errors.append({"sample_id": int(sid) if sid.isdigit() else None,
                           "error": f"leftover partial sample directory {p} (an interrupted render; "
                                    f"re-run the render to finish it, or delete it)"})
    present = {int(p.name) for p in entries if p.is_dir() and p.name.isdigit()}
    for sid in sorted(present - set(range(n))):
        errors.append({"sample_id": sid, "error": f"unexpected sample directory {folder / sample_name(sid)} "
                                                  f"(dataset.json counts {n} samples)"})
    missing = [i for i in range(n) if i not in present]
    errors += [{"sample_id": i, "error": f"sample directory {folder / sample_name(i)} missing"} for i in missing]
    split_ids = sorted(i for ids in info["splits"].values() for i in ids)
    if split_ids != list(range(n)):
        errors.append({"sample_id": None, "error": f"dataset.json splits do not cover ids 0..{n - 1} exactly once"})
    return errors, sorted(present & set(range(n))), missing


def verify_dataset(root, tolerance_px: float = 1.5, check_images: bool = True, progress: bool = True) -> dict:
    """Check a dataset directory; returns a report dict (see module doc). check_images=False checks layout,
    meta.json and file counts only, without opening any PNG."""
    from tqdm import tqdm

    root = Path(root)
    start = time.perf_counter()
    info = load_dataset_json(root)
    errors, ids, missing = _layout_errors(root, info)
    max_excess, frames = 0.0, 0
    for sid in tqdm(ids, desc="verify", unit="sample", disable=not progress):
        res = check_sample(root, sid, info, tolerance_px, check_images)
        errors += [{"sample_id": sid, "error": e} for e in res["errors"]]
        max_excess = max(max_excess, res["max_box_excess_px"])
        frames += res["frames_checked"]
    return {
        "ok": not errors,
        "dataset": str(root),
        "samples_expected": int(info["counts"]["samples"]),
        "samples_checked": len(ids),
        "missing_ids": missing,
        "frames_checked": frames,
        "tolerance_px": tolerance_px,
        "max_box_excess_px": round(max_excess, 4),
        "errors": errors,
        "seconds": round(time.perf_counter() - start, 3),
    }
