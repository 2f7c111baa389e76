"""verify / pack / load_packed / preview on a fake dataset (no Blender)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from datagen.config import UserError
from datagen.dataset import (frame_path, load_dataset_json, load_meta, mask_box, mask_stats, sample_dir, tmp_sample_dir,
                             write_json_atomic)
from datagen.pack import index_path, load_packed, pack_dataset, rgb_path
from datagen.preview import PAD, write_preview
from datagen.verify import verify_dataset
from fakes import make_fake_dataset

N, RES, T, V = 4, 32, 3, 3


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("fake") / "ds", num_samples=N, resolution=RES, frames=T)


@pytest.fixture
def ds(pristine, tmp_path):
    """A private copy per test, so tests may break it."""
    return shutil.copytree(pristine, tmp_path / "ds")


def errors_of(report, sample_id):
    return [e["error"] for e in report["errors"] if e["sample_id"] == sample_id]


# --- verify --------------------------------------------------------------------------------------

def test_verify_passes_on_fake(ds):
    rep = verify_dataset(ds, progress=False)
    assert rep["ok"], rep["errors"]
    assert rep["errors"] == [] and rep["missing_ids"] == []
    assert rep["samples_checked"] == N and rep["frames_checked"] == N * V * T
    # the fake masks are the box projection shrunk by 5 %, so they sit inside it to sub-pixel precision
    assert 0.0 <= rep["max_box_excess_px"] < 0.5
    assert rep["dataset"] == str(ds)


def test_verify_with_depth(tmp_path):
    root = make_fake_dataset(tmp_path / "d", num_samples=2, render={"depth": True})
    assert verify_dataset(root, progress=False)["ok"]
    frame_path(sample_dir(root, 1), "view2", "depth", 2).unlink()
    rep = verify_dataset(root, progress=False)
    assert not rep["ok"] and any("view2/depth has 2 PNGs, expected 3" in e for e in errors_of(rep, 1))


def test_mask_box_uses_pixel_edges_and_threshold():
    m = np.zeros((6, 8), np.uint8)
    m[2:4, 3:7] = 255          # rows 2-3, cols 3-6
    m[5, 0] = 100              # below the threshold: not object
    assert mask_box(m) == [3, 2, 7, 4]
    assert mask_box(np.zeros((4, 4), np.uint8)) is None


def test_mask_stats_reads_masks_from_disk(ds):
    d = sample_dir(ds, 2)
    stats = mask_stats(d, ["view0", "view1", "view2"], T)
    m = np.asarray(Image.open(frame_path(d, "view1", "mask", 1)))
    assert stats["mask_area"][1][1] == int((m > 127).sum()) > 0
    assert stats["mask_bbox"][1][1] == mask_box(m)
    assert all(all(row) for row in stats["visibility"])


@pytest.mark.parametrize("cut", ["half", "tail", "middle"])
def test_verify_catches_truncated_png(ds, cut):
    p = frame_path(sample_dir(ds, 1), "view1", "rgb", 2)
    data = p.read_bytes()
    # half: cut in the pixel data; tail: only the end (Pillow alone would decode it); middle: a hole, end intact
    p.write_bytes({"half": data[: len(data) // 2], "tail": data[:-8],
                   "middle": data[: len(data) // 2] + data[-12:]}[cut])
    rep = verify_dataset(ds, progress=False)
    assert not rep["ok"]
    errs = errors_of(rep, 1)
    assert len(errs) == 1 and errs[0].startswith(f"rgb image {p} does not decode")
    assert all(e["sample_id"] == 1 for e in rep["errors"])


def test_verify_catches_missing_sample(ds):
    shutil.rmtree(sample_dir(ds, 3))
    rep = verify_dataset(ds, progress=False)
    assert not rep["ok"] and rep["missing_ids"] == [3]
    assert rep["samples_checked"] == N - 1
    assert errors_of(rep, 3) == [f"sample directory {sample_dir(ds, 3)} missing"]


def test_verify_catches_leftover_tmp_dir(ds):
    tmp_sample_dir(ds, 2).mkdir()
    rep = verify_dataset(ds, progress=False)
    assert not rep["ok"]
    errs = errors_of(rep, 2)
    assert len(errs) == 1 and "leftover partial sample directory" in errs[0]


def test_verify_catches_malformed_meta(ds):
    meta = load_meta(ds, 0)
    meta["views"][1]["R"] = meta["views"][1]["R"][:-1]  # one frame short
    write_json_atomic(sample_dir(ds, 0) / "meta.json", meta)
    (sample_dir(ds, 2) / "meta.json").write_text("{not json")
    rep = verify_dataset(ds, progress=False)
    assert not rep["ok"]
    assert errors_of(rep, 0) == [f"meta.json R has shape 2x3x3, expected {T}x3x3"]
    assert len(errors_of(rep, 2)) == 1 and "not valid JSON" in errors_of(rep, 2)[0]
    assert errors_of(rep, 1) == [] and errors_of(rep, 3) == []


def test_verify_catches_shifted_mask(ds):
    p = frame_path(sample_dir(ds, 2), "view0", "mask", 1)
    m = np.asarray(Image.open(p))
    Image.fromarray(np.roll(m, 5, axis=1)).save(p)  # 5 px to the right
    rep = verify_dataset(ds, progress=False)
    assert not rep["ok"]
    errs = errors_of(rep, 2)
    outside = [e for e in errs if e.startswith("mask outside the projected object box")]
    assert len(outside) == 1 and "view0 frame 1" in outside[0]
    assert 4.5 <= rep["max_box_excess_px"] <= 5.5
    # meta.json still holds the old box, and verify says so too
    assert any("disagree with the mask on disk" in e for e in errs)
    assert {e["sample_id"] for e in rep["errors"]} == {2}


def test_verify_catches_empty_mask_and_meta_mismatch(ds):
    p = frame_path(sample_dir(ds, 0), "view2", "mask", 0)
    Image.fromarray(np.zeros((RES, RES), np.uint8)).save(p)
    rep = verify_dataset(ds, progress=False)
    errs = errors_of(rep, 0)
    assert any(e.startswith("mask empty although the object centre projects inside the image") and "view2 frame 0" in e
               for e in errs)
    assert any("meta visibility=True" in e and "vs mask None" in e for e in errs)


def test_verify_catches_wrong_mode_and_size(ds):
    p = frame_path(sample_dir(ds, 1), "view0", "mask", 0)
    Image.open(p).convert("RGB").save(p)
    q = frame_path(sample_dir(ds, 3), "view1", "rgb", 1)
    Image.open(q).resize((16, 16)).save(q)
    rep = verify_dataset(ds, progress=False)
    assert any("has mode RGB, expected L" in e for e in errors_of(rep, 1))
    assert any("is 16x16, expected 32x32" in e for e in errors_of(rep, 3))


def test_verify_without_images_skips_pixels(ds):
    p = frame_path(sample_dir(ds, 1), "view1", "rgb", 2)
    p.write_bytes(p.read_bytes()[:20])
    rep = verify_dataset(ds, check_images=False, progress=False)
    assert rep["ok"] and rep["frames_checked"] == 0


def test_verify_missing_dataset(tmp_path):
    with pytest.raises(UserError, match="dataset directory not found"):
        verify_dataset(tmp_path / "nope", progress=False)


# --- pack ----------------------------------------------------------------------------------------

def test_pack_shapes_pixels_and_index(ds):
    info = load_dataset_json(ds)
    out = pack_dataset(ds, progress=False)
    assert set(out["splits"]) == set(info["splits"]) == {"train", "val", "test"}
    for split, ids in info["splits"].items():
        p = load_packed(ds, split)
        n = len(ids)
        assert len(p) == n and p.rgb.dtype == np.uint8 and p.rgb.shape == (n, V, T, RES, RES, 3)
        idx = p.index
        assert idx["sample_ids"] == sorted(ids) and idx["config_hash"] == info["config_hash"]
        assert idx["views"] == ["view0", "view1", "view2"] and idx["frames"] == T and idx["image_size"] == [RES, RES]
        for k, sid in enumerate(idx["sample_ids"]):
            meta = load_meta(ds, sid)
            d = sample_dir(ds, sid)
            for v, view in enumerate(idx["views"]):
                for f in range(T):
                    png = np.asarray(Image.open(frame_path(d, view, "rgb", f)))
                    np.testing.assert_array_equal(p.rgb[k, v, f], png)
            assert idx["labels"]["shape"][k] == meta["shape"]["name"]
            assert idx["labels"]["family"][k] == meta["trajectory"]["family"]
            assert info["classes"]["shape"][idx["label_ids"]["shape"][k]] == meta["shape"]["name"]
            assert info["classes"]["family"][idx["label_ids"]["family"][k]] == meta["trajectory"]["family"]
            np.testing.assert_allclose(p.array("positions")[k], meta["trajectory"]["position"])
            np.testing.assert_allclose(p.array("rotations")[k], meta["trajectory"]["rotation"])
            np.testing.assert_allclose(p.array("centers_2d")[k], meta["centers_2d"])
            assert idx["visibility"][k] == meta["visibility"]
            np.testing.assert_allclose(p.projections()[k], [vw["P"] for vw in meta["views"]])
            assert np.shape(idx["cameras"][k]["K"]) == (V, 3, 3) and np.shape(idx["cameras"][k]["R"]) == (V, T, 3, 3)
            assert np.shape(idx["cameras"][k]["t"]) == (V, T, 3)
        assert p.array("positions").shape == (n, T, 3) and p.array("centers_2d").shape == (n, V, T, 2)
    assert not list((ds / "packed").glob(".*tmp*"))  # no temp files left behind


def test_pack_is_deterministic(ds):
    pack_dataset(ds, progress=False)
    first = {p.name: p.read_bytes() for p in (ds / "packed").iterdir()}
    pack_dataset(ds, progress=False)
    second = {p.name: p.read_bytes() for p in (ds / "packed").iterdir()}
    assert sorted(first) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("rgb.npy", "index.json"))
    assert first == second


def test_pack_refuses_missing_sample(ds):
    info = load_dataset_json(ds)
    sid = info["splits"]["train"][-1]
    shutil.rmtree(sample_dir(ds, sid))
    with pytest.raises(UserError) as e:
        pack_dataset(ds, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"split 'train' is missing 1 of {len(info['splits']['train'])}" in msg
    assert f"ids {sid})" in msg
    assert not (ds / "packed").exists()  # refused before writing anything


def test_pack_refuses_malformed_meta(ds):
    sid = load_dataset_json(ds)["splits"]["test"][0]
    meta = load_meta(ds, sid)
    del meta["centers_2d"]
    write_json_atomic(sample_dir(ds, sid) / "meta.json", meta)
    with pytest.raises(UserError, match=rf"sample {sid}: meta.json lacks keys \['centers_2d'\]; run verify"):
        pack_dataset(ds, progress=False)


def test_pack_refuses_truncated_png(ds):
    sid = load_dataset_json(ds)["splits"]["val"][0]
    p = frame_path(sample_dir(ds, sid), "view2", "rgb", 0)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(UserError, match=f"image {p} does not decode.*run verify"):
        pack_dataset(ds, progress=False)
    assert not rgb_path(ds, "val").exists() and not list((ds / "packed").glob(".*tmp*"))


def test_load_packed_rejects_truncated_npy(ds):
    pack_dataset(ds, progress=False)
    p = rgb_path(ds, "train")
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(UserError) as e:
        load_packed(ds, "train")
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    p.write_bytes(data[:60])  # not even a whole header
    with pytest.raises(UserError, match="train_rgb.npy"):
        load_packed(ds, "train")


def test_load_packed_rejects_wrong_dtype_and_shape(ds):
    pack_dataset(ds, progress=False)
    p = rgb_path(ds, "val")
    good = np.load(p)
    np.save(p, good.astype(np.float32))
    with pytest.raises(UserError) as e:
        load_packed(ds, "val")
    assert str(e.value) == f"packed array {p} has dtype float32, expected uint8"
    np.save(p, good[:, :, :2])  # one frame short of what the index says
    with pytest.raises(UserError, match=r"val_rgb\.npy has shape \(1, 3, 2, 32, 32, 3\)"):
        load_packed(ds, "val")


def test_load_packed_missing_and_stale(ds):
    with pytest.raises(UserError, match="packed index not found: .*train_index.json; pack the dataset first"):
        load_packed(ds, "train")
    pack_dataset(ds, progress=False)
    with pytest.raises(UserError, match="packed splits here: test, train, val"):
        load_packed(ds, "nosuch")
    idx = json.loads(index_path(ds, "test").read_text())
    idx["config_hash"] = "0" * 16
    write_json_atomic(index_path(ds, "test"), idx)
    with pytest.raises(UserError, match="is stale"):
        load_packed(ds, "test")
    rgb_path(ds, "val").unlink()
    with pytest.raises(UserError, match="packed array not found: .*val_rgb.npy"):
        load_packed(ds, "val")


# --- preview -------------------------------------------------------------------------------------

def test_preview_png_and_gif(ds):
    png, gif = write_preview(ds, 1)
    assert png == ds / "previews" / "000001.png" and gif == ds / "previews" / "000001.gif"
    scale = 4  # default: 32 px tiles upscaled to 128
    tile = RES * scale
    with Image.open(png) as im:
        assert im.size == (T * tile + (T + 1) * PAD, V * tile + (V + 1) * PAD) and im.mode == "RGB"
        sheet = np.asarray(im)
    with Image.open(gif) as g:
        assert g.n_frames == T and g.size == (V * tile + (V + 1) * PAD, tile + 2 * PAD)
    # the red cross sits at the projected centre of each tile (view 1, frame 2 here)
    meta = load_meta(ds, 1)
    u, v = meta["centers_2d"][1][2]
    x0, y0 = PAD + 2 * (tile + PAD), PAD + 1 * (tile + PAD)
    px = sheet[int(y0 + v * scale), int(x0 + u * scale)]
    assert tuple(px) == (255, 0, 0)


def test_preview_custom_prefix_and_scale(ds, tmp_path):
    png, gif = write_preview(ds, 0, out_prefix=tmp_path / "out" / "s0", scale=2)
    assert png == tmp_path / "out" / "s0.png" and gif.exists()
    assert Image.open(png).size == (T * RES * 2 + (T + 1) * PAD, V * RES * 2 + (V + 1) * PAD)


def test_preview_unknown_id(ds):
    with pytest.raises(UserError, match=r"sample id 7 is not in .*; valid ids: 0\.\.3"):
        write_preview(ds, 7)
    shutil.rmtree(sample_dir(ds, 2))
    with pytest.raises(UserError, match=r"sample 2 .* is not rendered"):
        write_preview(ds, 2)


def test_pack_empty_split(tmp_path):
    root = make_fake_dataset(tmp_path / "d", num_samples=2, dataset={"splits": {"train": 1.0, "val": 0.0}})
    pack_dataset(root, progress=False)
    assert load_packed(root, "train").rgb.shape == (2, V, T, RES, RES, 3)
    val = load_packed(root, "val")
    assert len(val) == 0 and val.rgb.shape == (0, V, T, RES, RES, 3) and val.index["sample_ids"] == []


# --- a one-view 2D dataset (scene.kind = "2d": one orthographic top-down camera) ------------------

N2 = 6


@pytest.fixture(scope="module")
def pristine_2d(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("fake2d") / "ds", num_samples=N2, resolution=RES, frames=T,
                             kind="2d")


@pytest.fixture
def ds2d(pristine_2d, tmp_path):
    return shutil.copytree(pristine_2d, tmp_path / "ds2d")


def test_fake_2d_dataset_is_one_orthographic_view(ds2d):
    info = load_dataset_json(ds2d)
    assert info["views"] == ["view0"] and info["config"]["scene"]["kind"] == "2d"
    assert info["camera_rig"]["projection"] == "orthographic"
    for sid in range(N2):
        meta = load_meta(ds2d, sid)
        assert meta["shape"]["name"] in ("square", "disc", "triangle")
        assert np.shape(meta["centers_2d"]) == (1, T, 2)
        P = np.asarray(meta["views"][0]["P"])
        np.testing.assert_array_equal(P[:, 2], np.tile([0.0, 0.0, 0.0, 1.0], (T, 1)))
        # the fake mask is the shape's own outline, so its pixel centroid is the tracked centroid (within a pixel)
        m = np.asarray(Image.open(frame_path(sample_dir(ds2d, sid), "view0", "mask", 0))) > 127
        rows, cols = np.nonzero(m)
        np.testing.assert_allclose([cols.mean() + 0.5, rows.mean() + 0.5], meta["centers_2d"][0][0], atol=1.0)


def test_verify_passes_on_2d_and_catches_a_perspective_P(ds2d):
    rep = verify_dataset(ds2d, progress=False)
    assert rep["ok"], rep["errors"]
    assert rep["samples_checked"] == N2 and rep["frames_checked"] == N2 * 1 * T
    assert 0.0 <= rep["max_box_excess_px"] < 0.5
    # a P written as if the camera were a pinhole (K[R|t]) does not pass as the orthographic one
    path = sample_dir(ds2d, 2) / "meta.json"
    meta = json.loads(path.read_text())
    view = meta["views"][0]
    K, R, t = (np.asarray(view[k]) for k in ("K", "R", "t"))
    view["P"] = (K @ np.concatenate([R, t[..., None]], -1)).tolist()
    write_json_atomic(path, meta)
    assert errors_of(verify_dataset(ds2d, progress=False), 2) == ["meta.json P is not K[R|t] (orthographic)"]


def test_verify_catches_a_shifted_mask_in_2d(ds2d):
    d = sample_dir(ds2d, 1)
    p = frame_path(d, "view0", "mask", 1)
    m = np.roll(np.asarray(Image.open(p)), 6, axis=1)
    Image.fromarray(m).save(p)
    meta = json.loads((d / "meta.json").read_text())
    meta["mask_bbox"][0][1] = mask_box(m)   # keep meta consistent: only the projection check may fail
    write_json_atomic(d / "meta.json", meta)
    errs = errors_of(verify_dataset(ds2d, progress=False), 1)
    assert len(errs) == 1 and "mask outside the projected object box" in errs[0] and "view0 frame 1" in errs[0]


def test_pack_2d_one_view(ds2d):
    info = load_dataset_json(ds2d)
    pack_dataset(ds2d, progress=False)
    total = 0
    for split, ids in info["splits"].items():
        p = load_packed(ds2d, split)
        n = len(ids)
        total += n
        assert p.rgb.shape == (n, 1, T, RES, RES, 3) and p.views == ["view0"]
        assert p.array("centers_2d").shape == (n, 1, T, 2) and p.array("positions").shape == (n, T, 3)
        assert p.projections().shape == (n, 1, T, 3, 4)
        np.testing.assert_array_equal(p.projections()[..., 2, :], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (n, 1, T, 4)))
        for k, sid in enumerate(p.sample_ids):
            meta = load_meta(ds2d, sid)
            assert p.index["labels"]["shape"][k] == meta["shape"]["name"]
            assert p.index["labels"]["family"][k] == meta["trajectory"]["family"]
            assert info["classes"]["family"][p.index["label_ids"]["family"][k]] == meta["trajectory"]["family"]
            np.testing.assert_array_equal(p.rgb[k, 0, 1], np.asarray(Image.open(frame_path(sample_dir(ds2d, sid), "view0",
                                                                                             "rgb", 1))))
    assert total == N2
    assert info["classes"]["family"] == ["linear", "circular", "parabolic", "sinusoidal"]


def test_preview_2d_one_row(ds2d):
    png, gif = write_preview(ds2d, 0)
    tile = RES * 4
    with Image.open(png) as im:
        assert im.size == (T * tile + (T + 1) * PAD, tile + 2 * PAD)
        sheet = np.asarray(im.convert("RGB"))
    with Image.open(gif) as g:
        assert g.n_frames == T and g.size == (tile + 2 * PAD, tile + 2 * PAD)
    u, v = load_meta(ds2d, 0)["centers_2d"][0][2]
    assert tuple(sheet[int(PAD + v * 4), int(PAD + 2 * (tile + PAD) + u * 4)]) == (255, 0, 0)
