"""Learned track extrapolation: a small MLP from the given frames' positions to the positions of the frames after
them, fitted on the train split. A stronger bar than constant velocity for frame prediction: it has seen how the
dataset's objects move (circles, helices, throws) and how noisy the probe's tracks are.

Tracks are (k, D): D = 3 for the triangulated world tracks of multi-view datasets, D = 2 for the image-plane tracks
(px) of one-view datasets; the model's sizes follow D.
Input: the given frames' track (k, D) (the probe on the rendered frames, triangulated as for the test clips in 3D),
translated so the last given position is the origin and divided by the scene extent; NaN frames (fewer than two
usable views) are filled from the nearest finite frame. Output: the positions of the T - k frames after them, in
the same units, as a correction added to the constant-velocity line through the given frames (cv_matrix: the
least-squares line of evaluation.trajectory.constant_velocity as a fixed linear map). The last layer starts at
zero, so an untrained model IS constant velocity.
Training targets are the ground-truth positions. Loss: the mean Euclidean distance (ADE) over the predicted frames.
Each training step mirrors half of the clips (first coordinate -> minus it) and, in 3D, rotates every clip by a
random angle about the vertical (z) axis: the trajectory families are unchanged by both (gravity and the circles'
axis are along z), so the 205 clips of the demo's train split act as many more. In 2D only the left-right mirror
is used: gravity points down the image, so a rotation would tilt the parabolas. Full-batch AdamW, `steps` steps, seeded (torch and numpy
generator of its own; the global RNG state is left as it was), CPU: a couple of seconds.

One model per number of given frames k (fitted when a generated set first asks for it).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

MIN_TRAIN_CLIPS = 8     # fewer usable train clips than this: the baseline is reported unavailable, with the reason
METHOD_LABEL = "learned track extrapolation (MLP, train split)"


@dataclass
class ExtrapolatorConfig:
    hidden: int = 128
    layers: int = 2
    steps: int = 1500
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True      # random rotations about z and mirror images, per step


def fill_missing(track: np.ndarray) -> np.ndarray | None:
    """(k, D) with NaN frames -> each NaN frame replaced by the nearest finite frame (the earlier one on a tie);
    None when no frame is finite."""
    track = np.asarray(track, dtype=np.float64)
    ok = np.isfinite(track).all(1)
    if not ok.any():
        return None
    if ok.all():
        return track.copy()
    good = np.flatnonzero(ok)
    nearest = good[np.abs(np.arange(len(track))[:, None] - good[None]).argmin(1)]
    return track[nearest]


def cv_matrix(k: int, horizon: int) -> np.ndarray:
    """(horizon, k): the constant-velocity extrapolation as a linear map of k given positions (frame units):
    future = M @ given is the least-squares line through frames 0..k-1 evaluated at frames k..k+horizon-1, as
    evaluation.trajectory.constant_velocity computes it on finite tracks (k = 1: the last position held)."""
    if k < 2:
        return np.ones((horizon, k))
    t = np.arange(k, dtype=np.float64)
    coef = np.linalg.pinv(np.stack([np.ones(k), t], 1))                      # (2, k)
    tf = np.arange(k, k + horizon, dtype=np.float64)
    return np.stack([np.ones(horizon), tf], 1) @ coef


def _net(k: int, horizon: int, dim: int, cfg: ExtrapolatorConfig) -> nn.Sequential:
    dims = [dim * k] + [cfg.hidden] * cfg.layers
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    last = nn.Linear(dims[-1], dim * horizon)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class TrackExtrapolator:
    """A fitted model for k given frames and `horizon` predicted ones, of tracks with `dim` coordinates."""

    def __init__(self, net: nn.Module, k: int, horizon: int, extent: float, info: dict, dim: int):
        self.net, self.k, self.horizon, self.extent, self.info = net.eval(), k, horizon, extent, info
        self.dim = dim

    def _normalized(self, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        last = given[:, -1:]
        return (given - last) / self.extent, last

    @torch.no_grad()
    def predict_future(self, given: np.ndarray) -> np.ndarray:
        """(N, k, D) finite given tracks -> (N, horizon, D) predicted positions (the tracks' units)."""
        x, last = self._normalized(np.asarray(given, dtype=np.float64))
        base = np.einsum("hk,nkc->nhc", cv_matrix(self.k, self.horizon), x)
        out = self.net(torch.from_numpy(x.reshape(len(x), -1)).float()).double().numpy()
        return (base + out.reshape(len(x), self.horizon, self.dim)) * self.extent + last

    def extrapolate(self, track) -> np.ndarray:
        """A (T, D) track (only its first k frames are used) -> (T, D): the given frames as they are, the rest
        predicted; all NaN when no given frame is finite."""
        track = np.asarray(track, dtype=np.float64)
        if len(track) != self.k + self.horizon:
            raise ValueError(f"track of {len(track)} frames; this model predicts {self.k} + {self.horizon}")
        given = fill_missing(track[:self.k])
        if given is None:
            return np.full_like(track, np.nan)
        return np.concatenate([track[:self.k], self.predict_future(given[None])[0]])


def _augment(x: torch.Tensor, angle: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """(N, F, D) points: the first coordinate negated where mirror (N,) is set, then (D = 3) rotated by angle (N,)
    about z; D = 2 (image plane, gravity down the image): the mirror only."""
    flip = torch.ones(x.shape[-1])
    flip[0] = -1.0
    x = torch.where(mirror[:, None, None], x * flip, x)
    if x.shape[-1] == 2:
        return x
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    return torch.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1], x[..., 2]], -1)


def fit_extrapolator(given: np.ndarray, future: np.ndarray, extent: float,
                     cfg: ExtrapolatorConfig | None = None) -> TrackExtrapolator:
    """given (N, k, D) tracks (NaN frames allowed; D 2 or 3), future (N, horizon, D) ground-truth positions -> a
    fitted TrackExtrapolator. Clips whose given part has no finite frame or whose future is not finite are left out;
    ValueError when fewer than MIN_TRAIN_CLIPS remain."""
    cfg = cfg or ExtrapolatorConfig()
    given, future = np.asarray(given, dtype=np.float64), np.asarray(future, dtype=np.float64)
    if given.ndim != 3 or given.shape[-1] not in (2, 3) or future.shape[::2] != given.shape[::2]:
        raise ValueError(f"given tracks of shape {given.shape} and future of {future.shape}: expected (N, k, D) and "
                         f"(N, horizon, D) with D 2 or 3")
    N, k, dim = given.shape
    horizon = future.shape[1]
    filled = [fill_missing(g) for g in given]
    keep = [i for i in range(N) if filled[i] is not None and np.isfinite(future[i]).all()]
    if len(keep) < MIN_TRAIN_CLIPS:
        raise ValueError(f"{len(keep)} usable train clips (of {N}); the learned extrapolation needs at least "
                         f"{MIN_TRAIN_CLIPS}")
    g = np.stack([filled[i] for i in keep])
    f = future[keep]
    last = g[:, -1:]
    x = torch.from_numpy((g - last) / extent).float()                        # (n, k, D)
    y = torch.from_numpy((f - last) / extent).float()                        # (n, horizon, D)
    M = torch.from_numpy(cv_matrix(k, horizon)).float()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = _net(k, horizon, dim, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    n = len(x)
    for _ in range(cfg.steps):
        if cfg.augment:
            angle = torch.rand(n, generator=gen) * (2 * np.pi)
            mirror = torch.rand(n, generator=gen) < 0.5
            xb, yb = _augment(x, angle, mirror), _augment(y, angle, mirror)
        else:
            xb, yb = x, y
        pred = torch.einsum("hk,nkc->nhc", M, xb) + net(xb.reshape(n, -1)).reshape(n, horizon, dim)
        loss = (pred - yb).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model = TrackExtrapolator(net, k, horizon, extent, {}, dim)
    train_pred = model.predict_future(g)
    model.info = {"train_clips": n, "given_frames": k, "predicted_frames": horizon,
                  "fit_seconds": round(time.perf_counter() - start, 2), "config": asdict(cfg),
                  "train_ade": float(np.linalg.norm(train_pred - f, axis=-1).mean()),
                  "train_ade_constant_velocity": float(np.linalg.norm(
                      np.einsum("hk,nkc->nhc", cv_matrix(k, horizon), g) - f, axis=-1).mean())}
    return model
