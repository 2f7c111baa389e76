"""Trivial same-budget baselines for a tokenizer: what a reconstruction at its token grid gets without learning.

A tokenizer that turns each (tf x sf x sf) block of a clip into one token out of K is compared with three
reconstructions that use the same grid:
  - clip_mean:  one constant colour per view-clip (its mean), the floor any tokenizer must clear;
  - block_mean: the mean colour of every (tf x sf x sf) block, repeated over the block (3 floats a token, more
                information than log2(K) bits: an upper reference for "colour only", not a same-bit baseline);
  - kmeans:     vector quantization of the raw (tf x sf x sf x 3) RGB blocks with K centroids fit by k-means on
                training blocks: exactly log2(K) bits a token, the same budget as the tokenizer, no network.
A learned tokenizer that does not beat `kmeans` clearly has collapsed (issue history in docs/tokenizer.md).

Clips are uint8 arrays (N, T, H, W, 3), as `training.metrics` takes them; PSNR is `psnr_per_clip`'s.
"""
from __future__ import annotations

import numpy as np
import torch

from training.metrics import motion_ratio, moving_psnr, psnr_per_clip


def to_blocks(clips: np.ndarray, tf: int, sf: int) -> torch.Tensor:
    """(N, T, H, W, 3) -> (N * T/tf * H/sf * W/sf, tf * sf * sf * 3) float32 blocks, in raster order."""
    x = torch.from_numpy(np.array(clips, dtype=np.float32))   # a copy: memmapped clips are read-only
    n, t, h, w, c = x.shape
    if t % tf or h % sf or w % sf:
        raise ValueError(f"clip size {t}x{h}x{w} is not divisible by the block {tf}x{sf}x{sf}")
    x = x.view(n, t // tf, tf, h // sf, sf, w // sf, sf, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, tf * sf * sf * c)


def from_blocks(blocks: torch.Tensor, shape: tuple, tf: int, sf: int) -> np.ndarray:
    """Inverse of to_blocks, rounded and clipped to uint8 (N, T, H, W, 3)."""
    n, t, h, w, c = shape
    x = blocks.reshape(n, t // tf, h // sf, w // sf, tf, sf, sf, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(shape).round().clamp(0, 255).to(torch.uint8).numpy()


def sample_blocks(clips: np.ndarray, tf: int, sf: int, count: int, g: torch.Generator, chunk: int = 32) -> torch.Tensor:
    """About `count` blocks drawn uniformly from all blocks of clips (N, T, H, W, 3) (all of them when there are
    fewer), converted a chunk of clips at a time so a memmapped training split is never loaded whole."""
    n, t, h, w, _ = clips.shape
    total = n * (t // tf) * (h // sf) * (w // sf)
    keep = min(1.0, count / total) if total else 0.0
    out = []
    for i in range(0, n, chunk):
        blocks = to_blocks(clips[i:i + chunk], tf, sf)
        if keep < 1:
            blocks = blocks[torch.rand(len(blocks), generator=g) < keep]
        out.append(blocks)
    return torch.cat(out)


def _nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) for every point, in chunks to bound memory."""
    c_sq = (centroids * centroids).sum(1)
    out = []
    for i in range(0, len(points), chunk):
        p = points[i:i + chunk]
        out.append((c_sq[None, :] - 2 * (p @ centroids.T)).argmin(1))   # |p|^2 is the same for every centroid
    return torch.cat(out)


def _kmeans_plus_plus(points: torch.Tensor, k: int, g: torch.Generator, seed_points: int = 20_000) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on at most seed_points of the points: each next centroid is
    drawn with probability ~ squared distance to the nearest one chosen so far, so separated clusters each get one."""
    if len(points) > seed_points:
        points = points[torch.randperm(len(points), generator=g)[:seed_points]]
    sq = (points * points).sum(1)
    chosen = [int(torch.randint(len(points), (1,), generator=g))]
    # 2 * (points @ x), not 2 * points @ x: that would copy all the points for each of the k centroids (3x slower)
    d2 = (sq - 2 * (points @ points[chosen[0]]) + sq[chosen[0]]).clamp_min(0)
    for _ in range(k - 1):
        i = int(torch.multinomial(d2, 1, generator=g)) if d2.sum() > 0 else int(d2.argmax())
        chosen.append(i)
        d2 = torch.minimum(d2, (sq - 2 * (points @ points[i]) + sq[i]).clamp_min(0))
    return points[chosen].clone()


def kmeans(points: torch.Tensor, k: int, iterations: int = 12, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means from a k-means++ seeding; an emptied cluster takes the point farthest from its centroid.
    Deterministic for a seed. Returns (min(k, distinct points), D) centroids."""
    g = torch.Generator().manual_seed(seed)
    unique = torch.unique(points, dim=0)
    if len(unique) <= k:   # every distinct point gets its own centroid: an exact codebook
        return unique
    centroids = _kmeans_plus_plus(points, k, g)
    for _ in range(iterations):
        assign = _nearest(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).float()
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = (~filled).nonzero().flatten()
        if len(empty):
            err = (points - centroids[assign]).pow(2).sum(1)
            centroids[empty] = points[err.topk(len(empty)).indices]
    return centroids


def tokenizer_baselines(train_clips: np.ndarray, val_clips: np.ndarray, temporal_factor: int, spatial_factor: int,
                        codebook_size: int, *, fit_blocks: int = 60_000, iterations: int = 12, seed: int = 0) -> dict:
    """Val PSNR (dB, mean over view-clips) of the three baselines at a (temporal_factor x spatial_factor^2) token
    grid with codebook_size tokens; k-means is fit on about fit_blocks random blocks of train_clips (a memmap is
    fine: it is read a chunk at a time)."""
    tf, sf = temporal_factor, spatial_factor
    val = np.asarray(val_clips)
    if val.ndim != 5 or val.shape[-1] != 3 or len(val) == 0:
        raise ValueError(f"val clips must be a non-empty uint8 array (N, T, H, W, 3); got shape {val.shape}")
    flat = torch.from_numpy(val.astype(np.float32)).flatten(1, 3)                            # (N, T*H*W, 3)
    clip_mean = flat.mean(1, keepdim=True).expand_as(flat).reshape(val.shape)
    clip_mean = clip_mean.round().clamp(0, 255).to(torch.uint8).numpy()
    vb = to_blocks(val, tf, sf)
    block_mean = vb.view(len(vb), -1, 3).mean(1, keepdim=True).expand(-1, tf * sf * sf, -1).reshape(vb.shape)
    g = torch.Generator().manual_seed(seed)
    train_blocks = sample_blocks(train_clips, tf, sf, fit_blocks, g)
    centroids = kmeans(train_blocks, codebook_size, iterations, seed)
    quantized = from_blocks(centroids[_nearest(vb, centroids)], val.shape, tf, sf)
    block_mean = from_blocks(block_mean, val.shape, tf, sf)
    return {"clip_mean": float(psnr_per_clip(val, clip_mean).mean()),
            "block_mean": float(psnr_per_clip(val, block_mean).mean()),
            "kmeans": float(psnr_per_clip(val, quantized).mean()), "kmeans_motion_ratio": motion_ratio(val, quantized),
            # PSNR over the moving pixels only (training.metrics.moving_psnr): where a blur of the object shows
            "moving": {"clip_mean": moving_psnr(val, clip_mean), "block_mean": moving_psnr(val, block_mean),
                       "kmeans": moving_psnr(val, quantized)},
            "kmeans_codes": int(len(centroids)), "fit_blocks": int(len(train_blocks)),
            "grid": f"{tf}x{sf}x{sf}", "codebook_size": int(codebook_size)}
