"""Camera math: the one place for intrinsics, extrinsics, projection and Blender<->OpenCV conversion.

Conventions (docs/architecture.md, "Camera convention"):
- World is Z-up. OpenCV camera frame: x right, y down, z forward. A world point X maps to the camera
  frame as R @ X + t and to pixels as P = K [R | t].
- Pixels: u right, v down, the image's top-left corner at (0, 0), so pixel (row i, col j) has its centre
  at (j + 0.5, i + 0.5).
- Blender cameras look down -Z with +Y up. With Blender's world->camera (R_b, t_b), OpenCV's are
  R = F R_b, t = F t_b with F = diag(1, -1, -1).
- Intrinsics follow Blender's sensor_fit AUTO: the sensor width spans the larger image side.
- Orthographic cameras (the 2D scenes) keep the same K, R, t: R, t are the world->camera pose as above and K holds
  s = pixels per world unit (the image's larger side / ortho_scale) where a pinhole K holds the focal length. Only
  P differs: P = K [R_1 t_1; R_2 t_2; 0 0 0 1] (rows 1-2 of [R|t], then [0, 0, 0, 1]), so u = s x_cam + c_x and
  v = s y_cam + c_y with no division by depth, and `project` works unchanged (its w is 1).
"""
from __future__ import annotations

import numpy as np

BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0])
PROJECTIONS = ("perspective", "orthographic")
Z_UP = (0.0, 0.0, 1.0)
# look_at's `up` for a camera looking straight down -Z (where world Z cannot be up): world +Y is image up and world
# +X image right, the view of a map.
TOP_DOWN_UP = (0.0, 1.0, 0.0)


def intrinsics(lens_mm: float, sensor_mm: float, width: int, height: int) -> np.ndarray:
    """3x3 K for a Blender camera with sensor_fit AUTO and no shift."""
    if lens_mm <= 0 or sensor_mm <= 0:
        raise ValueError(f"lens_mm and sensor_mm must be > 0, got {lens_mm} and {sensor_mm}")
    f = lens_mm / sensor_mm * max(width, height)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def orthographic_intrinsics(ortho_scale: float, width: int, height: int) -> np.ndarray:
    """3x3 K of an orthographic Blender camera (sensor_fit AUTO: ortho_scale world units span the larger image
    side): s = max(width, height) / ortho_scale pixels per world unit on the diagonal, the image centre as c."""
    if ortho_scale <= 0:
        raise ValueError(f"ortho_scale must be > 0, got {ortho_scale}")
    s = max(width, height) / ortho_scale
    return np.array([[s, 0.0, width / 2.0], [0.0, s, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(position, target, up=Z_UP) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world->camera (R, t) for a camera at `position` looking at `target` with world `up` (image up is up's
    projection; a camera looking straight along `up` has none: pass another, e.g. TOP_DOWN_UP)."""
    c = np.asarray(position, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - c
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        raise ValueError(f"camera position {tuple(c)} coincides with its target")
    z = forward / norm
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError(f"camera at {tuple(c)} looks straight along the up axis; choose another target")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ c


def camera_center(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World position of the camera centre from world->camera (R, t) (either convention)."""
    return -R.T @ t


def projection_matrix(K: np.ndarray, R: np.ndarray, t: np.ndarray, projection: str = "perspective") -> np.ndarray:
    """P = K [R | t] (perspective) or K [R_1 t_1; R_2 t_2; 0 0 0 1] (orthographic: the camera-frame x, y scaled and
    shifted, depth dropped); accepts batched R (..., 3, 3) and t (..., 3)."""
    Rt = np.concatenate([R, t[..., None]], axis=-1)
    if projection == "orthographic":
        Rt = Rt.copy()
        Rt[..., 2, :] = (0.0, 0.0, 0.0, 1.0)
    elif projection != "perspective":
        raise ValueError(f"unknown projection {projection!r}; allowed: {', '.join(PROJECTIONS)}")
    return K @ Rt


def opencv_from_blender(R_b: np.ndarray, t_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blender world->camera (R_b, t_b) to OpenCV's; the conversion is its own inverse."""
    return BLENDER_TO_OPENCV @ R_b, BLENDER_TO_OPENCV @ t_b


blender_from_opencv = opencv_from_blender


def blender_camera_pose(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Location and camera->world rotation of the Blender camera object for OpenCV world->camera (R, t).

    Blender's `matrix_world` of a camera object is camera->world in Blender's camera frame:
    rotation = R_b^T, location = the camera centre.
    """
    R_b, _ = blender_from_opencv(R, t)
    return camera_center(R, t), R_b.T


def project(P: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Project world points (..., 3) with P (3, 4) to pixels (..., 2). Points behind the camera give NaN."""
    X = np.asarray(points, dtype=np.float64)
    Xh = np.concatenate([X, np.ones(X.shape[:-1] + (1,))], axis=-1)
    x = Xh @ P.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = x[..., :2] / x[..., 2:3]
    uv[x[..., 2] <= 0] = np.nan
    return uv


def depth(R: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Camera-frame z (distance along the optical axis) of world points (..., 3)."""
    return (np.asarray(points) @ R.T + t)[..., 2]


def in_image(uv: np.ndarray, width: int, height: int, margin: float = 0.0) -> np.ndarray:
    """True where pixel coordinates lie inside the image, at least `margin` pixels from its border."""
    u, v = uv[..., 0], uv[..., 1]
    ok = (u >= margin) & (u <= width - margin) & (v >= margin) & (v <= height - margin)
    return ok & np.isfinite(u) & np.isfinite(v)


# --- rotations -----------------------------------------------------------------------------------

def quat_to_matrix(q) -> np.ndarray:
    """Unit quaternion(s) (..., 4) in wxyz order to rotation matrices (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quat(M: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) to a unit quaternion wxyz with w >= 0."""
    M = np.asarray(M, dtype=np.float64)
    tr = np.trace(M)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (M[2, 1] - M[1, 2]) / s, (M[0, 2] - M[2, 0]) / s, (M[1, 0] - M[0, 1]) / s]
    elif M[0, 0] > M[1, 1] and M[0, 0] > M[2, 2]:
        s = np.sqrt(1.0 + M[0, 0] - M[1, 1] - M[2, 2]) * 2
        q = [(M[2, 1] - M[1, 2]) / s, 0.25 * s, (M[0, 1] + M[1, 0]) / s, (M[0, 2] + M[2, 0]) / s]
    elif M[1, 1] > M[2, 2]:
        s = np.sqrt(1.0 + M[1, 1] - M[0, 0] - M[2, 2]) * 2
        q = [(M[0, 2] - M[2, 0]) / s, (M[0, 1] + M[1, 0]) / s, 0.25 * s, (M[1, 2] + M[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + M[2, 2] - M[0, 0] - M[1, 1]) * 2
        q = [(M[1, 0] - M[0, 1]) / s, (M[0, 2] + M[2, 0]) / s, (M[1, 2] + M[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def quat_multiply(a, b) -> np.ndarray:
    """Hamilton product a * b of wxyz quaternions (broadcasting)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w1, x1, y1, z1 = np.moveaxis(a, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(b, -1, 0)
    return np.stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], -1)


def axis_angle_quat(axis, angle) -> np.ndarray:
    """Quaternion(s) wxyz for rotation by `angle` (scalar or array) about unit `axis`."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    half = np.asarray(angle, dtype=np.float64)[..., None] / 2
    return np.concatenate([np.cos(half), np.sin(half) * axis], axis=-1)


# --- the camera rig ------------------------------------------------------------------------------

class CameraTrack:
    """One camera over a clip: intrinsics and per-frame OpenCV world->camera extrinsics."""

    def __init__(self, name: str, K: np.ndarray, R: np.ndarray, t: np.ndarray, width: int, height: int,
                 projection: str = "perspective"):
        self.name, self.K, self.R, self.t = name, np.asarray(K), np.asarray(R), np.asarray(t)
        self.width, self.height = int(width), int(height)
        self.projection = projection

    @property
    def P(self) -> np.ndarray:
        """(T, 3, 4) per-frame projection matrices."""
        return projection_matrix(self.K, self.R, self.t, self.projection)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project per-frame world points (T, ..., 3) to pixels (T, ..., 2), frame by frame."""
        P = self.P
        pts = np.asarray(points, dtype=np.float64)
        return np.stack([project(P[f], pts[f]) for f in range(len(P))])

    def to_dict(self) -> dict:
        d = {"name": self.name, "K": self.K.tolist(), "R": self.R.tolist(), "t": self.t.tolist(),
             "P": self.P.tolist(), "width": self.width, "height": self.height}
        if self.projection != "perspective":  # perspective tracks keep the dict they always had
            d["projection"] = self.projection
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CameraTrack":
        return cls(d["name"], np.array(d["K"]), np.array(d["R"]), np.array(d["t"]), d["width"], d["height"],
                   d.get("projection", "perspective"))


def rig_tracks(rig: dict, frames: int, width: int, height: int, rng: np.random.Generator | None = None
               ) -> list[CameraTrack]:
    """Per-frame camera tracks for a rig config.

    rig keys: cameras [{name, position, target}], lens_mm, sensor_mm, motion ('static'|'orbit'|'jitter'),
    orbit_deg_per_frame, jitter_m. Orbit turns every camera about the world Z axis through the target;
    jitter adds independent Gaussian offsets (std jitter_m) to each camera position per frame (needs rng).
    Optional: projection ('perspective' | 'orthographic', which then needs ortho_scale) and up (look_at's world
    up, default +Z; TOP_DOWN_UP for a camera looking straight down).
    """
    projection = rig.get("projection", "perspective")
    if projection == "orthographic":
        K = orthographic_intrinsics(rig["ortho_scale"], width, height)
    elif projection == "perspective":
        K = intrinsics(rig["lens_mm"], rig["sensor_mm"], width, height)
    else:
        raise ValueError(f"unknown projection {projection!r}; allowed: {', '.join(PROJECTIONS)}")
    up = rig.get("up", Z_UP)
    motion = rig.get("motion", "static")
    tracks = []
    for cam in rig["cameras"]:
        pos0 = np.asarray(cam["position"], dtype=np.float64)
        target = np.asarray(cam["target"], dtype=np.float64)
        Rs, ts = [], []
        for f in range(frames):
            pos = pos0.copy()
            if motion == "orbit":
                a = np.deg2rad(rig.get("orbit_deg_per_frame", 0.0) * f)
                rel = pos0 - target
                c, s = np.cos(a), np.sin(a)
                pos = target + np.array([c * rel[0] - s * rel[1], s * rel[0] + c * rel[1], rel[2]])
            elif motion == "jitter":
                if rng is None:
                    raise ValueError("camera motion 'jitter' needs a random generator")
                pos = pos0 + rng.normal(0.0, rig.get("jitter_m", 0.0), size=3)
            elif motion != "static":
                raise ValueError(f"unknown camera motion {motion!r}; allowed: static, orbit, jitter")
            R, t = look_at(pos, target, up)
            Rs.append(R)
            ts.append(t)
        tracks.append(CameraTrack(cam["name"], K, np.stack(Rs), np.stack(ts), width, height, projection))
    return tracks
