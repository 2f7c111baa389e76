"""A fake rendered dataset without Blender, in the exact on-disk format, for fast tests.

Masks are the filled convex hull of the object's projected bounding-box corners (slightly shrunk, so they lie
inside the projected box like a real render's silhouette); RGB frames are a per-sample/view/frame gradient
with the object painted in, so every frame differs and packed pixels can be traced back to their PNG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datagen.camera import project, projection_matrix
from datagen.config import from_dict, to_dict
from datagen.dataset import (build_dataset_json, build_meta, frame_path, mask_stats, sample_dir,
                             write_json_atomic)
from datagen.spec import DatasetConfig, build_spec, world_corners

SHRINK = 0.95  # the drawn silhouette is the box scaled by this about its centre


def _merge(base: dict, sections: dict) -> dict:
    """Update config sections key by key; a key's value (even a dict like dataset.splits) is replaced whole."""
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


def fake_config(num_samples: int = 4, resolution: int = 32, frames: int = 3, **overrides) -> DatasetConfig:
    """A tiny DatasetConfig; overrides are section dicts merged in, e.g. render={"depth": True}."""
    data = to_dict(DatasetConfig())
    _merge(data, {"dataset": {"num_samples": num_samples}, "render": {"resolution": resolution, "frames": frames}})
    return from_dict(DatasetConfig, _merge(data, overrides))


def _turn(o, a, b) -> float:
    """z of (a - o) x (b - o): > 0 for a counter-clockwise turn."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull of 2D points (n, 2), counter-clockwise."""
    pts = sorted(map(tuple, points))

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and _turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]
    return np.array(half(pts) + half(reversed(pts)))


def draw_mask(P: np.ndarray, corners: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (H, W) mask: 255 where the pixel centre (j + 0.5, i + 0.5) lies inside the hull of the projected
    (shrunk) corners. Rasterised by hand: Pillow's polygon fill truncates vertices, off by up to a pixel."""
    centre = corners.mean(0)
    hull = convex_hull(project(P, centre + SHRINK * (corners - centre)))
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    inside = np.ones((height, width), bool)
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):  # counter-clockwise: inside is left of every edge
        inside &= (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0]) >= 0
    return np.where(inside, 255, 0).astype(np.uint8)


def fake_rgb(mask: np.ndarray, sample_id: int, view: int, frame: int) -> np.ndarray:
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     np.full_like(xx, (sample_id * 37 + view * 53 + frame * 11) % 256)], -1)
    rgb = np.where(mask[..., None] > 127, [230, 40 + 20 * view, 10 * frame % 256], base)
    return rgb.astype(np.uint8)


def write_fake_frames(out_dir: Path, spec: dict) -> list[str]:
    """The rgb + mask (+ depth) PNGs of one scene spec in `out_dir`, laid out as a render worker writes them;
    returns the view names."""
    o, r = spec["object"], spec["render"]
    corners = world_corners(o["dimensions"], o["bbox_offset"], np.asarray(o["location"]), np.asarray(o["rotation"]))
    views = [c["name"] for c in spec["cameras"]]
    for v, c in enumerate(spec["cameras"]):
        P = projection_matrix(np.asarray(c["K"]), np.asarray(c["R"]), np.asarray(c["t"]))
        for f in range(r["frames"]):
            mask = draw_mask(P[f], corners[f], r["width"], r["height"])
            for kind, arr in (("mask", mask), ("rgb", fake_rgb(mask, spec["sample_id"], v, f))):
                path = frame_path(out_dir, views[v], kind, f)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
            if r["depth"]:
                path = frame_path(out_dir, views[v], "depth", f)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((r["height"], r["width"]), 2000, np.uint16)).save(path)
    return views


def write_fake_sample(root: Path, cfg: DatasetConfig, sample_id: int) -> Path:
    """One complete sample directory: rgb + mask (+ depth) PNGs and meta.json."""
    spec = build_spec(cfg, sample_id)
    d = sample_dir(root, sample_id)
    views = write_fake_frames(d, spec)
    write_json_atomic(d / "meta.json", build_meta(spec, mask_stats(d, views, spec["render"]["frames"])))
    return d


def make_fake_dataset(root, num_samples: int = 4, resolution: int = 32, frames: int = 3, **overrides) -> Path:
    """A complete fake dataset in `root` (dataset.json + samples/); overrides as in fake_config."""
    root = Path(root)
    cfg = fake_config(num_samples, resolution, frames, **overrides)
    (root / "samples").mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "dataset.json", build_dataset_json(cfg, "test"))
    for i in range(num_samples):
        write_fake_sample(root, cfg, i)
    return root
