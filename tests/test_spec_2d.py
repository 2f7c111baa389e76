"""The 2D setting's data side without Blender: the 2D trajectory families and their draws, the flat shapes, the
orthographic top-down camera in the spec, the config's [scene] section and its errors. Expected values are derived
here from the formulas in docs/dataset.md ("The 2D setting"), not from the code under test."""
from __future__ import annotations

import json

import numpy as np
import pytest

from datagen import camera as cam
from datagen.config import UserError, from_dict, load_config, to_dict
from datagen.dataset import build_dataset_json, build_meta, config_hash
from datagen.spec import (FLAT_THICKNESS, SHAPES_2D, DatasetConfig, TrajectoriesSection, bbox_offset, build_spec,
                          frame_times, object_dimensions, world_corners)
from datagen.trajectories import FAMILIES_2D, draw_params_2d, positions

T_FRAMES, FPS = 16, 12
TIMES = np.arange(T_FRAMES) / FPS
DT = 1.0 / FPS
Z = 0.005
TC = load_config(DatasetConfig, "dataset", "2d").trajectories


def draws(family, n=40, cfg=TC):
    for seed in range(n):
        p = draw_params_2d(family, cfg, TIMES, np.random.default_rng(seed), Z)
        yield p, positions(family, p, TIMES)


def in_range(x, r, tol=1e-12):
    return r[0] - tol <= x <= r[1] + tol


def config_2d(**sections) -> DatasetConfig:
    """The 2d preset with some section keys replaced."""
    data = to_dict(load_config(DatasetConfig, "dataset", "2d"))
    for sec, values in sections.items():
        data.setdefault(sec, {}).update(values)
    return from_dict(DatasetConfig, data)


def error_of(data: dict) -> str:
    with pytest.raises(UserError) as e:
        from_dict(DatasetConfig, data)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- 2D trajectory families ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES_2D)
def test_2d_positions_stay_in_the_plane_and_params_are_plain_json(family):
    for p, x in draws(family, n=10):
        assert x.shape == (T_FRAMES, 3) and np.isfinite(x).all()
        np.testing.assert_array_equal(x[:, 2], Z)                 # constant height: motion in x, y only
        assert json.loads(json.dumps(p)) == p
    a = draw_params_2d(family, TC, TIMES, np.random.default_rng(7), Z)
    assert a == draw_params_2d(family, TC, TIMES, np.random.default_rng(7), Z)
    assert a != draw_params_2d(family, TC, TIMES, np.random.default_rng(8), Z)


def test_2d_linear_constant_velocity_through_its_centre_at_mid_time():
    speeds, headings = [], []
    for p, x in draws("linear", n=200):
        v = np.diff(x, axis=0) / DT
        np.testing.assert_allclose(v, np.tile(v[0], (T_FRAMES - 1, 1)), atol=1e-9)
        assert v[0, 2] == 0
        speeds.append(np.linalg.norm(v[0]))
        headings.append(np.arctan2(v[0, 1], v[0, 0]))
        mid = (x[7] + x[8]) / 2   # t_mid = 7.5 / 12: halfway between frames 7 and 8
        np.testing.assert_allclose(mid, p["center"], atol=1e-12)
        assert in_range(p["center"][0], TC.center_xy_range) and in_range(p["center"][1], TC.center_xy_range)
    assert all(in_range(s, TC.speed_range, 1e-9) for s in speeds)
    # headings cover the whole circle, not only the 3D family's near-horizontal cone
    assert np.histogram(np.array(headings), bins=4, range=(-np.pi, np.pi))[0].min() > 20


def test_2d_circular_radius_and_angular_speed():
    for p, x in draws("circular"):
        rel = x - np.asarray(p["center"])
        np.testing.assert_allclose(np.linalg.norm(rel[:, :2], axis=1), p["radius"], atol=1e-12)
        ang = np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))
        np.testing.assert_allclose(np.diff(ang), p["direction"] * p["angular_speed"] * DT, atol=1e-9)
        assert in_range(p["radius"], TC.radius_range)
        assert in_range(p["angular_speed"] * p["radius"], TC.speed_range, 1e-9)


def test_2d_parabolic_accelerates_along_minus_y_with_its_apex_inside_the_clip():
    g = TC.gravity
    for p, x in draws("parabolic"):
        acc = (x[2:] - 2 * x[1:-1] + x[:-2]) / DT ** 2
        np.testing.assert_allclose(acc, np.tile([0.0, -g, 0.0], (T_FRAMES - 2, 1)), atol=1e-6)  # image down
        vx = np.diff(x[:, 0]) / DT
        np.testing.assert_allclose(vx, vx[0], atol=1e-9)
        assert in_range(abs(vx[0]), TC.launch_horizontal_speed_range, 1e-9)
        # the apex (vertical velocity zero): v_y(t) = v_y0 - g t
        t_apex = p["velocity"][1] / g
        frac = (t_apex - TIMES[0]) / (TIMES[-1] - TIMES[0])
        assert in_range(frac, TC.apex_time_fraction_range, 1e-9)
        apex_y = p["start"][1] + p["velocity"][1] * t_apex - 0.5 * g * t_apex ** 2
        assert x[:, 1].max() <= apex_y + 1e-12
        # the arc's vertical extent (the drop on its longer side) is centred on the drawn centre
        drop = 0.5 * g * max(t_apex - TIMES[0], TIMES[-1] - t_apex) ** 2
        assert in_range(apex_y - drop / 2, TC.center_xy_range, 1e-9)


def test_2d_sinusoidal_is_a_line_plus_a_sine_across_it():
    duration = TIMES[-1] - TIMES[0]
    for p, x in draws("sinusoidal"):
        c, v, n = (np.asarray(p[k]) for k in ("center", "velocity", "normal"))
        assert abs(v @ n) < 1e-12 and np.linalg.norm(n) == pytest.approx(1.0) and n[2] == 0
        line = c + (TIMES[:, None] - p["t_mid"]) * v
        off = x - line
        np.testing.assert_allclose(off - (off @ n)[:, None] * n, 0.0, atol=1e-12)   # only across the line
        np.testing.assert_allclose(off @ n, p["amplitude"] * np.sin(p["angular_frequency"] * TIMES + p["phase"]),
                                   atol=1e-12)
        assert in_range(p["amplitude"], TC.sine_amplitude_range)
        assert in_range(p["angular_frequency"] * duration / (2 * np.pi), TC.sine_cycles_range, 1e-9)
        assert in_range(np.linalg.norm(v), TC.speed_range, 1e-9)


def test_unknown_2d_family_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'helical'; allowed: linear, circular, parabolic, sinusoidal"):
        draw_params_2d("helical", TC, TIMES, np.random.default_rng(0), Z)


# --- flat shapes -----------------------------------------------------------------------------------------

def test_flat_shape_dimensions_and_centroid_origin():
    assert object_dimensions("square", 0.4) == [0.4, 0.4, FLAT_THICKNESS]
    assert object_dimensions("disc", 0.3) == [0.3, 0.3, FLAT_THICKNESS]
    dims = object_dimensions("triangle", 0.5)
    assert dims == pytest.approx([0.5, 0.5 * np.sqrt(3) / 2, FLAT_THICKNESS])
    assert 0.002 <= FLAT_THICKNESS <= 0.02
    assert bbox_offset("square", [0.4, 0.4, 0.01]) == [0, 0, 0] and bbox_offset("disc", [0.3, 0.3, 0.01]) == [0, 0, 0]
    # an equilateral triangle of side 0.5, apex up: vertices (0, h - c), (+-0.25, -c) with the centroid c = h/3
    # above the base at the origin; the box centre is half-way up, so h/2 - h/3 = h/6 above the origin
    h = 0.5 * np.sqrt(3) / 2
    verts = np.array([[0.0, 2 * h / 3], [-0.25, -h / 3], [0.25, -h / 3]])
    np.testing.assert_allclose(verts.mean(0), 0.0, atol=1e-15)
    box_centre = (verts.min(0) + verts.max(0)) / 2
    np.testing.assert_allclose(bbox_offset("triangle", dims)[:2], box_centre, atol=1e-15)


# --- build_spec of a 2D scene ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cfg2d():
    return load_config(DatasetConfig, "dataset", "2d")


@pytest.fixture(scope="module")
def specs2d(cfg2d):
    return [build_spec(cfg2d, i) for i in range(80)]


def test_2d_specs_use_every_flat_shape_and_2d_family(specs2d):
    assert {s["object"]["shape"] for s in specs2d} == set(SHAPES_2D)
    assert {s["trajectory"]["family"] for s in specs2d} == set(FAMILIES_2D)
    assert json.loads(json.dumps(specs2d[0])) == specs2d[0]


def test_2d_spec_has_one_orthographic_camera_straight_down(specs2d, cfg2d):
    for s in specs2d[:10]:
        (c,) = s["cameras"]
        assert c["projection"] == "orthographic" and c["ortho_scale"] == cfg2d.cameras.ortho_scale == 2.0
        np.testing.assert_allclose(c["K"], [[32, 0, 32], [0, 32, 32], [0, 0, 1]])
        np.testing.assert_allclose(c["R"], np.tile(np.diag([1.0, -1.0, -1.0]), (16, 1, 1)), atol=1e-15)
        np.testing.assert_allclose(c["t"], np.tile([0.0, 0.0, 5.0], (16, 1)), atol=1e-15)
        # Blender's camera object: at (0, 0, 5), its local -Z down and local +Y (its image up) along world +Y
        np.testing.assert_allclose(c["location"][0], [0.0, 0.0, 5.0], atol=1e-12)
        M = cam.quat_to_matrix(np.asarray(c["rotation"][0]))
        np.testing.assert_allclose(M @ [0, 0, -1], [0, 0, -1], atol=1e-12)
        np.testing.assert_allclose(M @ [0, 1, 0], [0, 1, 0], atol=1e-12)


def test_2d_objects_lie_flat_spin_about_z_and_stay_in_the_image(specs2d, cfg2d):
    margin = cfg2d.trajectories.margin_px
    t = frame_times(cfg2d)
    for s in specs2d:
        o = s["object"]
        loc, rot = np.asarray(o["location"]), np.asarray(o["rotation"])
        np.testing.assert_array_equal(loc[:, 2], FLAT_THICKNESS / 2)         # resting on the ground
        np.testing.assert_array_equal(rot[:, 1:3], 0.0)                      # quaternion x = y = 0: about Z only
        angle = np.unwrap(2 * np.arctan2(rot[:, 3], rot[:, 0]))
        np.testing.assert_allclose(np.diff(angle), o["spin"]["speed"] * np.diff(t), atol=1e-9)
        assert o["spin"]["axis"] == [0.0, 0.0, 1.0]
        assert in_range(abs(o["spin"]["speed"]), cfg2d.objects.spin_speed_range)
        assert in_range(o["size"], cfg2d.objects.size_range) and o["dimensions"][2] == FLAT_THICKNESS
        corners = world_corners(o["dimensions"], o["bbox_offset"], loc, rot)
        assert corners[..., 2].min() >= 0.0
        # orthographic by hand: u = 32 + 32 x, v = 32 - 32 y on the 64 px image spanning [-1, 1]
        u, v = 32 + 32 * corners[..., 0], 32 - 32 * corners[..., 1]
        assert u.min() >= margin and u.max() <= 64 - margin and v.min() >= margin and v.max() <= 64 - margin


def test_2d_motion_is_a_good_fraction_of_the_image(specs2d):
    """Over the 16 frames the centre moves 24 px or more along its path (37 % of the image) in every clip: the
    slowest speed, 0.6 units/s for 15 / 12 s at 32 px per unit."""
    for s in specs2d:
        uv = 32 + 32 * np.asarray(s["object"]["location"])[:, :2] * [1, -1]
        assert np.linalg.norm(np.diff(uv, axis=0), axis=1).sum() >= 24 - 1e-6, s["trajectory"]


def test_2d_meta_and_dataset_json(specs2d, cfg2d):
    s = specs2d[3]
    masks = {"visibility": [[True] * 16], "mask_area": [[1] * 16], "mask_bbox": [[[0, 0, 1, 1]] * 16]}
    meta = build_meta(s, masks)
    (view,) = meta["views"]
    assert view["projection"] == "orthographic" and view["ortho_scale"] == 2.0
    P = np.asarray(view["P"])
    np.testing.assert_allclose(P[:, 2], np.tile([0, 0, 0, 1.0], (16, 1)))
    loc = np.asarray(s["object"]["location"])
    np.testing.assert_allclose(meta["centers_2d"], [np.stack([32 + 32 * loc[:, 0], 32 - 32 * loc[:, 1]], -1)])
    info = build_dataset_json(cfg2d, "test")
    assert info["config"]["scene"] == {"kind": "2d"} and info["views"] == ["view0"]
    assert info["config"]["cameras"]["projection"] == "orthographic"
    assert info["camera_rig"]["projection"] == "orthographic" and info["camera_rig"]["ortho_scale"] == 2.0
    assert info["classes"] == {"shape": ["square", "disc", "triangle"],
                               "family": ["linear", "circular", "parabolic", "sinusoidal"]}


def test_tiny_2d_preset_is_small_and_fits():
    cfg = load_config(DatasetConfig, "dataset", "tiny-2d")
    assert (cfg.dataset.num_samples, cfg.render.resolution, cfg.render.frames) == (6, 32, 4)
    for i in range(cfg.dataset.num_samples):
        s = build_spec(cfg, i)
        uv = 16 + 16 * np.asarray(s["object"]["location"])[:, :2] * [1, -1]
        assert (uv > 0).all() and (uv < 32).all()


# --- the config: [scene], omitted at its default, and the refused combinations ------------------------------

def test_3d_configs_keep_their_dataset_json_config_and_hash():
    d = to_dict(DatasetConfig())
    assert "scene" not in d and "projection" not in d["cameras"] and "ortho_scale" not in d["cameras"]
    assert "sine_amplitude_range" not in d["trajectories"] and "sine_cycles_range" not in d["trajectories"]
    # the class defaults' hash from before the 2D keys existed (an existing dataset reads as the same config)
    assert config_hash(d) == "c65faf760173b661"
    assert from_dict(DatasetConfig, {"scene": {"kind": "3d"}}) == DatasetConfig()


@pytest.mark.parametrize("data,needles", [
    ({"scene": {"kind": "flat"}}, ["scene.kind", "'flat'", "allowed: 3d, 2d"]),
    ({"objects": {"shapes": ["square", "cube"]}}, ["'square' in objects.shapes is for 2D scenes (scene.kind = '2d')",
                                                   "allowed in a 3D scene: cube, cylinder, cone"]),
    ({"trajectories": {"families": ["sinusoidal"]}}, ["'sinusoidal' in trajectories.families is for 2D",
                                                      "allowed in a 3D scene: linear, circular, helical, parabolic"]),
    ({"cameras": {"projection": "orthographic"}}, ["cameras.projection = 'orthographic' is for 2D scenes",
                                                   "allowed in a 3D scene: perspective"]),
    ({"cameras": {"projection": "fisheye"}}, ["'fisheye'", "allowed: perspective, orthographic"]),
])
def test_3d_scene_refuses_2d_values(data, needles):
    msg = error_of(data)
    for n in needles:
        assert n in msg, msg


TWO_D = to_dict(load_config(DatasetConfig, "dataset", "2d"))


def _with(section: str, **values) -> dict:
    data = json.loads(json.dumps(TWO_D))
    data[section].update(values)
    return data


@pytest.mark.parametrize("data,needles", [
    (_with("objects", shapes=["disc", "cube"]), ["shape 'cube' in objects.shapes is for 3D scenes",
                                                 "allowed in a 2D scene: square, disc, triangle"]),
    (_with("objects", shapes=["hexagon"]), ["unknown shape 'hexagon'", "allowed: square, disc, triangle"]),
    (_with("trajectories", families=["linear", "helical"]), [
        "family 'helical' in trajectories.families is for 3D scenes",
        "allowed in a 2D scene: linear, circular, parabolic, sinusoidal"]),
    (_with("cameras", projection="perspective"), ["cameras.projection = 'perspective'", "allowed in a 2D scene (scene.kind = '2d'): orthographic"]),
    (_with("cameras", rig=[{"name": "a", "position": [0.0, 0.0, 5.0]}, {"name": "b", "position": [0.0, 0.0, 4.0]}]),
     ["cameras.rig has 2 cameras", "exactly one"]),
    (_with("cameras", rig=[{"name": "a", "position": [1.0, 0.0, 5.0]}]), ["camera 'a'", "does not look straight down",
                                                                           "position = [0.0, 0.0, 5.0]"]),
    (_with("cameras", rig=[{"name": "a", "position": [0.0, 0.0, -5.0]}]), ["camera 'a'", "straight down"]),
    (_with("cameras", motion="orbit"), ["cameras.motion = 'orbit'", "allowed: static"]),
    (_with("cameras", ortho_scale=0.0), ["cameras.ortho_scale = 0.0", "positive"]),
    (_with("cameras", rig=[{"name": "a", "position": [3.0, 0.0, 5.0], "target": [3.0, 0.0, 0.0]}]),
     ["camera 'a'", "does not see the middle of the scene"]),
    (_with("trajectories", sine_cycles_range=[2.0, 1.0]), ["trajectories.sine_cycles_range", "low <= high"]),
])
def test_2d_scene_refuses_bad_combinations_in_one_line(data, needles):
    msg = error_of(data)
    for n in needles:
        assert n in msg, msg


def test_2d_objects_too_big_for_the_image_say_what_to_change():
    cfg = config_2d(objects={"size_range": [1.9, 1.95]}, trajectories={"max_tries": 5})
    with pytest.raises(UserError, match=r"stayed inside all camera views in 5 tries; raise cameras.ortho_scale"):
        build_spec(cfg, 0)
