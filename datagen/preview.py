"""Look at one rendered sample: a PNG contact sheet (rows = views, columns = frames) and an animated GIF
(the views side by side per frame). The projected 3D centre from meta.json is drawn as a red cross, so a
camera-convention bug shows up as a cross off the object.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datagen.camera import project
from datagen.config import UserError
from datagen.dataset import complete_sample_ids, frame_path, load_dataset_json, load_meta, sample_dir, sample_name
from datagen.verify import decode_png

PAD = 2            # px between tiles
MIN_TILE = 128     # default scale makes tiles at least this large
BACKGROUND = (40, 40, 40)
CROSS = (255, 0, 0)
OUTLINE = (0, 0, 0)


def default_scale(width: int, height: int) -> int:
    return max(1, math.ceil(MIN_TILE / max(width, height)))


def _tile(path: Path, scale: int, centre: np.ndarray, label: str) -> Image.Image:
    """One frame, upscaled by an integer factor (nearest, so pixels stay pixels), with the cross and a label."""
    im = decode_png(path).convert("RGB")
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    if np.isfinite(centre).all():
        x, y, r = centre[0] * scale, centre[1] * scale, max(3, 2 * scale)
        for colour, width in ((OUTLINE, 3), (CROSS, 1)):  # a dark outline keeps it visible on a red object
            draw.line([(x - r, y), (x + r, y)], fill=colour, width=width)
            draw.line([(x, y - r), (x, y + r)], fill=colour, width=width)
    box = draw.textbbox((2, 1), label)
    draw.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill=(0, 0, 0))
    draw.text((2, 1), label, fill=(255, 255, 255))
    return im


def _grid(tiles: list[list[Image.Image]]) -> Image.Image:
    """Paste rows of equal-size tiles onto one canvas with PAD px between and around them."""
    tw, th = tiles[0][0].size
    rows, cols = len(tiles), len(tiles[0])
    canvas = Image.new("RGB", (cols * tw + (cols + 1) * PAD, rows * th + (rows + 1) * PAD), BACKGROUND)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas.paste(tile, (PAD + j * (tw + PAD), PAD + i * (th + PAD)))
    return canvas


def _check_id(root: Path, info: dict, sample_id: int) -> None:
    n = int(info["counts"]["samples"])
    if not isinstance(sample_id, (int, np.integer)) or not 0 <= sample_id < n:
        raise UserError(f"sample id {sample_id} is not in {root}; valid ids: 0..{n - 1}")
    rendered = complete_sample_ids(root)
    if sample_id not in rendered:
        raise UserError(f"sample {sample_id} of {root} is not rendered ({sample_dir(root, sample_id)} is missing); "
                        f"valid ids: 0..{n - 1}, {len(rendered)} rendered")


def write_preview(root, sample_id: int, out_prefix=None, scale: int | None = None) -> tuple[Path, Path]:
    """Write PREFIX.png (contact sheet) and PREFIX.gif (animation) for one sample; returns both paths.
    Default PREFIX: DATASET/previews/<NNNNNN>."""
    root = Path(root)
    info = load_dataset_json(root)
    _check_id(root, info, sample_id)
    meta = load_meta(root, sample_id)
    W, H = meta["image_size"]
    scale = default_scale(W, H) if scale is None else int(scale)
    if scale < 1:
        raise UserError(f"preview scale must be a positive integer, got {scale}")
    T, d = meta["frames"], sample_dir(root, sample_id)
    pos = np.asarray(meta["trajectory"]["position"], dtype=np.float64)

    # tiles[v][f]: every frame of every view, read once and used by both outputs
    tiles = []
    for view in meta["views"]:
        P = np.asarray(view["P"], dtype=np.float64)
        tiles.append([_tile(frame_path(d, view["name"], "rgb", f), scale, project(P[f], pos[f]),
                            f"{view['name']} f{f}") for f in range(T)])

    prefix = Path(out_prefix) if out_prefix is not None else root / "previews" / sample_name(sample_id)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    png, gif = Path(f"{prefix}.png"), Path(f"{prefix}.gif")
    _grid(tiles).save(png)
    frames = [_grid([[tiles[v][f] for v in range(len(tiles))]]) for f in range(T)]
    # the frame label differs per frame, so Pillow never merges identical frames and the GIF keeps all T
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=round(1000 / meta.get("fps", 12)), loop=0)
    return png, gif
