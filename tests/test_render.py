"""Rendering with Blender for real: projection vs masks, determinism, resume after SIGKILL, worker crashes,
failed samples, and the CLI's bad-input handling. Tiny resolutions and few frames keep this to seconds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen import dataset as ds
from datagen.camera import project
from datagen.config import from_dict
from datagen.render import render_dataset
from datagen.spec import DatasetConfig, world_corners
from datagen.verify import verify_dataset

pytestmark = pytest.mark.blender
REPO = Path(__file__).resolve().parent.parent


def tiny_config(**overrides) -> DatasetConfig:
    """2 samples, 32 px, 3 frames, 1 spp without denoiser unless overridden: masks don't need clean pixels."""
    data = {"dataset": {"num_samples": 2, "seed": 1},
            "render": {"resolution": 32, "frames": 3, "samples": 1, "denoiser": "none"}}
    for key, value in overrides.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return from_dict(DatasetConfig, data)


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "datagen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# --- 1. projection ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def projection_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj") / "ds"
    cfg = tiny_config(dataset__num_samples=4, dataset__seed=3, render__resolution=128, render__frames=4)
    render_dataset(cfg, root, progress=False, log=lambda m: None)
    return root


def test_exported_P_projects_box_onto_mask_at_128(projection_dataset):
    """For every view and frame the 3D box corners projected with the exported P bound the mask: within
    1.5 px on every side for a cube (its silhouette's box is the corners' box), containing it otherwise."""
    shapes_seen, worst_cube = set(), 0.0
    for sid in range(4):
        meta = ds.load_meta(projection_dataset, sid)
        shape = meta["shape"]["name"]
        shapes_seen.add(shape)
        corners = world_corners(meta["shape"]["dimensions"], meta["shape"]["bbox_offset"], np.array(meta["trajectory"]["position"]),
                                np.array(meta["trajectory"]["rotation"]))
        for v, view in enumerate(meta["views"]):
            for f in range(meta["frames"]):
                mask = np.asarray(Image.open(ds.frame_path(ds.sample_dir(projection_dataset, sid), view["name"], "mask", f))) > 127
                assert mask.any(), f"sample {sid} {view['name']} frame {f}: empty mask"
                rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
                mbox = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=float)
                uv = project(np.array(view["P"][f]), corners[f])
                pbox = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
                if shape == "cube":
                    err = np.abs(mbox - pbox).max()
                    worst_cube = max(worst_cube, err)
                    assert err <= 1.5, f"sample {sid} {view['name']} frame {f}: mask {mbox} vs projected {pbox}"
                else:
                    assert mbox[0] >= pbox[0] - 1.5 and mbox[1] >= pbox[1] - 1.5
                    assert mbox[2] <= pbox[2] + 1.5 and mbox[3] <= pbox[3] + 1.5
    assert "cube" in shapes_seen and shapes_seen - {"cube"}, f"seed should give a cube and another shape: {shapes_seen}"
    print(f"worst cube box error: {worst_cube:.2f} px")


def test_exported_centre_is_inside_mask(projection_dataset):
    meta = ds.load_meta(projection_dataset, 0)
    assert np.array(meta["centers_2d"]).shape == (3, 4, 2)
    for v, view in enumerate(meta["views"]):
        for f in range(4):
            u, vv = meta["centers_2d"][v][f]
            x0, y0, x1, y1 = meta["mask_bbox"][v][f]
            assert x0 <= u <= x1 and y0 <= vv <= y1
    assert verify_dataset(projection_dataset, progress=False)["ok"]


def test_triangulating_the_exported_centres_recovers_the_rendered_positions(projection_dataset):
    """Issue 5's check on a real render: the exported 2D centres of every view, triangulated (DLT) with the exported
    per-frame P, give back the exported 3D positions, so the probe's ground truth and the cameras agree."""
    from evaluation.triangulate import triangulate_track

    for sample_id in range(4):
        meta = ds.load_meta(projection_dataset, sample_id)
        P = np.array([v["P"] for v in meta["views"]])                               # (V, T, 3, 4)
        X = triangulate_track(P, np.array(meta["centers_2d"]))                      # centres (V, T, 2)
        assert np.abs(X - np.array(meta["trajectory"]["position"])).max() < 1e-3


# --- 2. determinism --------------------------------------------------------------------------------

def test_same_seed_gives_identical_meta_and_images(tmp_path):
    cfg = tiny_config(render__samples=4, render__denoiser="oidn")
    a, b = tmp_path / "a", tmp_path / "b"
    render_dataset(cfg, a, progress=False, log=lambda m: None, workers=1)
    render_dataset(cfg, b, progress=False, log=lambda m: None, workers=2)
    for sid in range(2):
        assert (ds.sample_dir(a, sid) / "meta.json").read_bytes() == (ds.sample_dir(b, sid) / "meta.json").read_bytes()
        diffs = []
        for p in sorted(ds.sample_dir(a, sid).rglob("*.png")):
            q = ds.sample_dir(b, sid) / p.relative_to(ds.sample_dir(a, sid))
            diffs.append(np.abs(np.asarray(Image.open(p), float) - np.asarray(Image.open(q), float)).mean())
        assert len(diffs) == 3 * 3 * 2
        assert max(diffs) <= 1.0, f"mean abs difference {max(diffs):.3f}/255"
    other = tiny_config(dataset__seed=2)
    render_dataset(other, tmp_path / "c", progress=False, log=lambda m: None)
    assert (ds.sample_dir(a, 0) / "meta.json").read_bytes() != (ds.sample_dir(tmp_path / "c", 0) / "meta.json").read_bytes()


# --- 3. resume after SIGKILL ----------------------------------------------------------------------

def test_sigkill_mid_render_then_rerun_completes_without_rerendering(tmp_path):
    root = tmp_path / "ds"
    args = ["render", "--out", root, "-c", "tiny", "-n", "16", "--set", "render.frames=3", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(ds.complete_sample_ids(root)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its Blender workers, no chance to clean up
    proc.wait()
    done_before = ds.complete_sample_ids(root)
    assert 3 <= len(done_before) < 16, f"kill landed at {len(done_before)} complete samples"
    stamps = {i: (ds.sample_dir(root, i) / "meta.json").stat().st_mtime_ns for i in done_before}

    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    summary = json.loads((root / "render_summary.json").read_text())
    assert summary["already_complete"] == len(done_before)
    assert summary["rendered"] == 16 - len(done_before)
    assert ds.complete_sample_ids(root) == set(range(16))
    assert not list((root / "samples").glob(".tmp-*"))
    assert {i: (ds.sample_dir(root, i) / "meta.json").stat().st_mtime_ns for i in done_before} == stamps
    assert verify_dataset(root, progress=False)["ok"]


# --- worker crash and failed samples ----------------------------------------------------------------

def _worker_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if b"blender_scenes.worker" in cmd and int(stat[1]) == os.getpid():
                pids.append(int(p.name))
    return pids


def test_crashed_worker_is_replaced_and_its_sample_retried(tmp_path):
    root = tmp_path / "ds"
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            if ds.complete_sample_ids(root) and _worker_pids():
                pid = _worker_pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    th = threading.Thread(target=killer)
    th.start()
    summary = render_dataset(tiny_config(dataset__num_samples=6), root, progress=False, log=lambda m: None)
    th.join()
    assert killed
    assert summary["workers_replaced"] >= 1
    assert summary["failed"] == []
    assert ds.complete_sample_ids(root) == set(range(6))
    assert verify_dataset(root, progress=False)["ok"]


def test_failing_sample_is_retried_once_and_reported_by_id(tmp_path, monkeypatch):
    import datagen.render as render_mod

    real_build = render_mod.build_spec

    def broken_build(cfg, sid):
        spec = real_build(cfg, sid)
        if sid == 1:
            spec["object"]["material"]["texture"] = "plasma"  # the renderer rejects it
        return spec

    monkeypatch.setattr(render_mod, "build_spec", broken_build)
    summary = render_dataset(tiny_config(dataset__num_samples=3), tmp_path / "ds", progress=False, log=lambda m: None)
    assert summary["retried"] == [1]
    assert [f["sample_id"] for f in summary["failed"]] == [1]
    assert "plasma" in summary["failed"][0]["error"]
    assert ds.complete_sample_ids(tmp_path / "ds") == {0, 2}
    assert not list((tmp_path / "ds" / "samples").glob(".tmp-*"))


# --- 4. bad input: one line, exit 2, nothing written ------------------------------------------------

BAD_INPUTS = {
    "unknown shape": (["--set", 'objects.shapes=["sphere"]'], "sphere"),
    "unknown family": (["--set", 'trajectories.families=["zigzag"]'], "zigzag"),
    "resolution not divisible by 8": (["--resolution", "60"], "60"),
    "one frame": (["--frames", "1"], "frames"),
    "zero samples": (["-n", "0"], "num_samples"),
    "negative samples": (["-n", "-4"], "-4"),
    "unknown config key": (["--set", "render.sampels=3"], "sampels"),
    "unknown preset": (["-c", "huge"], "huge"),
    "cuda without a GPU": (["--device", "cuda"], "error: --device cuda: no GPU found for Cycles"),
    "gpu (the old spelling) without a GPU": (["--device", "gpu"], "error: --device cuda: no GPU found for Cycles"),
    "camera below the ground": (["--set", 'cameras.rig=[{name="a", position=[2.0, 0.0, 1.0]}, '
                                          '{name="b", position=[0.0, 2.0, -1.0]}]'], "camera 'b' position z = -1"),
    "bad shard": (["--shard", "3/2"], "3/2"),
    "eevee without a GPU": (["--engine", "eevee"], "eevee"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    extra, needle = BAD_INPUTS[case]
    root = tmp_path / "out"
    out = run_cli("render", "--out", root, "-c", "tiny", "--no-progress", *extra)
    assert out.returncode == 2, (case, out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(lines) == 1 and lines[0].startswith("magvit3d: error:"), out.stderr
    assert needle in lines[0]
    assert not root.exists(), f"{case}: wrote {list(root.rglob('*'))}"


def test_render_reports_its_rate_once_and_warns_about_empty_splits(tmp_path):
    """The bar showed tqdm's clip/s next to a clips_per_s postfix of its own; one clip leaves val and test empty."""
    out = run_cli("render", "--out", tmp_path / "ds", "-c", "tiny", "-n", "1", "--set", "render.frames=2")
    assert out.returncode == 0, out.stderr
    assert "clips_per_s" not in out.stderr and out.stdout.count("clips/s") == 1, (out.stdout, out.stderr)
    assert "warning: the val and test splits are empty: 1 clip(s) for 3 splits" in out.stderr
    assert not run_cli("render", "--out", tmp_path / "ds3", "-c", "tiny", "-n", "3", "--set", "render.frames=2",
                       "--no-progress").stderr.count("warning")


def test_output_dir_with_a_different_config_is_refused(tmp_path):
    root = tmp_path / "ds"
    assert run_cli("render", "--out", root, "-c", "tiny", "-n", "1", "--set", "render.frames=2",
                   "--no-progress").returncode == 0
    before = sorted(str(p) for p in root.rglob("*"))
    out = run_cli("render", "--out", root, "-c", "tiny", "-n", "1", "--set", "render.frames=3", "--no-progress")
    assert out.returncode == 2
    assert "different config" in out.stderr and "render.frames: 2 vs 3" in out.stderr
    assert sorted(str(p) for p in root.rglob("*")) == before
    # the same config again is a no-op resume
    again = run_cli("render", "--out", root, "-c", "tiny", "-n", "1", "--set", "render.frames=2", "--no-progress")
    assert again.returncode == 0 and "already complete" in again.stderr


# --- shards ----------------------------------------------------------------------------------------

def test_shards_render_disjoint_ids_into_one_dataset_that_packs(tmp_path):
    from datagen.pack import load_packed, pack_dataset

    root = tmp_path / "ds"
    for shard in ("1/2", "0/2"):
        out = run_cli("render", "--out", root, "-c", "tiny", "-n", "5", "--set", "render.frames=2", "--shard", shard,
                      "--no-progress")
        assert out.returncode == 0, out.stderr
        if shard == "1/2":
            assert ds.complete_sample_ids(root) == {1, 3}
    assert ds.complete_sample_ids(root) == set(range(5))
    assert (root / "render_summary.shard-0-of-2.json").exists() and (root / "render_summary.shard-1-of-2.json").exists()
    assert verify_dataset(root, progress=False)["ok"]
    pack_dataset(root, progress=False)
    info = ds.load_dataset_json(root)
    total = sum(len(load_packed(root, split)) for split in info["splits"])
    assert total == 5


# --- scene difficulty: a plain ground is one flat colour --------------------------------------------

def _ground_spread(root: Path) -> float:
    """Median over views of the spread of the lower half of frame 0, where the camera sees the ground inside the
    fade radius, the object's mask grown by 2 px left out: the median absolute deviation from the median (0..255),
    largest over RGB. Robust to the object's shadow, a dark patch of a tenth of those pixels or so; a two-colour
    pattern has about half the colours' difference."""
    spreads = []
    for view in ds.load_meta(root, 0)["views"]:
        folder = ds.sample_dir(root, 0)
        rgb = np.asarray(Image.open(ds.frame_path(folder, view["name"], "rgb", 0)), dtype=float)
        mask = np.pad(np.asarray(Image.open(ds.frame_path(folder, view["name"], "mask", 0))) > 127, 2)
        h, w = rgb.shape[:2]
        obj = np.zeros((h, w), dtype=bool)
        for dy in range(5):
            for dx in range(5):
                obj |= mask[dy:dy + h, dx:dx + w]
        half = rgb.shape[0] // 2
        ground = rgb[half:][~obj[half:]]
        spreads.append(np.median(np.abs(ground - np.median(ground, axis=0)), axis=0).max())
    return float(np.median(spreads))


def test_plain_ground_renders_uniform_where_a_checker_ground_does_not(tmp_path):
    """The same scene (a one-texture list draws nothing, so only the ground differs) on a plain and on a checker
    ground: the plain ground's pixels vary by shading and the object's shadow only."""
    spread = {}
    for texture in ("plain", "checker"):
        cfg = tiny_config(dataset__num_samples=1, render__frames=2, render__samples=4, render__denoiser="oidn",
                          ground__textures=[texture], ground__texture_scale_range=[1.5, 1.5])
        render_dataset(cfg, tmp_path / texture, progress=False, log=lambda m: None, workers=1)
        assert json.loads((ds.sample_dir(tmp_path / texture, 0) / "spec.json").read_text())["ground"]["material"][
            "texture"] == texture
        spread[texture] = _ground_spread(tmp_path / texture)
    print(f"ground pixel spread: {spread}")
    assert spread["plain"] <= 2.0, spread
    assert spread["checker"] >= 8.0, spread


# --- the 2D setting: one orthographic camera straight down on flat shapes ---------------------------

@pytest.fixture(scope="module")
def projection_dataset_2d(tmp_path_factory):
    """The tiny-2d preset at 64 px (masks only need edges: 1 spp, no denoiser)."""
    from datagen.config import load_config

    root = tmp_path_factory.mktemp("proj2d") / "ds"
    cfg = load_config(DatasetConfig, "dataset", "tiny-2d",
                      ["render.resolution=64", "render.samples=1", 'render.denoiser="none"'])
    render_dataset(cfg, root, progress=False, log=lambda m: None)
    return root


def test_orthographic_P_projects_each_flat_shape_onto_its_mask(projection_dataset_2d):
    """For every frame the shape's own outline (square, disc or triangle, rotated about Z), projected with the
    exported orthographic P, has the mask's box within 1.5 px on every side, and the mask's pixel centroid is the
    exported 2D centre (the centroid of a flat shape) within 0.5 px: the camera export, the flat meshes and
    Blender's ORTHO camera agree."""
    from fakes import flat_outline
    from datagen.camera import quat_to_matrix

    shapes, worst_box, worst_centre = set(), 0.0, 0.0
    for sid in range(6):
        meta = ds.load_meta(projection_dataset_2d, sid)
        shape = meta["shape"]["name"]
        shapes.add(shape)
        (view,) = meta["views"]
        assert view["projection"] == "orthographic"
        outline = flat_outline(shape, meta["shape"]["dimensions"])
        rot = quat_to_matrix(np.array(meta["trajectory"]["rotation"]))
        pts = np.einsum("tij,kj->tki", rot, outline) + np.array(meta["trajectory"]["position"])[:, None, :]
        for f in range(meta["frames"]):
            mask = np.asarray(Image.open(ds.frame_path(ds.sample_dir(projection_dataset_2d, sid), "view0", "mask",
                                                       f))) > 127
            assert mask.any(), f"sample {sid} frame {f}: empty mask"
            rows, cols = np.nonzero(mask)
            mbox = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float)
            uv = project(np.array(view["P"][f]), pts[f])
            pbox = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
            worst_box = max(worst_box, np.abs(mbox - pbox).max())
            # the mask lies inside the outline's box (1 px: a pixel whose centre is inside counts whole) and fills
            # it to 1.5 px (a triangle's 60 degree tip can end inside a pixel row it does not cover at its centre)
            assert (mbox[:2] >= pbox[:2] - 1.0).all() and (mbox[2:] <= pbox[2:] + 1.0).all(), (sid, shape, f)
            assert np.abs(mbox - pbox).max() <= 1.5, f"sample {sid} ({shape}) frame {f}: mask {mbox} vs {pbox}"
            centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
            worst_centre = max(worst_centre, np.abs(centroid - meta["centers_2d"][0][f]).max())
            assert np.abs(centroid - meta["centers_2d"][0][f]).max() <= 0.5, (sid, shape, f)
    assert len(shapes) >= 2, f"the seed should give more than one shape: {shapes}"
    print(f"worst box error {worst_box:.2f} px, worst centroid error {worst_centre:.2f} px")


def test_2d_render_verifies_and_packs_as_one_view(projection_dataset_2d):
    from datagen.pack import load_packed, pack_dataset

    rep = verify_dataset(projection_dataset_2d, progress=False)
    assert rep["ok"], rep["errors"]
    assert rep["frames_checked"] == 6 * 1 * 4
    pack_dataset(projection_dataset_2d, progress=False)
    train = load_packed(projection_dataset_2d, "train")
    assert train.rgb.shape[1:] == (1, 4, 64, 64, 3) and train.array("centers_2d").shape[1:] == (1, 4, 2)
    # the object is lit and textured, not a hole: its pixels stand out from the plain ground's colour (on 64 clips
    # of the 2d preset the mean per-pixel distance, largest channel, was 21 levels at least, 47 the median)
    for k, sid in enumerate(train.sample_ids):
        mask = np.asarray(Image.open(ds.frame_path(ds.sample_dir(projection_dataset_2d, sid), "view0", "mask", 0))) > 127
        rgb = train.rgb[k, 0, 0].astype(float)
        ground = rgb[~mask].mean(0)
        assert np.abs(rgb[mask] - ground).max(1).mean() > 15, sid
        assert np.abs(rgb[~mask] - ground).max(1).mean() < 5, sid
