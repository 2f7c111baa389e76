"""Trajectory families (datagen.trajectories) and the scene spec builder (datagen.spec). numpy only, no Blender."""
from __future__ import annotations

import json

import numpy as np
import pytest

from datagen import camera as cam
from datagen.config import UserError, from_dict, to_dict
from datagen.spec import (DatasetConfig, SHAPES, TrajectoriesSection, box_corners, build_spec, frame_times,
                          bbox_offset, object_dimensions, sample_seed, world_corners)
from datagen.trajectories import FAMILIES, draw_params, positions

F = np.diag([1.0, -1.0, -1.0])
T_FRAMES, FPS = 16, 12
TIMES = np.arange(T_FRAMES) / FPS
DT = 1.0 / FPS
TC = TrajectoriesSection()


def cfg_with(**sections) -> DatasetConfig:
    """DatasetConfig defaults with some section keys replaced, e.g. cfg_with(objects={"shapes": ["cone"]})."""
    data = to_dict(DatasetConfig())
    for sec, values in sections.items():
        data[sec].update(values)
    return from_dict(DatasetConfig, data)


def draws(family, n=40, t=TIMES, cfg=TC):
    for seed in range(n):
        p = draw_params(family, cfg, t, np.random.default_rng(seed))
        yield p, positions(family, p, t)


def in_range(x, r, tol=1e-12):
    return r[0] - tol <= x <= r[1] + tol


# --- trajectories --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_positions_shape_and_json_params(family):
    for p, x in draws(family, n=5):
        assert x.shape == (T_FRAMES, 3)
        assert np.isfinite(x).all()
        assert json.loads(json.dumps(p)) == p       # plain JSON data (no numpy scalars or arrays)


@pytest.mark.parametrize("family", FAMILIES)
def test_draws_are_seeded(family):
    a = draw_params(family, TC, TIMES, np.random.default_rng(7))
    b = draw_params(family, TC, TIMES, np.random.default_rng(7))
    c = draw_params(family, TC, TIMES, np.random.default_rng(8))
    assert a == b and a != c


def test_linear():
    for p, x in draws("linear"):
        v = np.asarray(p["velocity"])
        np.testing.assert_allclose(np.diff(x, axis=0), np.broadcast_to(v * DT, (T_FRAMES - 1, 3)), atol=1e-12)
        assert p["t_mid"] == pytest.approx((TIMES[0] + TIMES[-1]) / 2)
        np.testing.assert_allclose(positions("linear", p, np.array([p["t_mid"]]))[0], p["center"], atol=1e-12)
        np.testing.assert_allclose((x[0] + x[-1]) / 2, p["center"], atol=1e-12)     # symmetric about t_mid
        speed = np.linalg.norm(v)
        assert in_range(speed, TC.speed_range)
        assert in_range(np.rad2deg(np.arcsin(v[2] / speed)), TC.linear_elevation_deg_range, 1e-9)
        assert in_range(p["center"][0], TC.center_xy_range) and in_range(p["center"][1], TC.center_xy_range)
        assert in_range(p["center"][2], TC.center_z_range)


@pytest.mark.parametrize("family", ["circular", "helical"])
def test_circular_and_helical_radius_and_angular_speed(family):
    dirs = set()
    for p, x in draws(family):
        c = np.asarray(p["center"])
        rel = x - c
        np.testing.assert_allclose(np.linalg.norm(rel[:, :2], axis=1), p["radius"], atol=1e-12)
        ang = np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))
        np.testing.assert_allclose(np.diff(ang), p["direction"] * p["angular_speed"] * DT, atol=1e-12)
        np.testing.assert_allclose(ang[0] % (2 * np.pi), p["phase"] % (2 * np.pi), atol=1e-9)
        assert in_range(p["radius"], TC.radius_range)
        assert in_range(p["angular_speed"] * p["radius"], TC.speed_range, 1e-9)   # speed along the path
        assert p["direction"] in (-1, 1)
        dirs.add(p["direction"])
        if family == "circular":
            np.testing.assert_allclose(x[:, 2], c[2], atol=1e-12)                 # horizontal
    assert dirs == {-1, 1}


def test_helical_vertical_speed():
    signs = set()
    for p, x in draws("helical"):
        np.testing.assert_allclose(np.diff(x[:, 2]), p["climb_rate"] * DT, atol=1e-12)
        assert in_range(abs(p["climb_rate"]), TC.climb_rate_range)
        signs.add(np.sign(p["climb_rate"]))
        z_mid = positions("helical", p, np.array([p["t_mid"]]))[0, 2]
        assert z_mid == pytest.approx(p["center"][2], abs=1e-12)
    assert signs == {-1.0, 1.0}


def test_parabolic_constant_acceleration():
    for p, x in draws("parabolic"):
        g = p["gravity"]
        assert g == TC.gravity
        np.testing.assert_allclose(np.diff(x, n=2, axis=0), np.broadcast_to([0, 0, -g * DT ** 2], (T_FRAMES - 2, 3)),
                                   atol=1e-12)
        v = np.asarray(p["velocity"])
        assert in_range(np.hypot(v[0], v[1]), TC.launch_horizontal_speed_range, 1e-9)
        # analytic apex: vz(t) = 0; it lies within the clip at the drawn fraction, at a drawn height
        t_apex = v[2] / g
        duration = TIMES[-1] - TIMES[0]
        assert in_range((t_apex - TIMES[0]) / duration, TC.apex_time_fraction_range, 1e-9)
        apex = positions("parabolic", p, np.array([t_apex]))[0]
        assert in_range(apex[2], TC.apex_z_range, 1e-9)
        assert in_range(apex[0], TC.center_xy_range, 1e-9) and in_range(apex[1], TC.center_xy_range, 1e-9)
        # the highest frame is the one nearest the apex
        assert abs(TIMES[np.argmax(x[:, 2])] - t_apex) <= DT / 2 + 1e-9
        assert x[:, 2].max() <= apex[2] + 1e-12


@pytest.mark.parametrize("t0", [0.0, 0.5])
def test_parabolic_apex_at_drawn_time_and_height(t0):
    # degenerate ranges make the drawn apex known: z = 0.7 at the clip's middle
    tc = TrajectoriesSection(apex_time_fraction_range=(0.5, 0.5), apex_z_range=(0.7, 0.7))
    t = t0 + TIMES
    t_apex = (t[0] + t[-1]) / 2
    for seed in range(5):
        p = draw_params("parabolic", tc, t, np.random.default_rng(seed))
        fine = np.linspace(t[0], t[-1], 2001)
        z = positions("parabolic", p, fine)[:, 2]
        assert fine[np.argmax(z)] == pytest.approx(t_apex, abs=DT), "apex not at the drawn time"
        assert z.max() == pytest.approx(0.7, abs=1e-6), "apex not at the drawn height"
        x = positions("parabolic", p, t)
        assert abs(t[np.argmax(x[:, 2])] - t_apex) <= DT / 2 + 1e-9


def test_unknown_family_raises():
    with pytest.raises(ValueError, match=r"unknown trajectory family 'spiral'; allowed: linear, circular"):
        positions("spiral", {}, TIMES)
    with pytest.raises(ValueError, match=r"unknown trajectory family 'spiral'"):
        draw_params("spiral", TC, TIMES, np.random.default_rng(0))


# --- object geometry -----------------------------------------------------------------------------

def test_object_dimensions():
    assert object_dimensions("cube", 0.4, 1.3) == [0.4, 0.4, 0.4]
    np.testing.assert_allclose(object_dimensions("cylinder", 0.4, 0.5), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(object_dimensions("cone", 0.4, 2.0), [0.2, 0.2, 0.4])
    for shape in SHAPES:
        for aspect in (0.6, 1.0, 1.5):
            assert max(object_dimensions(shape, 0.3, aspect)) == pytest.approx(0.3)


def test_box_and_world_corners():
    c = box_corners([2.0, 4.0, 6.0])
    assert c.shape == (8, 3)
    assert {tuple(r) for r in c} == {(sx, sy, sz) for sx in (-1, 1) for sy in (-2, 2) for sz in (-3, 3)}
    loc = np.array([[0.0, 0.0, 1.0], [1.0, 2.0, 3.0]])
    rot = np.stack([[1.0, 0, 0, 0], cam.axis_angle_quat((0, 0, 1), np.pi / 2)])
    w = world_corners([2.0, 4.0, 6.0], [0.0, 0.0, 0.0], loc, rot)
    assert w.shape == (2, 8, 3)
    np.testing.assert_allclose(w[0], c + loc[0])
    # 90 degrees about Z: (x, y, z) -> (-y, x, z)
    np.testing.assert_allclose(w[1], np.stack([-c[:, 1], c[:, 0], c[:, 2]], -1) + loc[1], atol=1e-12)
    # an offset box (a cone's, whose origin is its centre of mass) rotates about the origin, not its own centre
    off = np.array([0.0, 0.0, 1.5])
    w = world_corners([2.0, 4.0, 6.0], off, loc, rot)
    np.testing.assert_allclose(w[0], c + off + loc[0])
    np.testing.assert_allclose(w[1], np.stack([-c[:, 1], c[:, 0], c[:, 2] + 1.5], -1) + loc[1], atol=1e-12)


def test_origin_is_the_centre_of_mass():
    """Cube and cylinder: the box centre. Cone (base at the box bottom, apex at the top): the centroid of a solid cone
    lies h/4 above its base, so the box centre is h/4 above the origin; checked against a Monte-Carlo centroid."""
    for shape in ("cube", "cylinder"):
        assert bbox_offset(shape, [0.3, 0.3, 0.5]) == [0.0, 0.0, 0.0]
    d, h = 0.3, 0.5
    rng = np.random.default_rng(0)
    p = rng.uniform(-0.5, 0.5, size=(400_000, 3)) * [d, d, h]           # box-centred samples
    r_at_z = (d / 2) * (0.5 - p[:, 2] / h)                              # cone radius at height z (base z=-h/2)
    inside = np.hypot(p[:, 0], p[:, 1]) <= r_at_z
    centroid_z = p[inside, 2].mean()                                    # relative to the box centre
    assert -centroid_z == pytest.approx(bbox_offset("cone", [d, d, h])[2], abs=2e-3)


# --- build_spec ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_cfg():
    return DatasetConfig()


@pytest.fixture(scope="module")
def specs(default_cfg):
    return [build_spec(default_cfg, i) for i in range(60)]


def test_build_spec_deterministic(default_cfg):
    a = json.dumps(build_spec(default_cfg, 5), sort_keys=True)
    build_spec(default_cfg, 3)                                   # no hidden state between calls
    b = json.dumps(build_spec(DatasetConfig(), 5), sort_keys=True)
    assert a == b
    assert json.dumps(build_spec(default_cfg, 6), sort_keys=True) != a
    other_seed = cfg_with(dataset={"seed": 1})
    assert json.dumps(build_spec(other_seed, 5), sort_keys=True) != a


def test_spec_is_plain_json(specs):
    for s in specs[:10]:
        assert json.loads(json.dumps(s)) == s


def test_spec_header(specs, default_cfg):
    for i, s in enumerate(specs):
        assert s["sample_id"] == i
        assert s["seed"] == sample_seed(default_cfg.dataset.seed, i)
        r = s["render"]
        assert (r["width"], r["height"], r["frames"], r["fps"]) == (64, 64, 16, 12)
        assert 0 <= r["seed"] < 2 ** 31


def test_sample_seed():
    seeds = [sample_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(isinstance(s, int) and s >= 0 for s in seeds)
    assert sample_seed(0, 5) == sample_seed(0, 5)
    assert sample_seed(0, 5) != sample_seed(1, 5)
    assert len({sample_seed(d, 0) for d in range(100)}) == 100
    assert sample_seed(1, 0) != sample_seed(0, 1)


def test_shapes_and_families_from_config_only():
    cfg = cfg_with(objects={"shapes": ["cone"], "textures": ["wave"]}, trajectories={"families": ["parabolic"]},
                   ground={"textures": ["bricks"]})
    for i in range(8):
        s = build_spec(cfg, i)
        assert s["object"]["shape"] == "cone"
        assert s["trajectory"]["family"] == "parabolic"
        assert s["object"]["material"]["texture"] == "wave"
        assert s["ground"]["material"]["texture"] == "bricks"
    cfg = cfg_with(objects={"shapes": ["cube", "cylinder"]}, trajectories={"families": ["linear", "helical"]})
    got = [build_spec(cfg, i) for i in range(30)]
    assert {s["object"]["shape"] for s in got} == {"cube", "cylinder"}
    assert {s["trajectory"]["family"] for s in got} == {"linear", "helical"}


def test_default_config_uses_every_shape_and_family(specs):
    assert {s["object"]["shape"] for s in specs} == set(SHAPES)
    assert {s["trajectory"]["family"] for s in specs} == set(FAMILIES)


def _check_fits(s, margin):
    """Every bounding-box corner of every frame is in front of every camera, inside its image by `margin`
    pixels, and above the ground; computed from the spec's own K, R, t (not camera.project)."""
    o = s["object"]
    corners = world_corners(o["dimensions"], o["bbox_offset"], np.asarray(o["location"]), np.asarray(o["rotation"]))
    T = s["render"]["frames"]
    W, H = s["render"]["width"], s["render"]["height"]
    assert corners.shape == (T, 8, 3)
    assert corners[..., 2].min() >= 0.0
    for c in s["cameras"]:
        K, R, t = np.asarray(c["K"]), np.asarray(c["R"]), np.asarray(c["t"])
        assert R.shape == (T, 3, 3) and t.shape == (T, 3)
        Xc = np.einsum("fij,fkj->fki", R, corners) + t[:, None, :]
        assert Xc[..., 2].min() > 0
        uv = np.einsum("ij,fkj->fki", K, Xc)
        u, v = uv[..., 0] / uv[..., 2], uv[..., 1] / uv[..., 2]
        assert u.min() >= margin and u.max() <= W - margin, (s["sample_id"], c["name"])
        assert v.min() >= margin and v.max() <= H - margin, (s["sample_id"], c["name"])


def test_objects_stay_in_every_view_and_above_ground(specs, default_cfg):
    for s in specs:
        _check_fits(s, default_cfg.trajectories.margin_px)


@pytest.mark.parametrize("motion", ["orbit", "jitter"])
def test_moving_rigs_fit_too(motion):
    cfg = cfg_with(cameras={"motion": motion, "orbit_deg_per_frame": 2.0, "jitter_m": 0.02},
                   trajectories={"margin_px": 2.0})
    for i in range(12):
        _check_fits(build_spec(cfg, i), 2.0)


def test_tiny_preset_specs_fit():
    from datagen.config import load_config
    cfg = load_config(DatasetConfig, "dataset", "tiny")
    for i in range(cfg.dataset.num_samples):
        s = build_spec(cfg, i)
        assert np.asarray(s["object"]["location"]).shape == (cfg.render.frames, 3)
        _check_fits(s, cfg.trajectories.margin_px)


def test_object_size_and_pose(specs, default_cfg):
    o_cfg = default_cfg.objects
    t = frame_times(default_cfg)
    for s in specs:
        o = s["object"]
        dims = np.asarray(o["dimensions"])
        assert max(dims) == pytest.approx(o["size"])
        assert in_range(max(dims), o_cfg.size_range)
        if o["shape"] == "cube":
            np.testing.assert_allclose(dims, o["size"])
        else:
            assert dims[0] == dims[1]
            assert in_range(dims[2] / dims[0], o_cfg.aspect_range, 1e-9)
        loc = np.asarray(o["location"])
        fam = s["trajectory"]
        np.testing.assert_allclose(loc, positions(fam["family"], fam["params"], t), atol=1e-12)
        assert 1 <= fam["attempts"] <= default_cfg.trajectories.max_tries


def test_rotations_unit_quaternions_and_spin(specs, default_cfg):
    t = frame_times(default_cfg)
    for s in specs:
        o = s["object"]
        q = np.asarray(o["rotation"])
        assert q.shape == (16, 4)
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
        assert (q[:, 0] >= 0).all()
        spin = o["spin"]
        assert np.linalg.norm(spin["axis"]) == pytest.approx(1.0)
        assert in_range(spin["speed"], default_cfg.objects.spin_speed_range)
        expect = cam.quat_multiply(cam.axis_angle_quat(spin["axis"], spin["speed"] * t), spin["initial"])
        # same rotation (q or -q)
        np.testing.assert_allclose(cam.quat_to_matrix(q), cam.quat_to_matrix(expect), atol=1e-12)


@pytest.mark.parametrize("motion", ["static", "orbit", "jitter"])
def test_camera_blender_pose_agrees_with_opencv(motion):
    cfg = cfg_with(cameras={"motion": motion, "orbit_deg_per_frame": 3.0, "jitter_m": 0.02})
    for i in range(3):
        s = build_spec(cfg, i)
        assert [c["name"] for c in s["cameras"]] == ["view0", "view1", "view2"]
        for c, rig in zip(s["cameras"], cfg.cameras.rig):
            K = np.asarray(c["K"])
            np.testing.assert_allclose(K, cam.intrinsics(c["lens_mm"], c["sensor_mm"], 64, 64))
            assert (c["lens_mm"], c["sensor_mm"]) == (35.0, 36.0)
            R, t = np.asarray(c["R"]), np.asarray(c["t"])
            loc, rot = np.asarray(c["location"]), np.asarray(c["rotation"])
            assert loc.shape == (16, 3) and rot.shape == (16, 4)
            np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-12)
            assert (rot[:, 0] >= 0).all()
            for f in range(16):
                M = cam.quat_to_matrix(rot[f])        # Blender camera->world
                R_b = M.T
                t_b = -R_b @ loc[f]
                np.testing.assert_allclose(F @ R_b, R[f], atol=1e-9)
                np.testing.assert_allclose(F @ t_b, t[f], atol=1e-9)
                # Blender's -Z looks at the rig's target, +Y is up
                fwd = np.asarray(rig.target) - loc[f]
                np.testing.assert_allclose(-M[:, 2], fwd / np.linalg.norm(fwd), atol=1e-9)
                assert M[2, 1] > 0
            if motion == "static":
                np.testing.assert_allclose(loc, np.broadcast_to(rig.position, (16, 3)), atol=1e-12)
            else:
                assert np.ptp(loc, axis=0).max() > 1e-3


def test_lights(specs):
    for s in specs[:10]:
        names = [l["name"] for l in s["lights"]]
        assert names == ["key", "fill"]
        for l in s["lights"]:
            q = np.asarray(l["rotation"])
            assert np.linalg.norm(q) == pytest.approx(1.0) and q[0] >= 0
            az, el = np.deg2rad(l["azimuth_deg"]), np.deg2rad(l["elevation_deg"])
            toward_sun = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            # a Blender sun shines down its local -Z: local +Z points at the sun
            np.testing.assert_allclose(cam.quat_to_matrix(q)[:, 2], toward_sun, atol=1e-9)
            assert 0 < l["elevation_deg"] < 90
        assert s["lights"][0]["cast_shadow"] is True


def test_impossible_config_raises_user_error():
    cfg = cfg_with(objects={"size_range": [5.0, 6.0], "shapes": ["cube"]},
                   trajectories={"families": ["helical"], "max_tries": 3})
    with pytest.raises(UserError) as e:
        build_spec(cfg, 7)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("sample 7:")
    assert "helical" in msg and "cube" in msg and "3 tries" in msg


# --- scene difficulty: ground style and contrast ---------------------------------------------------

def test_default_ground_and_object_of_sample_0_are_what_they_were_before_the_difficulty_knobs(default_cfg):
    """Recorded from the code before ground.contrast_range and "plain" existed: at the defaults sample 0's spec is
    unchanged, so datasets rendered before stay what a rerun would render."""
    s = build_spec(default_cfg, 0)
    assert s["ground"] == {"size": 20.0, "material": {
        "texture": "bricks", "scale": 1.258834862007467, "color_a": [0.321269, 0.162687, 0.294833],
        "color_b": [0.408836, 0.356744, 0.210931], "roughness": 0.9, "fade_radius": [2.0, 4.0]}}
    assert s["object"]["material"] == {
        "texture": "noise", "scale": 3.021490487334685, "color_a": [0.675936, 0.573916, 0.26407],
        "color_b": [0.303617, 0.134638, 0.233026], "roughness": 0.7481161348493692, "metallic": 0.0}
    assert (s["object"]["shape"], s["trajectory"]["family"], s["trajectory"]["attempts"]) == ("cone", "linear", 1)
    assert s["object"]["size"] == 0.49777110660274915
    np.testing.assert_allclose(s["object"]["location"][0], [-0.07924357824392164, -0.2800186869595692,
                                                            0.46230984744289205], atol=1e-12)


def _pair_mean(m):
    return (np.asarray(m["color_a"]) + np.asarray(m["color_b"])) / 2


def test_plain_ground_is_the_mean_of_the_pair_and_nothing_else_changes():
    checker, plain = cfg_with(ground={"textures": ["checker"]}), cfg_with(ground={"textures": ["plain"]})
    for i in range(5):
        a, b = build_spec(checker, i), build_spec(plain, i)
        ma, mb = a["ground"].pop("material"), b["ground"].pop("material")
        assert mb["texture"] == "plain" and ma["texture"] == "checker"
        assert mb["color_a"] == mb["color_b"]
        np.testing.assert_allclose(mb["color_a"], _pair_mean(ma), atol=1e-6)
        assert a == b          # a one-texture list draws nothing either way: the same scene, only the ground differs


def test_contrast_scales_the_ground_pair_about_its_mean():
    full = cfg_with(ground={"textures": ["checker"]})
    half = cfg_with(ground={"textures": ["checker"], "contrast_range": [0.5, 0.5]})
    flat = cfg_with(ground={"textures": ["checker"], "contrast_range": [0.0, 0.0]})
    for i in range(5):
        g1, g5, g0 = (build_spec(c, i)["ground"]["material"] for c in (full, half, flat))
        assert "contrast" not in g1 and g5["contrast"] == 0.5 and g0["contrast"] == 0.0
        assert g0["color_a"] == g0["color_b"]                     # contrast 0: one colour, the pair's mean
        np.testing.assert_allclose(g0["color_a"], _pair_mean(g1), atol=1e-6)
        np.testing.assert_allclose(_pair_mean(g5), _pair_mean(g1), atol=1e-6)
        np.testing.assert_allclose(np.subtract(g5["color_a"], g5["color_b"]),
                                   0.5 * np.subtract(g1["color_a"], g1["color_b"]), atol=2e-6)
        assert np.abs(np.subtract(g1["color_a"], g1["color_b"])).max() > 0.05


def test_contrast_range_is_drawn_per_sample_without_changing_the_rest_of_the_scene(default_cfg):
    cfg = cfg_with(ground={"contrast_range": [0.2, 0.6]})
    drawn = []
    for i in range(20):
        base, s = build_spec(default_cfg, i), build_spec(cfg, i)
        g = s["ground"]["material"]
        drawn.append(g.pop("contrast"))
        for key in ("color_a", "color_b"):   # the only other difference
            base["ground"]["material"].pop(key), g.pop(key)
        assert s == base
    assert all(0.2 <= c <= 0.6 for c in drawn) and len(set(drawn)) == 20 and np.ptp(drawn) > 0.2
    assert [build_spec(cfg, i)["ground"]["material"]["contrast"] for i in range(3)] == drawn[:3]   # seeded
