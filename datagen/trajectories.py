"""The four trajectory families (numpy only) and their seeded parameter draws.

A family is a function of time t (seconds, t_k = k / fps) and a parameter dict -> positions (T, 3) of the
object's origin (its centre of mass, see datagen.spec) in world units (Z up). Parameters are drawn from the ranges
in the config's `trajectories` section (datagen.spec.TrajectoriesSection).
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("linear", "circular", "helical", "parabolic")


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def positions(family: str, params: dict, t: np.ndarray) -> np.ndarray:
    """World positions (T, 3) of `family` with `params` at times `t` (seconds)."""
    t = np.asarray(t, dtype=np.float64)[:, None]
    if family == "linear":
        # passes through `center` at the clip's middle time t_mid
        c, v = np.asarray(params["center"]), np.asarray(params["velocity"])
        return c + (t - params["t_mid"]) * v
    if family in ("circular", "helical"):
        c = np.asarray(params["center"])
        ang = params["phase"] + params["direction"] * params["angular_speed"] * t[:, 0]
        ring = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], -1) * params["radius"]
        climb = params.get("climb_rate", 0.0) * (t - params["t_mid"]) * np.array([0.0, 0.0, 1.0])
        return c + ring + climb
    if family == "parabolic":
        p0, v0 = np.asarray(params["start"]), np.asarray(params["velocity"])
        g = np.array([0.0, 0.0, -params["gravity"]])
        return p0 + v0 * t + 0.5 * g * t ** 2
    raise ValueError(f"unknown trajectory family {family!r}; allowed: {', '.join(FAMILIES)}")


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi))


def draw_params(family: str, cfg, t: np.ndarray, rng: np.random.Generator) -> dict:
    """Draw one parameter set of `family` from the ranges in cfg (a datagen.spec.TrajectoriesSection)."""
    t_mid = float((t[0] + t[-1]) / 2)
    center = [_uniform(rng, cfg.center_xy_range), _uniform(rng, cfg.center_xy_range), _uniform(rng, cfg.center_z_range)]
    if family == "linear":
        azimuth = rng.uniform(0, 2 * np.pi)
        elevation = np.deg2rad(_uniform(rng, cfg.linear_elevation_deg_range))
        direction = [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
        speed = _uniform(rng, cfg.speed_range)
        return {"center": center, "velocity": (speed * np.asarray(direction)).tolist(), "t_mid": t_mid}
    if family in ("circular", "helical"):
        radius = _uniform(rng, cfg.radius_range)
        speed = _uniform(rng, cfg.speed_range)
        p = {"center": center, "radius": radius, "angular_speed": speed / radius,
             "phase": float(rng.uniform(0, 2 * np.pi)), "direction": int(rng.choice([-1, 1])), "t_mid": t_mid}
        if family == "helical":
            p["climb_rate"] = _uniform(rng, cfg.climb_rate_range) * float(rng.choice([-1, 1]))
        return p
    if family == "parabolic":
        g = cfg.gravity
        azimuth = rng.uniform(0, 2 * np.pi)
        h_speed = _uniform(rng, cfg.launch_horizontal_speed_range)
        # apex time as a fraction of the clip: the arc rises and falls within view
        t_apex = t[0] + _uniform(rng, cfg.apex_time_fraction_range) * (t[-1] - t[0])
        vz = g * t_apex
        apex = np.array([center[0], center[1], _uniform(rng, cfg.apex_z_range)])
        v = np.array([h_speed * np.cos(azimuth), h_speed * np.sin(azimuth), vz])
        start = apex - v * t_apex - 0.5 * np.array([0, 0, -g]) * t_apex ** 2  # the position at t = 0
        return {"start": start.tolist(), "velocity": v.tolist(), "gravity": g}
    raise ValueError(f"unknown trajectory family {family!r}; allowed: {', '.join(FAMILIES)}")
