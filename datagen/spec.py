"""Dataset config and the scene spec builder: config + sample id -> one plain-JSON scene spec.

The spec holds every number the Blender renderer needs (no bpy here, Kubric-style): object shape, size,
material, per-frame pose; lights; world; per-frame camera poses; render settings. The same spec also yields
the ground truth written to meta.json (datagen.dataset).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from datagen import camera as cam
from datagen.config import UserError
from datagen.trajectories import FAMILIES, FAMILIES_2D, draw_params, draw_params_2d, positions

SHAPES = ("cube", "cylinder", "cone")
# The 2D scenes' shapes (scene.kind = "2d"): flat slabs lying on the ground, seen from straight above.
SHAPES_2D = ("square", "disc", "triangle")
SCENE_KINDS = ("3d", "2d")
# A 2D shape's thickness, world units: thin enough that its sides never show (an orthographic camera looking straight
# down sees none) and its shadow stays under a pixel, thick enough to be a solid Cycles shades like the 3D ones.
FLAT_THICKNESS = 0.01
TEXTURES = ("checker", "noise", "bricks", "wave", "voronoi", "magic")
# The ground also takes "plain": one flat colour (the mean of its colour pair), no pattern: a CLEVR-like floor.
GROUND_TEXTURES = ("plain", *TEXTURES)
ENGINES = ("cycles", "eevee")
DENOISERS = ("none", "oidn")
CAMERA_MOTIONS = ("static", "orbit", "jitter")
PROJECTIONS = cam.PROJECTIONS
SPEC_VERSION = 1

Range = tuple[float, float]


@dataclass
class DatasetSection:
    num_samples: int = 256
    seed: int = 0
    # fractions of the samples per split; ids are assigned by a seeded permutation (datagen.dataset.split_ids)
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})


@dataclass
class RenderSection:
    resolution: int = 64          # square images, divisible by 8
    frames: int = 16
    fps: int = 12
    engine: str = "cycles"        # cycles | eevee
    samples: int = 4              # path-tracing samples per pixel (TAA samples for eevee)
    denoiser: str = "oidn"        # oidn | none
    denoise_prefilter: str = "NONE"   # OIDN prefilter: NONE | FAST | ACCURATE
    denoise_quality: str = "FAST"     # OIDN quality: FAST | BALANCED | HIGH
    denoise_passes: str = "RGB_ALBEDO_NORMAL"   # OIDN guide passes: RGB | RGB_ALBEDO | RGB_ALBEDO_NORMAL
    max_bounces: int = 4
    filter_width: float = 0.75    # pixel filter width in px (Blackman-Harris); Blender's 1.5 blurs and needs more samples
    depth: bool = False           # also write 16-bit depth PNGs (millimetres)


@dataclass
class ObjectsSection:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    size_range: Range = (0.25, 0.5)          # largest extent of the object, world units
    aspect_range: Range = (0.6, 1.5)         # height / diameter for cylinder and cone
    textures: list[str] = field(default_factory=lambda: list(TEXTURES))
    texture_scale_range: Range = (3.0, 7.0)   # pattern frequency in object space, per world unit
    roughness_range: Range = (0.3, 0.8)
    spin_speed_range: Range = (0.0, 2.5)      # rad/s about a random axis


@dataclass
class GroundSection:
    textures: list[str] = field(default_factory=lambda: ["checker", "bricks", "noise", "voronoi"])
    texture_scale_range: Range = (0.6, 1.5)  # pattern frequency per world unit
    size: float = 20.0
    fade_radius: Range = (2.0, 4.0)   # the pattern fades to its mean colour between these distances from the origin
    # Per sample a factor c drawn from this range scales the difference of the two ground colours about their mean:
    # 0 = one flat colour, 1 = the drawn pair as is. Left out of to_dict (dataset.json, config hashes) while it is
    # [1, 1], so configs written before the key existed stay identical.
    contrast_range: Range = field(default=(1.0, 1.0), metadata={"omit_at_default": True})


@dataclass
class LightsSection:
    key_strength_range: Range = (2.0, 3.5)       # sun irradiance, W/m^2
    key_elevation_deg_range: Range = (40.0, 70.0)
    key_angle_deg_range: Range = (1.0, 5.0)      # sun disc size: shadow softness
    fill_strength_range: Range = (0.2, 0.5)
    world_strength_range: Range = (0.15, 0.35)


@dataclass
class TrajectoriesSection:
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    center_xy_range: Range = (-0.25, 0.25)
    center_z_range: Range = (0.35, 0.65)
    speed_range: Range = (0.3, 0.7)              # m/s along the path (linear, circular, helical)
    linear_elevation_deg_range: Range = (-20.0, 20.0)
    radius_range: Range = (0.2, 0.45)            # circular, helical
    climb_rate_range: Range = (0.1, 0.25)        # helical vertical speed, m/s (sign drawn)
    gravity: float = 1.6                         # parabolic; a miniature scene, so scaled-down gravity
    launch_horizontal_speed_range: Range = (0.2, 0.5)
    apex_time_fraction_range: Range = (0.35, 0.65)
    apex_z_range: Range = (0.55, 0.85)
    margin_px: float = 1.0                       # the object's box stays this far inside every image
    max_tries: int = 1000
    # 2D scenes only: the sinusoidal family's wave across its drift (world units) and waves per clip. Left out of
    # to_dict at their defaults, so 3D datasets' dataset.json and config hashes stay as they were.
    sine_amplitude_range: Range = field(default=(0.1, 0.25), metadata={"omit_at_default": True})
    sine_cycles_range: Range = field(default=(1.0, 2.0), metadata={"omit_at_default": True})


@dataclass
class CameraSpec:
    name: str
    position: tuple[float, float, float]
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _seed_rig() -> list[CameraSpec]:
    return [CameraSpec("view0", (2.0, 0.0, 1.0)), CameraSpec("view1", (0.0, 2.0, 1.0)),
            CameraSpec("view2", (-2.0, 0.0, 1.0))]


@dataclass
class CamerasSection:
    rig: list[CameraSpec] = field(default_factory=_seed_rig)
    lens_mm: float = 35.0
    sensor_mm: float = 36.0
    motion: str = "static"        # static | orbit | jitter
    orbit_deg_per_frame: float = 1.0
    jitter_m: float = 0.005
    # "orthographic" is the 2D scenes' camera (scene.kind = "2d"): it spans ortho_scale world units across the image
    # (its larger side) at any distance. Both left out of to_dict at their defaults (3D configs keep their hashes).
    projection: str = field(default="perspective", metadata={"omit_at_default": True})
    ortho_scale: float = field(default=2.0, metadata={"omit_at_default": True})


@dataclass
class SceneSection:
    # "3d": solids on 3D trajectories under a perspective rig; "2d": flat shapes moving in the ground plane under one
    # orthographic camera looking straight down (docs/dataset.md "The 2D setting")
    kind: str = "3d"


@dataclass
class DatasetConfig:
    dataset: DatasetSection = field(default_factory=DatasetSection)
    render: RenderSection = field(default_factory=RenderSection)
    objects: ObjectsSection = field(default_factory=ObjectsSection)
    ground: GroundSection = field(default_factory=GroundSection)
    lights: LightsSection = field(default_factory=LightsSection)
    trajectories: TrajectoriesSection = field(default_factory=TrajectoriesSection)
    cameras: CamerasSection = field(default_factory=CamerasSection)
    # left out of to_dict while it is the default 3D scene: 3D datasets' dataset.json and config hashes are unchanged
    scene: SceneSection = field(default_factory=SceneSection, metadata={"omit_at_default": True})

    def validate(self) -> None:
        """Raise UserError (one line, naming the value and what is allowed) for any invalid setting."""
        def choices(name, values, allowed):
            if not values:
                raise UserError(f"{name} is empty; allowed: {', '.join(allowed)}")
            for v in values:
                if v not in allowed:
                    key = name.split(".")[-1]
                    noun = "family" if key == "families" else key.removesuffix("s")
                    raise UserError(f"unknown {noun} {v!r} in {name}; allowed: {', '.join(allowed)}")

        def positive_range(name, r, allow_zero=False):
            lo, hi = r
            if lo > hi or (lo < 0 if allow_zero else lo <= 0):
                raise UserError(f"{name} = {list(r)} must be [low, high] with {'0 <=' if allow_zero else '0 <'} low <= high")

        def unit_range(name, r):
            if not 0 <= r[0] <= r[1] <= 1:
                raise UserError(f"{name} = {list(r)} must be [low, high] with 0 <= low <= high <= 1")

        def ordered_range(name, r):
            if r[0] > r[1]:
                raise UserError(f"{name} = {list(r)} must be [low, high] with low <= high")

        def kind_choices(name, values, own, other, noun):
            """choices() for a list whose values belong to one scene kind: a value of the other kind is named
            as such, with the values this kind allows."""
            for v in values:
                if v in other and v not in own:
                    this, that = ("2D", "3D") if two_d else ("3D", "2D")
                    raise UserError(f"{noun} {v!r} in {name} is for {that} scenes (scene.kind = "
                                    f"{that.lower()!r}); allowed in a {this} scene: {', '.join(own)}")
            choices(name, values, own)

        choices("scene.kind", [self.scene.kind], SCENE_KINDS)
        two_d = self.scene.kind == "2d"
        d, r = self.dataset, self.render
        if d.seed < 0:
            raise UserError(f"dataset.seed = {d.seed}: must be >= 0")
        if d.num_samples <= 0:
            raise UserError(f"dataset.num_samples = {d.num_samples}: must be a positive integer")
        if not d.splits or any(f < 0 for f in d.splits.values()) or abs(sum(d.splits.values()) - 1) > 1e-6:
            raise UserError(f"dataset.splits = {d.splits}: fractions must be >= 0 and sum to 1")
        if r.resolution <= 0 or r.resolution % 8:
            raise UserError(f"render.resolution = {r.resolution}: must be a positive multiple of 8")
        if r.frames < 2:
            raise UserError(f"render.frames = {r.frames}: must be at least 2")
        if r.fps <= 0:
            raise UserError(f"render.fps = {r.fps}: must be positive")
        if r.samples < 1:
            raise UserError(f"render.samples = {r.samples}: must be at least 1")
        if r.max_bounces < 0:
            raise UserError(f"render.max_bounces = {r.max_bounces}: must be >= 0")
        choices("render.engine", [r.engine], ENGINES)
        choices("render.denoiser", [r.denoiser], DENOISERS)
        choices("render.denoise_prefilter", [r.denoise_prefilter], ("NONE", "FAST", "ACCURATE"))
        choices("render.denoise_quality", [r.denoise_quality], ("FAST", "BALANCED", "HIGH"))
        choices("render.denoise_passes", [r.denoise_passes], ("RGB", "RGB_ALBEDO", "RGB_ALBEDO_NORMAL"))
        if not 0.01 <= r.filter_width <= 10:
            raise UserError(f"render.filter_width = {r.filter_width}: must be between 0.01 and 10 px")
        kind_choices("objects.shapes", self.objects.shapes, *((SHAPES_2D, SHAPES) if two_d else (SHAPES, SHAPES_2D)),
                     "shape")
        choices("objects.textures", self.objects.textures, TEXTURES)
        choices("ground.textures", self.ground.textures, GROUND_TEXTURES)
        kind_choices("trajectories.families", self.trajectories.families,
                     *((FAMILIES_2D, FAMILIES) if two_d else (FAMILIES, FAMILIES_2D)), "family")
        choices("cameras.motion", [self.cameras.motion], CAMERA_MOTIONS)
        choices("cameras.projection", [self.cameras.projection], PROJECTIONS)
        for name in ("size_range", "aspect_range", "texture_scale_range"):
            positive_range(f"objects.{name}", getattr(self.objects, name))
        positive_range("objects.roughness_range", self.objects.roughness_range, allow_zero=True)
        positive_range("objects.spin_speed_range", self.objects.spin_speed_range, allow_zero=True)
        positive_range("ground.texture_scale_range", self.ground.texture_scale_range)
        positive_range("ground.fade_radius", self.ground.fade_radius)
        unit_range("ground.contrast_range", self.ground.contrast_range)
        for name in ("speed_range", "radius_range", "launch_horizontal_speed_range", "apex_time_fraction_range",
                     "apex_z_range", "center_z_range", "sine_amplitude_range", "sine_cycles_range"):
            positive_range(f"trajectories.{name}", getattr(self.trajectories, name))
        positive_range("trajectories.climb_rate_range", self.trajectories.climb_rate_range, allow_zero=True)
        ordered_range("trajectories.center_xy_range", self.trajectories.center_xy_range)
        ordered_range("trajectories.linear_elevation_deg_range", self.trajectories.linear_elevation_deg_range)
        ordered_range("lights.key_elevation_deg_range", self.lights.key_elevation_deg_range)
        for name in ("key_strength_range", "key_angle_deg_range", "fill_strength_range", "world_strength_range"):
            positive_range(f"lights.{name}", getattr(self.lights, name), allow_zero=True)
        if self.cameras.jitter_m < 0:
            raise UserError(f"cameras.jitter_m = {self.cameras.jitter_m}: must be >= 0")
        if self.trajectories.gravity <= 0:
            raise UserError(f"trajectories.gravity = {self.trajectories.gravity}: must be positive")
        if self.trajectories.max_tries < 1:
            raise UserError(f"trajectories.max_tries = {self.trajectories.max_tries}: must be at least 1")
        c0 = self.cameras
        if not c0.ortho_scale > 0:
            raise UserError(f"cameras.ortho_scale = {c0.ortho_scale}: must be positive (world units across the image)")
        if two_d:
            # one camera looking straight down at the plane: image right = world +X, image up = world +Y
            if c0.projection != "orthographic":
                raise UserError(f"cameras.projection = {c0.projection!r} is for 3D scenes; allowed in a 2D scene "
                                f"(scene.kind = '2d'): orthographic")
            if len(c0.rig) != 1:
                raise UserError(f"cameras.rig has {len(c0.rig)} cameras; a 2D scene (scene.kind = '2d') has exactly "
                                f"one, looking straight down, e.g. rig = [{{name = \"view0\", position = [0.0, 0.0, 5.0]}}]")
            if c0.motion != "static":
                raise UserError(f"cameras.motion = {c0.motion!r}: a 2D scene's camera is static; allowed: static")
            p, q = c0.rig[0].position, c0.rig[0].target
            if (p[0], p[1]) != (q[0], q[1]) or p[2] <= q[2]:
                raise UserError(f"camera {c0.rig[0].name!r} (position {list(p)}, target {list(q)}) does not look "
                                f"straight down; a 2D scene's camera sits right above its target, e.g. position = "
                                f"[{q[0]}, {q[1]}, {q[2] + 5.0}]")
        else:
            if c0.projection != "perspective":
                raise UserError(f"cameras.projection = {c0.projection!r} is for 2D scenes (scene.kind = '2d'); "
                                f"allowed in a 3D scene: perspective")
            if len(c0.rig) < 2:
                raise UserError(f"cameras.rig has {len(c0.rig)} camera(s); at least 2 are needed to triangulate")
        names = [c.name for c in self.cameras.rig]
        if len(set(names)) != len(names) or any(not n.replace("_", "").isalnum() for n in names):
            raise UserError(f"cameras.rig names {names} must be unique and alphanumeric")
        if self.cameras.lens_mm <= 0 or self.cameras.sensor_mm <= 0:
            raise UserError("cameras.lens_mm and cameras.sensor_mm must be positive")
        # The middle of the region trajectories are drawn around: every camera must see it. A camera below the
        # ground sees the ground's underside, one that looks away sees sky; both rendered empty masks.
        tc = self.trajectories
        middle_z = FLAT_THICKNESS / 2 if two_d else sum(tc.center_z_range) / 2
        middle = np.array([sum(tc.center_xy_range) / 2, sum(tc.center_xy_range) / 2, middle_z])
        res = self.render.resolution
        K = cam.orthographic_intrinsics(c0.ortho_scale, res, res) if two_d else \
            cam.intrinsics(self.cameras.lens_mm, self.cameras.sensor_mm, res, res)
        for c in self.cameras.rig:
            if c.position[2] <= 0:
                raise UserError(f"camera {c.name!r} position z = {c.position[2]:g} is at or below the ground (z = 0), "
                                f"where it sees nothing; allowed: z > 0, e.g. position = [2.0, 0.0, 1.0]")
            if np.allclose(c.position, c.target):
                raise UserError(f"camera {c.name!r} position equals its target {list(c.target)}")
            try:
                R, t = cam.look_at(c.position, c.target, cam.TOP_DOWN_UP if two_d else cam.Z_UP)
            except ValueError as e:
                raise UserError(f"camera {c.name!r}: {e}") from None
            seen = cam.depth(R, t, middle[None])[0] > 0 and \
                cam.in_image(cam.project(cam.projection_matrix(K, R, t, c0.projection), middle[None]), res, res)[0]
            if not seen:
                raise UserError(f"camera {c.name!r} (position {list(c.position)}, target {list(c.target)}) does not "
                                f"see the middle of the scene {middle.round(3).tolist()}; aim its target there, e.g. "
                                f"target = [0.0, 0.0, 0.0]")


# --- spec building -------------------------------------------------------------------------------

def sample_seed(dataset_seed: int, sample_id: int) -> int:
    """The per-sample seed: independent streams per (dataset seed, sample id)."""
    return int(np.random.SeedSequence([dataset_seed, sample_id]).generate_state(1)[0])


def frame_times(cfg: DatasetConfig) -> np.ndarray:
    return np.arange(cfg.render.frames, dtype=np.float64) / cfg.render.fps


def camera_tracks(cfg: DatasetConfig, rng: np.random.Generator | None = None) -> list[cam.CameraTrack]:
    rig = {"cameras": [{"name": c.name, "position": c.position, "target": c.target} for c in cfg.cameras.rig],
           "lens_mm": cfg.cameras.lens_mm, "sensor_mm": cfg.cameras.sensor_mm, "motion": cfg.cameras.motion,
           "orbit_deg_per_frame": cfg.cameras.orbit_deg_per_frame, "jitter_m": cfg.cameras.jitter_m}
    if cfg.scene.kind == "2d":
        rig.update(projection=cfg.cameras.projection, ortho_scale=cfg.cameras.ortho_scale, up=cam.TOP_DOWN_UP)
    res = cfg.render.resolution
    return cam.rig_tracks(rig, cfg.render.frames, res, res, rng)


def _colour_pair(rng: np.random.Generator, sat=(0.45, 0.9), val=(0.45, 0.95)) -> tuple[list, list]:
    """Two clearly different linear-RGB colours (hues at least 60 degrees apart)."""
    h = rng.uniform(0, 1)
    h2 = (h + rng.uniform(1 / 6, 5 / 6)) % 1.0
    a = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    b = colorsys.hsv_to_rgb(h2, rng.uniform(*sat), rng.uniform(val[0] * 0.6, val[1] * 0.7))
    return [round(float(x), 6) for x in a], [round(float(x), 6) for x in b]


CONTRAST_STREAM = 0xC047    # names the per-sample generator of the ground contrast (see _ground_material)


def _ground_material(g: GroundSection, rng: np.random.Generator, colours: tuple[list, list], seed: int) -> dict:
    """The ground's material: texture and scale drawn from `rng` (the sample's stream, in the order they always
    were), the colour pair scaled about its mean by the contrast factor, both colours the mean for "plain".

    The contrast factor comes from a generator of its own, seeded by the sample seed, so the range changes nothing
    else in the scene (the same scenes at every contrast) and the default [1, 1] leaves specs as they were, byte
    for byte; "contrast" is in the spec only when the range is not [1, 1]."""
    texture = str(rng.choice(g.textures))
    scale = float(rng.uniform(*g.texture_scale_range))
    lo, hi = g.contrast_range
    contrast = lo if lo == hi else float(np.random.default_rng([seed, CONTRAST_STREAM]).uniform(lo, hi))
    colour_a, colour_b = colours
    if texture == "plain" or contrast != 1.0:
        a, b = np.asarray(colour_a, dtype=np.float64), np.asarray(colour_b, dtype=np.float64)
        mean = (a + b) / 2
        k = 0.0 if texture == "plain" else contrast
        colour_a, colour_b = ([round(float(x), 6) for x in mean + k * (c - mean)] for c in (a, b))
    material = {"texture": texture, "scale": scale, "color_a": colour_a, "color_b": colour_b, "roughness": 0.9,
                "fade_radius": list(g.fade_radius)}
    if (lo, hi) != (1.0, 1.0):
        material["contrast"] = float(contrast)
    return material


def object_dimensions(shape: str, size: float, aspect: float = 1.0) -> list[float]:
    """Full extents (x, y, z) of the object's bounding box; `size` is its largest extent (of a 2D shape: in the
    plane, the thickness is FLAT_THICKNESS; aspect is for cylinder and cone only)."""
    if shape == "cube":
        return [size, size, size]
    if shape in ("square", "disc"):
        return [size, size, FLAT_THICKNESS]
    if shape == "triangle":  # equilateral, side `size`, apex towards object +Y
        return [size, float(size * np.sqrt(3) / 2), FLAT_THICKNESS]
    # cylinder/cone: diameter d, height h = aspect * d, max(d, h) = size
    d = size if aspect <= 1 else size / aspect
    return [d, d, d * aspect]


def bbox_offset(shape: str, dims) -> list[float]:
    """Where the bounding-box centre lies relative to the object's origin, in object coordinates. The origin (the
    tracked position, the point the object spins about) is the centre of mass of the solid: the box centre for a cube
    and a cylinder, h/4 above the base for a cone, so the box centre sits h/4 above the origin. A free body spins
    about its centre of mass, and it is the point an image-based probe can find: with the box centre as the target,
    a probe has to learn an orientation-dependent offset from the visible mass."""
    if shape == "triangle":  # the centroid lies a third of the height above the base, the box centre half
        return [0.0, float(dims[1]) / 6, 0.0]
    return [0.0, 0.0, float(dims[2]) / 4] if shape == "cone" else [0.0, 0.0, 0.0]


def box_corners(dims, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The 8 corners (8, 3) of a box with full extents dims whose centre is at `offset` from the origin."""
    h = np.asarray(dims, dtype=np.float64) / 2
    c = np.array([[sx, sy, sz] for sx in (-h[0], h[0]) for sy in (-h[1], h[1]) for sz in (-h[2], h[2])])
    return c + np.asarray(offset, dtype=np.float64)


def world_corners(dims, offset, location: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Per-frame world positions (T, 8, 3) of the object's bounding-box corners (offset: see bbox_offset)."""
    Rm = cam.quat_to_matrix(rotation)                       # (T, 3, 3)
    return np.einsum("tij,kj->tki", Rm, box_corners(dims, offset)) + np.asarray(location)[:, None, :]


def _fits_all_views(corners: np.ndarray, tracks, margin: float) -> bool:
    if corners[..., 2].min() < 0.0:  # never through the ground
        return False
    for tr in tracks:
        if not cam.in_image(tr.project(corners), tr.width, tr.height, margin).all():
            return False
    return True


def _draw_flat_object(shape: str, family: str, cfg: DatasetConfig, t: np.ndarray, rng: np.random.Generator):
    """One draw of a 2D scene's object: size and dimensions, a 2D trajectory of its centroid in the plane where it
    lies on the ground (z = half its thickness), and a spin about world Z only (the plane's normal), so the shape
    stays flat to the camera. Returns (size, dims, params, positions (T, 3), rotations (T, 4) wxyz, spin spec)."""
    size = float(rng.uniform(*cfg.objects.size_range))
    dims = object_dimensions(shape, size)
    params = draw_params_2d(family, cfg.trajectories, t, rng, z=dims[2] / 2)
    loc = positions(family, params, t)
    axis = np.array([0.0, 0.0, 1.0])
    q0 = cam.axis_angle_quat(axis, float(rng.uniform(0, 2 * np.pi)))
    spin = float(rng.uniform(*cfg.objects.spin_speed_range)) * float(rng.choice([-1.0, 1.0]))
    rot = cam.quat_multiply(cam.axis_angle_quat(axis, spin * t), q0)
    rot = rot * np.where(rot[:, :1] < 0, -1.0, 1.0)  # canonical sign: w >= 0
    return size, dims, params, loc, rot, {"axis": axis.tolist(), "speed": spin, "initial": q0.tolist()}


def build_spec(cfg: DatasetConfig, sample_id: int) -> dict:
    """The full scene spec of one sample (plain JSON data). Deterministic in (config, sample_id)."""
    seed = sample_seed(cfg.dataset.seed, sample_id)
    rng = np.random.default_rng(seed)
    t = frame_times(cfg)
    o, tc = cfg.objects, cfg.trajectories

    shape = str(rng.choice(o.shapes))
    family = str(rng.choice(tc.families))
    tracks = camera_tracks(cfg, rng)
    two_d = cfg.scene.kind == "2d"
    for attempt in range(tc.max_tries):
        if two_d:
            size, dims, params, loc, rot, spin_spec = _draw_flat_object(shape, family, cfg, t, rng)
            if _fits_all_views(world_corners(dims, bbox_offset(shape, dims), loc, rot), tracks, tc.margin_px):
                break
            continue
        size = float(rng.uniform(*o.size_range))
        dims = object_dimensions(shape, size, float(rng.uniform(*o.aspect_range)))
        params = draw_params(family, tc, t, rng)
        loc = positions(family, params, t)
        axis = rng.normal(size=3)
        q0 = rng.normal(size=4)
        q0 = q0 / np.linalg.norm(q0)
        spin = float(rng.uniform(*o.spin_speed_range))
        rot = cam.quat_multiply(cam.axis_angle_quat(axis, spin * t), q0)
        rot = rot * np.where(rot[:, :1] < 0, -1.0, 1.0)  # canonical sign: w >= 0
        if _fits_all_views(world_corners(dims, bbox_offset(shape, dims), loc, rot), tracks, tc.margin_px):
            spin_spec = {"axis": (axis / np.linalg.norm(axis)).tolist(), "speed": spin, "initial": q0.tolist()}
            break
    else:
        wider = "raise cameras.ortho_scale" if two_d else "widen the camera rig"
        raise UserError(f"sample {sample_id}: no {family} trajectory of a {shape} stayed inside all camera views "
                        f"in {tc.max_tries} tries; {wider} or shrink trajectories/objects ranges")

    obj_colours = _colour_pair(rng)
    ground_colours = _colour_pair(rng, sat=(0.15, 0.5), val=(0.3, 0.6))
    key_el = np.deg2rad(rng.uniform(*cfg.lights.key_elevation_deg_range))
    key_az = rng.uniform(0, 2 * np.pi)
    fill_az = key_az + np.pi + rng.uniform(-0.6, 0.6)

    def sun(name, azimuth, elevation, strength, angle, shadow, colour):
        direction_from = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                                   np.sin(elevation)])
        # a sun shines down its local -Z, exactly like a camera looks: reuse the camera pose math
        _, rot_m = cam.blender_camera_pose(*cam.look_at(direction_from * 10, (0.0, 0.0, 0.0)))
        return {"name": name, "strength": float(strength), "angle_deg": float(angle), "cast_shadow": shadow,
                "color": colour, "rotation": cam.matrix_to_quat(rot_m).tolist(),
                "azimuth_deg": float(np.rad2deg(azimuth) % 360), "elevation_deg": float(np.rad2deg(elevation))}

    lights = [
        sun("key", key_az, key_el, rng.uniform(*cfg.lights.key_strength_range),
            rng.uniform(*cfg.lights.key_angle_deg_range), True, [1.0, 0.97, 0.92]),
        sun("fill", fill_az, np.deg2rad(rng.uniform(20, 45)), rng.uniform(*cfg.lights.fill_strength_range),
            10.0, False, [0.9, 0.95, 1.0]),
    ]

    cameras = []
    for tr in tracks:
        poses = [cam.blender_camera_pose(tr.R[f], tr.t[f]) for f in range(len(t))]
        cameras.append({"name": tr.name, "lens_mm": cfg.cameras.lens_mm, "sensor_mm": cfg.cameras.sensor_mm,
                        "location": [p[0].tolist() for p in poses],
                        "rotation": [cam.matrix_to_quat(p[1]).tolist() for p in poses],
                        "K": tr.K.tolist(), "R": tr.R.tolist(), "t": tr.t.tolist()})
        if tr.projection != "perspective":  # perspective cameras keep the spec they always had
            cameras[-1].update(projection=tr.projection, ortho_scale=cfg.cameras.ortho_scale)

    r = cfg.render
    return {
        "spec_version": SPEC_VERSION,
        "sample_id": int(sample_id),
        "seed": seed,
        "render": {"engine": r.engine, "samples": r.samples, "denoiser": r.denoiser,
                   "denoise_prefilter": r.denoise_prefilter, "denoise_quality": r.denoise_quality,
                   "denoise_passes": r.denoise_passes, "filter_width": r.filter_width,
                   "max_bounces": r.max_bounces, "width": r.resolution, "height": r.resolution,
                   "frames": r.frames, "fps": r.fps, "depth": r.depth, "seed": seed % (2 ** 31)},
        "ground": {"size": cfg.ground.size, "material": _ground_material(cfg.ground, rng, ground_colours, seed)},
        "object": {"shape": shape, "dimensions": dims, "bbox_offset": bbox_offset(shape, dims), "size": size,
                   "material": {"texture": str(rng.choice(o.textures)),
                                "scale": float(rng.uniform(*o.texture_scale_range)),
                                "color_a": obj_colours[0], "color_b": obj_colours[1],
                                "roughness": float(rng.uniform(*o.roughness_range)), "metallic": 0.0},
                   "location": loc.tolist(), "rotation": rot.tolist(), "spin": spin_spec},
        "trajectory": {"family": family, "params": params, "attempts": attempt + 1},
        "lights": lights,
        "world": {"color": [0.55, 0.65, 0.85], "strength": float(rng.uniform(*cfg.lights.world_strength_range))},
        "cameras": cameras,
    }
