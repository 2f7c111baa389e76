"""Image metrics shared by training (validation) and evaluation: PSNR and SSIM on uint8 clips.

PSNR is computed per frame on [0, 1] and averaged over frames, then clips. SSIM is scikit-image's
(gaussian weights, sigma 1.5, as in Wang et al.), per frame on RGB, averaged the same way.
"""
from __future__ import annotations

import numpy as np


PSNR_CAP = 100.0   # dB reported for identical frames


def psnr_from_mse(mse):
    """Mean squared error on [0, 1] (array or number) -> PSNR in dB, PSNR_CAP where it is 0."""
    mse = np.asarray(mse, dtype=np.float64)
    return np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-20)), PSNR_CAP)


def psnr_per_clip(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a, b: uint8 (N, T, H, W, 3) -> (N,) mean over frames of per-frame PSNR in dB (identical frames: 100 dB)."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return psnr_from_mse(np.mean(diff ** 2, axis=(2, 3, 4))).mean(axis=1)       # per frame (N, T), then clips


def ssim_per_clip(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a, b: uint8 (N, T, H, W, 3) -> (N,) mean over frames of scikit-image SSIM."""
    from skimage.metrics import structural_similarity

    out = np.empty(a.shape[0])
    for n in range(a.shape[0]):
        out[n] = np.mean([structural_similarity(a[n, t], b[n, t], channel_axis=-1, data_range=255,
                                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                          for t in range(a.shape[1])])
    return out


MOVING_THRESHOLD = 0.1   # a pixel "moves" where it differs from its clip's temporal median by more than this (of 1)


def moving_mask(clips: np.ndarray, threshold: float = MOVING_THRESHOLD) -> np.ndarray:
    """uint8 (N, T, H, W, 3) -> bool (N, T, H, W): the pixels that differ from their clip's per-pixel temporal median
    by more than `threshold` (max over RGB, on [0, 1]): the moving object where it is, not the still background."""
    median = np.median(clips, axis=1, keepdims=True).astype(np.float32)
    return (np.abs(clips.astype(np.float32) - median).max(-1) / 255.0) > threshold


def token_motion(clip: np.ndarray, temporal_factor: int, spatial_factor: int) -> np.ndarray:
    """uint8 (V, T, H, W, 3) clip -> float32 (V, t, h, w): per token of a tokenizer with these factors, the mean over
    its patch (temporal_factor frames x spatial_factor^2 pixels) of how far each pixel is from its clip's temporal
    median (max over RGB, on [0, 1]): ~0 on still background, up to ~0.3 where the object is."""
    f, s = temporal_factor, spatial_factor
    V, T, H, W, _ = clip.shape
    clip = clip.astype(np.float32)
    away = np.abs(clip - np.median(clip, axis=1, keepdims=True)).max(-1) / 255.0       # (V, T, H, W)
    return away.reshape(V, T // f, f, H // s, s, W // s, s).mean((2, 4, 6)).astype(np.float32)


def moving_psnr(original: np.ndarray, reconstruction: np.ndarray, threshold: float = MOVING_THRESHOLD) -> float | None:
    """PSNR (dB) over the moving pixels of the originals only (moving_mask), pooled per clip then averaged over the
    clips that have any: whole-frame PSNR is mostly still background, which a reconstruction that blurs the moving
    object away still gets right. None when nothing moves."""
    mask = moving_mask(original, threshold)
    values = []
    for a, b, m in zip(original, reconstruction, mask):
        if m.any():
            diff = (a[m].astype(np.float64) - b[m].astype(np.float64)) / 255.0
            values.append(float(psnr_from_mse(np.mean(diff ** 2))))
    return float(np.mean(values)) if values else None


def motion_ratio(original: np.ndarray, reconstruction: np.ndarray) -> float | None:
    """uint8 (N, T, H, W, 3) pair -> mean absolute frame-to-frame change of the reconstruction over the original's
    (1: moves as much; ~0: a frozen reconstruction; > 1: flicker the original does not have). None for still input."""
    still = float(np.abs(np.diff(original.astype(np.float32), axis=1)).mean())
    moved = float(np.abs(np.diff(reconstruction.astype(np.float32), axis=1)).mean())
    return moved / still if still > 0 else None
