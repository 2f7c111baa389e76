"""Trajectory metrics: ADE/FDE, scene extent, reprojection error, baselines, and trajectory-family fitting (3D, and
2D for one-view datasets). ADE/FDE and the baselines work on (T, D) tracks of any D.

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

2D family fitting (`fit_families_2d`, one-view datasets): the probe's (T, 2) track in pixels. The families lie in a
plane seen straight on by an orthographic camera, so their shapes hold in pixels up to a scale and a flip:
    linear      X(t) = a + b t                                                4 parameters
    parabolic   X(t) = a + b t + (0, c/2) t^2, c free (px/s^2; + is down)     5 parameters
    circular    X(t) = c + r (cos(phi + w t), sin(phi + w t))                 5 parameters
    sinusoidal  X(t) = a + s t d + A sin(w t + phi) n, d a unit direction,    7 parameters
                n = d turned by 90 degrees
chosen by the same score with n = 2 T and s0 = NOISE_FLOOR_PX (0.25 px). The parabola's acceleration is fitted (its
pixel size depends on the camera's scale), but only along the image's vertical axis, where gravity points.
"""
from __future__ import annotations

import numpy as np

from datagen.trajectories import FAMILIES, FAMILIES_2D
from evaluation.triangulate import reprojection_error, triangulate_track

NOISE_FLOOR = 0.002          # m: s0 in the selection score
OMEGA_RANGE = (0.05, 12.0)   # rad/s searched for circular/helical fits (the demo draws 0.7..3.5)
PARAMS = {"linear": 6, "parabolic": 6, "circular": 6, "helical": 7}
# one-view (2D) datasets: the families in the image plane, their parameter counts, and the noise floor in px
PARAMS_2D = {"linear": 4, "parabolic": 5, "circular": 5, "sinusoidal": 7}
NOISE_FLOOR_PX = 0.25


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
    """Unknowns (centre (D), A, B[, k]) with x = cx + A cos - B sin, y = cy + A sin + B cos[, z = cz + k t], D = X's
    columns (3: the ring lies in the xy plane; 2: an image-plane circle)."""
    T, D = X.shape
    c, s = np.cos(omega * t), np.sin(omega * t)
    A = np.zeros((D * T, D + 2 + int(climb)))
    for d in range(D):
        A[d::D, d] = 1
    A[0::D, D], A[0::D, D + 1] = c, -s
    A[1::D, D], A[1::D, D + 1] = s, c
    if climb:
        A[2::D, D + 2] = t
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


def _omega_grid(signed: bool) -> np.ndarray:
    """120 log-spaced angular speeds over OMEGA_RANGE (rad/s); signed: both turning directions."""
    lo, hi = OMEGA_RANGE
    up = np.geomspace(lo, hi, 120)
    return np.concatenate([-np.geomspace(hi, lo, 120), up]) if signed else up


def _search_omega(rss, grid: np.ndarray) -> float:
    """The omega minimizing rss(omega): the best of `grid`, refined by a bounded scalar search between its
    neighbours."""
    from scipy.optimize import minimize_scalar

    values = np.array([rss(w) for w in grid])
    k = int(np.argmin(values))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    if a * b < 0:  # never search across 0 (no turn): stay on the best one's side
        a, b = (grid[k], b) if grid[k] > 0 else (a, grid[k])
    res = minimize_scalar(rss, bounds=(min(a, b), max(a, b)), method="bounded", options={"xatol": 1e-6})
    return float(res.x) if res.fun <= values[k] else float(grid[k])


def _fit_ring(t, X, climb: bool, min_climb: float = 0.0):
    D = X.shape[1]

    def rss(omega):
        return _ring_lstsq(t, X, omega, climb, min_climb)[1]
    omega = _search_omega(rss, _omega_grid(signed=True))
    coef, r = _ring_lstsq(t, X, omega, climb, min_climb)
    params = {"center": coef[:D].tolist(), "radius": float(np.hypot(coef[D], coef[D + 1])),
              "phase": float(np.arctan2(coef[D + 1], coef[D])), "angular_speed": abs(omega),
              "direction": 1 if omega > 0 else -1}
    if climb:
        params["climb_rate"] = float(coef[D + 2])

    def curve(tt):
        A, _ = _ring_system(tt, np.zeros((len(tt), D)), omega, climb)
        return (A @ coef).reshape(-1, D)
    return params, r, curve


def _selection_score(rss: float, n: int, params: int, noise_floor: float) -> float:
    """The BIC-style score both family fits minimize (module doc): n residuals, `params` parameters."""
    return float(n * np.log(rss / n + noise_floor ** 2) + 2 * params * np.log(n))


def _fit_all(track, fps: float, fitters: dict, params: dict, noise_floor: float) -> dict:
    """Fit each family (fitters[family](t, X) -> (params, rss, curve)) to a (T, D) track, NaN frames dropped, and
    choose the lowest score (ties: fewer parameters); fit_families / fit_families_2d say what comes back."""
    X = np.asarray(track, dtype=np.float64)
    t_all = np.arange(len(X)) / fps
    t = t_all
    ok = np.isfinite(X).all(1)
    X, t = X[ok], t[ok]
    if len(X) < 4:
        return {"best": None, "fits": {}}
    n = X.size
    fits = {}
    for family, fit in fitters.items():
        values, rss, curve = fit(t, X)
        fits[family] = {"rmse": float(np.sqrt(rss / len(X))),
                        "score": _selection_score(rss, n, params[family], noise_floor), "params": values,
                        "fitted": curve(t_all)}
    best = min(fits, key=lambda f: (fits[f]["score"], params[f]))
    return {"best": best, "fits": fits}


def fit_families(track, fps: float, gravity: float, noise_floor: float = NOISE_FLOOR, min_climb: float = 0.0) -> dict:
    """Fit the four families to a (T, 3) track (NaN frames dropped); returns
    {"best": family or None, "fits": {family: {"rmse", "score", "params", "fitted"}}} where "fitted" is the fitted
    curve at every frame (T, 3) (an array: leave it out of JSON). best None when fewer than 4 frames remain.
    min_climb (m/s): a helix climbs at least this fast (evaluation passes the dataset's slowest climb rate), so a
    circle whose track wobbles in z is not taken for a slow helix."""
    fitters = {"linear": lambda t, X: _fit_linear(t, X, gravity),
               "circular": lambda t, X: _fit_ring(t, X, False, min_climb),
               "helical": lambda t, X: _fit_ring(t, X, True, min_climb),
               "parabolic": lambda t, X: _fit_parabolic(t, X, gravity)}
    return _fit_all(track, fps, {f: fitters[f] for f in FAMILIES}, PARAMS, noise_floor)


# --- 2D family fitting (one-view datasets: the probe's image-plane track, pixels) ---------------------------------

def _line_residual(t, Y) -> np.ndarray:
    """Y (T, D) minus its least-squares line in t."""
    A = np.stack([np.ones_like(t), t], 1)
    return Y - A @ np.linalg.lstsq(A, Y, rcond=None)[0]


def _fit_parabolic_2d(t, X):
    """A line in u, a parabola in v: the acceleration is along the image's vertical axis, its size (and sign:
    + is down the image) free, since the pixel scale of the dataset's gravity is not part of the fit."""
    A = np.stack([np.ones_like(t), t, 0.5 * t ** 2], 1)
    cu, ru = _lstsq(A[:, :2], X[:, 0])
    cv, rv = _lstsq(A, X[:, 1])

    def curve(tt):
        B = np.stack([np.ones_like(tt), tt, 0.5 * tt ** 2], 1)
        return np.stack([B[:, :2] @ cu, B @ cv], 1)
    return ({"start": [float(cu[0]), float(cv[0])], "velocity": [float(cu[1]), float(cv[1])],
             "acceleration": float(cv[2])}, ru + rv, curve)


def _wave_basis(t, omega):
    return np.stack([np.ones_like(t), np.cos(omega * t), np.sin(omega * t)], 1)


def _fit_sinusoidal_2d(t, X):
    """c + s t d + (a cos w t + b sin w t) n with d a unit direction and n = d turned by 90 degrees. For a fixed w
    the residual is d^T (L + R^T S_w R) d, with L (S_w) the 2x2 scatter of X's residuals after a line (a constant plus
    a sinusoid of w) in t and R the 90-degree turn, so the best d is that matrix's eigenvector of the smallest
    eigenvalue; w is searched as for circles (a sinusoid of -w is one of +w)."""
    L = _line_residual(t, X)
    L = L.T @ L
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])

    def system(omega):
        Q = np.linalg.qr(_wave_basis(t, omega))[0]
        S = X - Q @ (Q.T @ X)
        vals, vecs = np.linalg.eigh(L + turn.T @ (S.T @ S) @ turn)
        return max(float(vals[0]), 0.0), vecs[:, 0]

    omega = _search_omega(lambda w: system(w)[0], _omega_grid(signed=False))
    d = system(omega)[1]
    n = turn @ d
    line, r_line = _lstsq(np.stack([np.ones_like(t), t], 1), X @ d)
    wave, r_wave = _lstsq(_wave_basis(t, omega), X @ n)

    def curve(tt):
        return (np.stack([np.ones_like(tt), tt], 1) @ line)[:, None] * d + (_wave_basis(tt, omega) @ wave)[:, None] * n
    return ({"velocity": (line[1] * d).tolist(), "amplitude": float(np.hypot(wave[1], wave[2])),
             "angular_speed": omega, "phase": float(np.arctan2(wave[1], wave[2])),
             "normal": n.tolist()}, r_line + r_wave, curve)


def fit_families_2d(track, fps: float, noise_floor: float = NOISE_FLOOR_PX) -> dict:
    """Fit the four 2D families (FAMILIES_2D, module doc) to a (T, 2) image-plane track in px (NaN frames dropped);
    returns what fit_families does, with "fitted" (T, 2)."""
    fitters = {"linear": lambda t, X: _fit_linear(t, X, 0.0),
               "circular": lambda t, X: _fit_ring(t, X, False),
               "parabolic": _fit_parabolic_2d,
               "sinusoidal": _fit_sinusoidal_2d}
    X = np.asarray(track, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"a 2D family fit takes a (T, 2) track; got shape {X.shape}")
    return _fit_all(X, fps, fitters, PARAMS_2D, noise_floor)
