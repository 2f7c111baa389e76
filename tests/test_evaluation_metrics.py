"""Evaluation metrics: LPIPS loading/paths/download (no real weights, no network), PSNR/SSIM, DLT triangulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datagen.camera import intrinsics, look_at, project, projection_matrix
from datagen.pack import load_packed, pack_dataset
from training.lpips_metric import alexnet_weights_name, load_lpips
from evaluation.triangulate import reprojection_error, triangulate_dlt, triangulate_track
from fakes import make_fake_dataset
from training.metrics import psnr_per_clip, ssim_per_clip

# --- LPIPS -----------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to fetch weights fails the test loudly (MAGVIT3D_OFFLINE is set for the tests: none is made)."""
    import torchvision.models._api as tv_api

    def refuse(*a, **k):
        raise AssertionError(f"download attempted: {a[:1]}")
    for mod, name in ((torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                      (tv_api, "load_state_dict_from_url")):
        monkeypatch.setattr(mod, name, refuse)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture(scope="module")
def random_lpips():
    return load_lpips(random_backbone=True)


def smooth_clips(seed, n=2, t=2, size=48):
    """uint8 (n, t, size, size, 3) images with structure at several scales (not pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, t, size, size, 3))
    for idx in np.ndindex(n, t):
        f, ph = rng.uniform(1, 6, (2, 3)), rng.uniform(0, 2 * np.pi, (2, 3))
        out[idx] = 127.5 + 100 * np.sin(2 * np.pi * (f[0] * xx[..., None] + f[1] * yy[..., None]) + ph[0])
    return out.clip(0, 255).astype(np.uint8)


def test_lpips_random_backbone_is_a_distance(random_lpips):
    m = random_lpips
    assert m.available and "RANDOM" in m.backbone and "not LPIPS" in m.backbone
    a, c = smooth_clips(0), smooth_clips(1)
    assert np.all(np.abs(m.per_clip(a, a)) < 1e-6)
    dab, dba = m.per_clip(a, c), m.per_clip(c, a)
    assert dab.shape == (2,) and np.all(np.isfinite(dab)) and np.all(dab > 0)
    np.testing.assert_allclose(dab, dba, rtol=1e-6)
    blend = lambda k: ((1 - k) * a + k * c.astype(np.float64)).round().astype(np.uint8)  # noqa: E731
    near, mid = m.per_clip(a, blend(0.1)), m.per_clip(a, blend(0.5))
    assert np.all(near < mid) and np.all(mid < dab)


def test_lpips_per_clip_averages_frames(random_lpips):
    a, c = smooth_clips(2, n=1, t=3), smooth_clips(3, n=1, t=3)
    per_frame = [random_lpips.per_clip(a[:, f:f + 1], c[:, f:f + 1])[0] for f in range(3)]
    np.testing.assert_allclose(random_lpips.per_clip(a, c, batch_size=2)[0], np.mean(per_frame), rtol=1e-5)


def test_lpips_rejects_bad_input(random_lpips):
    a = smooth_clips(0)
    with pytest.raises(ValueError, match="uint8"):
        random_lpips.per_clip(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match="at least 31x31"):
        random_lpips.per_clip(a[:, :, :16, :16], a[:, :, :16, :16])


def test_lpips_unavailable_offline_without_weights(empty_hub, no_network):
    m = load_lpips()
    assert not m.available and alexnet_weights_name() == "alexnet-owt-7be5be79.pth"
    assert "alexnet-owt-7be5be79.pth" in m.reason and str(empty_hub) in m.reason and "\n" not in m.reason
    assert "MAGVIT3D_OFFLINE is set" in m.reason and "--lpips-weights PATH" in m.reason
    with pytest.raises(RuntimeError, match="LPIPS unavailable"):
        m.per_clip(smooth_clips(0), smooth_clips(0))
    missing = empty_hub / "elsewhere.pth"  # an explicit path is never silently replaced by the cache
    assert not load_lpips(missing).available and str(missing) in load_lpips(missing).reason
    assert not empty_hub.exists()


def test_lpips_failed_download_is_unavailable_with_the_reason(empty_hub, monkeypatch):
    """Online mode on a machine without a network (the tests block it, tests/conftest.py): torch.hub's real
    downloader runs and fails; LPIPS is unavailable, the reason says why, and no empty cache folder is left."""
    monkeypatch.delenv("MAGVIT3D_OFFLINE")
    notes = []
    m = load_lpips(log=notes.append)
    assert not m.available and "\n" not in m.reason
    assert ("the download from https://download.pytorch.org/models/alexnet-owt-7be5be79.pth failed: URLError"
            in m.reason and "network blocked in the tests" in m.reason), m.reason
    assert str(empty_hub / "checkpoints" / "alexnet-owt-7be5be79.pth") in m.reason
    assert len(notes) == 1 and notes[0].startswith("downloading the AlexNet weights for LPIPS")
    assert not empty_hub.exists()


def test_lpips_downloads_into_the_hub_cache_once(tmp_path, monkeypatch):
    """First use online: the weights are fetched as torchvision fetches them (its URL, torch.hub's downloader with
    the hash prefix of the file name) into $TORCH_HOME/hub/checkpoints, then read from there. The download is
    stood in for by a randomly initialised AlexNet written to the destination: not the real weights, which this
    test never claims to have (it checks where the file goes and that it is used)."""
    from torchvision.models import alexnet

    monkeypatch.delenv("MAGVIT3D_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            torch.save(alexnet(weights=None).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    m = load_lpips()
    assert calls == [("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", str(cached), "7be5be79")]
    assert m.available and m.backbone == f"ImageNet AlexNet downloaded to {cached}" and cached.is_file()
    again = load_lpips()                        # a cache hit: no second download
    assert len(calls) == 1 and again.available and again.backbone == f"ImageNet AlexNet from {cached}"


def test_lpips_loads_backbone_from_file(empty_hub, no_network, tmp_path):
    """A randomly initialised torchvision AlexNet saved where torchvision would cache it: exercises the loading path
    (keys, shapes, copying into lpips' slices) without pretending to have the real ImageNet weights."""
    from torchvision.models import alexnet

    with torch.random.fork_rng(devices=[]):  # leave the global RNG as other tests expect it
        torch.manual_seed(1)
        sd = alexnet(weights=None).state_dict()
    (empty_hub / "checkpoints").mkdir(parents=True)
    torch.save(sd, empty_hub / "checkpoints" / alexnet_weights_name())
    m = load_lpips()
    assert m.available and str(empty_hub) in m.backbone
    layers = {name: layer for s in m.net.net.children() for name, layer in s.named_children()}  # alexnet indices
    for i in (0, 3, 6, 8, 10):
        layer, key = layers[str(i)], f"features.{i}"
        assert torch.equal(layer.weight, sd[f"{key}.weight"]) and torch.equal(layer.bias, sd[f"{key}.bias"])
    a, c = smooth_clips(4), smooth_clips(5)
    assert np.all(m.per_clip(a, a) < 1e-6) and np.all(m.per_clip(a, c) > 0)

    (tmp_path / "explicit.pth").symlink_to(empty_hub / "checkpoints" / alexnet_weights_name())  # ~240 MB: no copy
    assert load_lpips(tmp_path / "explicit.pth").available
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    bad = load_lpips(tmp_path / "junk.pth")
    assert not bad.available and "cannot load" in bad.reason and "\n" not in bad.reason
    partial = {k: v for k, v in sd.items() if k.startswith("features.") and k != "features.3.weight"}
    torch.save(partial, tmp_path / "partial.pth")  # keys missing: refused, not half-loaded
    assert not load_lpips(tmp_path / "partial.pth").available


# --- PSNR / SSIM -----------------------------------------------------------------------------------

def test_psnr_known_mse():
    a = np.random.default_rng(0).integers(0, 240, (2, 3, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(psnr_per_clip(a, a + 10), 20 * np.log10(255 / 10), rtol=1e-12)
    assert np.all(psnr_per_clip(a, a) == 100.0)


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    a, b = smooth_clips(6, size=40), smooth_clips(7, size=40)
    ref = [np.mean([structural_similarity(a[n, t], b[n, t], gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, channel_axis=-1, data_range=255)
                    for t in range(a.shape[1])]) for n in range(a.shape[0])]
    np.testing.assert_allclose(ssim_per_clip(a, b), ref, rtol=1e-12)
    np.testing.assert_allclose(ssim_per_clip(a, a), 1.0)


def test_dilation_is_a_disk_and_object_psnr_looks_inside_it():
    from evaluation.metrics import Region, dilate_masks, object_psnr

    dot = np.zeros((9, 9), bool)
    dot[4, 4] = True
    assert dilate_masks(dot, 0).sum() == 1
    assert dilate_masks(dot, 1).sum() == 5                  # the 4-neighbours, not the 3x3 square
    assert dilate_masks(dot, 2).sum() == 13
    assert dilate_masks(dot[None, None], 2)[0, 0].sum() == 13   # (V, T, H, W) stacks: each frame on its own
    a = np.full((1, 3, 9, 9, 3), 100, np.uint8)
    b = a.copy()
    b[..., 0, :, :] = 0                                       # far from the object: row 0 of every frame
    b[0, 1, 4, 4] = 110                                       # inside the object in frame 1: error 10 on 1 pixel
    masks = np.zeros((1, 3, 9, 9), bool)
    masks[0, 1:, 4, 4] = True                                 # frame 0: empty mask, left out
    r = Region([0], [0, 1, 2])
    want = np.mean([20 * np.log10(255 / 10), 100.0])          # frame 1: 10 grey levels off; frame 2: identical
    assert object_psnr(a, b, r, masks) == pytest.approx(want)
    assert psnr_per_clip(r.take(a), r.take(b))[0] < 20         # the whole frame is dominated by row 0
    assert object_psnr(a, b, Region([0], [0]), masks) is None


def test_paired_bootstrap_known_arrays():
    from evaluation.metrics import paired_bootstrap

    c = paired_bootstrap([3.0, 5.0, 7.0], [1.0, 3.0, 5.0])    # a constant difference: no spread at all
    assert (c["mean"], c["low"], c["high"], c["n"]) == (2.0, 2.0, 2.0, 3)
    a, b = np.array([1.0, 2.0, 3.0, 10.0]), np.zeros(4)
    ci = paired_bootstrap(a, b, resamples=2000, seed=0)
    idx = np.random.default_rng(0).integers(0, 4, size=(2000, 4))
    means = a[idx].mean(1)
    assert ci["mean"] == 4.0 and ci["n"] == 4
    assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert 1.0 <= ci["low"] < 4.0 < ci["high"] <= 10.0
    assert paired_bootstrap(a, b, seed=0) == ci                # seeded
    # pairs with a missing / non-numeric side are left out
    assert paired_bootstrap([1.0, None, "unavailable", 4.0], [0.0, 1.0, 1.0, np.nan])["n"] == 1
    assert paired_bootstrap([], [])["mean"] is None
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


# --- triangulation ---------------------------------------------------------------------------------

def random_rig(rng, views=3, size=128):
    """P (V, 3, 4) for cameras 3-5 m away, 10-50 deg up, spread in azimuth, aimed near the origin."""
    K = intrinsics(35.0, 36.0, size, size)
    Ps = []
    for v in range(views):
        az = 2 * np.pi * v / views + rng.uniform(-0.3, 0.3)
        el, r = np.deg2rad(rng.uniform(10, 50)), rng.uniform(3, 5)
        pos = r * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        Ps.append(projection_matrix(K, *look_at(pos, rng.uniform(-0.1, 0.1, 3))))
    return np.stack(Ps)


def views_of(P, X):
    """Broadcast one rig over n points and project: P (V, n, 3, 4), uv (V, n, 2)."""
    return np.broadcast_to(P[:, None], (len(P), len(X), 3, 4)), np.stack([project(p, X) for p in P])


def test_triangulation_exact_without_noise():
    rng = np.random.default_rng(0)
    for _ in range(20):
        P, X = random_rig(rng, views=int(rng.integers(2, 6))), rng.uniform(-0.5, 0.5, (50, 3))
        Pt, uv = views_of(P, X)
        Xe = triangulate_track(Pt, uv)
        assert np.all(np.linalg.norm(Xe - X, axis=1) < 1e-9 * np.maximum(np.linalg.norm(X, axis=1), 1.0))
        np.testing.assert_allclose(triangulate_dlt(P, uv[:, 0]), X[0], atol=1e-9)
        assert np.all(reprojection_error(Pt, Xe, uv) < 1e-6)
    np.testing.assert_allclose(reprojection_error(P, X[0], uv[:, 0] + [3.0, 4.0]), 5.0, rtol=1e-9)


def test_triangulation_noise_matches_first_order_propagation():
    """With iid pixel noise sigma, first-order propagation through the estimator predicts its covariance
    sigma^2 G G^T (G = dX/duv, by central differences of triangulate_track itself): the Monte-Carlo RMS 3D error
    over many points must match that prediction (sampling error ~2% here). Independently, no unbiased estimator can
    beat the Cramer-Rao bound sigma^2 (J^T J)^-1 (J = d project / dX), which is what maximum-likelihood (minimum
    reprojection error) triangulation attains to first order; row-normalised DLT must lie within 1.5x of it."""
    rng = np.random.default_rng(1)
    P, n, sigma, h = random_rig(rng), 4000, 0.5, 1e-3
    X = rng.uniform(-0.5, 0.5, (n, 3))
    Pt, uv = views_of(P, X)
    err = triangulate_track(Pt, uv + rng.normal(0, sigma, uv.shape)) - X
    rms_mc = np.sqrt(np.mean(np.sum(err ** 2, axis=1)))

    var_pred = np.zeros(n)  # sum over the 2V pixel coordinates of |dX/du_k|^2
    for v in range(len(P)):
        for c in range(2):
            d = np.zeros_like(uv)
            d[v, :, c] = h
            var_pred += np.sum(((triangulate_track(Pt, uv + d) - triangulate_track(Pt, uv - d)) / (2 * h)) ** 2, 1)
    rms_pred = sigma * np.sqrt(var_pred.mean())

    J = np.empty((n, 2 * len(P), 3))  # d project / dX, central differences through datagen.camera.project
    for i in range(3):
        d = np.zeros(3)
        d[i] = 1e-6
        J[:, :, i] = np.concatenate([(project(p, X + d) - project(p, X - d)) / 2e-6 for p in P], axis=1)
    rms_crlb = sigma * np.sqrt(np.mean(np.trace(np.linalg.inv(J.transpose(0, 2, 1) @ J), axis1=1, axis2=2)))

    assert 0.93 < rms_mc / rms_pred < 1.07, (rms_mc, rms_pred)
    assert 0.99 <= rms_pred / rms_crlb < 1.5, (rms_pred, rms_crlb)


def test_triangulation_weights_and_missing_views():
    rng = np.random.default_rng(2)
    P, X = random_rig(rng, views=4), rng.uniform(-0.5, 0.5, 3)
    uv = np.stack([project(p, X) for p in P])
    bad = uv.copy()
    bad[1] = [1e4, -1e4]
    assert np.linalg.norm(triangulate_dlt(P, bad) - X) > 0.1  # the outlier matters at weight 1 ...
    np.testing.assert_allclose(triangulate_dlt(P, bad, np.array([1.0, 0.0, 1.0, 1.0])), X, atol=1e-9)  # ... not at 0
    nan = uv.copy()
    nan[2] = np.nan
    np.testing.assert_allclose(triangulate_dlt(P, nan), X, atol=1e-9)
    assert np.all(np.isnan(triangulate_dlt(P, uv, np.array([0.0, 0.0, 2.0, 0.0]))))
    assert np.all(np.isnan(triangulate_dlt(P[:1], uv[:1])))
    # per frame: frame 1 has a single usable view -> NaN there only
    Pt, uvt = views_of(P, np.stack([X, X, X]))
    w = np.ones((4, 3))
    w[1:, 1] = 0
    Xt = triangulate_track(Pt, uvt, w)
    assert np.all(np.isnan(Xt[1])) and np.allclose(Xt[[0, 2]], X, atol=1e-9)
    with pytest.raises(ValueError, match=">= 0"):
        triangulate_dlt(P, uv, np.array([1.0, -1.0, 1.0, 1.0]))


def test_triangulation_recovers_fake_dataset_positions(tmp_path):
    root = make_fake_dataset(tmp_path / "ds", num_samples=4, resolution=32, frames=4)
    pack_dataset(root, progress=False)
    checked = 0
    for split in ("train", "val", "test"):
        p = load_packed(root, split)
        Ps, uv, pos = p.projections(), p.array("centers_2d"), p.array("positions")
        for k in range(len(p)):
            Xt = triangulate_track(Ps[k], uv[k])
            assert np.max(np.abs(Xt - pos[k])) < 1e-3
            assert np.nanmax(reprojection_error(Ps[k], Xt, uv[k])) < 1e-3
            checked += 1
    assert checked == 4
