"""3D trajectory metrics: ADE/FDE, scene extent, reprojection error, baselines, and trajectory-family fitting.

Scene extent (the unit of the "% of scene extent" numbers): the length of the diagonal of the axis-aligned box
spanned by every ground-truth object position of the dataset (all splits, all frames). On the 256-clip demo
dataset it is 1.92 m, so 1% is 1.9 cm.

ADE = mean over the evaluated frames of the Euclidean distance between a track and the ground truth; FDE = that
distance at the last frame. Frames where a track is NaN (fewer than two usable views) are left out of ADE and
counted in `missing`; a NaN last frame makes FDE None.

Family fitting (`fit_families`): each of the four families of datagen.trajectories is fitted to a (T, 3) track by
least squares, with t_k = k / fps:
    linear     X(t) = a + b t                                                 6 parameters
    parabolic  X(t) = a + b t + (0, 0, -g/2) t^2, g the dataset's gravity     6 parameters (g is known)
    circular   X(t) = c + r (cos(phi + w t), sin(phi + w t), 0)               6 parameters (w < 0: clockwise)
    helical    circular + (0, 0, k t)                                         7 parameters
For a fixed angular speed w, circular and helical are linear in (c, r cos phi, r sin phi[, k]); w is found by a grid
over +-[0.05, 12] rad/s refined with a bounded scalar search. The chosen family minimizes a BIC-style score
    n log(RSS / n + s0^2) + 2 p log(n)        (n = 3 T residuals, p parameters)
where s0 (default 2 mm) is a noise floor: below it residuals count as a perfect fit, so on clean tracks the family
with the fewest parameters that fits wins (a helix with a huge radius and no turn can mimic a line, but costs one
more parameter). Helical fits may be held to a minimum climb rate (the dataset's slowest; see fit_families).
The penalty is twice BIC's: with BIC's, pure noise buys a circle a spurious climb in ~5% of
noisy 16-frame tracks (a chi-square(1) above log 48); with twice it, ~0.5%.
"""
from __future__ import annotations

import numpy as np

from datagen.trajectories import FAMILIES
from evaluation.triangulate import reprojection_error, triangulate_track

NOISE_FLOOR = 0.002          # m: s0 in the selection score
OMEGA_RANGE = (0.05, 12.0)   # rad/s searched for circular/helical fits (the demo draws 0.7..3.5)
PARAMS = {"linear": 6, "parabolic": 6, "circular": 6, "helical": 7}


def scene_extent(positions) -> float:
    """Diagonal of the axis-aligned box spanned by all positions (..., 3) (the dataset's ground truth)."""
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    p = p[np.isfinite(p).all(1)]
    if not len(p):
        raise ValueError("no finite positions to measure the scene extent from")
    return float(np.linalg.norm(p.max(0) - p.min(0)))


def displacement_errors(track, gt, frames=None) -> dict:
    """ADE / FDE of a (T, 3) track vs ground truth (T, 3) over `frames` (indices; default all):
    {"ade", "fde", "missing"} in world units (None where undefined)."""
    track, gt = np.asarray(track, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    idx = np.arange(len(gt)) if frames is None else np.asarray(frames)
    if not len(idx):
        return {"ade": None, "fde": None, "missing": 0}
    d = np.linalg.norm(track[idx] - gt[idx], axis=-1)
    ok = np.isfinite(d)
    return {"ade": float(d[ok].mean()) if ok.any() else None, "fde": float(d[-1]) if ok[-1] else None,
            "missing": int((~ok).sum())}


def as_percent(value: float | None, extent: float) -> float | None:
    return None if value is None else 100.0 * value / extent


def mean_reprojection_error(P, track, uv) -> float | None:
    """Mean pixel distance between the 2D detections uv (V, T, 2) and the projections of the triangulated track
    (T, 3) with P (V, T, 3, 4): how consistent the views are with one 3D point (0 for perfectly consistent views)."""
    err = reprojection_error(P, track, uv)
    err = err[np.isfinite(err)]
    return float(err.mean()) if len(err) else None


def track_from_detections(P, det: dict) -> np.ndarray:
    """Probe detections of one clip (uv (V, T, 2), sigma (V, T)) -> the confidence-weighted DLT track (T, 3);
    each view's weight is 1 / sigma (its expected error in px)."""
    return triangulate_track(P, det["uv"], 1.0 / np.maximum(det["sigma"], 1e-6))


# --- baselines ---------------------------------------------------------------------------------------------------

def copy_last(track, given: int) -> np.ndarray:
    """Hold the position of the last given frame (given - 1) for every frame."""
    track = np.asarray(track, dtype=np.float64)
    if given < 1:
        raise ValueError("copy-last needs at least one given frame")
    return np.repeat(track[given - 1:given], len(track), axis=0)


def constant_velocity(track, given: int, fps: float = 1.0) -> np.ndarray:
    """Least-squares straight line with constant velocity through the given frames (0..given-1), extrapolated to
    every frame (robust to the per-frame noise of triangulated tracks; one given frame: copy-last). NaN frames in
    the given part are ignored."""
    track = np.asarray(track, dtype=np.float64)
    t = np.arange(len(track)) / fps
    ok = np.isfinite(track[:given]).all(1)
    if ok.sum() < 2:
        return copy_last(track, given)
    A = np.stack([np.ones(ok.sum()), t[:given][ok]], 1)
    coef = np.linalg.lstsq(A, track[:given][ok], rcond=None)[0]             # (2, 3)
    return coef[0] + t[:, None] * coef[1]


# --- family fitting ----------------------------------------------------------------------------------------------

def _lstsq(A: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    return coef, float(np.sum((A @ coef - y) ** 2))


def _fit_linear(t, X, gravity):
    A = np.stack([np.ones_like(t), t], 1)
    coef, rss = _lstsq(A, X)
    curve = lambda tt: coef[0] + tt[:, None] * coef[1]  # noqa: E731
    return {"start": coef[0].tolist(), "velocity": coef[1].tolist()}, rss, curve


def _fit_parabolic(t, X, gravity):
    Y = X.copy()
    Y[:, 2] += 0.5 * gravity * t ** 2                                       # remove the known gravity term
    A = np.stack([np.ones_like(t), t], 1)
    coef, rss = _lstsq(A, Y)
    g = np.array([0.0, 0.0, -0.5 * gravity])
    curve = lambda tt: coef[0] + tt[:, None] * coef[1] + tt[:, None] ** 2 * g  # noqa: E731
    return {"start": coef[0].tolist(), "velocity": coef[1].tolist(), "gravity": gravity}, rss, curve


def _ring_system(t, X, omega, climb: bool):
    """Unknowns (cx, cy, cz, A, B[, k]) with x = cx + A cos - B sin, y = cy + A sin + B cos, z = cz [+ k t]."""
    T = len(t)
    c, s = np.cos(omega * t), np.sin(omega * t)
    cols = 6 if climb else 5
    A = np.zeros((3 * T, cols))
    A[0::3, 0], A[1::3, 1], A[2::3, 2] = 1, 1, 1
    A[0::3, 3], A[0::3, 4] = c, -s
    A[1::3, 3], A[1::3, 4] = s, c
    if climb:
        A[2::3, 5] = t
    return A, X.reshape(-1)


def _ring_lstsq(t, X, omega, climb: bool, min_climb: float) -> tuple[np.ndarray, float]:
    """Least squares for a fixed omega; with climb, |k| >= min_climb (else k = +-min_climb, the better)."""
    coef, rss = _lstsq(*_ring_system(t, X, omega, climb))
    if not climb or abs(coef[5]) >= min_climb:
        return coef, rss
    best = None
    for k in (min_climb, -min_climb):
        Y = X.copy()
        Y[:, 2] -= k * t
        c, r = _lstsq(*_ring_system(t, Y, omega, False))
        if best is None or r < best[1]:
            best = (np.append(c, k), r)
    return best


def _fit_ring(t, X, climb: bool, min_climb: float = 0.0):
    from scipy.optimize import minimize_scalar

    def rss(omega):
        return _ring_lstsq(t, X, omega, climb, min_climb)[1]
    lo, hi = OMEGA_RANGE
    grid = np.concatenate([-np.geomspace(hi, lo, 120), np.geomspace(lo, hi, 120)])
    values = np.array([rss(w) for w in grid])
    k = int(np.argmin(values))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    if a * b < 0:  # never search across 0 (no turn): stay on the best one's side
        a, b = (grid[k], b) if grid[k] > 0 else (a, grid[k])
    res = minimize_scalar(rss, bounds=(min(a, b), max(a, b)), method="bounded", options={"xatol": 1e-6})
    omega = float(res.x) if res.fun <= values[k] else float(grid[k])
    coef, r = _ring_lstsq(t, X, omega, climb, min_climb)
    params = {"center": coef[:3].tolist(), "radius": float(np.hypot(coef[3], coef[4])),
              "phase": float(np.arctan2(coef[4], coef[3])), "angular_speed": abs(omega),
              "direction": 1 if omega > 0 else -1}
    if climb:
        params["climb_rate"] = float(coef[5])

    def curve(tt):
        A, _ = _ring_system(tt, np.zeros((len(tt), 3)), omega, climb)
        return (A @ coef).reshape(-1, 3)
    return params, r, curve


def fit_families(track, fps: float, gravity: float, noise_floor: float = NOISE_FLOOR, min_climb: float = 0.0) -> dict:
    """Fit the four families to a (T, 3) track (NaN frames dropped); returns
    {"best": family or None, "fits": {family: {"rmse", "score", "params", "fitted"}}} where "fitted" is the fitted
    curve at every frame (T, 3) (an array: leave it out of JSON). best None when fewer than 4 frames remain.
    min_climb (m/s): a helix climbs at least this fast (evaluation passes the dataset's slowest climb rate), so a
    circle whose track wobbles in z is not taken for a slow helix."""
    X = np.asarray(track, dtype=np.float64)
    t_all = np.arange(len(X)) / fps
    t = t_all
    ok = np.isfinite(X).all(1)
    X, t = X[ok], t[ok]
    if len(X) < 4:
        return {"best": None, "fits": {}}
    n = X.size
    fits = {}
    for family in FAMILIES:
        if family == "linear":
            params, rss, curve = _fit_linear(t, X, gravity)
        elif family == "parabolic":
            params, rss, curve = _fit_parabolic(t, X, gravity)
        else:
            params, rss, curve = _fit_ring(t, X, family == "helical", min_climb)
        score = n * np.log(rss / n + noise_floor ** 2) + 2 * PARAMS[family] * np.log(n)
        fits[family] = {"rmse": float(np.sqrt(rss / len(X))), "score": float(score), "params": params,
                        "fitted": curve(t_all)}
    best = min(fits, key=lambda f: (fits[f]["score"], PARAMS[f]))
    return {"best": best, "fits": fits}
