"""training.baselines: the same-budget tokenizer baselines on tiny arrays whose answers are known by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.baselines import from_blocks, kmeans, to_blocks, tokenizer_baselines


def psnr_of(mse_levels: float) -> float:
    """PSNR of a per-pixel mean squared error given in (0..255 levels)^2."""
    return 10 * math.log10(255.0 ** 2 / mse_levels)


def test_blocks_round_trip_and_order():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    blocks = to_blocks(clips, 2, 4)
    assert blocks.shape == (2 * 2 * 2 * 2, 2 * 4 * 4 * 3)
    # first block = frames 0-1, rows 0-3, cols 0-3 of clip 0, in (t, y, x, c) order
    assert torch.equal(blocks[0], torch.as_tensor(clips[0, :2, :4, :4]).float().flatten())
    assert np.array_equal(from_blocks(blocks, clips.shape, 2, 4), clips)
    with pytest.raises(ValueError, match="not divisible by the block 3x4x4"):
        to_blocks(clips, 3, 4)


def test_piecewise_constant_blocks_are_exact_for_block_mean_and_kmeans():
    # every 2x4x4 block one flat colour, 3 colours in all: block means and a 4-code k-means are exact (100 dB)
    colours = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200]], dtype=np.uint8)
    clips = np.zeros((2, 4, 8, 8, 3), dtype=np.uint8)
    for n in range(2):
        for t in range(2):
            for y in range(2):
                for x in range(2):
                    clips[n, 2 * t:2 * t + 2, 4 * y:4 * y + 4, 4 * x:4 * x + 4] = colours[(n + t + y + x) % 3]
    r = tokenizer_baselines(clips, clips, 2, 4, codebook_size=4)
    assert r["block_mean"] == 100.0 and r["kmeans"] == 100.0
    assert r["kmeans_codes"] == 3            # only 3 distinct blocks exist: the codebook is exact, not padded
    assert r["clip_mean"] < 20                # one colour per clip is far off
    assert r["grid"] == "2x4x4" and r["codebook_size"] == 4


def test_clip_mean_psnr_matches_hand_computation():
    # half the pixels 0, half 100: the clip mean is 50 everywhere, error 50 levels on every channel
    clips = np.zeros((1, 2, 4, 4, 3), dtype=np.uint8)
    clips[:, :, :, 2:] = 100
    r = tokenizer_baselines(clips, clips, 1, 2, codebook_size=2)
    assert r["clip_mean"] == pytest.approx(psnr_of(50.0 ** 2), abs=1e-9)
    # the edge at x = 2 falls between 1x2x2 blocks: every block is flat, so block means are exact
    assert r["block_mean"] == 100.0


def clips_of_patterns(rng, n: int, patterns: np.ndarray, noise: int) -> np.ndarray:
    """n clips (2 frames, 8x8) whose 2x4x4 blocks are each one of `patterns` plus uniform noise of +-noise levels."""
    pick = rng.integers(0, len(patterns), (n, 1, 2, 2))
    blocks = patterns[pick]                                                # (n, 1, 2, 2, 2, 4, 4, 3)
    clips = blocks.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(n, 2, 8, 8, 3).astype(int)
    return np.clip(clips + rng.integers(-noise, noise + 1, clips.shape), 0, 255).astype(np.uint8)


def test_kmeans_with_fewer_codes_than_patterns_loses_detail_and_is_fit_on_train_only():
    rng = np.random.default_rng(1)
    patterns = rng.integers(30, 226, (8, 2, 4, 4, 3))
    train, val = clips_of_patterns(rng, 40, patterns, 3), clips_of_patterns(rng, 6, patterns, 3)
    small = tokenizer_baselines(train, val, 2, 4, codebook_size=2)
    large = tokenizer_baselines(train, val, 2, 4, codebook_size=8)
    assert small["kmeans_codes"] == 2 and large["kmeans_codes"] == 8
    # 8 codes find the 8 patterns: only the +-3 noise is left (uniform: variance 4 levels^2 -> ~42 dB)
    assert large["kmeans"] == pytest.approx(psnr_of(4.0), abs=0.7)
    assert small["kmeans"] < large["kmeans"] - 15
    # the fit sees only train blocks: val clips made of patterns train never shows are not reproduced
    other = clips_of_patterns(rng, 6, rng.integers(30, 226, (8, 2, 4, 4, 3)), 3)
    assert tokenizer_baselines(train, other, 2, 4, codebook_size=8)["kmeans"] < large["kmeans"] - 15


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(points, 3, iterations=10, seed=3)
    order = found[:, 0] * 100 + found[:, 1]
    assert torch.allclose(found[order.argsort()], centres[[0, 2, 1]], atol=0.1)


def test_bad_val_clips_are_named():
    with pytest.raises(ValueError, match=r"non-empty uint8 array \(N, T, H, W, 3\); got shape \(0, 2, 4, 4, 3\)"):
        tokenizer_baselines(np.zeros((1, 2, 4, 4, 3), np.uint8), np.zeros((0, 2, 4, 4, 3), np.uint8), 1, 2, 2)


def test_moving_psnr_scores_only_the_pixels_that_move():
    from training.metrics import moving_mask, moving_psnr, psnr_per_clip
    # a grey clip with a white 2x2 square stepping right one pixel a frame
    clips = np.full((1, 6, 16, 16, 3), 100, np.uint8)
    for t in range(6):
        clips[0, t, 3:5, t:t + 2] = 255
    mask = moving_mask(clips)
    assert mask.shape == (1, 6, 16, 16) and mask.sum() == 6 * 4     # the square in each frame; the median is grey
    # a reconstruction that blurs the square away (grey everywhere) keeps whole-frame PSNR high...
    blurred = np.full_like(clips, 100)
    whole, moving = float(psnr_per_clip(clips, blurred)[0]), moving_psnr(clips, blurred)
    assert whole > 20
    # ...but scores the moving pixels at their own error: 155 levels everywhere the square is
    assert moving == pytest.approx(-20 * math.log10(155 / 255), abs=1e-6)
    assert moving < whole - 10
    # errors on still pixels do not count
    noisy_background = clips.copy()
    noisy_background[0, :, 0, 0] = 0
    assert moving_psnr(clips, noisy_background) == 100.0
    # nothing moves: no value
    assert moving_psnr(np.full_like(clips, 7), blurred) is None


def test_baselines_report_moving_pixel_psnr():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (4, 4, 8, 8, 3), dtype=np.uint8)
    val = np.full((2, 4, 8, 8, 3), 90, np.uint8)
    val[:, :, 2:4, 2:4] = 200
    val[:, 2:, 2:4, 2:4] = 90                                          # the patch vanishes half way: it "moves"
    out = tokenizer_baselines(train, val, 2, 4, 8, fit_blocks=1000, iterations=3)
    assert set(out["moving"]) == {"clip_mean", "block_mean", "kmeans"}
    assert out["moving"]["clip_mean"] < out["clip_mean"]              # the constant clip is worst where things move


def test_token_motion_is_how_far_a_tokens_pixels_are_from_the_still_clip():
    from training.metrics import token_motion
    # one view, 4 frames of 8x8 grey; a white 2x2 square in frames 2 and 3 inside the token (row 0, col 1) of a
    # tokenizer with 2 frames and 4x4 pixels per token
    clip = np.full((1, 4, 8, 8, 3), 100, np.uint8)
    clip[0, 2:, 1:3, 5:7] = 255
    motion = token_motion(clip, 2, 4)
    assert motion.shape == (1, 2, 2, 2) and motion.dtype == np.float32
    # the median of frames (100, 100, 255, 255) per pixel is 177.5: every frame of that patch is 77.5 levels away
    # on the square's 4 pixels, nothing elsewhere
    expected = np.zeros((1, 2, 2, 2), np.float32)
    expected[0, :, 0, 1] = 4 * 77.5 / 255 / 16
    assert np.allclose(motion, expected, atol=1e-6)
    assert not token_motion(np.full_like(clip, 9), 2, 4).any()
