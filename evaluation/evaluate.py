"""`magvit3d evaluate` and `magvit3d compare`: metrics.json + a self-contained index.html per report.

    evaluate(data, [GEN, ...], probe_run, out)   generated clips vs the dataset's renders, per task:
        pixels     PSNR / SSIM / LPIPS over the generated part (predict: frames after the given ones; complete-view:
                   the views not given), PSNR inside the dilated ground-truth object mask (object_psnr), next to
                   copy-last-frame (predict)
        3D         the probe localizes the object in every frame of every view, confidence-weighted DLT with the
                   dataset's per-frame P gives a track; ADE / FDE (world units and % of the scene extent) over the
                   generated frames, reprojection error (px; multi-view consistency), trajectory-family accuracy;
                   next to the floor (the probe on the rendered clips) and, for predict, copy-last-frame,
                   constant-velocity extrapolation of the triangulated conditioning frames (from the renders) and
                   the learned extrapolation (evaluation.extrapolation: an MLP fitted on the train split's tracks);
                   the probe's detection rate (model and floor)
        compared   per trajectory family and overall: model - baseline per clip, mean with a 95% paired bootstrap
                   interval (ADE %; PSNR and object PSNR against copy-last)
        generate   (class-conditional, no target): family accuracy of the requested family and reprojection error,
                   next to the same numbers for the probe on the dataset's renders
        2D         one-view datasets (is_2d_dataset): no triangulation; the track is the probe's centre of the object in
                   the image (px), measured against the exported 2D centres: ADE / FDE in px and % of the image width,
                   the same baselines (constant velocity and the learned extrapolation in the image plane), the 2D
                   family fit (evaluation.trajectory.fit_families_2d) for family accuracy, and its accuracy on the
                   ground-truth centres (the fit's ceiling); no reprojection error
    compare(A, B, out)   any two sets of clips (generated dirs or datasets), matched by sample id: PSNR / SSIM /
                         LPIPS and A | B | difference GIFs.

Both write REPORT atomically (a temporary directory renamed at the end): metrics.json, index.html, clips/...
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from datagen.config import UserError
from datagen.dataset import load_dataset_json, read_mask, sample_dir
from datagen.pack import load_packed
from evaluation import report as rp
from evaluation.extrapolation import METHOD_LABEL as LEARNED_LABEL
from evaluation.extrapolation import MIN_TRAIN_CLIPS, ExtrapolatorConfig, TrackExtrapolator, fit_extrapolator
from evaluation.metrics import (Region, clip_metrics, dilate_masks, full_region, lpips_size_note, lpips_status,
                                mean_of, object_psnr, open_lpips, paired_bootstrap, task_region)
from evaluation.probe import DETECTION_MAX_SIGMA_PX, Probe, detected, error_stats, load_probe
from evaluation.trajectory import (as_percent, constant_velocity, copy_last, displacement_errors, fit_families,
                                   fit_families_2d, mean_reprojection_error, scene_extent, track_from_detections)
from training.generated import METHOD_TITLES, is_generated_dir, load_generated

SCHEMA = "magvit3d-evaluation"
SCHEMA_VERSION = 1
OBJECT_MARGIN_PX = 4  # the ground-truth object mask is dilated by this many px for the object-region PSNR
OBJECT_REGION_DEFINITION = ("PSNR per evaluated frame over the pixels inside the ground-truth object mask (the "
                            "dataset's mask PNGs) dilated by margin_px (a disk), averaged over the frames whose mask "
                            "is not empty, then over clips")
DETECTION_DEFINITION = ("fraction of the evaluated (view, frame) pairs where the probe's expected error sigma <= "
                        "max_sigma_px (confidence 1 / (1 + sigma^2) >= min_confidence)")
PAIRED_DEFINITION = ("mean over clips of model - baseline (the same clips), with a 95% percentile bootstrap interval "
                     "(clips resampled with replacement)")
EXTENT_DEFINITION = ("diagonal of the axis-aligned box spanned by every ground-truth object position of the dataset "
                     "(all packed splits, all frames)")
IMAGE_WIDTH_DEFINITION = "the image width in px: 2D ADE / FDE % are relative to it"
TRACKS_2D_DEFINITION = ("one view, no triangulation: a clip's track is the probe's centre of the object in each frame "
                        "(px, pixel (row i, col j) centred at (j + 0.5, i + 0.5)), measured against the dataset's "
                        "exported 2D centres")


def is_2d_dataset(info: dict) -> bool:
    """A one-view (2D) dataset, evaluated in the image plane: dataset.json's config says scene.kind = "2d", or it
    has a single view (one view cannot be triangulated)."""
    scene = (info.get("config") or {}).get("scene") or {}
    return scene.get("kind") == "2d" or len(info["views"]) == 1


# --------------------------------------------------------------------------------------------------------------------
# the dataset, all packed splits

@dataclass
class Dataset:
    root: Path
    info: dict
    splits: dict            # name -> PackedSplit
    where: dict             # sample id -> (split, index)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        W, H = self.info["image_size"]
        return len(self.info["views"]), self.info["frames"], H, W

    def _get(self, sid: int):
        split, k = self.where[sid]
        return self.splits[split], k

    def clip(self, sid: int) -> np.ndarray:
        p, k = self._get(sid)
        return np.asarray(p.rgb[k])

    def field(self, sid: int, key: str, dtype=np.float64) -> np.ndarray:
        p, k = self._get(sid)
        return np.asarray(p.index[key][k], dtype=dtype)

    def masks(self, sid: int) -> np.ndarray:
        """The ground-truth object masks bool (V, T, H, W) of a sample, from its mask PNGs (not packed; a missing
        file raises FileNotFoundError)."""
        d = sample_dir(self.root, sid)
        return np.stack([np.stack([read_mask(d, view, f) for f in range(self.info["frames"])])
                         for view in self.info["views"]])

    def P(self, sid: int) -> np.ndarray:
        p, k = self._get(sid)
        V = len(p.views)
        return np.asarray(p.index["cameras"][k]["P"], dtype=np.float64).reshape(V, -1, 3, 4)

    def labels(self, sid: int) -> tuple[str, str]:
        p, k = self._get(sid)
        return p.index["labels"]["shape"][k], p.index["labels"]["family"][k]

    @property
    def gravity(self) -> float:
        return float(self.info["config"]["trajectories"]["gravity"])

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def min_climb(self) -> float:
        """The slowest climb rate the dataset draws for helices (m/s): family fits hold helices to it."""
        rng = self.info["config"]["trajectories"].get("climb_rate_range", [0.0, 0.0])
        return float(min(abs(rng[0]), abs(rng[1])))

    def fit(self, track) -> dict:
        return fit_families(track, self.fps, self.gravity, min_climb=self.min_climb)

    @cached_property
    def tracks(self) -> "WorldTracks":
        """How this dataset's clips become tracks and what they are measured against (3D or 2D)."""
        return ImageTracks(self) if is_2d_dataset(self.info) else WorldTracks(self)


class WorldTracks:
    """3D: confidence-weighted DLT of the probe's detections with the dataset's P -> (T, 3) world tracks, against
    the ground-truth positions; distances in world units and % of the scene extent."""
    kind, dims = "3d", 3

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.scale = scene_extent(np.concatenate([p.array("positions").reshape(-1, 3) for p in ds.splits.values()]))

    def track(self, P, det: dict) -> np.ndarray:
        return track_from_detections(P, det)

    def ground_truth(self, split) -> np.ndarray:
        """The ground-truth tracks of a packed split (N, T, dims)."""
        return split.array("positions")

    def gt(self, sid: int) -> np.ndarray:
        return self.ds.field(sid, "positions")

    def fit(self, track) -> dict:
        return self.ds.fit(track)

    def scale_entry(self) -> tuple[str, dict]:
        """(metrics.json key, entry) of the unit of the % numbers."""
        return "scene_extent", {"value": self.scale, "units": "world units (m)", "definition": EXTENT_DEFINITION}


class ImageTracks(WorldTracks):
    """2D (one view): the probe's centres (T, 2) in px are the track, against the exported 2D centres; distances in
    px and % of the image width. P is not used."""
    kind, dims = "2d", 2

    def __init__(self, ds: Dataset):
        self.ds, self.scale = ds, float(ds.info["image_size"][0])

    def track(self, P, det: dict) -> np.ndarray:
        return np.asarray(det["uv"][0], dtype=np.float64)

    def ground_truth(self, split) -> np.ndarray:
        return split.array("centers_2d")[:, 0]

    def gt(self, sid: int) -> np.ndarray:
        return self.ds.field(sid, "centers_2d")[0]

    def fit(self, track) -> dict:
        return fit_families_2d(track, self.ds.fps)

    def scale_entry(self) -> tuple[str, dict]:
        return "image_width", {"value": self.scale, "units": "px", "definition": IMAGE_WIDTH_DEFINITION}


def open_dataset(root: Path) -> Dataset:
    """Every split of dataset.json, packed (one-line UserError when a split is not packed)."""
    root = Path(root)
    info = load_dataset_json(root)
    splits, where = {}, {}
    for name, ids in info["splits"].items():
        if not ids:
            continue
        p = load_packed(root, name)
        splits[name] = p
        for k, sid in enumerate(p.sample_ids):
            where[int(sid)] = (name, k)
    if not splits:
        raise UserError(f"dataset {root} has no samples in any split")
    return Dataset(root, info, splits, where)


# --------------------------------------------------------------------------------------------------------------------
# probe reference (the floor) on rendered clips

class References:
    """The probe on rendered clips, cached per sample id: detections, the triangulated track, the family fit."""

    def __init__(self, ds: Dataset, probe: Probe):
        self.ds, self.probe, self.cache = ds, probe, {}

    def prefetch(self, sids) -> None:
        todo = [s for s in dict.fromkeys(sids) if s not in self.cache]
        if not todo:
            return
        det = self.probe.predict(np.stack([self.ds.clip(s) for s in todo]))
        for i, s in enumerate(todo):
            d = {k: v[i] for k, v in det.items()}
            P = self.ds.P(s)
            track = self.ds.tracks.track(P, d)
            self.cache[s] = {"det": d, "track": track, "P": P,
                             "fit": self.ds.tracks.fit(track)}

    def __getitem__(self, sid: int) -> dict:
        self.prefetch([sid])
        return self.cache[sid]


def given_tracks(ds: Dataset, probe: Probe, split: str, k: int, chunk: int = 64) -> tuple[list[int], np.ndarray]:
    """The probe on the first k rendered frames of every clip of `split`, made tracks as References does for the
    test clips (the probe and the DLT work frame by frame, so these are the first k frames of References' tracks):
    (sample ids, tracks (N, k, D))."""
    p = ds.splits[split]
    sids = [int(s) for s in p.sample_ids]
    P = p.projections()[:, :, :k]
    tracks = []
    for a in range(0, len(sids), chunk):
        det = probe.predict(np.asarray(p.rgb[a:a + chunk, :, :k]))
        tracks += [ds.tracks.track(P[a + i], {key: v[i] for key, v in det.items()})
                   for i in range(len(det["uv"]))]
    return sids, np.stack(tracks) if tracks else np.zeros((0, k, ds.tracks.dims))


class LearnedExtrapolation:
    """The learned track-extrapolation baseline: one MLP per number of given frames k, fitted on the probe tracks of
    the rendered `split` (train) clips' first k frames -> their ground-truth positions (2D: centres) after them."""

    def __init__(self, ds: Dataset, probe: Probe, extent: float, split: str = "train",
                 cfg: ExtrapolatorConfig | None = None, log=print):
        self.ds, self.probe, self.extent, self.split, self.cfg, self.log = ds, probe, extent, split, cfg, log
        self.models: dict[int, TrackExtrapolator | str] = {}

    def get(self, k: int) -> TrackExtrapolator | None:
        """The fitted model for k given frames (fitted on first use); None when unavailable (see status)."""
        if k not in self.models:
            self.models[k] = self._fit(k)
        m = self.models[k]
        return m if isinstance(m, TrackExtrapolator) else None

    def _fit(self, k: int) -> TrackExtrapolator | str:
        T = self.ds.info["frames"]
        if self.split not in self.ds.splits:
            return f"the dataset has no {self.split!r} split (or it is empty) to fit it on"
        p = self.ds.splits[self.split]
        if not 0 < k < T:
            return f"{k} given frames of {T}: nothing to extrapolate"
        if len(p) < MIN_TRAIN_CLIPS:
            return (f"the {self.split} split has {len(p)} clips; fitting the MLP needs at least {MIN_TRAIN_CLIPS}")
        _, tracks = given_tracks(self.ds, self.probe, self.split, k)
        future = self.ds.tracks.ground_truth(p)[:, k:]
        try:
            model = fit_extrapolator(tracks, future, self.extent, self.cfg)
        except ValueError as e:
            return str(e)
        i = model.info
        self.log(f"learned extrapolation (k={k}): fitted on {i['train_clips']} {self.split} clips in "
                 f"{i['fit_seconds']:.1f} s; train ADE {i['train_ade']:.4f} (constant velocity "
                 f"{i['train_ade_constant_velocity']:.4f})")
        return model

    def status(self) -> dict:
        models = {}
        for k, m in sorted(self.models.items()):
            models[str(k)] = ({"available": True, **m.info} if isinstance(m, TrackExtrapolator)
                              else {"available": False, "reason": m})
        return {"label": LEARNED_LABEL, "split": self.split, "min_train_clips": MIN_TRAIN_CLIPS,
                "by_given_frames": models}


class ObjectMasks:
    """Dilated ground-truth object masks per sample id (cached), or the reason they cannot be read."""

    def __init__(self, ds: Dataset, margin_px: int):
        self.ds, self.margin, self.cache, self.problem = ds, margin_px, {}, None

    def __call__(self, sid: int) -> np.ndarray | None:
        if sid not in self.cache:
            try:
                self.cache[sid] = dilate_masks(self.ds.masks(sid), self.margin)
            except (FileNotFoundError, OSError, ValueError) as e:
                self.cache[sid] = None
                self.problem = self.problem or f"the object masks of sample {sid} cannot be read ({e})"
        return self.cache[sid]


def probe_reference(ds: Dataset, refs: References, split: str, extent: float) -> dict:
    """The probe on every rendered clip of `split`: 2D error vs the exported centres, the floor (ADE / FDE),
    reprojection error (3D), and family accuracy (of the probe's tracks, and of the ground-truth tracks themselves:
    the fitting's own floor; 2D: of the exported centres, key family_accuracy_gt_centres)."""
    p = ds.splits[split]
    sids = [int(s) for s in p.sample_ids]
    refs.prefetch(sids)
    uv_pred = np.stack([refs[s]["det"]["uv"] for s in sids])
    centres, visible = p.array("centers_2d"), p.array("visibility", bool)
    stats2d = error_stats(uv_pred, centres, visible)
    shapes = np.array(p.index["labels"]["shape"])
    by_shape = {name: error_stats(uv_pred[shapes == name], centres[shapes == name], visible[shapes == name])
                for name in sorted(set(shapes))}
    world = ds.tracks.kind == "3d"
    rows = []
    for s in sids:
        r, gt = refs[s], ds.tracks.gt(s)
        fam = ds.labels(s)[1]
        e = displacement_errors(r["track"], gt)
        rows.append({"shape": ds.labels(s)[0], "ade": e["ade"], "fde": e["fde"],
                     **({"reprojection_px": mean_reprojection_error(r["P"], r["track"], r["det"]["uv"])}
                        if world else {}),
                     "family_correct": r["fit"]["best"] == fam,
                     "gt_family_correct": ds.tracks.fit(gt)["best"] == fam, "family": fam})
    ade, fde = mean_of(rows, "ade"), mean_of(rows, "fde")
    by_family = {}
    for fam in sorted({r["family"] for r in rows}):
        sel = [r for r in rows if r["family"] == fam]
        by_family[fam] = float(np.mean([r["family_correct"] for r in sel]))
    for name, stats in by_shape.items():
        a = mean_of([r for r in rows if r["shape"] == name], "ade")
        stats.update(clips=sum(r["shape"] == name for r in rows), ade=a, ade_pct=as_percent(a, extent))
    return {"split": split, "clips": len(sids), "2d_error": stats2d, "2d_error_by_shape": by_shape,
            "ade": ade, "ade_pct": as_percent(ade, extent), "fde": fde, "fde_pct": as_percent(fde, extent),
            **({"reprojection_px": mean_of(rows, "reprojection_px")} if world else {}),
            "family_accuracy": float(np.mean([r["family_correct"] for r in rows])),
            "family_accuracy_by_family": by_family,
            "family_accuracy_gt_positions" if world else "family_accuracy_gt_centres":
                float(np.mean([r["gt_family_correct"] for r in rows]))}


# --------------------------------------------------------------------------------------------------------------------
# generated sets: checks

def _run_name(path: Path, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).resolve().name) or "generated"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def check_generated(gs, ds: Dataset, probe: Probe) -> None:
    """One-line UserErrors for a generated set that does not belong to this dataset / probe."""
    root = gs.root
    if len(gs) == 0:
        raise UserError(f"{root} holds no generated clips")
    V, T, H, W = ds.shape
    got = tuple(gs.rgb.shape[1:5])
    if got != (V, T, H, W):
        raise UserError(f"generated clips in {root} are (V, T, H, W) = {got}; the dataset {ds.root} has "
                        f"{(V, T, H, W)}")
    probe.check_size(W, H, f"generated clips in {root}")
    want_hash = gs.info.get("dataset_config_hash")
    if want_hash is not None and want_hash != ds.info["config_hash"]:
        raise UserError(f"{root} was generated from a dataset with config hash {want_hash}; {ds.root} has "
                        f"{ds.info['config_hash']}")
    missing = [r.sample_id for r in gs.records if r.sample_id is not None and int(r.sample_id) not in ds.where]
    if missing:
        raise UserError(f"{root}: sample id(s) {', '.join(map(str, missing[:5]))}"
                        f"{' ...' if len(missing) > 5 else ''} are not in the dataset {ds.root} "
                        f"(it has {len(ds.where)} samples)")
    for i, r in enumerate(gs.records):
        if r.sample_id is None:
            if r.task != "generate":
                raise UserError(f"{root}: clip {i} (task {r.task}) has no sample id")
            continue
        shape, family = ds.labels(int(r.sample_id))
        if (r.shape, r.family) != (shape, family):
            raise UserError(f"{root}: clip {i} says sample {r.sample_id} is a {r.shape} on a {r.family} "
                            f"trajectory; the dataset says {shape} / {family}")
        if gs.target is not None and not np.array_equal(gs.target[i], ds.clip(int(r.sample_id))):
            raise UserError(f"{root}: target clip {i} differs from the dataset's render of sample {r.sample_id}; "
                            f"were the clips generated from another dataset?")


# --------------------------------------------------------------------------------------------------------------------
# per-clip evaluation

def _traj_metrics(track, gt, frames, extent) -> dict:
    e = displacement_errors(track, gt, frames)
    return {"ade": e["ade"], "ade_pct": as_percent(e["ade"], extent), "fde": e["fde"],
            "fde_pct": as_percent(e["fde"], extent), "missing_frames": e["missing"]}


def _reproj(P, track, uv, region: Region) -> float | None:
    f = region.frames
    return mean_reprojection_error(P[:, f], track[f], uv[:, f])


def _detection_rate(sigma: np.ndarray, region: Region, max_sigma_px: float) -> float:
    return float(detected(np.asarray(sigma)[np.ix_(region.views, region.frames)], max_sigma_px).mean())


def evaluate_clip(i: int, rec, gen: np.ndarray, det: dict, ds: Dataset, refs: References, extent: float,
                  lpips, masks: ObjectMasks | None = None, learned: LearnedExtrapolation | None = None,
                  detection_max_sigma_px: float = DETECTION_MAX_SIGMA_PX) -> tuple[dict, dict]:
    """Metrics of one generated clip with a target; returns (row for metrics.json, arrays for the visuals).
    masks: the dilated object masks (object-region PSNR); learned: the learned-extrapolation baseline (predict)."""
    sid = int(rec.sample_id)
    V, T = gen.shape[:2]
    region = task_region(rec.task, rec.given_frames, rec.given_views, V, T)
    target, gt = ds.clip(sid), ds.tracks.gt(sid)
    ref = refs[sid]
    P = ref["P"]
    track = ds.tracks.track(P, det)
    fit = ds.tracks.fit(track)
    centres, vis = ds.field(sid, "centers_2d"), ds.field(sid, "visibility", bool)
    rv, rf = np.ix_(region.views, region.frames)
    world = ds.tracks.kind == "3d"   # 2D: the probe's error vs the centres IS the track's ADE; no reprojection
    row = {"index": i, "sample_id": sid, "task": rec.task, "shape": rec.shape, "family": rec.family, "seed": rec.seed,
           "given_frames": rec.given_frames, "given_views": list(rec.given_views),
           "eval_views": region.views, "eval_frames": region.frames,
           **clip_metrics(gen, target, region, lpips),
           "object_psnr": None,
           "detection_rate": _detection_rate(det["sigma"], region, detection_max_sigma_px),
           "visible_rate": float(vis[rv, rf].mean()),
           **({"probe_2d_error_px": error_stats(det["uv"][rv, rf], centres[rv, rf], vis[rv, rf])["mean_px"]}
              if world else {}),
           **_traj_metrics(track, gt, region.frames, extent),
           **({"reprojection_px": _reproj(P, track, det["uv"], region)} if world else {}),
           "fit_family": fit["best"], "family_correct": fit["best"] == rec.family}
    row["floor"] = {**({"probe_2d_error_px": error_stats(ref["det"]["uv"][rv, rf], centres[rv, rf],
                                                           vis[rv, rf])["mean_px"]} if world else {}),
                    **_traj_metrics(ref["track"], gt, region.frames, extent),
                    **({"reprojection_px": _reproj(P, ref["track"], ref["det"]["uv"], region)} if world else {}),
                    "detection_rate": _detection_rate(ref["det"]["sigma"], region, detection_max_sigma_px),
                    "fit_family": ref["fit"]["best"], "family_correct": ref["fit"]["best"] == rec.family}
    mask = masks(sid) if masks is not None else None
    if mask is not None:
        row["object_psnr"] = object_psnr(gen, target, region, mask)
    arrays = {"target": target, "gt": gt, "track": track, "floor": ref["track"], "given": 0}
    g = rec.given_frames
    if rec.task == "predict" and 0 < g < T:
        held = np.repeat(target[:, g - 1:g], T, axis=1)                      # copy-last-frame in pixels
        cv = constant_velocity(ref["track"], g, ds.fps)
        row["copy_last"] = {**clip_metrics(held, target, region, lpips),
                            "object_psnr": object_psnr(held, target, region, mask) if mask is not None else None,
                            **_traj_metrics(copy_last(ref["track"], g), gt, region.frames, extent)}
        row["constant_velocity"] = _traj_metrics(cv, gt, region.frames, extent)
        arrays.update(given=g, constant_velocity=cv)
        model = learned.get(g) if learned is not None else None
        if model is not None:
            le = model.extrapolate(ref["track"])
            row["learned_extrapolation"] = _traj_metrics(le, gt, region.frames, extent)
            arrays["learned_extrapolation"] = le
    return row, arrays


def evaluate_generate_clip(i: int, rec, det: dict, ds: Dataset) -> tuple[dict, dict]:
    """A class-conditional clip: no target. The rig's P (the dataset's cameras, static or per frame) comes from the
    first sample of the dataset; family of the probe's track vs the requested family; reprojection error (3D)."""
    sid = next(iter(ds.where))
    P = ds.P(sid)
    track = ds.tracks.track(P, det)
    fit = ds.tracks.fit(track)
    T = len(track)
    row = {"index": i, "sample_id": None, "task": rec.task, "shape": rec.shape, "family": rec.family, "seed": rec.seed,
           **({"reprojection_px": mean_reprojection_error(P, track, det["uv"])} if ds.tracks.kind == "3d" else {}),
           "missing_frames": int((~np.isfinite(track).all(1)).sum()),
           "fit_family": fit["best"], "family_correct": fit["best"] == rec.family}
    fitted = fit["fits"][fit["best"]]["fitted"] if fit["best"] else np.full((T, ds.tracks.dims), np.nan)
    return row, {"track": track, "fitted": fitted}


def _camera_motion_static(ds: Dataset) -> bool:
    return ds.info.get("camera_rig", {}).get("motion", "static") == "static"


KEYS_PIX = ("psnr", "ssim", "lpips")
KEYS_3D = ("ade", "ade_pct", "fde", "fde_pct", "reprojection_px", "probe_2d_error_px")
KEYS_TRAJ = ("ade", "ade_pct", "fde", "fde_pct")
BASELINES = ("copy_last", "constant_velocity", "learned_extrapolation")
# model - baseline, per clip, with a paired bootstrap interval: these metrics of these baselines
PAIRED = {"copy_last": ("ade_pct", "psnr", "object_psnr"), "constant_velocity": ("ade_pct",),
          "learned_extrapolation": ("ade_pct",)}
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 2000, 0


def paired_differences(rows: list[dict]) -> dict:
    """{baseline: {metric: paired_bootstrap(model, baseline)}} over the clips that have that baseline."""
    out = {}
    for name, keys in PAIRED.items():
        sel = [r for r in rows if name in r]
        if sel:
            out[name] = {k: paired_bootstrap([r.get(k) for r in sel], [r[name].get(k) for r in sel],
                                             BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED) for k in keys}
    return out


def _method_means(rows: list[dict]) -> dict:
    track_keys = tuple(k for k in KEYS_3D if k in rows[0])     # 2D rows have no reprojection / separate 2D error
    out = {"clips": len(rows),
           "model": {**{k: mean_of(rows, k) for k in KEYS_PIX + ("object_psnr",) + track_keys + ("detection_rate",)},
                     "family_accuracy": float(np.mean([r["family_correct"] for r in rows]))},
           "visible_rate": mean_of(rows, "visible_rate")}
    floor = [r["floor"] for r in rows]
    out["floor"] = {**{k: mean_of(floor, k) for k in track_keys + ("detection_rate",)},
                    "family_accuracy": float(np.mean([r["family_correct"] for r in floor]))}
    for name in BASELINES:
        sub = [r[name] for r in rows if name in r]
        if sub:
            keys = (KEYS_PIX + ("object_psnr",) if name == "copy_last" else ()) + KEYS_TRAJ
            out[name] = {k: mean_of(sub, k) for k in keys}
    paired = paired_differences(rows)
    if paired:
        out["paired"] = paired
    return out


def summarize(rows: list[dict], task: str) -> dict:
    """Means over clips per method (model, floor, copy_last, constant_velocity, learned_extrapolation), family
    accuracies, detection rates, paired differences model - baseline with bootstrap intervals (`paired`), and all of
    it again per trajectory family (`by_family`)."""
    if task == "generate":
        return {"clips": len(rows),
                "model": {"family_accuracy": float(np.mean([r["family_correct"] for r in rows])),
                          **({"reprojection_px": mean_of(rows, "reprojection_px")} if "reprojection_px" in rows[0]
                             else {})}}
    out = _method_means(rows)
    out["by_family"] = {fam: _method_means([r for r in rows if r["family"] == fam])
                        for fam in sorted({r["family"] for r in rows})}
    return out


# --------------------------------------------------------------------------------------------------------------------
# runs: what made them

GIVEN_LABELS = {"re-decoded": "given frames re-decoded from their tokens",
                "pasted": "given frames pasted from the renders"}


def run_label(info: dict) -> dict:
    """What a generated set is, from the optional generated.json keys method (model | ceiling | copy-latent),
    given_frames (re-decoded | pasted), composite (bool), track_prior (class-conditional clips given a training
    clip's track), the guidance scales guidance / track_guidance and track_guidance_radius; absent keys read as
    model, re-decoded, false, none, 1, 0."""
    method = info.get("method") or "model"
    given = info.get("given_frames") or "re-decoded"
    composite = bool(info.get("composite", False))
    title = METHOD_TITLES.get(method, str(method))
    details = ([GIVEN_LABELS.get(given, f"given frames: {given}")] + (["composite"] if composite else [])
               + ([f"each clip follows the object track of a {info['track_prior']} clip of its shape and family"]
                  if info.get("track_prior") else [])
               + [f"{name} guidance {info[key]:g}" for key, name in (("guidance", "label"), ("track_guidance", "track"))
                  if info.get(key, 1.0) not in (None, 1.0)]
               + ([f"track guidance within {info['track_guidance_radius']:g} token cells of the object"]
                  if info.get("track_guidance_radius") else []))
    return {"method": method, "given_frames": given, "composite": composite, "title": title,
            "details": "; ".join(details)}


# --------------------------------------------------------------------------------------------------------------------
# evaluate

def evaluate(data: Path, generated: list[Path], probe_run: Path, out: Path, *, lpips_weights=None,
             split: str | None = None, max_visual_clips: int = 12, progress: bool = True, log=print,
             object_margin_px: int = OBJECT_MARGIN_PX, detection_max_sigma_px: float = DETECTION_MAX_SIGMA_PX,
             learned_split: str = "train", learned_config: ExtrapolatorConfig | None = None) -> dict:
    """Evaluate generated clip sets against DATASET with a trained probe; writes REPORT (see module doc) and
    returns the metrics dict (also REPORT/metrics.json). object_margin_px: dilation of the ground-truth object
    masks for the object-region PSNR; detection_max_sigma_px: the probe's expected error below which a frame counts
    as "object found"; learned_split: the split the learned extrapolation is fitted on."""
    from tqdm import tqdm

    if not generated:
        raise UserError("no --generated directory given")
    rp.check_out_dir(out, [data, *generated, probe_run, lpips_weights])
    ds = open_dataset(data)
    probe = load_probe(probe_run)
    V, T, H, W = ds.shape
    probe.check_size(W, H, f"the dataset {ds.root}")
    sets = [load_generated(g) for g in generated]
    for gs in sets:
        check_generated(gs, ds, probe)
    ref_split = split or next((gs.info.get("split") for gs in sets if gs.info.get("split") in ds.splits),
                              "test" if "test" in ds.splits else next(iter(ds.splits)))
    if ref_split not in ds.splits:
        raise UserError(f"split {ref_split!r} is not in {ds.root}; allowed: {', '.join(ds.splits)}")
    extent = ds.tracks.scale
    lpips = open_lpips(lpips_weights, log=log)
    lpips_note = lpips_size_note(lpips, H, W)
    refs = References(ds, probe)
    reference = probe_reference(ds, refs, ref_split, extent)
    masks = ObjectMasks(ds, object_margin_px)
    learned = LearnedExtrapolation(ds, probe, extent, learned_split, learned_config, log=log)
    ffmpeg = rp.ffmpeg_path()
    mp4_note = None if ffmpeg else "MP4 skipped: no ffmpeg on PATH (GIFs only)"
    if mp4_note:
        log(f"notice: {mp4_note}")

    scale_key, scale_entry = ds.tracks.scale_entry()
    metrics = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
               "dataset": {"path": str(ds.root), "config_hash": ds.info["config_hash"], "image_size": [W, H],
                           "frames": T, "views": ds.info["views"], "fps": ds.fps},
               scale_key: scale_entry,
               **({"tracks": {"kind": "2d", "definition": TRACKS_2D_DEFINITION}} if ds.tracks.kind == "2d" else {}),
               "probe": {"run": str(probe_run), "checkpoint": str(probe.path), "image_size": list(probe.image_size),
                         "reference": reference},
               "lpips": {**lpips_status(lpips), **({"note": lpips_note} if lpips_note else {})},
               "psnr_cap_db": 100.0, "mp4": mp4_note or "written",
               "object_region": {"margin_px": object_margin_px, "definition": OBJECT_REGION_DEFINITION},
               "detection": {"max_sigma_px": detection_max_sigma_px,
                             "min_confidence": 1.0 / (1.0 + detection_max_sigma_px ** 2),
                             "definition": DETECTION_DEFINITION},
               "paired": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95,
                          "definition": PAIRED_DEFINITION},
               "runs": []}
    taken: set = set()
    visuals = []
    for gs in sets:
        name = _run_name(gs.root, taken)
        det_all = probe.predict(gs.rgb)
        sids = [int(r.sample_id) for r in gs.records if r.sample_id is not None]
        refs.prefetch(sids)
        for k in sorted({r.given_frames for r in gs.records if r.task == "predict" and r.sample_id is not None}):
            learned.get(k)                                     # fitted here, not inside the progress bar
        by_task: dict[str, list] = {}
        for i, rec in enumerate(tqdm(gs.records, desc=f"evaluate {name}", unit="clip", disable=not progress)):
            det = {k: v[i] for k, v in det_all.items()}
            if rec.sample_id is None:
                row, arrays = evaluate_generate_clip(i, rec, det, ds)
            else:
                row, arrays = evaluate_clip(i, rec, np.asarray(gs.rgb[i]), det, ds, refs, extent, lpips, masks,
                                            learned, detection_max_sigma_px)
            by_task.setdefault(rec.task, []).append(row)
            if len(by_task[rec.task]) <= max_visual_clips:
                visuals.append((name, rec, np.asarray(gs.rgb[i]), arrays, row))
        info = {k: v for k, v in gs.info.items() if k not in ("clips",)}
        metrics["runs"].append({"name": name, "generated": str(gs.root), "label": run_label(gs.info), "info": info,
                                "tasks": {task: {"summary": summarize(rows, task), "clips": rows}
                                          for task, rows in by_task.items()}})
    metrics["object_region"]["available"] = masks.problem is None
    if masks.problem:
        metrics["object_region"]["reason"] = masks.problem
    metrics["learned_extrapolation"] = learned.status()
    if (ds.tracks.kind == "3d" and not _camera_motion_static(ds)
            and any(r.sample_id is None for gs in sets for r in gs.records)):
        metrics["notes"] = ["class-conditional clips are triangulated with the cameras of the dataset's first sample; "
                            "the dataset's rig moves, so their reprojection errors are approximate"]

    with rp.atomic_dir(out) as tmp:
        media = _write_visuals(tmp, visuals, ds.fps, ffmpeg, metrics)
        (tmp / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
        (tmp / "index.html").write_text(_evaluation_html(metrics, media, tmp))
    return metrics


def _jsonable(x):
    """NaN/inf -> None, numpy scalars -> Python (metrics.json is strict JSON)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _write_visuals(root: Path, visuals: list, fps: float, ffmpeg: str | None, metrics: dict) -> dict:
    """GIF (+ MP4) and trajectory PNG per shown clip; returns {(run, index): {"gif", "mp4", "plot"}} paths."""
    media = {}
    for name, rec, gen, arrays, row in visuals:
        folder = root / "clips" / name
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{row['index']:04d}_" + (f"sample{rec.sample_id:06d}" if rec.sample_id is not None
                                         else re.sub(r"[^A-Za-z0-9]+", "-", f"{rec.shape}_{rec.family}"))
        V, T, H, W, _ = gen.shape
        if "target" in arrays:
            columns = [arrays["target"], gen, rp.difference(arrays["target"], gen)]
        else:
            columns = [gen]
        frames = rp.grid_frames(columns, 1)
        entry = {"gif": folder / f"{stem}.gif", "plot": folder / f"{stem}_trajectory.png", "mp4": None,
                 "frame": frames[0], "scale": rp.scale_for(H, W)}
        rp.write_gif(entry["gif"], frames, fps)
        if ffmpeg:
            mp4 = folder / f"{stem}.mp4"
            problem = rp.write_mp4(mp4, frames, fps, ffmpeg)
            if problem is None:
                entry["mp4"] = mp4
            else:
                metrics["mp4"] = f"MP4 skipped: {problem}"
        if "target" in arrays:
            tracks = {"ground truth": arrays["gt"], "probe on renders (floor)": arrays["floor"],
                      "probe on generated": arrays["track"]}
            if "constant_velocity" in arrays:
                tracks["constant velocity"] = arrays["constant_velocity"]
            if "learned_extrapolation" in arrays:
                tracks["learned extrapolation"] = arrays["learned_extrapolation"]
            title = f"clip {row['index']} sample {rec.sample_id}: {rec.family}"
        else:
            tracks = {f"best fit ({row['fit_family']})": arrays["fitted"], "probe on generated": arrays["track"]}
            title = f"clip {row['index']}: requested {rec.shape} / {rec.family}"
        rp.plot_tracks(entry["plot"], tracks, title, given=arrays.get("given", 0))
        media[(name, row["index"])] = entry
    return media


# --------------------------------------------------------------------------------------------------------------------
# evaluation HTML

METHOD_NAMES = {"model": "model", "floor": "probe on renders (floor)", "copy_last": "copy last frame",
                "constant_velocity": "constant velocity (3D)", "learned_extrapolation": LEARNED_LABEL}
# summary key -> column header; ADE / FDE are in world units (3D) or px (2D: " px" added, _header)
HEADERS = {"psnr": "PSNR dB", "object_psnr": "object PSNR dB", "ssim": "SSIM", "lpips": "LPIPS", "ade": "ADE",
           "ade_pct": "ADE %", "fde": "FDE", "fde_pct": "FDE %", "reprojection_px": "reprojection px",
           "probe_2d_error_px": "probe 2D error px", "detection_rate": "detection rate",
           "family_accuracy": "family accuracy"}


def _header(key: str, kind: str) -> str:
    return HEADERS[key] + (" px" if kind == "2d" and key in ("ade", "fde") else "")


def _method_name(key: str, kind: str) -> str:
    return "constant velocity (2D)" if kind == "2d" and key == "constant_velocity" else METHOD_NAMES[key]


def _method_rows(summary: dict, task: str, model_label: str = "model", kind: str = "3d") -> tuple[list[str],
                                                                                                 list[list]]:
    """The method table: one row per method, the columns the model has (2D: no reprojection)."""
    if task == "generate":
        keys = [k for k in ("family_accuracy", "reprojection_px") if k in summary["model"]]
        return ["method"] + [_header(k, kind) for k in keys], [[model_label] + [summary["model"][k] for k in keys]]
    keys = [k for k in ("psnr", "object_psnr", "ssim", "lpips", "ade", "ade_pct", "fde", "fde_pct", "reprojection_px",
                        "probe_2d_error_px", "detection_rate", "family_accuracy") if k in summary["model"]]
    headers = ["method"] + [_header(k, kind) for k in keys]
    rows = []
    for key in METHOD_NAMES:
        m = summary.get(key)
        if m is None:
            continue
        rows.append([model_label if key == "model" else _method_name(key, kind)] + [m.get(k, "n/a") for k in keys])
    return headers, rows


def _family_rows(summary: dict) -> tuple[list[str], list[list]]:
    """Per trajectory family: ADE % of the model and each baseline, PSNR and object PSNR of model and copy-last,
    detection rates."""
    headers = ["family", "clips", "ADE % model", "ADE % copy-last", "ADE % const. velocity", "ADE % learned extrap.",
               "ADE % floor", "PSNR model", "PSNR copy-last", "object PSNR model", "object PSNR copy-last",
               "detection model", "detection floor"]
    rows = []
    for fam, f in list(summary.get("by_family", {}).items()) + [("all", summary)]:
        get = lambda method, key: (f.get(method) or {}).get(key, "n/a")  # noqa: E731
        rows.append([fam, f["clips"], get("model", "ade_pct"), get("copy_last", "ade_pct"),
                     get("constant_velocity", "ade_pct"), get("learned_extrapolation", "ade_pct"),
                     get("floor", "ade_pct"), get("model", "psnr"), get("copy_last", "psnr"),
                     get("model", "object_psnr"), get("copy_last", "object_psnr"), get("model", "detection_rate"),
                     get("floor", "detection_rate")])
    return headers, rows


PAIRED_NAMES = {"copy_last": "copy-last", "constant_velocity": "constant velocity",
                "learned_extrapolation": "learned extrapolation"}
PAIRED_METRICS = {"ade_pct": ("ADE", " %"), "psnr": ("PSNR", " dB"), "object_psnr": ("object PSNR", " dB")}


def format_interval(ci: dict, unit: str = "") -> str:
    """'-1.20 % [-2.00, -0.40], n 25' (a paired_bootstrap result), or 'n/a' without pairs."""
    if not ci or ci.get("mean") is None:
        return "n/a"
    return f"{ci['mean']:+.2f}{unit} [{ci['low']:+.2f}, {ci['high']:+.2f}], n {ci['n']}"


def _paired_rows(summary: dict, model_label: str) -> tuple[list[str], list[list]] | None:
    if "paired" not in summary:
        return None
    fams = list(summary.get("by_family", {}))
    headers = ["difference", "all clips"] + fams
    rows = []
    for name, metrics in summary["paired"].items():
        for key, ci in metrics.items():
            label, unit = PAIRED_METRICS[key]
            cells = [format_interval(ci, unit)]
            for fam in fams:
                cells.append(format_interval(summary["by_family"][fam].get("paired", {}).get(name, {}).get(key), unit))
            rows.append([f"{label}: {model_label} \u2212 {PAIRED_NAMES[name]}"] + cells)
    return headers, rows


def _evaluation_html(metrics: dict, media: dict, root: Path) -> str:
    d, ref = metrics["dataset"], metrics["probe"]["reference"]
    kind = metrics.get("tracks", {}).get("kind", "3d")
    lp = metrics["lpips"]
    views = (f'views {rp.esc(", ".join(map(str, d["views"])))}' if len(d["views"]) > 1
             else f'one view ({rp.esc(d["views"][0])})')
    parts = [f'<p>Dataset <code>{rp.esc(d["path"])}</code> ({rp.esc(d["image_size"][0])}x{rp.esc(d["image_size"][1])}, '
             f'{rp.esc(d["frames"])} frames, {views}); probe <code>{rp.esc(metrics["probe"]["run"])}</code>.</p>']
    if kind == "2d":
        w = metrics["image_width"]
        parts.append(f'<p>2D evaluation: {rp.esc(metrics["tracks"]["definition"])}. ADE / FDE in px and in % of the '
                     f'image width (<b>{w["value"]:g}</b> px). PSNR of identical frames is capped at '
                     f'{metrics["psnr_cap_db"]:g} dB.</p>')
    else:
        ext = metrics["scene_extent"]
        parts.append(f'<p>Scene extent: <b>{ext["value"]:.4f}</b> {rp.esc(ext["units"])} &mdash; '
                     f'{rp.esc(ext["definition"])}. ADE / FDE % are relative to it. PSNR of identical frames is capped '
                     f'at {metrics["psnr_cap_db"]:g} dB.</p>')
    if not lp["available"]:
        parts.append(f'<p class="note">LPIPS unavailable: {rp.esc(lp["reason"])}</p>')
    elif lp.get("note"):
        parts.append(f'<p class="note">LPIPS unavailable: {rp.esc(lp["note"])}</p>')
    else:
        parts.append(f'<p class="muted">LPIPS backbone: {rp.esc(lp["backbone"])}</p>')
    if metrics["mp4"] != "written":
        parts.append(f'<p class="note">{rp.esc(metrics["mp4"])}</p>')
    for note in metrics.get("notes", []):
        parts.append(f'<p class="note">{rp.esc(note)}</p>')
    obj, dt = metrics["object_region"], metrics["detection"]
    parts.append(f'<p class="muted">Object PSNR: {rp.esc(obj["definition"])} (margin {obj["margin_px"]} px). '
                 f'Detection rate: {rp.esc(dt["definition"])} (max_sigma_px {dt["max_sigma_px"]:g}, min_confidence '
                 f'{dt["min_confidence"]:.2f}). Differences: {rp.esc(metrics["paired"]["definition"])}, '
                 f'{metrics["paired"]["resamples"]} resamples.</p>')
    if not obj.get("available", True):
        parts.append(f'<p class="note">Object-region PSNR unavailable: {rp.esc(obj["reason"])}</p>')
    for k, st in metrics.get("learned_extrapolation", {}).get("by_given_frames", {}).items():
        if st["available"]:
            parts.append(f'<p class="muted">{rp.esc(LEARNED_LABEL)}, {k} given frames: fitted on {st["train_clips"]} '
                         f'clips in {st["fit_seconds"]:.1f} s; train ADE {st["train_ade"]:.4f} (constant velocity '
                         f'{st["train_ade_constant_velocity"]:.4f}).</p>')
        else:
            parts.append(f'<p class="note">{rp.esc(LEARNED_LABEL)} unavailable ({k} given frames): '
                         f'{rp.esc(st["reason"])}</p>')
    e2 = ref["2d_error"]
    gt_key = "family_accuracy_gt_positions" if kind == "3d" else "family_accuracy_gt_centres"
    ref_cols = [("clips", ref["clips"]), ("2D median px", e2["median_px"]), ("2D mean px", e2["mean_px"]),
                ("2D p90 px", e2["p90_px"])] + [(_header(k, kind), ref[k]) for k in ("ade", "ade_pct", "fde", "fde_pct",
                                                                                     "reprojection_px") if k in ref]
    ref_cols += [("family accuracy", ref["family_accuracy"]),
                 ("family accuracy (GT positions)" if kind == "3d" else "family accuracy (GT centres: the fit's "
                  "ceiling)", ref[gt_key])]
    parts.append(f"<h2>Probe on the rendered {rp.esc(ref['split'])} split (the floor)</h2>")
    parts.append(rp.table([c[0] for c in ref_cols], [[c[1] for c in ref_cols]]))
    parts.append(rp.table(["shape", "clips", "2D median px", "2D mean px", "2D p90 px", _header("ade", kind), "ADE %"],
                          [[name, e["clips"], e["median_px"], e["mean_px"], e["p90_px"], e["ade"], e["ade_pct"]]
                           for name, e in ref["2d_error_by_shape"].items()]))
    fam = ref["family_accuracy_by_family"]
    parts.append(rp.table(["family"] + list(fam), [["family accuracy (probe on renders)"] + list(fam.values())]))
    for run in metrics["runs"]:
        info, label = run["info"], run["label"]
        parts.append(f"<h2>{rp.esc(run['name'])}: {rp.esc(label['title'])}</h2>"
                     f"<p>{rp.esc(label['details'])}</p><p class=\"muted\">{rp.esc(run['generated'])}; "
                     + rp.esc(", ".join(f"{k}: {info[k]}" for k in ("task", "arch", "steps", "temperature", "seed")
                                        if info.get(k) is not None)) + "</p>")
        for task, block in run["tasks"].items():
            parts.append(f"<h3>task: {rp.esc(task)} ({block['summary']['clips']} clips)</h3>")
            headers, rows = _method_rows(block["summary"], task, label["method"], kind)
            parts.append(rp.table(headers, rows, "summary"))
            if task != "generate":
                parts.append(rp.table(*_family_rows(block["summary"])))
                paired = _paired_rows(block["summary"], label["method"])
                if paired:
                    parts.append("<p class=\"muted\">Paired differences (mean over clips, 95% bootstrap interval; "
                                 "ADE: negative is better for the model, PSNR: positive):</p>")
                    parts.append(rp.table(*paired))
            if task == "generate" and kind == "3d":
                ref_row = [["probe on renders (reference)", ref["family_accuracy"], ref["reprojection_px"]]]
                parts.append(rp.table(["reference", "family accuracy", "reprojection px"], ref_row))
                clip_headers = ["clip", "shape", "requested family", "fitted family", "reprojection px"]
                clip_rows = [[r["index"], r["shape"], r["family"], r["fit_family"], r["reprojection_px"]]
                             for r in block["clips"]]
            elif task == "generate":
                parts.append(rp.table(["reference", "family accuracy"],
                                      [["probe on renders", ref["family_accuracy"]],
                                       ["ground-truth centres (the fit's ceiling)", ref[gt_key]]]))
                clip_headers = ["clip", "shape", "requested family", "fitted family"]
                clip_rows = [[r["index"], r["shape"], r["family"], r["fit_family"]] for r in block["clips"]]
            else:
                a = " px" if kind == "2d" else ""
                clip_headers = ["clip", "sample", "shape", "family", "PSNR dB", "object PSNR dB", "SSIM", "LPIPS",
                                f"ADE{a}", f"FDE{a}"] + (["reprojection px"] if kind == "3d" else []) + [
                                "detection rate", "fitted family", f"floor ADE{a}", "copy-last object PSNR",
                                f"copy-last ADE{a}", f"const. velocity ADE{a}", f"learned extrap. ADE{a}"]
                clip_rows = [[r["index"], r["sample_id"], r["shape"], r["family"], r["psnr"], r["object_psnr"],
                              r["ssim"], r["lpips"], r["ade"], r["fde"]]
                             + ([r["reprojection_px"]] if kind == "3d" else [])
                             + [r["detection_rate"], r["fit_family"], r["floor"]["ade"],
                                r.get("copy_last", {}).get("object_psnr"), r.get("copy_last", {}).get("ade"),
                                r.get("constant_velocity", {}).get("ade"),
                                r.get("learned_extrapolation", {}).get("ade")]
                             for r in block["clips"]]
            parts.append("<details><summary>per clip</summary>" + rp.table(clip_headers, clip_rows) + "</details>")
            shown = [r for r in block["clips"] if (run["name"], r["index"]) in media]
            if shown:
                rows_are = "rows: views; " if len(d["views"]) > 1 else ""
                legend = (rows_are + "columns: rendered | generated | |difference| x" + str(rp.DIFF_GAIN)
                          if task != "generate" else rows_are + "the generated clip")
                plot = "3D plot" if kind == "3d" else "2D plot (image coordinates, px)"
                if task == "generate" and kind == "2d":
                    lines = "black the best family fit, blue dashed the probe on the generated clip"
                else:
                    lines = ("black ground truth, blue dashed the probe on the renders, red the probe on the generated "
                             "clip, green dotted constant velocity, purple dash-dot the learned extrapolation; filled "
                             "markers = given frames")
                parts.append(f'<p class="muted">{rp.esc(legend)}. {plot}: {lines}.</p>')
            for r in shown:
                m = media[(run["name"], r["index"])]
                cap = (f"clip {r['index']}" + (f", sample {r['sample_id']}" if r.get("sample_id") is not None else "")
                       + f": {r['shape']} / {r['family']}; fitted {r['fit_family']}")
                mp4 = f' <a href="{rp.rel(m["mp4"], root)}">MP4</a>' if m["mp4"] else ""
                parts.append(f'<div class="clip">{rp.img_tag(rp.rel(m["gif"], root), m["frame"], m["scale"], cap)}'
                             f'<p class="caption">{rp.esc(cap)}{mp4}</p></div>'
                             f'<div class="clip"><img src="{rp.rel(m["plot"], root)}" alt="trajectory {rp.esc(cap)}">'
                             f'</div><br>')
    parts.append('<p class="muted">metrics: <a href="metrics.json">metrics.json</a></p>')
    return rp.page("magvit3d evaluation" + (" (2D)" if kind == "2d" else ""), "\n".join(parts))


# --------------------------------------------------------------------------------------------------------------------
# compare

def _clip_source(path: Path, split: str) -> tuple[str, dict, tuple]:
    """A generated dir or a dataset -> (kind, {sample id: clip (V, T, H, W, 3)}, (V, T, H, W))."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} does not exist (expected a generated-clips directory or a dataset)")
    if is_generated_dir(path):
        gs = load_generated(path)
        clips = {int(r.sample_id): gs.rgb[i] for i, r in enumerate(gs.records) if r.sample_id is not None}
        if not clips:
            raise UserError(f"{path} holds no clips with a sample id (class-conditional clips cannot be matched)")
        return "generated", clips, tuple(gs.rgb.shape[1:5])
    if (path / "dataset.json").is_file():
        splits = load_dataset_json(path).get("splits") or {}
        if split not in splits:
            raise UserError(f"--split {split!r} is not a split of {path}; allowed: {', '.join(map(str, splits))}")
        p = load_packed(path, split)
        if len(p) == 0:
            raise UserError(f"split {split!r} of {path} is empty")
        return f"dataset ({split} split)", {int(s): p.rgb[k] for k, s in enumerate(p.sample_ids)}, tuple(p.rgb.shape[1:5])
    if not any(path.iterdir()):
        raise UserError(f"{path} is empty (expected a generated-clips directory or a dataset)")
    raise UserError(f"{path} is neither a generated-clips directory (generated.json) nor a dataset (dataset.json)")


def compare(a: Path, b: Path, out: Path, *, split: str = "test", lpips_weights=None, max_visual_clips: int = 12,
            fps: float = 8.0, log=print) -> dict:
    """A | B | difference for the clips of two sets with the same sample ids; PSNR / SSIM / LPIPS per clip."""
    rp.check_out_dir(out, [a, b, lpips_weights])
    kind_a, clips_a, shape_a = _clip_source(a, split)
    kind_b, clips_b, shape_b = _clip_source(b, split)
    if shape_a != shape_b:
        raise UserError(f"{a} has clips of (V, T, H, W) = {shape_a}, {b} has {shape_b}")
    common = sorted(set(clips_a) & set(clips_b))
    if not common:
        raise UserError(f"{a} and {b} share no sample id ({len(clips_a)} and {len(clips_b)} clips)")
    V, T, H, W = shape_a
    lpips = open_lpips(lpips_weights, log=log)
    lpips_note = lpips_size_note(lpips, H, W)
    region = full_region(V, T)
    rows = [{"sample_id": s, **clip_metrics(np.asarray(clips_a[s]), np.asarray(clips_b[s]), region, lpips)}
            for s in common]
    names = _run_name(a, set()), _run_name(b, set())
    metrics = {"schema": "magvit3d-comparison", "schema_version": 1,
               "a": {"path": str(a), "kind": kind_a, "clips": len(clips_a)},
               "b": {"path": str(b), "kind": kind_b, "clips": len(clips_b)},
               "matched": len(common), "only_in_a": len(set(clips_a) - set(common)),
               "only_in_b": len(set(clips_b) - set(common)),
               "lpips": {**lpips_status(lpips), **({"note": lpips_note} if lpips_note else {})}, "psnr_cap_db": 100.0,
               "summary": {k: mean_of(rows, k) for k in KEYS_PIX}, "clips": rows}
    with rp.atomic_dir(out) as tmp:
        folder = tmp / "clips"
        folder.mkdir()
        parts = [f"<p>A: <code>{rp.esc(a)}</code> ({rp.esc(kind_a)}, {len(clips_a)} clips); B: <code>{rp.esc(b)}"
                 f"</code> ({rp.esc(kind_b)}, {len(clips_b)} clips); {len(common)} matched by sample id.</p>"]
        lp = metrics["lpips"]
        if not lp["available"] or lp.get("note"):
            parts.append(f'<p class="note">LPIPS unavailable: {rp.esc(lp.get("note") or lp["reason"])}</p>')
        parts.append(rp.table(["", "PSNR dB", "SSIM", "LPIPS"],
                              [["mean over matched clips"] + [metrics["summary"][k] for k in KEYS_PIX]]))
        parts.append(rp.table(["sample", "PSNR dB", "SSIM", "LPIPS"],
                              [[r["sample_id"]] + [r[k] for k in KEYS_PIX] for r in rows]))
        parts.append(f'<p class="muted">rows: views; columns: {rp.esc(names[0])} | {rp.esc(names[1])} | '
                     f'|difference| x{rp.DIFF_GAIN}</p>')
        for s in common[:max_visual_clips]:
            ca, cb = np.asarray(clips_a[s]), np.asarray(clips_b[s])
            gif = folder / f"sample{s:06d}.gif"
            frames = rp.grid_frames([ca, cb, rp.difference(ca, cb)], 1)
            rp.write_gif(gif, frames, fps)
            parts.append(f'<div class="clip">{rp.img_tag(rp.rel(gif, tmp), frames[0], rp.scale_for(H, W), f"sample {s}")}'
                         f'<p class="caption">sample {s}</p></div>')
        parts.append('<p class="muted">metrics: <a href="metrics.json">metrics.json</a></p>')
        (tmp / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
        (tmp / "index.html").write_text(rp.page(f"magvit3d compare: {names[0]} vs {names[1]}", "\n".join(parts)))
    return metrics
