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


# --- a one-view (2D) dataset, written directly in the packed format (no spec, no meta.json) -------------------------

FAMILIES_2D_FAKE = ("linear", "circular", "parabolic", "sinusoidal")
SHAPES_2D_FAKE = ("square", "disc")


def track_2d(family: str, t: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A (T, 2) image-plane track in px (v down) of one 2D family, as issue 14 defines them, drawn to stay inside a
    size x size image; t in seconds. Ranges per clip: linear 30-50% of the image, circles 0.4-1.2 turns of radius
    15-30%, parabolas (gravity down the image) dropping 25-50% from an apex in the middle third, sinusoids 1-2
    periods of amplitude 6-12% across a drift of 20-40%."""
    span, tm = t[-1] - t[0], (t[0] + t[-1]) / 2
    c = rng.uniform(0.4, 0.6, 2) * size
    a = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(a), np.sin(a)])
    if family == "linear":
        return c + np.outer(t - tm, rng.uniform(0.3, 0.5) * size / span * d)
    if family == "circular":
        w = rng.choice([-1, 1]) * rng.uniform(0.4, 1.2) * 2 * np.pi / span
        ang = rng.uniform(0, 2 * np.pi) + w * t
        return c + rng.uniform(0.15, 0.3) * size * np.stack([np.cos(ang), np.sin(ang)], 1)
    if family == "parabolic":
        t_apex = t[0] + rng.uniform(1 / 3, 2 / 3) * span
        g = rng.uniform(0.25, 0.5) * size / (0.5 * max(t_apex - t[0], t[-1] - t_apex) ** 2)
        apex = np.array([c[0], 0.3 * size])
        return apex + np.outer(t - t_apex, [rng.uniform(-0.2, 0.2) * size / span, 0.0]) \
            + 0.5 * np.outer((t - t_apex) ** 2, [0.0, g])
    if family == "sinusoidal":
        w = rng.uniform(1.0, 2.0) * 2 * np.pi / span
        wave = rng.uniform(0.06, 0.12) * size * np.sin(w * t + rng.uniform(0, 2 * np.pi))
        return c + np.outer(t - tm, rng.uniform(0.2, 0.4) * size / span * d) + np.outer(wave, [-d[1], d[0]])
    raise ValueError(f"unknown 2D family {family!r}; allowed: {', '.join(FAMILIES_2D_FAKE)}")


def draw_2d_frame(centre, shape: str, size: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H, W, 3), mask bool (H, W)): a static gradient background with a square or disc of `radius`
    px centred at `centre` (u, v) (pixel (i, j) centred at (j + 0.5, i + 0.5))."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    du, dv = xx - centre[0], yy - centre[1]
    mask = (np.maximum(abs(du), abs(dv)) <= radius) if shape == "square" else (du ** 2 + dv ** 2 <= radius ** 2)
    base = np.stack([xx * 100 / size, yy * 100 / size, np.full_like(xx, 60)], -1)
    colour = [230, 60, 30] if shape == "square" else [40, 200, 230]
    return np.where(mask[..., None], colour, base).astype(np.uint8), mask


def make_fake_2d_dataset(root, num_samples: int = 16, resolution: int = 32, frames: int = 8, fps: float = 8.0,
                         splits=(("train", 0.5), ("val", 0.25), ("test", 0.25)), seed: int = 0) -> Path:
    """A one-view dataset in the on-disk format the readers use (dataset.json with config.scene.kind = "2d",
    packed/<split>_rgb.npy (N, 1, T, H, W, 3) + _index.json, mask PNGs), written directly: families cycle
    through FAMILIES_2D_FAKE and shapes through SHAPES_2D_FAKE by sample id. The camera is orthographic: world
    (x, 0, z) -> pixel (u, v) = (W/2 + s x, H/2 - s z), s = resolution / 4 px per world unit."""
    from datagen.dataset import SCHEMA_VERSION

    root = Path(root)
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    s = resolution / 4
    P = [[s, 0.0, 0.0, resolution / 2], [0.0, 0.0, -s, resolution / 2], [0.0, 0.0, 0.0, 1.0]]
    ids = list(range(num_samples))
    bounds = np.cumsum([0] + [round(f * num_samples) for _, f in splits])
    split_ids = {name: ids[bounds[i]:bounds[i + 1]] for i, (name, _) in enumerate(splits)}
    config = {"scene": {"kind": "2d"}, "render": {"resolution": resolution, "frames": frames, "fps": fps}}
    info = {"schema_version": SCHEMA_VERSION, "config": config, "config_hash": f"fake2d-{seed}-{num_samples}",
            "image_size": [resolution, resolution], "frames": frames, "fps": fps, "views": ["front"],
            "camera_rig": {"motion": "static"},
            "classes": {"shape": list(SHAPES_2D_FAKE), "family": list(FAMILIES_2D_FAKE)},
            "splits": split_ids, "counts": {"samples": num_samples, **{k: len(v) for k, v in split_ids.items()}}}
    (root / "packed").mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "dataset.json", info)
    for name, sids in split_ids.items():
        rgb = np.zeros((len(sids), 1, frames, resolution, resolution, 3), np.uint8)
        entries = []
        for n, sid in enumerate(sids):
            family, shape = FAMILIES_2D_FAKE[sid % 4], SHAPES_2D_FAKE[(sid // 4) % 2]
            uv = track_2d(family, t, rng, resolution)
            for f in range(frames):
                rgb[n, 0, f], mask = draw_2d_frame(uv[f], shape, resolution, resolution / 10)
                path = frame_path(sample_dir(root, sid), "front", "mask", f)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
            world = np.stack([(uv[:, 0] - resolution / 2) / s, np.zeros(frames), (resolution / 2 - uv[:, 1]) / s], 1)
            inside = ((uv >= 0) & (uv <= resolution)).all(1)
            entries.append({"shape": shape, "family": family, "position": world.tolist(), "uv": [uv.tolist()],
                            "visible": [inside.tolist()]})
        np.save(root / "packed" / f"{name}_rgb.npy", rgb)
        index = {"schema_version": SCHEMA_VERSION, "split": name, "config_hash": info["config_hash"],
                 "rgb_shape": list(rgb.shape), "image_size": [resolution, resolution], "frames": frames, "fps": fps,
                 "views": info["views"], "classes": info["classes"], "sample_ids": sids,
                 "labels": {"shape": [e["shape"] for e in entries], "family": [e["family"] for e in entries]},
                 "label_ids": {"shape": [SHAPES_2D_FAKE.index(e["shape"]) for e in entries],
                               "family": [FAMILIES_2D_FAKE.index(e["family"]) for e in entries]},
                 "positions": [e["position"] for e in entries],
                 "rotations": [[[0.0, 0.0, 0.0]] * frames for _ in entries],
                 "centers_2d": [e["uv"] for e in entries], "visibility": [e["visible"] for e in entries],
                 "cameras": [{"P": [P]} for _ in entries]}
        write_json_atomic(root / "packed" / f"{name}_index.json", index)
    return root
