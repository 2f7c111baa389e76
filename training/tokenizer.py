"""Video tokenizer: a MAGVIT-shaped causal 3D-CNN autoencoder with a discrete bottleneck (VQ, LFQ or FSQ).

Clips are (B, 3, T, H, W) in [-1, 1]; views are folded into B by the caller. The encoder maps a clip to latents
(B, d, t, h, w), the quantizer turns each latent vector into one token, and the decoder maps (B, d, t, h, w) back to
(B, 3, T, H, W).

Patching: the encoder first folds patch_frames x patch_size x patch_size pixels into channels (space-to-depth), and the
decoder's last conv unfolds them, so the convs run at a fraction of the pixel resolution. On a CPU that is what buys
enough training steps: the images are smooth (4x bicubic down/up of the demo renders keeps 29.3 dB), and a full-res
conv stack spends most of its time on detail a linear patch map already carries. With temporal_kernel = 1 and no
temporal downsampling the convs have no time taps at all: each latent frame is coded by a 2D net on its own, which is
what the demo uses (time taps at the token grid made a step 2.8x dearer and learnt slower; docs/tokenizer.md).

Temporal scheme ("T divisible by f"): with a total temporal factor f = patch_frames * 2 ** (number of True in
temporal_downsample), T must be a multiple of f and latent frame j covers input frames [j*f, (j+1)*f). Causality holds
both ways:
  - encoder: latent frame j depends only on input frames < (j+1)*f (so the first k = m*f frames give the first m latent
    frames, bit for bit, whatever follows them);
  - decoder: output frames [j*f, (j+1)*f) depend only on latent frames <= j.
Three ingredients make that true: every conv pads time on the left only; a temporal stride-s conv pads kernel-s frames
so that its output j ends exactly at input frame (j+1)*s - 1; and GroupNorm normalizes each frame separately (a plain
GroupNorm over (C, T, H, W) would leak statistics of future frames into past ones); a temporal patch never spans two
groups. Temporal upsampling in the decoder is depth-to-space: a causal conv makes s frames' worth of channels from latent frame j, which become output frames j*s..j*s+s-1.
For 16 frames and two temporal downsamplings: 16 -> 4 latent frames (128x128x16 -> 4x16x16 tokens per view).

Quantizers share one interface: forward(z) -> (z_q, indices, aux), z_q straight-through (forward value = the code,
gradient = identity to z), indices (B, t, h, w) int64, aux = dict of scalar tensors: commitment_loss, codebook_loss,
entropy_loss, loss (their weighted sum: what the trainer adds to the reconstruction loss), perplexity, usage.
  - vq: l2-normalized codes, nearest code by cosine similarity; the codebook is learnt by gradient (codebook loss, as in
    VQ-VAE; ViT-VQGAN style normalized codes) which needs no buffer syncing under DDP. Dead codes (unused for
    dead_code_threshold training steps) are re-initialized from random encoder outputs of the current batch. At the
    demo's budget it collapses (one code without restarts; with them ~1,000 near-duplicates along ~1 direction), so
    the presets use fsq; see docs/tokenizer.md.
  - lfq: lookup-free: each of d = log2(codebook_size) channels is quantized to its sign; the index is the bit pattern.
  - fsq: each of len(fsq_levels) channels is squashed with tanh and rounded to one of L_i levels; no codebook, no aux loss.
The entropy term (vq, lfq) is MAGVIT-v2's: mean per-position entropy (want confident assignments) minus entropy of the
batch-mean assignment (want all codes used), both from a softmax over negative distances / entropy_temperature.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from datagen.config import UserError
from training.configs import NORMS, QUANTIZERS, TokenizerConfig  # noqa: F401 - the model's config, torch-free
from training.discriminator import generator_loss


# ----------------------------------------------------------------------------------------------------------------------
# causal building blocks

class CausalConv3d(nn.Module):
    """Conv3d padded on the left in time only (replicating the first frame), zeros in space.

    With temporal stride s it pads kernel - s frames, so output frame j sees input frames (j+1)*s - kernel .. (j+1)*s - 1:
    never beyond its own group of s frames."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1),
                 time_kernel: int | None = None):
        super().__init__()
        kt = kernel if time_kernel is None else time_kernel
        assert kt >= stride[0], "temporal stride larger than the kernel would skip frames"
        self.time_pad = kt - stride[0]
        self.conv = nn.Conv3d(cin, cout, (kt, kernel, kernel), stride=stride, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0), mode="replicate")
        return self.conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: normalizing over T would let future frames change past outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b c t h w", b=b)


class PositionLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each (t, h, w) position: causal, and independent of the clip's size, so a
    model trained on small crops sees the same statistics on whole frames (a per-frame GroupNorm does not: its
    mean and variance over H x W differ between a 32x32 crop and a 64x64 frame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def make_norm(cfg: "TokenizerConfig", channels: int) -> nn.Module:
    return FrameGroupNorm(cfg.norm_groups, channels) if cfg.norm == "group" else PositionLayerNorm(channels)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: "TokenizerConfig", kernel: int = 3):
        super().__init__()
        kt = cfg.temporal_kernel
        self.norm1, self.conv1 = make_norm(cfg, cin), CausalConv3d(cin, cout, kernel, time_kernel=kt)
        self.norm2, self.conv2 = make_norm(cfg, cout), CausalConv3d(cout, cout, kernel, time_kernel=kt)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Strided causal conv: H, W halved; T halved too when temporal (then 3 time taps, whatever temporal_kernel)."""

    def __init__(self, ch: int, temporal: bool, time_kernel: int = 3):
        super().__init__()
        self.conv = CausalConv3d(ch, ch, 3, stride=(2 if temporal else 1, 2, 2), time_kernel=3 if temporal else time_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Inverse of Downsample: time by depth-to-space (latent frame j -> frames 2j, 2j+1 only), space by nearest + conv."""

    def __init__(self, ch: int, temporal: bool, time_kernel: int = 3):
        super().__init__()
        self.time_conv = CausalConv3d(ch, 2 * ch, time_kernel=time_kernel) if temporal else None
        self.conv = CausalConv3d(ch, ch, time_kernel=time_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_conv is not None:
            x = rearrange(self.time_conv(x), "b (c s) t h w -> b c (t s) h w", s=2)
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(x)


# ----------------------------------------------------------------------------------------------------------------------
# encoder / decoder

class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.patch = (cfg.patch_frames, cfg.patch_size)
        k = cfg.encoder_kernel
        self.conv_in = CausalConv3d(3 * cfg.patch_frames * cfg.patch_size ** 2, widths[0], k,
                                    time_kernel=cfg.temporal_kernel)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, w, cfg, k))
                cin = w
            if i < len(widths) - 1:
                blocks.append(Downsample(cin, cfg.temporal_downsample[i], cfg.temporal_kernel))
        blocks += [ResBlock(cin, cin, cfg, k), ResBlock(cin, cin, cfg, k)]   # mid
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = make_norm(cfg, cin)
        self.conv_out = CausalConv3d(cin, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, p = self.patch   # a patch of q frames stays inside one latent frame's group, so patching is causal
        x = rearrange(x, "b c (t q) (h p) (w r) -> b (c q p r) t h w", q=q, p=p, r=p)
        h = self.blocks(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        cin = widths[-1]
        self.conv_in = CausalConv3d(cfg.code_dim, cin, time_kernel=cfg.temporal_kernel)
        blocks = [ResBlock(cin, cin, cfg), ResBlock(cin, cin, cfg)]   # mid
        for i in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, widths[i], cfg))
                cin = widths[i]
            if i > 0:
                blocks.append(Upsample(cin, cfg.temporal_downsample[i - 1], cfg.temporal_kernel))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = make_norm(cfg, cin)
        self.patch = (cfg.patch_frames, cfg.patch_size)
        self.conv_out = CausalConv3d(cin, 3 * cfg.patch_frames * cfg.patch_size ** 2, time_kernel=cfg.temporal_kernel)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(z))
        q, p = self.patch
        x = self.conv_out(F.silu(self.norm_out(h)))
        return rearrange(x, "b (c q p r) t h w -> b c (t q) (h p) (w r)", q=q, p=p, r=p)


# ----------------------------------------------------------------------------------------------------------------------
# quantizers

@torch.no_grad()
def codebook_stats(indices: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """perplexity = exp(entropy of the batch's code histogram), in [1, size]; usage = fraction of codes used, in (0, 1]."""
    counts = torch.bincount(indices.flatten(), minlength=size).float()
    p = counts / counts.sum()
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}


@torch.no_grad()
def code_space_health(z_q: torch.Tensor, indices: torch.Tensor, duplicate_distance: float = 0.1) -> dict[str, float]:
    """How much of the code space the tokens really span, which codebook usage alone does not show (a codebook can be
    fully used by ~1,000 near-identical codes). z_q: quantized latents (N, d); indices: (N,) their tokens.
      effective_dim: participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues of z_q over the N tokens:
                     d for latents spread evenly over d directions, 1 when they vary along one line, 0 for one code;
      duplicate_codes: fraction of the distinct codes used that lie within duplicate_distance of another used code.
                     Every quantizer's codes live in [-1, 1]^d or on the unit sphere, where 0.1 is a cosine of 0.995:
                     0 for FSQ's and LFQ's lattices by construction, near 1 for a collapsed VQ codebook."""
    z = z_q.double()
    eig = torch.linalg.eigvalsh(torch.atleast_2d(torch.cov(z.T))).clamp_min(0) if len(z) > 1 else torch.zeros(1)
    eff = float(eig.sum() ** 2 / (eig ** 2).sum()) if eig.sum() > 1e-12 else 0.0
    _, row = torch.unique(indices, return_inverse=True)
    codes = torch.zeros(int(row.max()) + 1, z.shape[1], dtype=z.dtype).index_copy_(0, row, z)   # one row per code
    if len(codes) < 2:
        return {"effective_dim": eff, "duplicate_codes": 0.0}
    dist = torch.cdist(codes, codes).fill_diagonal_(float("inf"))
    return {"effective_dim": eff, "duplicate_codes": float((dist.min(1).values < duplicate_distance).double().mean())}


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """MAGVIT-v2: mean per-position entropy (low = confident) minus entropy of the mean distribution (high = diverse)."""
    probs = logits.softmax(-1)
    per_sample = -(probs * logits.log_softmax(-1)).sum(-1).mean()
    avg = probs.mean(0)
    return per_sample - (-(avg * torch.log(avg.clamp_min(1e-12))).sum())


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Parameter(F.normalize(torch.randn(cfg.codebook_size, cfg.z_channels), dim=-1))
        # training steps since each code was last picked (all ranks agree: counts are all-reduced under DDP)
        self.register_buffer("unused_steps", torch.zeros(cfg.codebook_size, dtype=torch.long))

    def codes(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=-1)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.unused_steps >= self.cfg.dead_code_threshold
        n = int(dead.sum())
        if n == 0:
            return
        self.codebook.data[dead] = flat[torch.randint(len(flat), (n,), device=flat.device)].to(self.codebook.dtype)
        self.unused_steps[dead] = 0
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.codebook.data, 0)   # ranks sampled different rows; keep rank 0's

    @torch.no_grad()
    def _count_usage(self, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices, minlength=self.cfg.codebook_size)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)

    def forward(self, z: torch.Tensor):
        b, _, t, h, w = z.shape
        flat = F.normalize(rearrange(z, "b d t h w -> (b t h w) d").float(), dim=-1)
        restart = self.training and self.cfg.dead_code_threshold > 0
        if restart:   # before the lookup, so a restarted code can be picked (and learnt) right away
            self._restart_dead_codes(flat.detach())
        codes = self.codes()
        sim = flat @ codes.t()                        # cosine; distance on the sphere = 2 - 2 * sim
        indices = sim.argmax(-1)
        q = codes[indices]
        if restart:
            self._count_usage(indices)
        zero = flat.new_zeros(())
        aux = {"commitment_loss": F.mse_loss(flat, q.detach()),
               "codebook_loss": F.mse_loss(q, flat.detach()),
               "entropy_loss": (entropy_loss(-(2 - 2 * sim) / self.cfg.entropy_temperature)
                                if self.cfg.entropy_weight > 0 else zero)}
        aux["loss"] = (self.cfg.commitment_weight * aux["commitment_loss"] + self.cfg.codebook_weight * aux["codebook_loss"]
                       + self.cfg.entropy_weight * aux["entropy_loss"])
        aux.update(codebook_stats(indices, self.cfg.codebook_size))
        q = flat + (q - flat).detach()                # straight-through
        z_q = rearrange(q, "(b t h w) d -> b d t h w", b=b, t=t, h=h, w=w).to(z.dtype)
        return z_q, indices.view(b, t, h, w), aux

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return rearrange(self.codes()[indices], "b t h w d -> b d t h w")


class LookupFreeQuantizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg, d = cfg, cfg.code_dim
        self.register_buffer("bit_weights", 2 ** torch.arange(d - 1, -1, -1), persistent=False)  # first channel = MSB
        all_codes = ((torch.arange(cfg.codebook_size)[:, None] & self.bit_weights) > 0).float() * 2 - 1
        self.register_buffer("all_codes", all_codes, persistent=False)   # (K, d) in {-1, 1}, for the entropy term

    def bits_to_indices(self, q: torch.Tensor) -> torch.Tensor:
        """(..., d) in {-1, 1} -> (...) int64."""
        return ((q > 0).long() * self.bit_weights).sum(-1)

    def forward(self, z: torch.Tensor):
        b, _, t, h, w = z.shape
        flat = rearrange(z, "b d t h w -> (b t h w) d").float()
        q = torch.where(flat > 0, 1.0, -1.0)
        indices = self.bits_to_indices(q)
        zero = flat.new_zeros(())
        # -||z - c||^2 = 2 z.c + const per row, and softmax ignores per-row constants
        ent = (entropy_loss(2 * flat @ self.all_codes.t() / self.cfg.entropy_temperature)
               if self.cfg.entropy_weight > 0 else zero)
        aux = {"commitment_loss": F.mse_loss(flat, q), "codebook_loss": zero, "entropy_loss": ent}
        aux["loss"] = self.cfg.commitment_weight * aux["commitment_loss"] + self.cfg.entropy_weight * ent
        aux.update(codebook_stats(indices, self.cfg.codebook_size))
        q = flat + (q - flat).detach()
        z_q = rearrange(q, "(b t h w) d -> b d t h w", b=b, t=t, h=h, w=w).to(z.dtype)
        return z_q, indices.view(b, t, h, w), aux

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        bits = (indices[..., None] & self.bit_weights) > 0
        return rearrange(bits.float() * 2 - 1, "b t h w d -> b d t h w")


def fsq_digits(indices: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """FSQ ids (...) -> their per-channel levels (..., d), each in 0 .. L_i - 1: an id is the mixed-radix number
    sum_i digit_i * prod(L_0 .. L_{i-1}) (the token cache records the levels as code_levels)."""
    basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)
    return (indices[..., None] // basis) % levels


class FiniteScalarQuantizer(nn.Module):
    """FSQ (Mentzer et al. 2023): channel i is bounded to L_i values by tanh and rounded; codes scaled to [-1, 1]."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        levels = torch.tensor(cfg.fsq_levels)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + list(cfg.fsq_levels[:-1])), 0), persistent=False)
        self.register_buffer("half_width", levels // 2, persistent=False)

    def bound(self, flat: torch.Tensor) -> torch.Tensor:
        """(..., d) latents -> the same squashed into channel i's range of L_i levels (rounding gives the level)."""
        # even L needs a half-step offset so that rounding yields exactly L values (-L/2 .. L/2 - 1)
        # (shift by tan, not atanh, as in the paper's reference code: atanh saturates tanh for L = 2)
        half_l = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        return torch.tanh(flat + torch.tan(offset / half_l)) * half_l - offset

    def indices_with_hysteresis(self, z: torch.Tensor, margin: float) -> torch.Tensor:
        """Tokens (b, t, h, w) of latents z (b, d, t, h, w) where a position keeps its previous latent frame's code
        while every channel stays within 0.5 + margin levels of it: static content near a rounding boundary then
        keeps one code instead of flickering between neighbours (margin 0 = plain rounding)."""
        bounded = self.bound(rearrange(z, "b d t h w -> b t h w d").float())
        levels = bounded.round()
        for ti in range(1, levels.shape[1]):
            prev = levels[:, ti - 1]
            keep = ((bounded[:, ti] - prev).abs() <= 0.5 + margin).all(-1, keepdim=True)
            levels[:, ti] = torch.where(keep, prev, levels[:, ti])
        return self.levels_to_indices(levels)

    def levels_to_indices(self, levels: torch.Tensor) -> torch.Tensor:
        """Integer levels (..., d), each in -L_i/2 .. (L_i-1)/2 -> ids (...,): mixed radix over the channels."""
        return ((levels.round().long() + self.half_width) * self.basis).sum(-1)

    def forward(self, z: torch.Tensor):
        b, _, t, h, w = z.shape
        flat = rearrange(z, "b d t h w -> (b t h w) d").float()
        bounded = self.bound(flat)
        rounded = bounded + (bounded.round() - bounded).detach()     # straight-through rounding
        q = rounded / self.half_width
        indices = self.levels_to_indices(rounded.detach())
        zero = flat.new_zeros(())
        aux = {"commitment_loss": zero, "codebook_loss": zero, "entropy_loss": zero, "loss": zero}
        aux.update(codebook_stats(indices, self.cfg.codebook_size))
        z_q = rearrange(q, "(b t h w) d -> b d t h w", b=b, t=t, h=h, w=w).to(z.dtype)
        return z_q, indices.view(b, t, h, w), aux

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        digits = fsq_digits(indices, self.levels)
        return rearrange((digits - self.half_width).float() / self.half_width, "b t h w d -> b d t h w")


def build_quantizer(cfg: TokenizerConfig) -> nn.Module:
    if cfg.quantizer not in QUANTIZERS:
        raise UserError(f"unknown quantizer {cfg.quantizer!r}; allowed: {', '.join(QUANTIZERS)}")
    cfg.validate()
    return {"vq": VectorQuantizer, "lfq": LookupFreeQuantizer, "fsq": FiniteScalarQuantizer}[cfg.quantizer](cfg)


# ----------------------------------------------------------------------------------------------------------------------
# the tokenizer

class VideoTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = build_quantizer(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor):
        """(B, 3, T, H, W) in [-1, 1] -> z_q (B, d, t, h, w), indices (B, t, h, w) int64, aux dict."""
        self.cfg.validate(tuple(x.shape[-2:]), x.shape[2])
        z = self.encoder(x)
        with torch.autocast(z.device.type, enabled=False):   # nearest-code search and entropy in fp32, even under bf16
            return self.quantizer(z.float())

    def encode_indices(self, x: torch.Tensor, hysteresis: float = 0.0) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> tokens (B, t, h, w); hysteresis > 0 (FSQ only): codes stick across latent
        frames (FiniteScalarQuantizer.indices_with_hysteresis)."""
        if hysteresis <= 0:
            return self.encode(x)[1]
        if not isinstance(self.quantizer, FiniteScalarQuantizer):
            raise UserError(f"code hysteresis needs an FSQ tokenizer; this one uses {self.cfg.quantizer}")
        self.cfg.validate(tuple(x.shape[-2:]), x.shape[2])
        with torch.autocast(x.device.type, enabled=False):
            return self.quantizer.indices_with_hysteresis(self.encoder(x).float(), hysteresis)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, t, h, w) tokens -> (B, 3, T, H, W)."""
        return self.decoder(self.quantizer.indices_to_codes(indices))

    def forward(self, x: torch.Tensor):
        z_q, indices, aux = self.encode(x)
        return self.decode(z_q), indices, aux

    def loss(self, x: torch.Tensor, x_hat: torch.Tensor, aux: dict, recon_loss: str = "l1", perceptual=None,
             perceptual_weight: float = 0.0, disc=None, disc_weight: float = 0.0,
             motion_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """The training loss of a forward pass (x_hat, _, aux = model(x); called on the outputs so that the forward
        can go through a DDP wrapper): reconstruction (l1 | l2) + the quantizer's terms, + perceptual_weight * LPIPS
        per frame when `perceptual` (an LPIPS net) is given, + disc_weight * the generator's hinge term when `disc`
        (the discriminator) is. motion_weight > 0 weighs each pixel's reconstruction error by 1 + motion_weight * how
        far it is from its clip's temporal mean (max over RGB, on [0, 1]): a small moving object is a few % of the
        pixels, and an unweighted loss is met by blurring it into the still background.
        -> (loss, breakdown: quant_loss and the quantizer's other terms, recon[, g_adv])."""
        err = (x_hat.float() - x).abs()
        if recon_loss == "l2":
            err = err.pow(2)
        if motion_weight > 0:
            moving = (x - x.mean(2, keepdim=True)).abs().amax(1, keepdim=True) / 2   # (B, 1, T, H, W) in [0, 1]
            err = err * (1 + motion_weight * moving)
        recon = err.mean()
        loss = recon + aux["loss"]
        if perceptual is not None:  # LPIPS per frame: fold time into the batch
            frames = lambda v: v.float().transpose(1, 2).flatten(0, 1)  # noqa: E731
            loss = loss + perceptual_weight * perceptual(frames(x_hat), frames(x)).mean()
        parts = {**{f"quant_{k}" if k == "loss" else k: v for k, v in aux.items()}, "recon": recon}
        if disc is not None:
            parts["g_adv"] = generator_loss(disc(x_hat))
            loss = loss + disc_weight * parts["g_adv"]
        return loss, parts

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on the >= 2-D weights except the codebook (see weight_decay_groups)."""
        return weight_decay_groups(self.named_parameters(), weight_decay)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def weight_decay_groups(named_parameters, weight_decay: float) -> list[dict]:
    """Decay on >= 2-D weights (convs, linears), none on biases, norms and a codebook (decaying codes would pull
    them towards 0, away from the latents they stand for). Also used for the peer in benchmarks/tokenizer.py."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        (decay if p.ndim >= 2 and "codebook" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
