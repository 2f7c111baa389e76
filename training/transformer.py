"""The video transformer over the tokenizer's token grid: one file, top to bottom.

The sequence is C = 3 condition tokens followed by the N = V * t * h * w video tokens:

    [task] [shape] [family]  x(t=0, view 0, row 0, col 0) ... x(t=0, view V-1, h-1, w-1)  x(t=1, view 0, ...) ...

Video tokens are laid out in raster order, t-major (t, view, h, w), so the first latent frames of all views form a
prefix. Every video token embeds its code (codebook_size + 1 ids: the last is MASK) plus learned view, t, row and
column embeddings; the condition tokens embed the task and the class labels, with a "null" id for a label that
is not given.

Two architectures share every weight shape (`TransformerConfig.arch`):

    masked  bidirectional attention; the input has MASK where a token is unknown, the output predicts every
            position (MaskGIT / MAGVIT). Sampled by iterative parallel decoding (training/sampling.py).
    ar      the same backbone with a causal mask (VideoGPT-style baseline): the input is the sequence shifted by
            one, so the output at video position i predicts x_i from the condition and x_0 .. x_{i-1}. Sampled one
            token at a time with a KV cache (`KVCache`, `MaskedVideoTransformer.step`).

Copy logit (`TransformerConfig.copy_logit`): most tokens equal the token at the same view, row and column one latent
frame earlier (background, the parts of the object that stay). The head's logits get a learned bonus on that "copy
guess" (`reference_tokens`: the latest earlier latent frame whose token is visible there), so the model starts
from copying the last given frame and its capacity goes into what moves.

Rotary positions (`TransformerConfig.rope`): queries and keys are turned by angles that grow with the token's latent
frame, row and column (`rope_angles`), so attention scores depend on relative offsets ("the same place one latent
frame earlier", "one column to the left"), the relations motion is made of.

Code digits (`TransformerConfig.code_digits`, FSQ caches): an FSQ id is the mixed-radix number of per-channel levels
(`TokenLayout.code_levels`). Each token is also embedded as the sum of its levels' embeddings, and its logit gets the
log-probability of its levels under one softmax per channel, so codes that differ in one level share what is learned.

Copy window motion loss (`train.pointer_weight`, `pointer_loss`): the window's offset weights can be trained on
the tokens around the object towards the offset the object moved by (from the dataset's positions, read through
the token cache), and its gate towards copying there. Trained on the code ids alone, the window stays unused where
the object moves: a copied code is never exactly the code drawn at the new place.

Given track (`TransformerConfig.track_frames`): in the predict task the model also gets the object's 2D centre in
every given frame of every view. A motion module (`predict_track`, an MLP per view, trained by `track_loss`)
predicts from it the object's centre in every latent frame, and each token embeds its offset from the object in
every given frame and from the predicted centre in its own latent frame (`track_features`, through a small MLP).
Where the object goes is then in what each token reads, instead of in which code ids the object's tokens had.

Blocks are pre-LN with torch's scaled_dot_product_attention; weights are initialised as in GPT-2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.configs import ARCHS, TransformerConfig  # noqa: F401 - the model's config, torch-free
from training.tokenizer import fsq_digits

TASKS = ("predict", "generate", "complete-view", "unconditional")
NUM_COND = 3  # task, shape, family
# The copy bonus is COPY_SCALE * a parameter initialised to 0.5: the scale lets AdamW move it as fast as a logit
# (a few units in a few hundred steps) and the start (+5) already makes copying the most likely guess.
COPY_SCALE = 10.0
# track_frames: a token's offset from the object is fed in units of this many token cells (offsets of a few cells
# then give inputs of order 1)
TRACK_CELLS = 4.0
# the motion module reads the track relative to the last seen centre, in units of 1 / TRACK_SCALE of the image
TRACK_SCALE = 8.0


@dataclass
class TokenLayout:
    """What the token cache fixes: the grid and the vocabularies. Recorded in every transformer checkpoint."""
    codebook_size: int
    views: int
    t: int
    h: int
    w: int
    num_shapes: int
    num_families: int
    code_levels: tuple[int, ...] = ()   # FSQ levels per channel (id = mixed-radix digits); () = plain ids

    def __post_init__(self):
        self.code_levels = tuple(self.code_levels)
        if self.code_levels and math.prod(self.code_levels) != self.codebook_size:
            raise ValueError(f"code_levels {self.code_levels} do not multiply to codebook_size {self.codebook_size}")

    def code_digits(self) -> torch.Tensor:
        """(K, D): every id's digit per FSQ channel, offset into one table of sum(code_levels) rows."""
        offsets = torch.cumsum(torch.tensor((0,) + self.code_levels[:-1]), 0)
        return fsq_digits(torch.arange(self.codebook_size), torch.tensor(self.code_levels)) + offsets

    @property
    def num_tokens(self) -> int:
        return self.views * self.t * self.h * self.w

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def grid_index(self) -> dict[str, torch.Tensor]:
        """(N,) view / t / row / col index of every video position, in sequence (raster, t-major) order."""
        t, v, r, c = torch.meshgrid(torch.arange(self.t), torch.arange(self.views), torch.arange(self.h),
                                    torch.arange(self.w), indexing="ij")
        # contiguous: with one view meshgrid's expanded views flatten to overlapping memory, which copy_() refuses
        return {name: x.flatten().contiguous() for name, x in (("view", v), ("t", t), ("row", r), ("col", c))}

    def to_sequence(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, V, t, h, w) tokens -> (B, N) in sequence order."""
        return grid.transpose(1, 2).reshape(grid.shape[0], -1)

    def to_grid(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, N) in sequence order -> (B, V, t, h, w)."""
        return seq.reshape(seq.shape[0], self.t, self.views, self.h, self.w).transpose(1, 2)


class KVCache:
    """Keys and values of every layer for the positions fed so far (autoregressive sampling)."""

    def __init__(self, depth: int, max_len: int):
        self.depth, self.max_len = depth, max_len
        self.k = self.v = None
        self.length = 0  # positions (condition + video) already in the cache
        self.centres = None  # the motion module's centres for the clips' track (track_frames): computed once
        self.family = None   # the family ids of the condition fed on the first call (the motion module reads them)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values (B, heads, n, d) after the cached ones; return all of them."""
        if self.k is None:  # allocated on first use, in the dtype the layers produce (bf16 under autocast)
            B, H, _, D = k.shape
            self.k = k.new_zeros(self.depth, B, H, self.max_len, D)
            self.v = v.new_zeros(self.depth, B, H, self.max_len, D)
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def rope_angles(layout: TokenLayout, head_dim: int) -> torch.Tensor:
    """(NUM_COND + N, head_dim // 2) rotation angles per sequence position: the head's channel pairs are split
    between t (a quarter), row and column (the rest, halved); pair i of an axis with n cells turns by
    (4n) ** (-i / pairs) radians per cell, from one radian per cell down to a quarter turn across the axis. The
    condition tokens and any pairs left over do not turn."""
    pairs = head_dim // 2
    split = {"t": pairs // 4, "row": (pairs - pairs // 4) // 2, "col": (pairs - pairs // 4) // 2}
    index = layout.grid_index()
    cells = {"t": layout.t, "row": layout.h, "col": layout.w}
    angles = torch.zeros(NUM_COND + layout.num_tokens, pairs)
    start = 0
    for axis, k in split.items():
        if k:
            freq = (4.0 * cells[axis]) ** (-torch.arange(k) / k)
            angles[NUM_COND:, start:start + k] = index[axis][:, None].float() * freq[None]
        start += k
    return angles


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: channel pairs (2i, 2i+1) of x (B, heads, L, d) turned by the angles behind cos/sin (L, d/2)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int):
        super().__init__()
        self.heads, self.layer, self.dropout = cfg.heads, layer, cfg.dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, rope=None) -> torch.Tensor:
        B, L, W = x.shape
        q, k, v = (z.view(B, L, self.heads, W // self.heads).transpose(1, 2) for z in self.qkv(x).split(W, dim=2))
        if rope is not None:   # (cos, sin) of these L positions
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:  # new positions start..start+L-1 attend to every cached position and causally among themselves
            start = cache.length
            k, v = cache.update(self.layer, k, v)
            mask = None
            if L > 1:
                key, query = torch.arange(start + L, device=x.device), torch.arange(start, start + L, device=x.device)
                mask = key[None] <= query[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, W))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.width)
        self.fc = nn.Linear(cfg.width, hidden)
        self.proj = nn.Linear(hidden, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = SelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, rope=None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), causal, cache, rope))
        return x + self.mlp(self.ln2(x))


class MaskedVideoTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, layout: TokenLayout):
        super().__init__()
        cfg.validate()
        self.cfg, self.layout = cfg, layout
        W = cfg.width
        self.token = nn.Embedding(layout.codebook_size + 1, W)          # + MASK
        self.view = nn.Embedding(layout.views, W)
        self.time = nn.Embedding(layout.t, W)
        self.row = nn.Embedding(layout.h, W)
        self.col = nn.Embedding(layout.w, W)
        self.task = nn.Embedding(len(TASKS), W)
        self.shape = nn.Embedding(layout.num_shapes + 1, W)              # + null (not given)
        self.family = nn.Embedding(layout.num_families + 1, W)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.ln_f = nn.LayerNorm(W)
        self.head = nn.Linear(W, layout.codebook_size)
        self.digits = cfg.code_digits and bool(layout.code_levels)
        if self.digits:
            self.register_buffer("code_digit_index", layout.code_digits(), persistent=False)
            one_hot = torch.zeros(sum(layout.code_levels), layout.codebook_size)   # id's digits as a matrix
            one_hot[self.code_digit_index.T, torch.arange(layout.codebook_size)] = 1.0
            self.register_buffer("code_digit_matrix", one_hot, persistent=False)
            self.digit_embed = nn.Embedding(sum(layout.code_levels), W)
            self.digit_head = nn.Linear(W, sum(layout.code_levels))
        self.window = r = cfg.copy_window
        # the window's offsets (dy, dx), row-major from (-r, -r); window_index (below) maps them to positions
        self.offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
        if self.window:
            self.shift_head = nn.Linear(W, len(self.offsets))                # log-weights of the offsets
            self.pointer_gate = nn.Linear(W, 1)                          # logit of copying vs the vocabulary
        if cfg.copy_logit and not self.window:
            self.copy_gain = nn.Parameter(torch.tensor(0.5))
        self.copy_gate = nn.Linear(W, 1) if cfg.copy_logit and cfg.copy_gate else None
        for name, index in layout.grid_index().items():
            self.register_buffer(f"{name}_index", index, persistent=False)
        if self.window:   # (N, D): the position of each offset's neighbour, same view and latent frame; -1 off the grid
            dy, dx = (torch.tensor(d) for d in zip(*self.offsets))
            row, col = self.row_index[:, None] + dy, self.col_index[:, None] + dx
            on_grid = (row >= 0) & (row < layout.h) & (col >= 0) & (col < layout.w)
            neighbour = torch.arange(layout.num_tokens)[:, None] + dy * layout.w + dx
            self.register_buffer("window_index", torch.where(on_grid, neighbour, -1), persistent=False)
        self.track_embed = self.track_motion = None
        if cfg.track_frames:
            K = cfg.track_frames
            # the motion module: a view's given track -> the object's mean centre in each latent frame (track_loss)
            # (+ the family label, one-hot, with track_family)
            inputs = 3 * K + (layout.num_families if cfg.track_family else 0)
            self.track_motion = nn.Sequential(nn.Linear(inputs, 4 * W), nn.GELU(), nn.Linear(4 * W, 2 * layout.t))
            # per token: its offset from the object in each given frame (3 numbers each) and from the predicted
            # centre in its own latent frame (2), and how close that is (1)
            self.track_embed = nn.Sequential(nn.Linear(3 * K + 3, W), nn.GELU(), nn.Linear(W, W))
        if cfg.rope:
            angles = rope_angles(layout, W // cfg.heads)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.depth))
        if self.window:   # starts as the copy guess: offset (0, 0) ~95 % of the pointer, the pointer ~95 %
            nn.init.zeros_(self.shift_head.weight)
            nn.init.zeros_(self.shift_head.bias)
            self.shift_head.bias.data[self.offsets.index((0, 0))] = 3.0 + math.log(len(self.offsets))
            nn.init.zeros_(self.pointer_gate.weight)
            nn.init.constant_(self.pointer_gate.bias, 3.0)
        if self.copy_gate is not None:   # starts as the plain copy bonus
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.zeros_(self.copy_gate.bias)
        if self.track_embed is not None:   # starts as the model without the track
            nn.init.zeros_(self.track_embed[-1].weight)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def causal(self) -> bool:
        return self.cfg.arch == "ar"

    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, 3) = [task id, shape id, family id] (null ids: num_shapes, num_families) -> (B, 3, W)."""
        return torch.stack([self.task(cond[:, 0]), self.shape(cond[:, 1]), self.family(cond[:, 2])], 1)

    def embed_video(self, tokens: torch.Tensor, start: int = 0, track: torch.Tensor | None = None,
                    centres: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, n) at sequence positions start..start+n-1 -> (B, n, W); with track_frames, + the embedding of
        `track` (B, V, K, 3) as each token sees it (track_features; None: no track, as in every task but predict),
        with the predicted `centres` when computed already."""
        pos = slice(start, start + tokens.shape[1])
        x = (self.token(tokens) + self.view(self.view_index[pos]) + self.time(self.t_index[pos])
             + self.row(self.row_index[pos]) + self.col(self.col_index[pos]))
        if self.digits:   # + the sum of the token's per-channel level embeddings (none for MASK)
            known = (tokens != self.layout.mask_id)[..., None]
            digits = self.code_digit_index[tokens.clamp_max(self.layout.codebook_size - 1)]
            x = x + self.digit_embed(digits).sum(-2) * known
        if self.track_embed is not None:
            track = self.track_or_unseen(track, len(tokens), tokens.device)
            x = x + self.track_embed(self.track_features(track, pos, centres).to(x.dtype))
        return x

    def track_or_unseen(self, track: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """The given track (B, V, K, 3), or for None one where the object is seen nowhere (all zeros): what a model
        with track_frames reads in a task without a track."""
        if track is not None:
            return track
        return torch.zeros(batch, self.layout.views, self.cfg.track_frames, 3, device=device)

    def predict_track(self, track: torch.Tensor, family: torch.Tensor | None = None) -> torch.Tensor:
        """The motion module: track (B, V, K, 3), per view and given frame the object's centre (x / W, y / H) and
        visibility -> (B, V, t, 2): the object's predicted mean centre in every latent frame (image fractions),
        read from the track relative to the last frame it was seen in. Views it was never seen in: zeros.
        family (B,): the family ids the clips' condition gives (the null id where it gives none; None: none
        anywhere), which a model with track_family reads as well."""
        L, K = self.layout, self.cfg.track_frames
        if track.shape[1:] != (L.views, K, 3):
            raise ValueError(f"track {tuple(track.shape)}: expected (B, {L.views}, {K}, 3)")
        seen = track[..., 2:]                                                   # (B, V, K, 1)
        last = (seen[..., 0] * torch.arange(1, K + 1, device=track.device)).argmax(-1)   # last frame seen
        anchor = track[..., :2].gather(2, last[..., None, None].expand(-1, -1, 1, 2))    # (B, V, 1, 2)
        rel = (track[..., :2] - anchor) * seen * TRACK_SCALE
        x = torch.cat([rel, seen], -1).flatten(2)                               # (B, V, 3K)
        if self.cfg.track_family:   # one-hot, all zeros for the null id (or no family)
            if family is None:
                family = torch.full((len(track),), L.num_families, device=track.device)
            label = F.one_hot(family.long(), L.num_families + 1)[:, :L.num_families].to(x.dtype)
            x = torch.cat([x, label[:, None].expand(-1, L.views, -1)], -1)
        out = self.track_motion(x).view(*track.shape[:2], L.t, 2)
        return (anchor + out / TRACK_SCALE) * seen.amax(2, keepdim=True)

    def track_features(self, track: torch.Tensor, pos: slice, centres: torch.Tensor | None = None) -> torch.Tensor:
        """track (B, V, K, 3) -> (B, n, 3K + 3) for the positions in `pos`: per given frame the object's offset from
        the token's centre in its view, in units of TRACK_CELLS token cells (0 where not visible), and the
        visibility; then the offset from the predicted centre in the token's latent frame (predict_track, or
        `centres` (B, V, t, 2) when already computed) and exp(-d^2 / 2), d its length in cells (1 on the object's
        predicted cell, ~0 two cells away). All zero in a view where the object was never seen."""
        if centres is None:
            centres = self.predict_track(track)
        view = self.view_index[pos]
        cells, centre = self._cells_and_token_centres(pos, track)
        seen = track[:, view, :, 2]                                                        # (B, n, K)
        given = (track[:, view, :, :2] * cells - centre[:, None]) / TRACK_CELLS * seen[..., None]   # (B, n, K, 2)
        d = self.offset_from_centres(centres, pos)                                         # (B, n, 2)
        near = torch.exp(-0.5 * d.square().sum(-1, keepdim=True))
        return torch.cat([given[..., 0], given[..., 1], seen,
                          torch.cat([d / TRACK_CELLS, near], -1) * seen.amax(-1, keepdim=True)], -1)

    def offset_from_centres(self, centres: torch.Tensor, pos: slice = slice(None)) -> torch.Tensor:
        """centres (B, V, t, 2) (predict_track, image fractions) -> (B, n, 2): for the video positions in `pos`, the
        offset (x, y) in token cells of the centre in the token's view and latent frame from the token's own centre."""
        cells, centre = self._cells_and_token_centres(pos, centres)
        return centres[:, self.view_index[pos], self.t_index[pos]] * cells - centre

    def _cells_and_token_centres(self, pos: slice, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2,): the grid's width and height in token cells (image fractions -> cells); (n, 2): the centres (x, y),
        in cells, of the video tokens in `pos`; in `like`'s dtype and on its device."""
        cells = torch.tensor([self.layout.w, self.layout.h], dtype=like.dtype, device=like.device)
        return cells, torch.stack([self.col_index[pos], self.row_index[pos]], -1) + 0.5

    def track_loss(self, centres: torch.Tensor, track: torch.Tensor, latent_frames: int) -> tuple[torch.Tensor, dict]:
        """The motion module's loss: predicted centres (B, V, t, 2) (predict_track) against the clips' whole tracks
        (B, V, T, 3), on the latent frames from `latent_frames` on where the object was seen in the given frames
        and in that latent frame: smooth L1 in token cells of the mean visible centre -> (loss, {"track_err_cells":
        the mean distance in cells}). No such frame: loss 0."""
        L = self.layout
        B, V, T, _ = track.shape
        frames = track.view(B, V, L.t, T // L.t, 3)
        count = frames[..., 2].sum(-1)
        mean = (frames[..., :2] * frames[..., 2:]).sum(-2) / count.clamp_min(1)[..., None]   # (B, V, t, 2)
        given_seen = track[:, :, :self.cfg.track_frames, 2].amax(-1)           # (B, V)
        keep = (count > 0) & (given_seen[..., None] > 0)
        keep[:, :, :latent_frames] = False
        if not keep.any():
            zero = centres.sum() * 0.0
            return zero, {"track_err_cells": zero.detach()}
        scale = torch.tensor([L.w, L.h], dtype=centres.dtype, device=centres.device)
        err = (centres - mean) * scale                                          # in cells
        loss = F.smooth_l1_loss(err[keep], torch.zeros_like(err[keep]))
        return loss, {"track_err_cells": err[keep].detach().norm(dim=-1).mean()}

    def output_logits(self, h: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states (..., W) -> logits (..., codebook_size). With code digits: the id's own logit plus
        the log-probability of its digits under independent per-channel softmaxes. Then the copy bonus on each
        row's reference token `ref` (...,) (MASK or None: no bonus)."""
        h = self.ln_f(h)
        logits = self.head(h)
        if self.digits:
            parts = self.digit_head(h).float().split(list(self.layout.code_levels), -1)
            log_probs = torch.cat([F.log_softmax(p, -1) for p in parts], -1)           # (..., sum(levels))
            logits = logits.float() + log_probs @ self.code_digit_matrix                # (..., K)
        if self.window:
            return self._pointer_mix(h, logits, ref)
        if not self.cfg.copy_logit or ref is None:
            return logits
        gain = self.copy_gain.to(logits.dtype)
        if self.copy_gate is not None:
            gain = gain + self.copy_gate(h).to(logits.dtype)                           # (..., 1)
        valid = ref != self.layout.mask_id
        bonus = torch.zeros_like(logits).scatter_(-1, torch.where(valid, ref, 0)[..., None],
                                                  valid[..., None].to(logits.dtype))
        return logits + COPY_SCALE * gain * bonus

    def _pointer_mix(self, h: torch.Tensor, logits: torch.Tensor, refs: torch.Tensor | None) -> torch.Tensor:
        """copy_window: log of (1 - g) * softmax(logits) + g * sum_d w_d [refs_d == id] per row, refs (..., D) the
        copy guesses at the window's offsets (MASK: off the grid or unknown, weight 0); rows without any guess keep
        the vocabulary alone. -> log-probabilities (..., K)."""
        log_vocab = F.log_softmax(logits.float(), -1)
        if refs is None:
            return log_vocab
        valid = refs != self.layout.mask_id
        shift, gate = self.window_logits(h, refs)
        shift = torch.nan_to_num(F.softmax(shift, -1)) * valid                    # all-MASK rows -> 0
        pointer = torch.zeros_like(log_vocab).scatter_add_(-1, torch.where(valid, refs, 0), shift)
        gate = gate[..., None]
        mixed = torch.logaddexp(F.logsigmoid(-gate) + log_vocab, F.logsigmoid(gate) + pointer.clamp_min(1e-30).log())
        return torch.where(valid.any(-1, keepdim=True), mixed, log_vocab)

    def window_logits(self, h: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised final hidden states (..., W) and the window's copy guesses (..., D) -> the offsets' logits
        (..., D), -inf where the guess is MASK, and the pointer gate's logit (...,)."""
        shift = self.shift_head(h).float().masked_fill(refs == self.layout.mask_id, float("-inf"))
        return shift, self.pointer_gate(h).float().squeeze(-1)

    def window_references(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, n <= N) in sequence order -> (B, n, D): per position the copy guesses (reference_tokens) of the
        positions at each offset (dy, dx) of the (2r+1)^2 window, same view and latent frame, row-major from (-r, -r);
        MASK off the grid. A neighbour later in the sequence than seq reaches has its guess in seq all the same."""
        L, n = self.layout, seq.shape[1]
        ref = self.reference_tokens(F.pad(seq, (0, L.num_tokens - n), value=L.mask_id))
        index = self.window_index[:n]
        return torch.where(index >= 0, ref[:, index.clamp_min(0)], L.mask_id)

    def forward(self, seq: torch.Tensor, cond: torch.Tensor, select: torch.Tensor | None = None,
                extras: bool = False, track: torch.Tensor | None = None):
        """seq (B, n <= N) video tokens in sequence order, cond (B, 3) -> logits (B, n, codebook_size), or with
        `select` (B, n) bool only those positions' logits (M, codebook_size) (training scores a subset).
        track (B, V, K, 3) (track_frames): the object's track in the given frames (embed_video).
        With `extras`: (logits, extras), for the losses beside the token loss: with copy_window, extras["shift"]
        the window offsets' logits (rows x offsets; -inf where the copy guess is MASK) and extras["gate"] the
        pointer gate's logit per row (pointer_loss); with a track, extras["centres"] the motion module's predicted
        centres (B, V, t, 2) (track_loss).

        masked: seq holds MASK where unknown; logits[:, i] predicts x_i from everything visible.
        ar:     logits[:, i] predicts x_i from cond and seq[:, :i] (seq[:, -1] is not read)."""
        centres = None if track is None or self.track_motion is None else self.predict_track(track, cond[:, 2])
        video = self.embed_video(seq if not self.causal else seq[:, :-1], track=track, centres=centres)
        x = self.drop(torch.cat([self.embed_condition(cond), video], 1))
        rope = self.rope_for(0, x.shape[1])
        for block in self.blocks:
            x = block(x, self.causal, rope=rope)
        x = x[:, NUM_COND - 1 if self.causal else NUM_COND:]
        ref = self.window_references(seq) if self.window else self.reference_tokens(seq)
        if select is not None:
            x, ref = x[select], ref[select]
        logits = self.output_logits(x, ref)
        if not extras:
            return logits
        out = {}
        if self.window:
            out["shift"], out["gate"] = self.window_logits(self.ln_f(x), ref)
        if centres is not None:
            out["centres"] = centres
        return logits, out

    def pointer_loss(self, extras: dict, offset: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Teach the copy window to move the object: on the rows whose target `offset` (an index into
        self.offsets, -1: none) is known and has a copy guess, cross-entropy of the window's offset weights against
        it plus the gate's log-loss towards the pointer -> (loss, {"offset_acc"}). No such row: loss 0."""
        shift, gate = extras["shift"], extras["gate"]
        keep = offset >= 0
        keep = keep & torch.isfinite(shift.gather(-1, offset.clamp_min(0)[:, None]).squeeze(-1))
        if not keep.any():   # (a zero that stays in the graph)
            zero = gate.sum() * 0.0
            return zero, {"offset_acc": zero.detach()}
        target = offset[keep]
        loss = F.cross_entropy(shift[keep], target) + F.binary_cross_entropy_with_logits(
            gate[keep], torch.ones_like(gate[keep]))
        return loss, {"offset_acc": (shift[keep].detach().argmax(-1) == target).float().mean()}

    def reference_lags(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, n) -> (B, n): per position how many latent frames back its copy guess (reference_tokens) lies; 0
        where there is none."""
        frame = self.layout.views * self.layout.h * self.layout.w
        mask_id = self.layout.mask_id
        lag = torch.zeros_like(seq)
        for k in range(1, self.layout.t):
            if k * frame >= seq.shape[1]:
                break
            seen = torch.zeros_like(seq, dtype=torch.bool)
            seen[:, k * frame:] = seq[:, :-k * frame] != mask_id
            lag = torch.where((lag == 0) & seen, k, lag)
        return lag

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of the scored tokens' logits (M, codebook_size) (forward with `select`) against their
        targets (M,), a weighted mean with per-token `weights` (M,) when given -> (loss, {"acc": the fraction
        predicted right})."""
        logits = logits.float()
        if weights is None:
            loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        else:
            per_token = F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="none")
            loss = (per_token * weights).sum() / weights.sum()
        return loss, {"acc": (logits.detach().argmax(-1) == targets).float().mean()}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on the Linear layers' weights; none on embeddings, norms and biases."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (decay if p.ndim >= 2 and isinstance(self.get_submodule(name.rsplit(".", 1)[0]), nn.Linear)
             else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth, NUM_COND + self.layout.num_tokens)

    def step(self, cache: KVCache, cond: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
             ref: torch.Tensor | None = None, track: torch.Tensor | None = None) -> torch.Tensor:
        """Autoregressive decoding: feed the condition (first call only) and/or the next video tokens (B, n) into
        the KV cache; returns the logits (B, codebook_size) for the video token after the last one fed, with the
        copy bonus on `ref`, that token's copy guess(es) (step_references: (B,), or (B, D) with copy_window; None
        before the second latent frame), and the given frames' track as forward() takes it (the motion module's
        centres are computed on the first call and kept in the cache)."""
        assert self.causal, "step() is for the autoregressive architecture"
        parts = [] if cond is None else [self.embed_condition(cond)]
        if cond is not None:
            cache.family = cond[:, 2]
        if tokens is not None and tokens.shape[1]:
            if self.track_motion is not None and cache.centres is None:   # the same at every step of a clip
                cache.centres = self.predict_track(self.track_or_unseen(track, len(tokens), tokens.device),
                                                   cache.family)
            parts.append(self.embed_video(tokens, start=0 if cond is not None else cache.length - NUM_COND,
                                          track=track, centres=cache.centres))
        x = torch.cat(parts, 1)
        rope = self.rope_for(cache.length, x.shape[1])
        for block in self.blocks:
            x = block(x, True, cache, rope)
        cache.length += x.shape[1]
        return self.output_logits(x[:, -1], ref)

    def step_references(self, x: torch.Tensor, j: int) -> torch.Tensor | None:
        """Autoregressive decoding: the copy guess(es) of video position j from x (B, >= j) whose positions before j
        are decoded: (B,) the token one latent frame earlier, or with copy_window (B, D) those of the window's
        offsets (MASK off the grid), as forward() gives them; None in the first latent frame."""
        L = self.layout
        frame = L.views * L.h * L.w
        if j < frame:
            return None
        if not self.window:
            return x[:, j - frame]
        index = self.window_index[j]   # a neighbour's guess is the token one latent frame before it, decoded by now
        return torch.where(index >= 0, x[:, (index - frame).clamp_min(0)], L.mask_id)

    def rope_for(self, start: int, length: int):
        """(cos, sin) of sequence positions start..start+length-1 (condition tokens first), or None without rope."""
        if not self.cfg.rope:
            return None
        return self.rope_cos[start:start + length], self.rope_sin[start:start + length]

    def reference_tokens(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, n) in sequence order (MASK where unknown) -> (B, n): per position the token at the same view, row
        and column in the latest earlier latent frame where it is not MASK; MASK where there is none. Any prefix
        length n works (a latent frame is a contiguous block of V*h*w positions in the t-major order)."""
        frame = self.layout.views * self.layout.h * self.layout.w
        lag = self.reference_lags(seq)
        earlier = torch.arange(seq.shape[1], device=seq.device) - lag * frame
        return torch.where(lag > 0, seq.gather(1, earlier.clamp_min(0)), self.layout.mask_id)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
