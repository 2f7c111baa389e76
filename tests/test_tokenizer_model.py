"""training.tokenizer: shapes per quantizer, encoder/decoder causality in time, VQ/LFQ/FSQ behaviour (straight-through,
usage/perplexity, dead-code restart, index round trips), config validation, and a tiny overfit. CPU, seconds."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from datagen.config import UserError
from training.tokenizer import (FiniteScalarQuantizer, LookupFreeQuantizer, TokenizerConfig, VectorQuantizer,
                                VideoTokenizer, build_quantizer, codebook_stats)

# 16x16 frames, 2 levels -> spatial factor 2, temporal factor 2
TINY = TokenizerConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, temporal_downsample=(True,), norm_groups=4,
                       z_channels=8, codebook_size=64, fsq_levels=(4, 4, 4), dead_code_threshold=0)
# three levels, both temporal: factor 4 in space and time, to exercise stacked strides
TINY3 = dataclasses.replace(TINY, channel_mult=(1, 1, 2), temporal_downsample=(True, True))
# patching (2 frames x 2 x 2 pixels folded into channels) under one more level: factor 4 in space and time
PATCHED = dataclasses.replace(TINY, patch_size=2, patch_frames=2)
# the per-position LayerNorm instead of per-frame GroupNorm
LAYER = dataclasses.replace(PATCHED, norm="layer")
# the demo's shape: patching into one latent frame per 2 frames and no time taps (a 2D net per latent frame)
FLAT = dataclasses.replace(LAYER, channel_mult=(1,), temporal_downsample=(), temporal_kernel=1)


def cfg_for(quantizer: str, base: TokenizerConfig = TINY, **kw) -> TokenizerConfig:
    return dataclasses.replace(base, quantizer=quantizer, **kw)


def clip(b=2, t=8, h=16, w=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


# --- shapes ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantizer", ["vq", "lfq", "fsq"])
def test_shapes_and_aux(quantizer):
    torch.manual_seed(0)
    cfg = cfg_for(quantizer)
    model = VideoTokenizer(cfg)
    x = clip()
    x_hat, idx, aux = model(x)
    assert x_hat.shape == x.shape
    assert idx.shape == (2, 4, 8, 8) and idx.dtype == torch.int64
    assert cfg.latent_shape(8, 16, 16) == (4, 8, 8)
    assert 0 <= int(idx.min()) and int(idx.max()) < cfg.codebook_size
    for key in ("commitment_loss", "codebook_loss", "entropy_loss", "loss", "perplexity", "usage"):
        assert aux[key].ndim == 0 and torch.isfinite(aux[key]), key
    assert 1.0 - 1e-4 <= float(aux["perplexity"]) <= cfg.codebook_size + 1e-3
    assert 0 < float(aux["usage"]) <= 1
    assert model.decode_indices(idx).shape == x.shape
    assert model.num_parameters() > 0


def test_patching_folds_pixels_into_channels_and_back():
    cfg = dataclasses.replace(PATCHED, quantizer="fsq")
    assert (cfg.spatial_factor, cfg.temporal_factor) == (4, 4)
    assert cfg.latent_shape(8, 16, 16) == (2, 4, 4)
    model = VideoTokenizer(cfg)
    assert model.encoder.conv_in.conv.in_channels == 3 * 2 * 2 * 2
    x = clip(t=8)
    x_hat, idx, _ = model(x)
    assert x_hat.shape == x.shape and idx.shape == (2, 2, 4, 4)
    # a pixel's value reaches only the latent position of its own patch (1x1 convs see no neighbours)
    point = dataclasses.replace(cfg, channel_mult=(1,), temporal_downsample=(), num_res_blocks=0)
    enc = VideoTokenizer(point).encoder
    enc.blocks, enc.norm_out = torch.nn.Identity(), torch.nn.Identity()   # GroupNorm mixes positions of a frame
    enc.conv_in = torch.nn.Conv3d(3 * 8, 16, 1)
    y = x.clone()
    y[:, :, 5, 9, 2] += 1                      # frame 5, row 9, col 2 -> latent (t=2, h=4, w=1) of a 2x2x2 patch
    with torch.no_grad():
        changed = (enc(y) - enc(x)).abs().sum((0, 1)) > 0
    assert changed.nonzero().tolist() == [[2, 4, 1]]


def test_latent_shape_full_like():
    cfg = TokenizerConfig(channels=64, channel_mult=(1, 2, 2, 4), temporal_downsample=(False, True, True))
    assert cfg.latent_shape(16, 128, 128) == (4, 16, 16)
    assert TokenizerConfig().latent_shape(16, 64, 64) == (4, 16, 16)


# --- size independence -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["group", "layer"])
def test_layer_norm_encodes_a_crop_like_the_whole_frame(norm):
    """The demo tokenizer trains on 32x32 crops and is used on 64x64 frames. With the per-position LayerNorm the
    encoder's output inside a crop (away from the crop's border, which the convs' zero padding reaches) is the
    same as on the whole frame; a per-frame GroupNorm's statistics over H x W make it differ."""
    torch.manual_seed(0)
    cfg = TokenizerConfig(channels=16, channel_mult=(1,), num_res_blocks=0, temporal_downsample=(), norm_groups=4,
                          z_channels=8, codebook_size=64, patch_size=2, patch_frames=2, norm=norm)
    model = VideoTokenizer(cfg).eval()
    whole = clip(b=1, t=4, h=48, w=48)
    whole[..., :24, :] += 0.8   # an uneven frame: the top half brighter, as sky above a floor
    crop = whole[..., 16:40, 16:40]
    with torch.no_grad():
        z_whole, z_crop = model.encoder(whole), model.encoder(crop)
    r = 5   # tokens the 3x3 convs reach (conv_in + 2 mid blocks x 2 convs); tokens are 2x2 pixels
    inner_whole = z_whole[..., 8 + r:20 - r, 8 + r:20 - r]
    inner_crop = z_crop[..., r:12 - r, r:12 - r]
    if norm == "layer":
        torch.testing.assert_close(inner_crop, inner_whole, atol=1e-5, rtol=1e-5)
    else:
        assert (inner_crop - inner_whole).abs().max() > 1e-2


# --- causality -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("base,k", [(TINY, 2), (TINY, 4), (TINY3, 4), (PATCHED, 4), (LAYER, 4), (FLAT, 2), (FLAT, 4)])
@pytest.mark.parametrize("quantizer", ["vq", "lfq", "fsq"])
def test_encoder_is_causal(quantizer, base, k):
    torch.manual_seed(0)
    cfg = cfg_for(quantizer, base)
    f = cfg.temporal_factor
    model = VideoTokenizer(cfg).eval()
    x = clip(t=8)
    y = x.clone()
    y[:, :, k:] = clip(t=8 - k, seed=1)
    with torch.no_grad():
        zx, zy = model.encoder(x), model.encoder(y)
        _, ix, _ = model.encode(x)
        _, iy, _ = model.encode(y)
    m = k // f                                   # latent frames covering input frames 0..k-1
    assert torch.equal(zx[:, :, :m], zy[:, :, :m])
    assert torch.equal(ix[:, :m], iy[:, :m])
    assert not torch.equal(zx[:, :, m:], zy[:, :, m:])
    # and the prefix alone encodes to the same latents: nothing of the future is needed
    with torch.no_grad():
        assert torch.allclose(model.encoder(x[:, :, :k]), zx[:, :, :m], atol=1e-5)


@pytest.mark.parametrize("base", [TINY, TINY3, PATCHED, LAYER, FLAT])
def test_decoder_is_causal(base):
    torch.manual_seed(0)
    cfg = cfg_for("vq", base)
    f = cfg.temporal_factor
    model = VideoTokenizer(cfg).eval()
    with torch.no_grad():
        _, idx, _ = model.encode(clip(t=8))
        j = 1
        other = idx.clone()
        other[:, j:] = (other[:, j:] + 1) % cfg.codebook_size
        a, b = model.decode_indices(idx), model.decode_indices(other)
    assert torch.equal(a[:, :, :j * f], b[:, :, :j * f])
    assert not torch.equal(a[:, :, j * f:], b[:, :, j * f:])


def test_temporal_kernel_one_codes_each_latent_frame_alone():
    """With temporal_kernel = 1 and no temporal downsampling nothing mixes latent frames, in either direction: a
    latent frame's tokens depend on its own frames only, and its decoded frames on its own tokens only."""
    torch.manual_seed(0)
    model = VideoTokenizer(cfg_for("fsq", FLAT)).eval()
    assert all(m.conv.kernel_size[0] == 1 for m in model.modules() if type(m).__name__ == "CausalConv3d")
    x = clip(t=8)
    y = x.clone()
    y[:, :, 2:4] = clip(t=2, seed=1)                    # change latent frame 1 only (frames 2, 3)
    with torch.no_grad():
        _, ix, _ = model.encode(x)
        _, iy, _ = model.encode(y)
        same = [torch.equal(ix[:, j], iy[:, j]) for j in range(4)]
        other = ix.clone()
        other[:, 1] = (other[:, 1] + 1) % model.cfg.codebook_size
        a, b = model.decode_indices(ix), model.decode_indices(other)
    assert same == [True, False, True, True]
    assert torch.equal(a[:, :, :2], b[:, :, :2]) and torch.equal(a[:, :, 4:], b[:, :, 4:])
    assert not torch.equal(a[:, :, 2:4], b[:, :, 2:4])


@pytest.mark.parametrize("kernel", [1, 3])
def test_encoder_kernel_one_codes_each_token_from_its_own_patch(kernel):
    """With encoder_kernel = 1 a token's latent depends on its own patch only: changing the pixels of one token leaves
    every other token's latent bit-identical (the decoder still sees neighbours). With 3x3 convs the change spreads."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg_for("fsq", FLAT), encoder_kernel=kernel)
    model = VideoTokenizer(cfg).eval()
    x = clip(t=4, h=32, w=32)
    y = x.clone()
    p = cfg.patch_size
    y[:, :, :, p:2 * p, 2 * p:3 * p] = clip(t=4, h=p, w=p, seed=1)   # the pixels of token (row 1, col 2)
    with torch.no_grad():
        changed = (model.encoder(x) - model.encoder(y)).abs().amax(dim=(0, 1, 2)) > 0   # (h, w) tokens
    expected = torch.zeros_like(changed)
    expected[1, 2] = True
    if kernel == 1:
        assert torch.equal(changed, expected)
    else:
        assert changed[1, 2] and changed.sum() > 1 + 8           # beyond the token's 8 neighbours


def test_encoder_kernel_one_needs_a_single_level():
    with pytest.raises(UserError, match="encoder_kernel 1 needs a single level"):
        dataclasses.replace(TokenizerConfig(), encoder_kernel=1).validate()
    with pytest.raises(UserError, match="encoder_kernel 2 must be an odd integer"):
        dataclasses.replace(FLAT, encoder_kernel=2).validate()


def test_temporal_kernel_must_be_positive():
    with pytest.raises(UserError, match="temporal_kernel 0 must be >= 1"):
        dataclasses.replace(FLAT, temporal_kernel=0).validate()


# --- code-space health -----------------------------------------------------------------------------------------------

def test_code_space_health_on_hand_made_latents():
    from training.tokenizer import code_space_health

    # four codes at the corners of a square in 2-D: variance spread evenly over both axes, no duplicates
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]).repeat(5, 1)
    health = code_space_health(square, torch.arange(4).repeat(5))
    assert health == {"effective_dim": pytest.approx(2.0), "duplicate_codes": 0.0}
    # the same four tokens placed on one line: one dimension
    line = torch.tensor([[-1.5, 0.0], [-0.5, 0.0], [0.5, 0.0], [1.5, 0.0]]).repeat(5, 1)
    assert code_space_health(line, torch.arange(4).repeat(5))["effective_dim"] == pytest.approx(1.0)
    # a collapsed codebook: 4 distinct ids, all within 0.01 of each other
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.995, 0.0], [1.0, -0.005]])
    assert code_space_health(collapsed, torch.arange(4))["duplicate_codes"] == 1.0
    # two clusters of two: every code has a near twin
    pairs = torch.tensor([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0], [-1.0, 0.05]])
    assert code_space_health(pairs, torch.arange(4))["duplicate_codes"] == 1.0
    # one code for every position: no spread at all
    assert code_space_health(torch.ones(6, 3), torch.zeros(6, dtype=torch.long)) == {"effective_dim": 0.0,
                                                                                       "duplicate_codes": 0.0}


def test_fsq_lattice_never_has_duplicates():
    from training.tokenizer import code_space_health

    q = FiniteScalarQuantizer(cfg_for("fsq", FLAT, fsq_levels=(8, 5, 5, 5), codebook_size=1000))
    idx = torch.arange(1000)
    codes = q.indices_to_codes(idx.view(1, 1, 1, -1))[0, :, 0, 0].T            # (1000, 4)
    assert code_space_health(codes, idx)["duplicate_codes"] == 0.0


# --- VQ --------------------------------------------------------------------------------------------------------------

def test_vq_straight_through_reaches_encoder():
    torch.manual_seed(0)
    model = VideoTokenizer(cfg_for("vq"))
    x = clip()
    x_hat, _, aux = model(x)
    (F.mse_loss(x_hat, x) + aux["loss"]).backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model.quantizer.codebook.grad is not None and float(model.quantizer.codebook.grad.abs().sum()) > 0


def test_vq_stats_on_hand_made_examples():
    q = VectorQuantizer(cfg_for("vq", codebook_size=4, z_channels=2)).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))
    same = torch.tensor([3.0, 0.1]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 3, 3)   # every position -> code 0
    _, idx, aux = q(same)
    assert torch.equal(idx, torch.zeros_like(idx))
    assert float(aux["usage"]) == pytest.approx(1 / 4)
    assert float(aux["perplexity"]) == pytest.approx(1.0)
    four = torch.tensor([[2.0, 0.1], [0.1, 5], [-1, 0.2], [0.3, -2]]).t().reshape(1, 2, 1, 2, 2)  # one per code
    _, idx, aux = q(four)
    assert idx.flatten().tolist() == [0, 1, 2, 3]
    assert float(aux["usage"]) == pytest.approx(1.0)
    assert float(aux["perplexity"]) == pytest.approx(4.0)
    # codebook_stats directly: half the positions on code 0, half on code 1 of 8 -> perplexity 2
    s = codebook_stats(torch.tensor([0, 0, 1, 1]), 8)
    assert float(s["perplexity"]) == pytest.approx(2.0) and float(s["usage"]) == pytest.approx(2 / 8)


def test_vq_entropy_loss_prefers_diverse_confident_assignments():
    cfg = cfg_for("vq", codebook_size=4, z_channels=2, entropy_weight=0.1, entropy_temperature=0.05)
    q = VectorQuantizer(cfg).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))
    diverse = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]).t().reshape(1, 2, 1, 2, 2)
    collapsed = torch.tensor([1.0, 0]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 2, 2)
    ambiguous = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 2, 2)   # halfway between two codes
    e = {name: q(z)[2]["entropy_loss"].item() for name, z in
         [("diverse", diverse), ("collapsed", collapsed), ("ambiguous", ambiguous)]}
    assert e["diverse"] < e["collapsed"] and e["diverse"] < e["ambiguous"]
    assert e["diverse"] == pytest.approx(-math.log(4), abs=1e-3)


def test_vq_dead_codes_are_restarted():
    torch.manual_seed(0)
    cfg = cfg_for("vq", codebook_size=8, z_channels=4, dead_code_threshold=3)
    q = VectorQuantizer(cfg).train()
    with torch.no_grad():
        q.codebook[5] = -q.codebook[0]
    # every input sits on code 0, so code 5 (its antipode) is never picked and must be restarted after 3 steps
    z = q.codebook.detach()[0].view(1, 4, 1, 1, 1).expand(2, 4, 1, 3, 3) + 0.01 * torch.randn(2, 4, 1, 3, 3)
    before = q.codebook.detach().clone()
    for _ in range(3):
        q(z)
    assert torch.equal(q.codebook[5], before[5])          # not yet: threshold steps must have passed
    q(z)
    assert not torch.allclose(q.codebook[5], before[5])
    assert F.cosine_similarity(q.codebook[5], before[0], dim=0) > 0.99   # moved onto an encoder output
    assert int(q.unused_steps[5]) <= 1
    # eval mode never restarts
    q.eval()
    frozen = q.codebook.detach().clone()
    for _ in range(10):
        q(z)
    assert torch.equal(q.codebook, frozen)


@pytest.mark.parametrize("quantizer", ["vq", "lfq", "fsq"])
def test_indices_to_codes_round_trip(quantizer):
    torch.manual_seed(0)
    model = VideoTokenizer(cfg_for(quantizer)).eval()
    with torch.no_grad():
        z_q, idx, _ = model.encode(clip())
        codes = model.quantizer.indices_to_codes(idx)
        assert torch.allclose(codes, z_q, atol=1e-6)
        assert torch.allclose(model.decode_indices(idx), model.decode(z_q), atol=1e-5)


# --- LFQ / FSQ -------------------------------------------------------------------------------------------------------

def test_lfq_codes_are_signs_and_bits_round_trip():
    cfg = cfg_for("lfq", codebook_size=16)
    q = LookupFreeQuantizer(cfg)
    assert cfg.code_dim == 4
    z_q, idx, _ = q(torch.randn(2, 4, 2, 3, 3))
    assert set(z_q.unique().tolist()) <= {-1.0, 1.0}
    all_idx = torch.arange(16).view(1, 1, 4, 4)
    codes = q.indices_to_codes(all_idx)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    _, back, _ = q(codes)
    assert torch.equal(back, all_idx)
    # most significant bit first: index 8 = (1, -1, -1, -1)
    assert q.indices_to_codes(torch.tensor([8]).view(1, 1, 1, 1)).flatten().tolist() == [1, -1, -1, -1]


def test_fsq_round_trip_over_the_whole_codebook():
    for levels in [(4, 4, 4), (5, 3), (8, 5, 5, 5), (2, 2, 7)]:
        cfg = cfg_for("fsq", fsq_levels=levels, codebook_size=math.prod(levels))
        q = FiniteScalarQuantizer(cfg)
        all_idx = torch.arange(cfg.codebook_size).view(1, 1, 1, -1)
        codes = q.indices_to_codes(all_idx)
        assert float(codes.abs().max()) <= 1
        # the codes as decoder input are distinct, and each code's preimage quantizes back to it
        assert len({tuple(c) for c in codes.flatten(2).squeeze(0).t().tolist()}) == cfg.codebook_size
        z = _fsq_preimage(q, codes)
        z_q, back, _ = q(z)
        assert torch.equal(back, all_idx)
        assert torch.allclose(z_q, codes, atol=1e-6)
        # random latents land on valid codes
        _, idx, _ = q(torch.randn(1, len(levels), 1, 64, 64) * 3)
        assert int(idx.max()) < cfg.codebook_size and int(idx.min()) >= 0


def _fsq_preimage(q: FiniteScalarQuantizer, codes: torch.Tensor) -> torch.Tensor:
    """Invert the bound: z with tanh(z + shift) * half_l - offset == integer level."""
    lv = q.levels.view(1, -1, 1, 1, 1).float()
    hw = q.half_width.view(1, -1, 1, 1, 1).float()
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    target = codes * hw
    return torch.atanh(((target + offset) / half_l).clamp(-0.9999, 0.9999)) - torch.tan(offset / half_l)


def test_fsq_hysteresis_keeps_a_code_while_its_latent_stays_near():
    """Levels (5,): a latent that wanders 0.1 around a rounding boundary flickers between two codes with plain
    rounding; with hysteresis 0.3 it keeps the first frame's code, and a real move (two levels) still switches."""
    cfg = cfg_for("fsq", fsq_levels=(5,), codebook_size=5)
    q = FiniteScalarQuantizer(cfg)
    level = torch.tensor([0.45, 0.55, 0.45, 0.6, 2.0])                  # bounded values, one latent frame each
    codes = (level / q.half_width.float()).view(1, 1, 5, 1, 1)
    z = _fsq_preimage(q, codes)
    plain = q(z)[1].flatten().tolist()
    assert plain == [2, 3, 2, 3, 4]                                     # 0.45 -> level 0, 0.55 -> level 1 (id + 2)
    assert torch.equal(q.indices_with_hysteresis(z, 0.0), q(z)[1])
    assert q.indices_with_hysteresis(z, 0.3).flatten().tolist() == [2, 2, 2, 2, 4]


def test_encode_indices_with_hysteresis_needs_fsq():
    x = clip(b=1, t=4)
    fsq = VideoTokenizer(cfg_for("fsq", FLAT)).eval()
    with torch.no_grad():
        assert torch.equal(fsq.encode_indices(x), fsq.encode(x)[1])
        sticky = fsq.encode_indices(x, 0.5)
    assert sticky.shape == fsq.encode(x)[1].shape
    with pytest.raises(UserError, match="code hysteresis needs an FSQ tokenizer; this one uses vq"):
        VideoTokenizer(cfg_for("vq", FLAT)).encode_indices(x, 0.5)


# --- bad input -------------------------------------------------------------------------------------------------------

def test_unknown_quantizer_is_a_one_line_error():
    cfg = cfg_for("xyz")
    for make in (build_quantizer, VideoTokenizer, lambda c: c.validate(64, 16)):
        with pytest.raises(UserError) as e:
            make(cfg)
        msg = str(e.value)
        assert "\n" not in msg and "'xyz'" in msg and "vq, lfq, fsq" in msg


@pytest.mark.parametrize("kwargs,args,words", [
    ({}, (62, 16), ["resolution 62", "4"]),
    ({}, (64, 10), ["frames 10", "4"]),
    ({"temporal_downsample": (True,)}, (64, 16), ["temporal_downsample", "2"]),
    ({"quantizer": "lfq", "codebook_size": 1000}, (64, 16), ["1000", "power of two"]),
    ({"quantizer": "fsq", "codebook_size": 1000}, (64, 16), ["1000", "1024"]),
    ({"channels": 12}, (64, 16), ["norm_groups"]),
    ({"norm": "batch"}, (64, 16), ["'batch'", "group, layer"]),
])
def test_validate_rejects_bad_sizes_with_one_line(kwargs, args, words):
    cfg = dataclasses.replace(TokenizerConfig(), **kwargs)
    with pytest.raises(UserError) as e:
        cfg.validate(*args)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_encode_rejects_indivisible_clip():
    model = VideoTokenizer(cfg_for("vq"))
    with pytest.raises(UserError, match="frames 7"):
        model.encode(clip(t=7))
    with pytest.raises(UserError, match="resolution 15"):
        model.encode(clip(h=15))


# --- learning --------------------------------------------------------------------------------------------------------

def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss((a.clamp(-1, 1) + 1) / 2, (b + 1) / 2)   # on [0, 1], as in evaluation
    return float(10 * torch.log10(1 / mse))


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_tiny_model_overfits_one_clip(quantizer):
    torch.manual_seed(0)
    cfg = cfg_for(quantizer, codebook_size=64 if quantizer == "fsq" else 256, dead_code_threshold=20)
    model = VideoTokenizer(cfg).train()
    # a smooth moving blob on a gradient background: structure a tiny autoencoder can learn quickly
    t, hw = 4, 16
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, hw), torch.linspace(-1, 1, hw), indexing="ij")
    frames = []
    for i in range(t):
        cx = -0.5 + 0.3 * i
        blob = torch.exp(-((xx - cx) ** 2 + yy ** 2) / 0.1)
        frames.append(torch.stack([blob * 2 - 1, xx * 0.8, yy * 0.8 * (1 - blob)]))
    x = torch.stack(frames, 1)[None]                # (1, 3, T, H, W)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):                            # ~5 s on 2 cores; reaches ~25-27 dB here
        x_hat, _, aux = model(x)
        loss = F.mse_loss(x_hat, x) + aux["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x_hat, idx, _ = model(x)
    assert psnr(x_hat, x) > 22


def test_motion_weight_weighs_the_moving_pixels():
    model = VideoTokenizer(cfg_for("fsq", FLAT))
    x = torch.full((1, 3, 4, 16, 16), -0.5)
    x[:, :, 2:, 4:8, 4:8] = 0.5                           # a patch that appears half way: it moves
    still_error, moving_error = x.clone(), x.clone()
    still_error[:, :, :, 12:, 12:] += 0.2                 # the same error, on 16 still pixels...
    moving_error[:, :, :, 4:8, 4:8] += 0.2                # ...or on the 16 moving ones
    aux = {"loss": torch.zeros(())}
    for loss_kind in ("l1", "l2"):
        plain = [model.loss(x, e, aux, loss_kind)[1]["recon"] for e in (still_error, moving_error)]
        assert plain[0] == pytest.approx(float(plain[1]))
        weighted = [model.loss(x, e, aux, loss_kind, motion_weight=10.0)[1]["recon"] for e in (still_error, moving_error)]
        assert weighted[0] == pytest.approx(float(plain[0]))     # still pixels keep weight 1
        # moving pixels: 1 + 10 * |x - temporal mean| / 2 = 1 + 10 * 0.5 / 2 = 3.5
        assert weighted[1] == pytest.approx(3.5 * float(plain[1]), rel=1e-5)
