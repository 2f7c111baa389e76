"""Image metrics of generated vs rendered clips, per clip and over the part of the clip that was generated.

PSNR per frame on [0, 1], averaged over the evaluated frames (views x frames), then over clips; identical frames are
capped at 100 dB (training.metrics). SSIM is scikit-image's (gaussian weights, sigma 1.5), averaged the same way.
LPIPS is the `lpips` package's AlexNet v0.1 with the ImageNet backbone from an explicit file or torchvision's cache,
downloaded there on first use (training.lpips_metric). Without the backbone it is reported as "unavailable" with
the reason, never as a number.

Object-region PSNR (`object_psnr`): PSNR over the pixels inside the ground-truth object mask dilated by a margin (a
disk of `margin` px), per frame, averaged over the evaluated frames where the mask is not empty. Whole-frame PSNR is
dominated by the static background; this one looks where the object is (and should be).

Paired differences (`paired_bootstrap`): mean over clips of a - b with a 95% percentile bootstrap interval over clips
(the same clips resampled for both, seeded).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.lpips_metric import MIN_SIDE, LpipsMetric, load_lpips
from training.metrics import psnr_from_mse, psnr_per_clip, ssim_per_clip
UNAVAILABLE = "unavailable"


@dataclass
class Region:
    """Which views and frames of a (V, T, ...) clip are evaluated (the generated part)."""
    views: list[int]
    frames: list[int]

    def take(self, clip: np.ndarray) -> np.ndarray:
        """(V, T, H, W, 3) -> (1, V' * T', H, W, 3): the region's frames as the frames of one clip."""
        part = np.asarray(clip)[self.views][:, self.frames]
        return part.reshape(1, -1, *part.shape[2:])


def full_region(views: int, frames: int) -> Region:
    return Region(list(range(views)), list(range(frames)))


def task_region(task: str, given_frames: int, given_views: list[int], views: int, frames: int) -> Region:
    """The generated part of a clip: predict -> frames given_frames.. of every view; complete-view -> the views not
    given, every frame; generate (or nothing given) -> everything."""
    if task == "predict" and 0 < given_frames < frames:
        return Region(list(range(views)), list(range(given_frames, frames)))
    if task == "complete-view" and given_views:
        rest = [v for v in range(views) if v not in set(given_views)]
        if rest:
            return Region(rest, list(range(frames)))
    return full_region(views, frames)


def lpips_status(metric: LpipsMetric | None) -> dict:
    """{"available": True, "backbone": ...} or {"available": False, "reason": ...} for the outputs."""
    if metric is None:
        return {"available": False, "reason": "LPIPS not requested"}
    if metric.available:
        return {"available": True, "backbone": metric.backbone}
    return {"available": False, "reason": metric.reason}


def open_lpips(weights_path=None, log=print) -> LpipsMetric:
    """load_lpips with a clear one-line notice when the AlexNet backbone is absent (and one before a download)."""
    metric = load_lpips(weights_path, log=log)
    if not metric.available:
        log(f"notice: LPIPS unavailable ({metric.reason}); it is reported as 'unavailable' in every output")
    return metric


def clip_metrics(a: np.ndarray, b: np.ndarray, region: Region, lpips: LpipsMetric | None = None) -> dict:
    """a, b: uint8 (V, T, H, W, 3) -> {"psnr", "ssim", "lpips"} over `region` (lpips: a number or "unavailable")."""
    if a.shape != b.shape:
        raise ValueError(f"clips of different shapes: {a.shape} vs {b.shape}")
    ra, rb = region.take(a), region.take(b)
    out = {"psnr": float(psnr_per_clip(ra, rb)[0]), "ssim": float(ssim_per_clip(ra, rb)[0])}
    if lpips is not None and lpips.available and min(a.shape[2:4]) >= MIN_SIDE:
        out["lpips"] = float(lpips.per_clip(np.ascontiguousarray(ra), np.ascontiguousarray(rb))[0])
    else:
        out["lpips"] = UNAVAILABLE
    return out


def dilate_masks(masks: np.ndarray, margin: int) -> np.ndarray:
    """bool (..., H, W) masks grown by `margin` px: every pixel within Euclidean distance `margin` of a mask pixel
    (pixel centres) is added (a disk structuring element; margin 0 leaves them as they are)."""
    from scipy.ndimage import binary_dilation

    masks = np.asarray(masks, dtype=bool)
    if margin <= 0:
        return masks
    yy, xx = np.mgrid[-margin:margin + 1, -margin:margin + 1]
    disk = (yy ** 2 + xx ** 2) <= margin ** 2
    footprint = disk.reshape((1,) * (masks.ndim - 2) + disk.shape)
    return binary_dilation(masks, structure=footprint)


def object_psnr(a: np.ndarray, b: np.ndarray, region: Region, masks: np.ndarray) -> float | None:
    """a, b uint8 (V, T, H, W, 3), masks bool (V, T, H, W) (already dilated) -> mean over the region's frames of the
    PSNR (dB, on [0, 1], identical pixels capped as in training.metrics) inside each frame's mask; frames with an
    empty mask are left out; None when every mask of the region is empty."""
    ra, rb = region.take(a)[0].astype(np.float64), region.take(b)[0].astype(np.float64)
    rm = region.take(masks)[0]
    values = []
    for fa, fb, m in zip(ra, rb, rm):
        if not m.any():
            continue
        values.append(float(psnr_from_mse(np.mean(((fa[m] - fb[m]) / 255.0) ** 2))))
    return float(np.mean(values)) if values else None


def paired_bootstrap(a, b, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired difference of two per-clip metrics: {"mean": mean(a - b), "low", "high": the `level` percentile
    bootstrap interval of that mean (clips resampled with replacement, `resamples` times, numpy seeded with `seed`),
    "n": the clips where both are finite numbers}. Fewer than one pair: mean/low/high None."""
    def num(v):
        return float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else np.nan
    a = np.array([num(v) for v in a], dtype=np.float64)
    b = np.array([num(v) for v in b], dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired metrics of different lengths: {a.shape} vs {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = len(d)
    if not n:
        return {"mean": None, "low": None, "high": None, "n": 0, "resamples": resamples, "level": level}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = d[idx].mean(1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": n, "resamples": resamples,
            "level": level}


def lpips_size_note(lpips: LpipsMetric | None, height: int, width: int) -> str | None:
    """Why an available LPIPS still gives no numbers for frames of this size (None otherwise)."""
    if lpips is not None and lpips.available and min(height, width) < MIN_SIDE:
        return f"LPIPS (AlexNet) needs frames of at least {MIN_SIDE}x{MIN_SIDE} px, these are {width}x{height}"
    return None


def mean_of(rows: list[dict], key: str):
    """Mean of rows[key] over the rows where it is a finite number; "unavailable" when any row says so;
    None when there is nothing to average."""
    values = [r.get(key) for r in rows]
    if any(v == UNAVAILABLE for v in values):
        return UNAVAILABLE
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
    return float(np.mean(nums)) if nums else None
