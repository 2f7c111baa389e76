"""Camera math (datagen.camera): intrinsics, look_at, projection, Blender<->OpenCV, quaternions, rig tracks.

numpy only; every expected value is derived here from the conventions in docs/dataset.md, not from the code under test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from datagen import camera as cam

F = np.diag([1.0, -1.0, -1.0])
SEED_RIG = [((2.0, 0.0, 1.0), (0.0, 0.0, 0.0)), ((0.0, 2.0, 1.0), (0.0, 0.0, 0.0)),
            ((-2.0, 0.0, 1.0), (0.0, 0.0, 0.0))]


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    """n uniformly random proper rotations (QR of Gaussian matrices, signs fixed)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        out.append(q)
    return np.array(out)


def rig(motion="static", positions=None, target=(0.0, 0.0, 0.0), **extra) -> dict:
    positions = positions or [p for p, _ in SEED_RIG]
    return {"cameras": [{"name": f"view{i}", "position": list(p), "target": list(target)}
                        for i, p in enumerate(positions)],
            "lens_mm": 35.0, "sensor_mm": 36.0, "motion": motion, **extra}


# --- intrinsics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lens,sensor,w,h", [(35.0, 36.0, 64, 64), (50.0, 36.0, 128, 128), (35.0, 36.0, 96, 48),
                                             (24.0, 32.0, 40, 80)])
def test_intrinsics_focal_and_principal_point(lens, sensor, w, h):
    K = cam.intrinsics(lens, sensor, w, h)
    f = lens / sensor * max(w, h)
    np.testing.assert_allclose(K, [[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], rtol=0, atol=1e-12)


def test_intrinsics_seed_value():
    # 35 mm lens on a 36 mm sensor at 128 px: f = 124.444 px, c = (64, 64)
    K = cam.intrinsics(35.0, 36.0, 128, 128)
    assert K[0, 0] == pytest.approx(124.4444444, abs=1e-6)
    assert (K[0, 2], K[1, 2]) == (64.0, 64.0)


@pytest.mark.parametrize("lens,sensor", [(0.0, 36.0), (35.0, 0.0), (-1.0, 36.0)])
def test_intrinsics_rejects_non_positive(lens, sensor):
    with pytest.raises(ValueError, match="must be > 0"):
        cam.intrinsics(lens, sensor, 64, 64)


# --- look_at -------------------------------------------------------------------------------------

LOOK_CASES = SEED_RIG + [((3.0, -1.0, 2.5), (0.2, 0.3, 0.4)), ((-1.0, -4.0, 0.5), (0.5, -0.5, 1.0)),
                         ((0.5, 0.5, -2.0), (0.0, 0.0, 0.0))]


@pytest.mark.parametrize("pos,target", LOOK_CASES)
def test_look_at_is_proper_rotation(pos, target):
    R, t = cam.look_at(pos, target)
    assert R.shape == (3, 3) and t.shape == (3,)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    # the camera centre is the given position, in either convention
    np.testing.assert_allclose(cam.camera_center(R, t), pos, atol=1e-12)
    # the optical axis (camera +z, OpenCV) points at the target
    fwd = np.asarray(target) - np.asarray(pos)
    np.testing.assert_allclose(R[2], fwd / np.linalg.norm(fwd), atol=1e-12)
    # no roll: the camera x axis is horizontal
    assert R[0, 2] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("pos,target", LOOK_CASES)
@pytest.mark.parametrize("w,h", [(64, 64), (96, 48)])
def test_target_projects_to_image_centre(pos, target, w, h):
    R, t = cam.look_at(pos, target)
    P = cam.projection_matrix(cam.intrinsics(35.0, 36.0, w, h), R, t)
    np.testing.assert_allclose(cam.project(P, np.asarray(target)), [w / 2, h / 2], atol=1e-9)
    assert cam.depth(R, t, np.asarray(target)) == pytest.approx(np.linalg.norm(np.subtract(target, pos)))


@pytest.mark.parametrize("pos,target", LOOK_CASES)
def test_world_up_is_image_up_and_right_is_right(pos, target):
    R, t = cam.look_at(pos, target)
    P = cam.projection_matrix(cam.intrinsics(35.0, 36.0, 64, 64), R, t)
    target = np.asarray(target)
    c = cam.project(P, target)
    up = cam.project(P, target + [0, 0, 0.1])
    assert up[1] < c[1] - 0.5          # higher in the world = smaller v (v points down)
    # the viewer's right: forward x up (world), independent of look_at's own construction
    fwd = target - np.asarray(pos)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    r = cam.project(P, target + 0.1 * right)
    assert r[0] > c[0] + 0.5
    assert r[1] == pytest.approx(c[1], abs=1e-9)


def test_seed_camera_right_is_world_plus_y():
    # camera at (2, 0, 1) looking at the origin (towards -x): the viewer's right is world +y
    R, t = cam.look_at((2.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    P = cam.projection_matrix(cam.intrinsics(35.0, 36.0, 64, 64), R, t)
    assert cam.project(P, np.array([0.0, 0.2, 0.0]))[0] > 32.5
    assert cam.project(P, np.array([0.0, -0.2, 0.0]))[0] < 31.5


def test_projection_matches_pinhole_formula():
    R, t = cam.look_at((3.0, -1.0, 2.5), (0.2, 0.3, 0.4))
    K = cam.intrinsics(35.0, 36.0, 96, 48)
    P = cam.projection_matrix(K, R, t)
    X = np.random.default_rng(1).uniform(-0.5, 0.5, size=(20, 3))
    Xc = X @ R.T + t
    expect = np.stack([K[0, 0] * Xc[:, 0] / Xc[:, 2] + K[0, 2], K[1, 1] * Xc[:, 1] / Xc[:, 2] + K[1, 2]], -1)
    np.testing.assert_allclose(cam.project(P, X), expect, atol=1e-9)


@pytest.mark.parametrize("pos,target,msg", [((2.0, 0.0, 1.0), (2.0, 0.0, 1.0), "coincides with its target"),
                                            ((0.0, 0.0, 3.0), (0.0, 0.0, 0.0), "straight along the up axis")])
def test_look_at_degenerate_raises(pos, target, msg):
    with pytest.raises(ValueError, match=msg):
        cam.look_at(pos, target)


# --- project -------------------------------------------------------------------------------------

def test_project_behind_camera_is_nan():
    pos, target = np.array([2.0, 0.0, 1.0]), np.zeros(3)
    R, t = cam.look_at(pos, target)
    P = cam.projection_matrix(cam.intrinsics(35.0, 36.0, 64, 64), R, t)
    behind = pos + (pos - target)                  # straight behind the camera
    uv = cam.project(P, np.stack([target, behind, pos + [0, 0.3, 0] + 0.5 * (pos - target)]))
    assert uv.shape == (3, 2)
    assert np.all(np.isfinite(uv[0]))
    assert np.all(np.isnan(uv[1])) and np.all(np.isnan(uv[2]))
    assert np.all(np.isnan(cam.project(P, behind)))  # a single point too
    assert cam.in_image(uv, 64, 64).tolist() == [True, False, False]


def test_project_batched_shapes():
    R, t = cam.look_at((2.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    P = cam.projection_matrix(cam.intrinsics(35.0, 36.0, 64, 64), R, t)
    X = np.random.default_rng(0).uniform(-0.3, 0.3, size=(4, 5, 3))
    uv = cam.project(P, X)
    assert uv.shape == (4, 5, 2)
    np.testing.assert_allclose(uv[2, 3], cam.project(P, X[2, 3]))
    assert cam.project(P, X[0, 0]).shape == (2,)


def test_projection_matrix_batched():
    K = cam.intrinsics(35.0, 36.0, 64, 64)
    Rs, ts = zip(*[cam.look_at(p, tg) for p, tg in SEED_RIG])
    P = cam.projection_matrix(K, np.stack(Rs), np.stack(ts))
    assert P.shape == (3, 3, 4)
    for i in range(3):
        np.testing.assert_allclose(P[i], K @ np.hstack([Rs[i], ts[i][:, None]]))


def test_in_image_margin():
    uv = np.array([[0.0, 0.0], [64.0, 64.0], [1.0, 63.0], [0.5, 10.0], [np.nan, 5.0], [-0.01, 5.0]])
    assert cam.in_image(uv, 64, 64).tolist() == [True, True, True, True, False, False]
    assert cam.in_image(uv, 64, 64, margin=1.0).tolist() == [False, False, True, False, False, False]


# --- Blender <-> OpenCV --------------------------------------------------------------------------

@pytest.mark.parametrize("pos,target", LOOK_CASES)
def test_opencv_from_blender_is_involution_and_flips_y_z(pos, target):
    R, t = cam.look_at(pos, target)
    R_b, t_b = cam.blender_from_opencv(R, t)
    np.testing.assert_allclose(R_b, F @ R, atol=0)
    np.testing.assert_allclose(t_b, F @ t, atol=0)
    np.testing.assert_allclose(R_b[0], R[0])
    np.testing.assert_allclose(R_b[1:], -R[1:])
    R2, t2 = cam.opencv_from_blender(R_b, t_b)
    np.testing.assert_allclose(R2, R, atol=0)
    np.testing.assert_allclose(t2, t, atol=0)
    assert np.linalg.det(R_b) == pytest.approx(1.0)
    # Blender's camera frame: looks down -Z, +Y is up, +X is right
    fwd = np.asarray(target) - np.asarray(pos)
    assert (R_b @ fwd)[2] < 0
    assert (R_b @ np.array([0.0, 0.0, 1.0]))[1] > 0
    assert (R_b @ np.cross(fwd, [0.0, 0.0, 1.0]))[0] > 0


@pytest.mark.parametrize("pos,target", LOOK_CASES)
def test_blender_camera_pose(pos, target):
    R, t = cam.look_at(pos, target)
    loc, M = cam.blender_camera_pose(R, t)
    np.testing.assert_allclose(loc, pos, atol=1e-12)
    np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(M) == pytest.approx(1.0)
    fwd = np.asarray(target) - np.asarray(pos)
    np.testing.assert_allclose(-M[:, 2], fwd / np.linalg.norm(fwd), atol=1e-12)  # -Z looks at the target
    assert M[2, 1] > 0                                                             # +Y is up-ish
    # back to OpenCV exactly as docs/architecture.md says: R_b = M^T, t_b = -R_b loc; R = F R_b, t = F t_b
    R_b = M.T
    np.testing.assert_allclose(F @ R_b, R, atol=1e-12)
    np.testing.assert_allclose(F @ (-R_b @ loc), t, atol=1e-12)


# --- quaternions ---------------------------------------------------------------------------------

def test_quat_matrix_round_trip_random():
    Ms = random_rotations(200)
    for M in Ms:
        q = cam.matrix_to_quat(M)
        assert q.shape == (4,)
        assert q[0] >= 0
        assert np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(cam.quat_to_matrix(q), M, atol=1e-10)
    # batched quat_to_matrix
    qs = np.array([cam.matrix_to_quat(M) for M in Ms])
    np.testing.assert_allclose(cam.quat_to_matrix(qs), Ms, atol=1e-10)


def test_quat_round_trip_from_quaternions():
    q = np.random.default_rng(3).normal(size=(200, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    M = cam.quat_to_matrix(q)
    assert M.shape == (200, 3, 3)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", M, M), np.broadcast_to(np.eye(3), (200, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(M), 1.0, atol=1e-12)
    back = np.array([cam.matrix_to_quat(m) for m in M])
    np.testing.assert_allclose(back, q, atol=1e-9)


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0.3, -0.5, 0.8)])
@pytest.mark.parametrize("angle", [np.pi, np.pi - 1e-3, 2.5, 0.0])
def test_matrix_to_quat_all_branches(axis, angle):
    q = cam.axis_angle_quat(axis, angle)
    M = cam.quat_to_matrix(q)
    back = cam.matrix_to_quat(M)
    assert back[0] >= 0
    np.testing.assert_allclose(cam.quat_to_matrix(back), M, atol=1e-10)
    assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9


def test_quat_multiply_matches_matrix_product():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(50, 4))
    b = rng.normal(size=(50, 4))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ab = cam.quat_multiply(a, b)
    assert ab.shape == (50, 4)
    np.testing.assert_allclose(np.linalg.norm(ab, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(cam.quat_to_matrix(ab), cam.quat_to_matrix(a) @ cam.quat_to_matrix(b), atol=1e-12)
    # identity and broadcasting of a single quaternion
    np.testing.assert_allclose(cam.quat_multiply([1, 0, 0, 0], b), b, atol=0)
    # Hamilton convention: i * j = k
    np.testing.assert_allclose(cam.quat_multiply([0, 1, 0, 0], [0, 0, 1, 0]), [0, 0, 0, 1])


def test_axis_angle_quat_rotates_vectors():
    q = cam.axis_angle_quat((0, 0, 1), np.pi / 2)
    assert q.shape == (4,)
    np.testing.assert_allclose(cam.quat_to_matrix(q) @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)
    q = cam.axis_angle_quat((0, 0, 2.0), np.pi / 2)  # axis need not be unit
    np.testing.assert_allclose(cam.quat_to_matrix(q) @ [0, 1.0, 0], [-1.0, 0, 0], atol=1e-12)
    q = cam.axis_angle_quat((1, 0, 0), np.pi / 2)
    np.testing.assert_allclose(cam.quat_to_matrix(q) @ [0, 1.0, 0], [0, 0, 1.0], atol=1e-12)
    # Rodrigues for a random axis and angle
    rng = np.random.default_rng(9)
    k = rng.normal(size=3)
    k /= np.linalg.norm(k)
    th = 1.234
    v = rng.normal(size=3)
    rod = v * np.cos(th) + np.cross(k, v) * np.sin(th) + k * (k @ v) * (1 - np.cos(th))
    np.testing.assert_allclose(cam.quat_to_matrix(cam.axis_angle_quat(k, th)) @ v, rod, atol=1e-12)
    # batched angles
    qs = cam.axis_angle_quat(k, np.array([0.0, 0.5, 1.0]))
    assert qs.shape == (3, 4)
    np.testing.assert_allclose(qs[0], [1, 0, 0, 0], atol=1e-15)


# --- rig tracks ----------------------------------------------------------------------------------

def test_rig_static_tracks():
    tracks = cam.rig_tracks(rig("static"), 5, 64, 48)
    assert [tr.name for tr in tracks] == ["view0", "view1", "view2"]
    for tr, (pos, target) in zip(tracks, SEED_RIG):
        assert tr.R.shape == (5, 3, 3) and tr.t.shape == (5, 3) and tr.P.shape == (5, 3, 4)
        assert (tr.width, tr.height) == (64, 48)
        np.testing.assert_allclose(tr.K, cam.intrinsics(35.0, 36.0, 64, 48))
        for f in range(5):
            np.testing.assert_array_equal(tr.R[f], tr.R[0])
            np.testing.assert_array_equal(tr.t[f], tr.t[0])
        R, t = cam.look_at(pos, target)
        np.testing.assert_allclose(tr.R[0], R)
        np.testing.assert_allclose(tr.t[0], t)


def test_rig_default_motion_is_static():
    r = rig()
    del r["motion"]
    tr = cam.rig_tracks(r, 3, 32, 32)[0]
    np.testing.assert_array_equal(tr.R[2], tr.R[0])


def test_rig_orbit():
    target = np.array([0.1, -0.2, 0.05])
    deg = 3.0
    frames = 12
    tracks = cam.rig_tracks(rig("orbit", target=target, orbit_deg_per_frame=deg), frames, 64, 64)
    for tr, (pos0, _) in zip(tracks, SEED_RIG):
        centres = np.array([cam.camera_center(tr.R[f], tr.t[f]) for f in range(frames)])
        np.testing.assert_allclose(centres[0], pos0, atol=1e-12)
        rel = centres - target
        dist0 = np.linalg.norm(np.subtract(pos0, target))
        np.testing.assert_allclose(np.linalg.norm(rel, axis=1), dist0, atol=1e-12)
        np.testing.assert_allclose(rel[:, 2], pos0[2] - target[2], atol=1e-12)   # height kept
        ang = np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))
        np.testing.assert_allclose(np.diff(ang), np.deg2rad(deg), atol=1e-12)  # counter-clockwise about +Z
        for f in range(frames):   # still aimed at the target
            np.testing.assert_allclose(cam.project(tr.P[f], target), [32, 32], atol=1e-9)


def test_rig_jitter():
    with pytest.raises(ValueError, match="needs a random generator"):
        cam.rig_tracks(rig("jitter", jitter_m=0.01), 4, 64, 64)
    frames, jm = 400, 0.01
    tracks = cam.rig_tracks(rig("jitter", jitter_m=jm), frames, 64, 64, np.random.default_rng(0))
    offs = []
    for tr, (pos0, target) in zip(tracks, SEED_RIG):
        centres = np.array([cam.camera_center(tr.R[f], tr.t[f]) for f in range(frames)])
        offs.append(centres - pos0)
        for f in (0, frames // 2, frames - 1):   # every jittered camera still looks at its target
            np.testing.assert_allclose(cam.project(tr.P[f], np.asarray(target)), [32, 32], atol=1e-9)
    offs = np.concatenate(offs)
    assert np.abs(offs).max() < 6 * jm
    assert np.std(offs, axis=0) == pytest.approx([jm] * 3, rel=0.1)
    assert np.abs(offs.mean(0)).max() < 5 * jm / np.sqrt(len(offs))   # zero-mean
    assert np.linalg.norm(offs, axis=1).min() > 0                 # every frame moved
    # deterministic in the generator
    again = cam.rig_tracks(rig("jitter", jitter_m=jm), frames, 64, 64, np.random.default_rng(0))
    np.testing.assert_array_equal(again[1].t, tracks[1].t)


def test_rig_unknown_motion_raises():
    with pytest.raises(ValueError, match=r"unknown camera motion 'spin'.*static, orbit, jitter"):
        cam.rig_tracks(rig("spin"), 3, 64, 64)


def test_camera_track_dict_round_trip():
    tr = cam.rig_tracks(rig("orbit", orbit_deg_per_frame=2.0), 6, 64, 48)[1]
    d = json.loads(json.dumps(tr.to_dict()))
    assert set(d) == {"name", "K", "R", "t", "P", "width", "height"}
    assert np.asarray(d["P"]).shape == (6, 3, 4)
    back = cam.CameraTrack.from_dict(d)
    assert back.name == "view1" and (back.width, back.height) == (64, 48)
    np.testing.assert_allclose(back.K, tr.K, atol=0)
    np.testing.assert_allclose(back.R, tr.R, atol=0)
    np.testing.assert_allclose(back.t, tr.t, atol=0)
    np.testing.assert_allclose(back.P, np.asarray(d["P"]), atol=1e-12)
    assert back.P.shape == (6, 3, 4)
    for f in range(6):
        np.testing.assert_allclose(back.P[f], tr.K @ np.hstack([tr.R[f], tr.t[f][:, None]]), atol=1e-12)


def test_camera_track_project_per_frame():
    tr = cam.rig_tracks(rig("orbit", orbit_deg_per_frame=5.0), 4, 64, 64)[0]
    pts = np.random.default_rng(2).uniform(-0.3, 0.3, size=(4, 8, 3))
    uv = tr.project(pts)
    assert uv.shape == (4, 8, 2)
    for f in range(4):
        np.testing.assert_allclose(uv[f], cam.project(tr.P[f], pts[f]))
    assert not np.allclose(uv[0], cam.project(tr.P[3], pts[0]))   # frames really differ


# --- orthographic (the 2D scenes) ------------------------------------------------------------------

def test_orthographic_intrinsics_span_ortho_scale_over_the_larger_side():
    K = cam.orthographic_intrinsics(2.0, 64, 64)
    np.testing.assert_array_equal(K, [[32.0, 0.0, 32.0], [0.0, 32.0, 32.0], [0.0, 0.0, 1.0]])
    # sensor_fit AUTO: the wider side spans ortho_scale, whichever it is
    np.testing.assert_array_equal(cam.orthographic_intrinsics(4.0, 96, 48), [[24, 0, 48], [0, 24, 24], [0, 0, 1]])
    np.testing.assert_array_equal(cam.orthographic_intrinsics(4.0, 48, 96), [[24, 0, 24], [0, 24, 48], [0, 0, 1]])
    with pytest.raises(ValueError, match="ortho_scale must be > 0"):
        cam.orthographic_intrinsics(0.0, 64, 64)


def test_top_down_look_at_maps_world_x_right_and_world_y_up():
    R, t = cam.look_at((0.3, -0.2, 5.0), (0.3, -0.2, 0.0), cam.TOP_DOWN_UP)
    np.testing.assert_allclose(R, np.diag([1.0, -1.0, -1.0]), atol=1e-15)   # x right, y down = -Y, forward = -Z
    np.testing.assert_allclose(cam.camera_center(R, t), [0.3, -0.2, 5.0], atol=1e-15)


def test_orthographic_P_is_the_scaled_camera_xy_with_third_row_0001():
    """For a camera straight above (x0, y0) with ortho_scale S on a W x H image: u = W/2 + (x - x0) max(W, H)/S,
    v = H/2 - (y - y0) max(W, H)/S, whatever the point's height (no perspective division)."""
    x0, y0, S, W, H = 0.3, -0.2, 2.5, 80, 40
    R, t = cam.look_at((x0, y0, 7.0), (x0, y0, 0.0), cam.TOP_DOWN_UP)
    P = cam.projection_matrix(cam.orthographic_intrinsics(S, W, H), R, t, "orthographic")
    np.testing.assert_array_equal(P[2], [0.0, 0.0, 0.0, 1.0])
    X = np.random.default_rng(3).uniform([-1, -1, 0], [1, 1, 3], size=(30, 3))
    s = max(W, H) / S
    expect = np.stack([W / 2 + (X[:, 0] - x0) * s, H / 2 - (X[:, 1] - y0) * s], -1)
    np.testing.assert_allclose(cam.project(P, X), expect, atol=1e-9)
    # the image corners are the world square of side S about (x0, y0): top-left is (x0 - S/2, y0 + S/4) here
    np.testing.assert_allclose(cam.project(P, np.array([x0 - S / 2, y0 + S * H / W / 2, 0.0])), [0, 0], atol=1e-9)
    # a point below the camera's height stays finite (no "behind the camera" for orthographic)
    assert np.isfinite(cam.project(P, np.array([0.0, 0.0, 50.0]))).all()


def test_orthographic_projection_matrix_batched_and_unknown():
    R = np.stack([np.diag([1.0, -1.0, -1.0])] * 4)
    t = np.tile([0.1, 0.2, 5.0], (4, 1))
    P = cam.projection_matrix(cam.orthographic_intrinsics(2.0, 32, 32), R, t, "orthographic")
    assert P.shape == (4, 3, 4)
    np.testing.assert_allclose(P[:, 2], np.tile([0, 0, 0, 1.0], (4, 1)))
    np.testing.assert_allclose(P[1, 0], [16.0, 0.0, 0.0, 16 * 0.1 + 16])
    with pytest.raises(ValueError, match=r"unknown projection 'fisheye'; allowed: perspective, orthographic"):
        cam.projection_matrix(np.eye(3), R[0], t[0], "fisheye")


def test_orthographic_rig_track_and_dict_round_trip():
    r = {"cameras": [{"name": "view0", "position": [0.0, 0.0, 5.0], "target": [0.0, 0.0, 0.0]}],
         "lens_mm": 35.0, "sensor_mm": 36.0, "projection": "orthographic", "ortho_scale": 2.0, "up": cam.TOP_DOWN_UP}
    (tr,) = cam.rig_tracks(r, 3, 64, 64)
    assert tr.projection == "orthographic"
    np.testing.assert_array_equal(tr.K, [[32, 0, 32], [0, 32, 32], [0, 0, 1]])
    np.testing.assert_allclose(tr.P[2], [[32, 0, 0, 32], [0, -32, 0, 32], [0, 0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(tr.project(np.tile([[0.5, 0.25, 0.005]], (3, 1, 1)))[:, 0], [[48, 24]] * 3)
    d = json.loads(json.dumps(tr.to_dict()))
    assert d["projection"] == "orthographic"
    back = cam.CameraTrack.from_dict(d)
    np.testing.assert_allclose(back.P, tr.P, atol=0)
    # without `up` a top-down camera has no image up: look_at's error, not a silent guess
    del r["up"]
    with pytest.raises(ValueError, match="straight along the up axis"):
        cam.rig_tracks(r, 3, 64, 64)
    with pytest.raises(ValueError, match="unknown projection"):
        cam.rig_tracks({**r, "projection": "fisheye"}, 3, 64, 64)
