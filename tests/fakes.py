"""A fake rendered dataset without Blender, in the exact on-disk format, for fast tests.

Masks are the filled convex hull of the object's projected bounding-box corners (slightly shrunk, so they lie
inside the projected box like a real render's silhouette), or of a 2D shape's own outline (square, disc, triangle:
so a triangle's mask has its centroid at the tracked position, as a render's has); RGB frames are a per-sample/view/frame gradient
with the object painted in, so every frame differs and packed pixels can be traced back to their PNG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datagen.camera import project, projection_matrix, quat_to_matrix
from datagen.config import from_dict, load_config, to_dict
from datagen.dataset import (build_dataset_json, build_meta, frame_path, mask_stats, sample_dir,
                             write_json_atomic)
from datagen.spec import DatasetConfig, build_spec, world_corners

SHRINK = 0.95  # the drawn silhouette is the box scaled by this about its centre


def _merge(base: dict, sections: dict) -> dict:
    """Update config sections key by key; a key's value (even a dict like dataset.splits) is replaced whole."""
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


def fake_config(num_samples: int = 4, resolution: int = 32, frames: int = 3, kind: str = "3d",
                **overrides) -> DatasetConfig:
    """A tiny DatasetConfig; overrides are section dicts merged in, e.g. render={"depth": True}. kind "2d" starts
    from the tiny-2d preset (one orthographic top-down view, flat shapes, 2D families) instead of the defaults."""
    if kind not in ("3d", "2d"):
        raise ValueError(f"kind {kind!r}; allowed: 3d, 2d")
    data = to_dict(DatasetConfig() if kind == "3d" else load_config(DatasetConfig, "dataset", "tiny-2d"))
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
    (shrunk) corners (any number of points: a box's 8, a flat shape's outline). Rasterised by hand: Pillow's polygon
    fill truncates vertices, off by up to a pixel."""
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


def flat_outline(shape: str, dims) -> np.ndarray | None:
    """The outline (n, 3) of a 2D shape's top face in object coordinates (origin at its centroid), None for a solid."""
    sx, sy, sz = (d / 2 for d in dims)
    if shape == "square":
        xy = [(-sx, -sy), (sx, -sy), (sx, sy), (-sx, sy)]
    elif shape == "disc":
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        xy = np.stack([sx * np.cos(a), sy * np.sin(a)], -1)
    elif shape == "triangle":   # apex up; the centroid a third of the height above the base
        xy = [(0.0, 4 * sy / 3), (-sx, -2 * sy / 3), (sx, -2 * sy / 3)]
    else:
        return None
    xy = np.asarray(xy, dtype=np.float64)
    return np.concatenate([xy, np.full((len(xy), 1), sz)], -1)


def write_fake_frames(out_dir: Path, spec: dict) -> list[str]:
    """The rgb + mask (+ depth) PNGs of one scene spec in `out_dir`, laid out as a render worker writes them;
    returns the view names."""
    o, r = spec["object"], spec["render"]
    corners = world_corners(o["dimensions"], o["bbox_offset"], np.asarray(o["location"]), np.asarray(o["rotation"]))
    outline = flat_outline(o["shape"], o["dimensions"])
    if outline is not None:
        rot = quat_to_matrix(np.asarray(o["rotation"]))
        corners = np.einsum("tij,kj->tki", rot, outline) + np.asarray(o["location"])[:, None, :]
    views = [c["name"] for c in spec["cameras"]]
    for v, c in enumerate(spec["cameras"]):
        P = projection_matrix(np.asarray(c["K"]), np.asarray(c["R"]), np.asarray(c["t"]),
                              c.get("projection", "perspective"))
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


def make_fake_dataset(root, num_samples: int = 4, resolution: int = 32, frames: int = 3, kind: str = "3d",
                      **overrides) -> Path:
    """A complete fake dataset in `root` (dataset.json + samples/); kind and overrides as in fake_config
    (kind="2d": a one-view 2D dataset)."""
    root = Path(root)
    cfg = fake_config(num_samples, resolution, frames, kind, **overrides)
    (root / "samples").mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "dataset.json", build_dataset_json(cfg, "test"))
    for i in range(num_samples):
        write_fake_sample(root, cfg, i)
    return root
