"""Trajectory metrics: family fitting recovers every family from clean and mildly noisy tracks drawn exactly as the
renderer draws them; ADE/FDE, scene extent and the baselines against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from datagen.spec import DatasetConfig
from datagen.trajectories import FAMILIES, draw_params, positions
from evaluation.trajectory import (constant_velocity, copy_last, displacement_errors, fit_families,
                                   mean_reprojection_error, scene_extent, track_from_detections)

FPS, FRAMES = 12, 16


def tracks(family, n, seed):
    cfg = DatasetConfig().trajectories
    rng = np.random.default_rng(seed)
    t = np.arange(FRAMES) / FPS
    return [positions(family, draw_params(family, cfg, t, rng), t) for _ in range(n)], cfg.gravity


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_recovers_family_clean(family):
    for X, g in zip(*[tracks(family, 25, 1)[0], [tracks(family, 1, 1)[1]] * 25]):
        fit = fit_families(X, FPS, g)
        assert fit["best"] == family, {f: round(v["rmse"], 5) for f, v in fit["fits"].items()}
        assert fit["fits"][family]["rmse"] < 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_recovers_family_mild_noise(family):
    """5 mm per-axis noise (about what the demo probe's triangulation gives): at most 1 miss in 25."""
    clean, g = tracks(family, 25, 2)
    rng = np.random.default_rng(3)
    hits = [fit_families(X + rng.normal(0, 0.005, X.shape), FPS, g)["best"] == family for X in clean]
    assert sum(hits) >= 24, hits


def test_fit_parameters_and_missing_frames():
    cfg = DatasetConfig().trajectories
    t = np.arange(FRAMES) / FPS
    p = draw_params("helical", cfg, t, np.random.default_rng(5))
    X = positions("helical", p, t)
    X[3] = np.nan  # a frame the triangulation could not place
    fit = fit_families(X, FPS, cfg.gravity)
    got = fit["fits"]["helical"]["params"]
    assert fit["best"] == "helical"
    np.testing.assert_allclose(got["radius"], p["radius"], rtol=1e-6)
    np.testing.assert_allclose(got["angular_speed"], p["angular_speed"], rtol=1e-6)
    assert got["direction"] == p["direction"]
    np.testing.assert_allclose(got["climb_rate"], p["climb_rate"], rtol=1e-6)
    assert fit_families(np.full((FRAMES, 3), np.nan), FPS, 1.6) == {"best": None, "fits": {}}


def test_displacement_errors_and_extent():
    gt = np.zeros((4, 3))
    track = np.array([[0, 0, 0], [3, 4, 0], [np.nan] * 3, [0, 0, 2.0]])
    e = displacement_errors(track, gt)
    assert e == {"ade": pytest.approx(7 / 3), "fde": 2.0, "missing": 1}
    assert displacement_errors(track, gt, frames=[1, 2])["fde"] is None
    assert scene_extent([[0, 0, 0], [1, 2, 2], [np.nan, 0, 0]]) == pytest.approx(3.0)


def test_baselines():
    t = np.arange(6.0)
    track = np.stack([1 + 2 * t, -t, np.zeros(6)], 1)
    np.testing.assert_allclose(constant_velocity(track, 3), track, atol=1e-12)  # exact on a straight line
    noisy = track.copy()
    noisy[:3] += [[0.1, 0, 0], [-0.2, 0, 0], [0.1, 0, 0]]                     # zero-mean, symmetric: the same line
    np.testing.assert_allclose(constant_velocity(noisy, 3), track, atol=1e-12)
    np.testing.assert_allclose(copy_last(track, 2), np.repeat(track[1:2], 6, 0))
    np.testing.assert_allclose(constant_velocity(track, 1), np.repeat(track[:1], 6, 0))


def test_weighted_track_and_reprojection():
    from datagen.camera import intrinsics, look_at, project, projection_matrix

    K = intrinsics(35, 36, 64, 64)
    P = np.stack([projection_matrix(K, *look_at(c, (0, 0, 0))) for c in [(2, 0, 1), (0, 2, 1), (-2, 0, 1)]])
    X = np.array([[0.1, 0.2, 0.3], [0.0, -0.1, 0.5]])
    Pt = np.broadcast_to(P[:, None], (3, 2, 3, 4))
    uv = np.stack([project(p, X) for p in P])
    bad = uv.copy()
    bad[1] += 5.0                                                             # view 1 is off by 5 px ...
    sigma = np.array([[0.1, 0.1], [1e4, 1e4], [0.1, 0.1]])                   # ... and says so
    np.testing.assert_allclose(track_from_detections(Pt, {"uv": bad, "sigma": sigma}), X, atol=1e-3)
    assert mean_reprojection_error(Pt, X, uv) < 1e-9
    assert mean_reprojection_error(Pt, X, bad) == pytest.approx(5 * np.sqrt(2) / 3)


def test_min_climb_keeps_wobbly_circles_circular():
    """A circle whose z drifts slowly (what a cone's spinning centre-of-mass offset does to a probe track) is a
    slow helix to an unconstrained fit, a circle once helices must climb at least as fast as the dataset draws;
    every true helix (and the other families) is still recovered with that constraint."""
    cfg = DatasetConfig().trajectories
    t = np.arange(FRAMES) / FPS
    p = draw_params("circular", cfg, t, np.random.default_rng(7))
    X = positions("circular", p, t) + np.array([0, 0, 0.03]) * (t - t.mean())[:, None]
    assert fit_families(X, FPS, cfg.gravity)["best"] == "helical"
    assert fit_families(X, FPS, cfg.gravity, min_climb=cfg.climb_rate_range[0])["best"] == "circular"
    for family in FAMILIES:
        for X in tracks(family, 10, 8)[0]:
            assert fit_families(X, FPS, cfg.gravity, min_climb=cfg.climb_rate_range[0])["best"] == family


# --- learned extrapolation ---------------------------------------------------------------------------------------

def noisy_circles(n, seed, k=4, noise=0.005):
    """Circular tracks as the dataset draws them + `noise` m of per-axis noise on the given frames (5 mm: about what
    the demo probe's triangulation leaves): (given (n, k, 3) noisy, ground truth (n, FRAMES, 3))."""
    clean = np.stack(tracks("circular", n, seed)[0])
    rng = np.random.default_rng(seed + 100)
    return clean[:, :k] + rng.normal(0, noise, (n, k, 3)), clean


def test_learned_extrapolation_beats_constant_velocity_on_circles():
    """Fitted on 200 noisy circles (5 mm per axis), the MLP predicts 100 others' last 12 frames from their first 4
    with at most 75% of constant velocity's ADE (it gets ~64%; constant velocity flies off along the tangent, an
    untrained model, which is constant velocity, gets 100%); deterministic for a seed."""
    from evaluation.extrapolation import ExtrapolatorConfig, fit_extrapolator

    k = 4
    given, gt = noisy_circles(200, 11, k, noise=0.005)
    model = fit_extrapolator(given, gt[:, k:], extent=2.0, cfg=ExtrapolatorConfig(steps=800))
    test_given, test_gt = noisy_circles(100, 12, k, noise=0.005)
    tracks_in = np.concatenate([test_given, np.full((100, FRAMES - k, 3), np.nan)], 1)
    learned = np.stack([model.extrapolate(x) for x in tracks_in])
    cv = np.stack([constant_velocity(x, k, FPS) for x in tracks_in])
    ade = lambda X: np.linalg.norm(X[:, k:] - test_gt[:, k:], axis=-1).mean()  # noqa: E731
    assert ade(learned) < 0.75 * ade(cv), (ade(learned), ade(cv))
    np.testing.assert_array_equal(learned[:, :k], test_given)                  # the given frames are kept
    again = fit_extrapolator(given, gt[:, k:], extent=2.0, cfg=ExtrapolatorConfig(steps=800))
    np.testing.assert_array_equal(again.predict_future(test_given), model.predict_future(test_given))


def test_extrapolation_pieces():
    from evaluation.extrapolation import (MIN_TRAIN_CLIPS, ExtrapolatorConfig, cv_matrix, fill_missing,
                                          fit_extrapolator)

    rng = np.random.default_rng(0)
    for k in (1, 2, 5):
        X = np.concatenate([rng.normal(size=(k, 3)), np.full((7, 3), np.nan)])
        np.testing.assert_allclose(cv_matrix(k, 7) @ X[:k], constant_velocity(X, k)[k:], atol=1e-12)
    t = np.array([[0.0, 0, 0], [np.nan] * 3, [np.nan] * 3, [np.nan] * 3, [3.0, 0, 0]])
    np.testing.assert_array_equal(fill_missing(t)[:, 0], [0, 0, 0, 3, 3])      # the nearest finite frame
    assert fill_missing(np.full((3, 3), np.nan)) is None
    given, gt = noisy_circles(MIN_TRAIN_CLIPS, 3)
    given[0] = np.nan                                                         # unusable: one clip too few
    with pytest.raises(ValueError, match=f"at least {MIN_TRAIN_CLIPS}"):
        fit_extrapolator(given, gt[:, 4:], 2.0, ExtrapolatorConfig(steps=5))
    given, gt = noisy_circles(MIN_TRAIN_CLIPS, 4)
    untrained = fit_extrapolator(given, gt[:, 4:], 2.0, ExtrapolatorConfig(steps=0))
    X = noisy_circles(1, 5)[1][0]
    np.testing.assert_allclose(untrained.extrapolate(X)[4:], constant_velocity(X, 4)[4:], atol=1e-5)  # starts as CV


# --- 2D (one-view datasets): family fit in pixels, the extrapolator on (k, 2) tracks ------------------------------

SIZE_2D = 64  # px: the image the synthetic 2D tracks are drawn in (16 frames at FPS, as above)


def tracks_2d(family, n, seed, noise=0.0):
    from fakes import track_2d

    rng = np.random.default_rng(seed)
    t = np.arange(FRAMES) / FPS
    return [track_2d(family, t, rng, SIZE_2D) + rng.normal(0, noise, (FRAMES, 2)) for _ in range(n)]


def test_fit_2d_clean_tracks_and_parameters():
    """Every 2D family is recovered from clean tracks (rmse ~0), and the parameters of hand-made tracks come back:
    the circle's radius and turning direction, the parabola's acceleration (either sign: a flipped image), the
    sinusoid's angular speed and amplitude."""
    from evaluation.trajectory import FAMILIES_2D, fit_families_2d

    for family in FAMILIES_2D:
        for X in tracks_2d(family, 10, 1):
            fit = fit_families_2d(X, FPS)
            assert fit["best"] == family and fit["fits"][family]["rmse"] < 1e-4, (family, fit["best"])
    t = np.arange(FRAMES) / FPS
    circle = 30 + 12 * np.stack([np.cos(0.5 - 3.0 * t), np.sin(0.5 - 3.0 * t)], 1)
    got = fit_families_2d(circle, FPS)["fits"]["circular"]["params"]
    assert got["radius"] == pytest.approx(12) and got["angular_speed"] == pytest.approx(3.0) and got["direction"] == -1
    for g in (40.0, -40.0):
        throw = np.stack([10 + 5 * t, 50 - 30 * t + 0.5 * g * t ** 2], 1)
        fit = fit_families_2d(throw, FPS)
        assert fit["best"] == "parabolic" and fit["fits"]["parabolic"]["params"]["acceleration"] == pytest.approx(g)
    d = np.array([0.6, 0.8])
    wave = 20 + np.outer(t, 15 * d) + np.outer(4 * np.sin(7.0 * t + 1.0), [-d[1], d[0]])
    fit = fit_families_2d(wave, FPS)
    assert fit["best"] == "sinusoidal"
    p = fit["fits"]["sinusoidal"]["params"]
    assert p["angular_speed"] == pytest.approx(7.0) and p["amplitude"] == pytest.approx(4.0)
    np.testing.assert_allclose(fit["fits"]["sinusoidal"]["fitted"], wave, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        fit_families_2d(np.zeros((FRAMES, 3)), FPS)
    assert fit_families_2d(np.full((FRAMES, 2), np.nan), FPS)["best"] is None


def test_fit_2d_accuracy_with_noise():
    """Measured accuracy of the 2D fit on 50 tracks per family (16 frames, 64 px image) with per-axis Gaussian noise:
    0.5 px (about a trained probe's error) 100% per family; 1 px 98-100% (a noisy line once taken for a circle).
    Asserted: >= 96% per family at 0.5 px, >= 95% overall and >= 90% per family at 1 px."""
    from evaluation.trajectory import FAMILIES_2D, fit_families_2d

    for noise, per_family, overall in ((0.5, 0.96, 0.96), (1.0, 0.90, 0.95)):
        acc = {f: np.mean([fit_families_2d(X, FPS)["best"] == f for X in tracks_2d(f, 50, 20, noise)])
               for f in FAMILIES_2D}
        assert min(acc.values()) >= per_family and np.mean(list(acc.values())) >= overall, (noise, acc)


def test_learned_extrapolation_2d_beats_constant_velocity_on_throws():
    """On (k, 2) image tracks: fitted on 200 noisy parabolas (0.5 px), the MLP predicts 100 others' last 12 frames
    from their first 4 below 75% of constant velocity's ADE (the mirror augmentation keeps gravity pointing down the
    image); the given frames are kept and the output is 2D."""
    from evaluation.extrapolation import ExtrapolatorConfig, fit_extrapolator

    k = 4
    train, test = np.stack(tracks_2d("parabolic", 200, 30)), np.stack(tracks_2d("parabolic", 100, 31))
    rng = np.random.default_rng(32)
    noisy = lambda X: X[:, :k] + rng.normal(0, 0.5, X[:, :k].shape)  # noqa: E731
    model = fit_extrapolator(noisy(train), train[:, k:], extent=SIZE_2D, cfg=ExtrapolatorConfig(steps=600))
    given = noisy(test)
    tracks_in = np.concatenate([given, np.full((100, FRAMES - k, 2), np.nan)], 1)
    learned = np.stack([model.extrapolate(x) for x in tracks_in])
    cv = np.stack([constant_velocity(x, k, FPS) for x in tracks_in])
    ade = lambda X: np.linalg.norm(X[:, k:] - test[:, k:], axis=-1).mean()  # noqa: E731
    assert learned.shape == (100, FRAMES, 2) and ade(learned) < 0.75 * ade(cv), (ade(learned), ade(cv))
    np.testing.assert_array_equal(learned[:, :k], given)
    with pytest.raises(ValueError, match="D 2 or 3"):
        fit_extrapolator(np.zeros((10, k, 4)), np.zeros((10, 3, 4)), 1.0)
