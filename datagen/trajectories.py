"""The trajectory families (numpy only) and their seeded parameter draws: four 3D ones, four 2D ones.

A family is a function of time t (seconds, t_k = k / fps) and a parameter dict -> positions (T, 3) of the
object's origin (its centre of mass, see datagen.spec) in world units (Z up). Parameters are drawn from the ranges
in the config's `trajectories` section (datagen.spec.TrajectoriesSection).

The 2D families (scene.kind = "2d", docs/dataset.md "The 2D setting") move the origin in the plane z = const seen
from above: linear and circular are the 3D formulas with a horizontal velocity and no climb, parabolic accelerates
along world -Y (image down) instead of -Z, and sinusoidal is a line with a sine across it. `positions` evaluates
both kinds (the parameters say which); `draw_params` draws 3D parameters, `draw_params_2d` 2D ones.
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("linear", "circular", "helical", "parabolic")
FAMILIES_2D = ("linear", "circular", "parabolic", "sinusoidal")


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
        # 3D: gravity along -Z; 2D: the drawn acceleration vector (along -Y, image down)
        g = np.asarray(params["acceleration"]) if "acceleration" in params else np.array([0.0, 0.0, -params["gravity"]])
        return p0 + v0 * t + 0.5 * g * t ** 2
    if family == "sinusoidal":
        c, v, n = np.asarray(params["center"]), np.asarray(params["velocity"]), np.asarray(params["normal"])
        wave = params["amplitude"] * np.sin(params["angular_frequency"] * t + params["phase"])
        return c + (t - params["t_mid"]) * v + wave * n
    raise ValueError(f"unknown trajectory family {family!r}; allowed: {', '.join(dict.fromkeys(FAMILIES + FAMILIES_2D))}")


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


def draw_params_2d(family: str, cfg, t: np.ndarray, rng: np.random.Generator, z: float) -> dict:
    """Draw one parameter set of 2D `family` (FAMILIES_2D) in the plane at height `z` from the ranges in cfg (a
    datagen.spec.TrajectoriesSection): center_xy_range places the path, speed_range is the speed along it (linear,
    circular) or of its drift (sinusoidal), gravity the parabola's acceleration along -Y."""
    t0, t1 = float(t[0]), float(t[-1])
    t_mid, duration = (t0 + t1) / 2, t1 - t0
    cx, cy = _uniform(rng, cfg.center_xy_range), _uniform(rng, cfg.center_xy_range)
    center = [cx, cy, float(z)]
    if family in ("linear", "sinusoidal"):
        heading = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(heading), np.sin(heading), 0.0])
        speed = _uniform(rng, cfg.speed_range)
        p = {"center": center, "velocity": (speed * direction).tolist(), "t_mid": t_mid}
        if family == "sinusoidal":
            cycles = _uniform(rng, cfg.sine_cycles_range)  # waves per clip, not per second: alike at any fps
            p.update({"amplitude": _uniform(rng, cfg.sine_amplitude_range),
                      "angular_frequency": 2 * np.pi * cycles / duration, "phase": float(rng.uniform(0, 2 * np.pi)),
                      "normal": [float(-direction[1]), float(direction[0]), 0.0]})  # the heading turned by +90 deg
        return p
    if family == "circular":
        radius = _uniform(rng, cfg.radius_range)
        speed = _uniform(rng, cfg.speed_range)
        return {"center": center, "radius": radius, "angular_speed": speed / radius,
                "phase": float(rng.uniform(0, 2 * np.pi)), "direction": int(rng.choice([-1, 1])), "t_mid": t_mid}
    if family == "parabolic":
        g = cfg.gravity
        vx = _uniform(rng, cfg.launch_horizontal_speed_range) * float(rng.choice([-1, 1]))
        # the apex at a drawn fraction of the clip, as in 3D; the arc's vertical extent (the drop on its longer side)
        # is centred on the drawn centre, so the whole arc, not only its apex, lies around it
        t_apex = t0 + _uniform(rng, cfg.apex_time_fraction_range) * duration
        drop = 0.5 * g * max(t_apex - t0, t1 - t_apex) ** 2
        apex = np.array([cx, cy + drop / 2, z])
        a = np.array([0.0, -g, 0.0])
        v = np.array([vx, g * t_apex, 0.0])   # the velocity at t = 0 (positions counts from there): level at t_apex
        start = apex - v * t_apex - 0.5 * a * t_apex ** 2   # the position at t = 0
        return {"start": start.tolist(), "velocity": v.tolist(), "acceleration": a.tolist()}
    raise ValueError(f"unknown 2D trajectory family {family!r}; allowed: {', '.join(FAMILIES_2D)}")
