"""The pieces of an evaluation / comparison report: side-by-side GIFs (and MP4s when ffmpeg is on PATH), 3D (or 2D)
trajectory plots (matplotlib, Agg), HTML tables, and the atomic report directory.

Every string that comes from data or configs goes through html.escape; every link is relative and points inside
the report directory, so REPORT/ can be moved, zipped or opened from anywhere.
"""
from __future__ import annotations

import html
import json
import math
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from datagen.config import UserError, check_output_dir

GAP = 2                     # px between tiles
GAP_COLOUR = (255, 255, 255)
DIFF_GAIN = 3               # the difference panel shows |a - b| * DIFF_GAIN (clipped)
MIN_TILE = 128              # GIFs are stored at native resolution and shown scaled (pixelated) to >= this many px
MISSING = (64, 64, 64)


def esc(value) -> str:
    return html.escape(str(value), quote=True)


# --- the report directory ----------------------------------------------------------------------------------------

REPORT_SCHEMAS = ("magvit3d-evaluation", "magvit3d-comparison")


def is_report(path: Path) -> bool:
    """A directory this module wrote: metrics.json naming one of the report schemas."""
    try:
        return json.loads((Path(path) / "metrics.json").read_text()).get("schema") in REPORT_SCHEMAS
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out: Path, inputs=()) -> None:
    """Refuse (one-line UserError, before any work) a report directory whose replacement would destroy something
    that is not an earlier report: an input of the command or a folder holding one, the working directory or one
    above it, or a non-empty directory without a report's metrics.json (e.g. a dataset or $HOME)."""
    out = Path(out)
    check_output_dir(out)
    real = out.resolve()
    for p in inputs:
        if p is not None and (real == Path(p).resolve() or real in Path(p).resolve().parents):
            raise UserError(f"--out {out} would replace {p}, an input of this command; choose another directory")
    here = Path.cwd().resolve()
    if real == here or real in here.parents:
        raise UserError(f"--out {out} is the current directory or one above it; choose a new directory")
    if out.is_dir() and any(out.iterdir()) and not is_report(out):
        raise UserError(f"--out {out} is a non-empty directory that is not a magvit3d report (no metrics.json of one); "
                        f"the report replaces --out whole, so choose a new or empty directory")


@contextmanager
def atomic_dir(out: Path):
    """Yield a temporary directory beside `out`; on success it replaces `out` (a previous report stays in place
    until the new one is complete), on any error it is removed and `out` is left as it was."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    old = out.parent / f".old-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if os.path.lexists(out):   # rename the old report aside, the new one in, then drop the old one
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()
        else:
            os.replace(tmp, out)
    except OSError as e:             # disk full, file too large, permission denied: one line, `out` untouched
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the previous report there is unchanged" if os.path.lexists(out) else "nothing was written there"
        raise OSError(e.errno, f"cannot write the report {out}: {e.strerror or e}; {kept}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- images -------------------------------------------------------------------------------------------------------

def scale_for(height: int, width: int) -> int:
    """Integer display scale that makes a height x width tile at least MIN_TILE px."""
    return max(1, math.ceil(MIN_TILE / max(height, width)))


def img_tag(src: str, frame: np.ndarray, scale: int, alt: str) -> str:
    """<img> showing an image of frame's size scaled by `scale` (CSS keeps the pixels sharp); src already escaped."""
    h, w = frame.shape[:2]
    return f'<img src="{src}" width="{w * scale}" height="{h * scale}" alt="{esc(alt)}">'


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| * DIFF_GAIN per channel, uint8."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)) * DIFF_GAIN
    return np.clip(d, 0, 255).astype(np.uint8)


def grid_frames(columns: list[np.ndarray | None], scale: int) -> list[np.ndarray]:
    """columns: clips (V, T, H, W, 3) (None = an empty column) -> per frame one image: rows = views, columns in the
    given order, tiles upscaled by `scale` with GAP px between them."""
    ref = next(c for c in columns if c is not None)
    V, T, H, W, _ = ref.shape
    h, w = H * scale, W * scale
    canvas_h, canvas_w = V * h + (V - 1) * GAP, len(columns) * w + (len(columns) - 1) * GAP
    out = []
    for f in range(T):
        img = np.empty((canvas_h, canvas_w, 3), np.uint8)
        img[:] = GAP_COLOUR
        for v in range(V):
            for c, clip in enumerate(columns):
                y, x = v * (h + GAP), c * (w + GAP)
                if clip is None:
                    img[y:y + h, x:x + w] = MISSING
                else:
                    img[y:y + h, x:x + w] = np.asarray(clip[v, f]).repeat(scale, 0).repeat(scale, 1)
        out.append(img)
    return out


def write_gif(path: Path, frames: list[np.ndarray], fps: float) -> None:
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=max(20, int(round(1000 / fps))), loop=0,
                optimize=False)


def ffmpeg_path() -> str | None:
    return shutil.which("ffmpeg")


def write_mp4(path: Path, frames: list[np.ndarray], fps: float, ffmpeg: str) -> str | None:
    """H.264 MP4 through ffmpeg (frames padded to even sizes); returns None on success, else a one-line reason."""
    h, w = frames[0].shape[:2]
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", f"{fps:g}", "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p",
           "-c:v", "libx264", str(path)]
    try:
        proc = subprocess.run(cmd, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames),
                              capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ffmpeg failed: {type(e).__name__}: {e}"
    if proc.returncode != 0 or not Path(path).is_file():
        msg = " ".join(proc.stderr.decode(errors="replace").split())[:200]
        return f"ffmpeg exited with {proc.returncode}: {msg}"
    return None


# --- plots --------------------------------------------------------------------------------------------------------

def _private_matplotlib_dir() -> None:
    """Before matplotlib's first import: unless MPLCONFIGDIR is set, point it at a temporary directory (removed at
    exit), so that a report never writes matplotlib's font cache and config folder into $HOME (~/.cache/matplotlib,
    ~/.config/matplotlib). Rebuilding the font cache costs ~0.4 s per process."""
    import sys

    if "matplotlib" in sys.modules or os.environ.get("MPLCONFIGDIR"):
        return
    import atexit
    import tempfile

    folder = tempfile.mkdtemp(prefix="magvit3d-matplotlib-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = folder


def plot_tracks(path: Path, tracks: dict[str, np.ndarray], title: str, given: int = 0) -> None:
    """Plot (PNG) of named tracks, all (T, 3) (a 3D plot) or all (T, 2) (image coordinates in px, v pointing down as
    in the image); the first is drawn as the reference (black). Frames before `given` are drawn with filled markers
    (the conditioning), the rest hollow."""
    _private_matplotlib_dir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = {np.shape(X)[-1] for X in tracks.values()}
    if len(dims) != 1 or not dims <= {2, 3}:
        raise ValueError(f"tracks of {sorted(dims)} coordinates; plot_tracks takes all (T, 3) or all (T, 2)")
    D = dims.pop()
    styles = [dict(color="black", lw=2.0, ls="-"), dict(color="tab:blue", lw=1.2, ls="--"),
              dict(color="tab:red", lw=1.5, ls="-"), dict(color="tab:green", lw=1.2, ls=":"),
              dict(color="tab:purple", lw=1.2, ls="-.")]
    fig = plt.figure(figsize=(4.2, 4.0), dpi=80)
    ax = fig.add_subplot(projection="3d") if D == 3 else fig.add_subplot()
    for (name, X), style in zip(tracks.items(), styles):
        X = np.asarray(X, dtype=np.float64)
        if not np.isfinite(X).any():
            continue
        ax.plot(*X.T, label=name, **style)
        if given:
            ax.scatter(*X[:given].T, color=style["color"], s=10)
        ax.scatter(*X[given:].T, facecolors="none", edgecolors=style["color"], s=10)
    pts = np.concatenate([np.asarray(X, dtype=np.float64).reshape(-1, D) for X in tracks.values()])
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts):  # equal scale on all axes, so a deviation looks as large as it is
        lo, hi = np.percentile(pts, 2, axis=0), np.percentile(pts, 98, axis=0)
        mid, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 0.05 if D == 3 else 1.0) * 1.1
        ax.set_xlim(mid[0] - half, mid[0] + half)
        if D == 3:
            ax.set_ylim(mid[1] - half, mid[1] + half)
            ax.set_zlim(mid[2] - half, mid[2] + half)
            ax.set_box_aspect((1, 1, 1))
        else:
            ax.set_ylim(mid[1] + half, mid[1] - half)     # image rows grow downwards
            ax.set_aspect("equal")
    if D == 3:
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_zlabel("z")
    else:
        ax.set_xlabel("u (px)")
        ax.set_ylabel("v (px)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- HTML ---------------------------------------------------------------------------------------------------------

def fmt(value, digits: int = 3) -> str:
    """A metric for a table cell: numbers rounded, None as an en dash, strings (e.g. 'unavailable') as they are."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, (int, np.integer)):
        return esc(value)
    if isinstance(value, (float, np.floating)):
        return esc(f"{value:.{digits}f}") if np.isfinite(value) else esc(value)
    return esc(value)


def table(headers: list[str], rows: list[list], cls: str = "") -> str:
    """An HTML table; header strings and cells are escaped (cells through fmt)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
.clip { display: inline-block; vertical-align: top; margin: 0 1.2em 1.4em 0; }
.clip img { image-rendering: pixelated; display: block; }
.caption { font-size: 0.85em; margin: 0.3em 0; max-width: 420px; }
.note { background: #fff6dd; border: 1px solid #e5cf87; padding: 0.4em 0.8em; font-size: 0.9em; }
.muted { color: #666; font-size: 0.85em; }
"""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n')


def rel(path: Path, root: Path) -> str:
    """A relative link from REPORT/index.html to a file inside REPORT (URL-escaped, HTML-escaped)."""
    from urllib.parse import quote

    return esc(quote(Path(path).relative_to(root).as_posix()))
