"""Confidence-weighted DLT triangulation from the dataset's P matrices, and reprojection error.

Each usable view contributes two rows of the homogeneous system A X = 0 (OpenCV pixels, P = K [R | t]):
    u * P[2] - P[0],    v * P[2] - P[1]
Rows are scaled to unit norm (so no view dominates through its pixel/focal magnitudes: the conditioning fix), then
multiplied by the view's weight, and X is the right singular vector of A with the smallest singular value. A view
with weight 0, a non-finite weight, or a non-finite 2D point is left out; a frame with fewer than two usable views
gives NaN.
"""
from __future__ import annotations

import numpy as np

from datagen.camera import project


def triangulate_track(P: np.ndarray, uv: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """P (V, T, 3, 4), uv (V, T, 2) pixels, weights (V, T) >= 0 or None -> world points (T, 3)."""
    P, uv = np.asarray(P, dtype=np.float64), np.asarray(uv, dtype=np.float64)
    V, T = uv.shape[:2]
    if P.shape != (V, T, 3, 4) or uv.shape != (V, T, 2):
        raise ValueError(f"expected P (V, T, 3, 4) and uv (V, T, 2), got {P.shape} and {uv.shape}")
    w = np.ones((V, T)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (V, T):
        raise ValueError(f"expected weights (V, T) = {(V, T)}, got {w.shape}")
    if np.any(w < 0):
        raise ValueError("triangulation weights must be >= 0")
    usable = np.isfinite(uv).all(-1) & np.isfinite(w) & (w > 0)             # (V, T)
    uv, w = np.where(usable[..., None], uv, 0.0), np.where(usable, w, 0.0)  # zero rows drop out of the SVD
    rows = np.stack([uv[..., :1] * P[..., 2, :] - P[..., 0, :],
                     uv[..., 1:] * P[..., 2, :] - P[..., 1, :]], axis=2)    # (V, T, 2, 4)
    rows /= np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-300)
    A = (rows * w[..., None, None]).transpose(1, 0, 2, 3).reshape(T, 2 * V, 4)
    Xh = np.linalg.svd(A)[2][:, -1]                                         # (T, 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Xh[:, :3] / Xh[:, 3:]
    X[usable.sum(0) < 2] = np.nan
    return X


def triangulate_dlt(P: np.ndarray, uv: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """One point: P (V, 3, 4), uv (V, 2), weights (V,) or None -> (3,) (NaN with fewer than 2 usable views)."""
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[:, None]
    return triangulate_track(np.asarray(P)[:, None], np.asarray(uv)[:, None], w)[0]


def reprojection_error(P: np.ndarray, X: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Pixel distance between uv and the projection of X in each view.

    P (V, 3, 4), X (3,), uv (V, 2) -> (V,); or per frame: P (V, T, 3, 4), X (T, 3), uv (V, T, 2) -> (V, T).
    NaN where uv or X is NaN or X is behind the camera.
    """
    P, X, uv = np.asarray(P, dtype=np.float64), np.asarray(X, dtype=np.float64), np.asarray(uv, dtype=np.float64)
    if P.ndim == 3:
        return reprojection_error(P[:, None], X[None], uv[:, None])[:, 0]
    V, T = P.shape[:2]
    proj = np.array([[project(P[v, f], X[f]) for f in range(T)] for v in range(V)]).reshape(V, T, 2)
    return np.linalg.norm(proj - uv, axis=-1)
