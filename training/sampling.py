"""Tasks and sampling for the video transformer (training/transformer.py).

A task decides which video tokens are given and what the condition tokens say:

    predict         the first k latent frames of every view are given (k pixel frames / the temporal factor)
    generate        nothing is given; the shape and trajectory family are (class-conditional)
    complete-view   every view but one is given whole; the missing one is generated
    unconditional   nothing is given

Sampling fills every position that is not given and never changes a given token:

    maskgit_sample  the masked model: iterative parallel decoding (MaskGIT). Each step predicts all unknown tokens,
                    keeps the most confident ones and re-masks the rest; the number kept follows a cosine schedule
                    and the confidence gets Gumbel noise annealed to zero, so the last step fills everything.
                    order "frames" does that one latent frame after another.
    ar_sample       the autoregressive model: one token at a time in raster order with a KV cache (top-k /
                    temperature); given tokens are fed instead of sampled.

Both take classifier-free guidance scales (1 = off): `guidance` towards the class labels (generate), against the
same clip under the unconditional task's condition, and `track_guidance` towards the object track the model is given
(predict; generate with tasks.generate_track), against the same clip with the object seen nowhere. With one scale s
each step's log-probabilities are null + s * (full - null); with both, full + sum over the two of (s - 1) * (full -
dropped). All branches run as one batch. `track_guidance_radius` r > 0 (masked model) gives each token only part of
the track scale, s_i = 1 + (s - 1) exp(-d_i^2 / 2r^2), d_i its distance in token cells from the motion module's
centre of the object in its view and latent frame (`track_guidance_weights`): the track pulls the object's tokens,
and the ground far from it is sampled as without guidance.

`copy_bias` b > 0 (masked model) adds b to the log-probability of one token per position: the one given at the same
place of the view in the latest earlier latent frame (`copy_references`; for predict, the last given latent frame's).
A prior towards "nothing changes here", applied after guidance: where the model is unsure, the ground keeps the
given tokens (whose decoding the composite then replaces with the render), and where it is sure something moves, a
small bias does not hold it back.

Randomness comes only from the torch.Generators passed in, one per clip, so a clip does not depend on the batch
it was sampled in.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from datagen.config import UserError
from training.configs import DECODE_ORDERS
from training.transformer import TASKS, MaskedVideoTransformer, TokenLayout

TASK_ID = {name: i for i, name in enumerate(TASKS)}


def given_latent_frames(frames: int, cache_source: dict, what: str = "--given-frames") -> int:
    """k given pixel frames -> k / f latent frames; k must be a multiple of the temporal factor f and < T."""
    T, t = cache_source["frames"], cache_source["grid"][1]
    f = T // t
    if frames < 1 or frames % f or frames >= T:
        allowed = ", ".join(str(k) for k in range(f, T, f)) or "none: the clip has a single latent frame"
        raise UserError(f"{what} = {frames}: must be a multiple of the tokenizer's temporal factor {f} and less "
                        f"than the clip's {T} frames (allowed: {allowed})")
    return frames // f


def given_mask(layout: TokenLayout, task: str, batch: int, *, latent_frames: int = 1,
               generated_view: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) bool in sequence order: True where the task gives the token. generated_view (B,): complete-view's
    missing view per clip."""
    index = layout.grid_index()
    if task == "predict":
        return (index["t"] < latent_frames).expand(batch, -1).clone()
    if task == "complete-view":
        return index["view"][None] != generated_view.reshape(-1, 1).cpu()
    if task in ("generate", "unconditional"):
        return torch.zeros(batch, layout.num_tokens, dtype=torch.bool)
    raise ValueError(f"unknown task {task!r}")


def condition(layout: TokenLayout, task: str | torch.Tensor, shape: torch.Tensor | None = None,
              family: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
    """(B, 3) condition ids [task, shape, family]; a label that is None is the null id."""
    if batch is None:
        batch = len(shape) if shape is not None else len(task)
    task_ids = torch.full((batch,), TASK_ID[task]) if isinstance(task, str) else task
    shape = torch.full((batch,), layout.num_shapes) if shape is None else shape
    family = torch.full((batch,), layout.num_families) if family is None else family
    return torch.stack([task_ids, shape, family], 1).long()


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _gumbel(gens: list[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """Standard Gumbel noise (B, *shape), row b drawn from gens[b]."""
    u = torch.stack([torch.rand(shape, generator=g) for g in gens]).clamp_min_(1e-20)
    return (-torch.log(-torch.log(u))).to(device)


def _draw(logits: torch.Tensor, temperature: float, noise: torch.Tensor | None, top_k: int = 0) -> torch.Tensor:
    """Sample ids from logits (B, ..., K) at a temperature (0 = argmax) by the Gumbel-max trick with the given
    standard Gumbel noise (same shape), optionally among the top_k only."""
    logits = logits.float()
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0:
        return logits.argmax(-1)
    return (logits / temperature + noise).argmax(-1)


def null_condition(cond: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """The unconditional task's condition (no task labels, null shape and family) for every row of cond: the other
    branch of classifier-free guidance."""
    return condition(layout, "unconditional", batch=len(cond)).to(cond.device)


def guidance_branches(model: MaskedVideoTransformer, cond: torch.Tensor, track: torch.Tensor | None,
                      guidance: float = 1.0, track_guidance: float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
    """The batches classifier-free guidance runs the model on: the clips as they are, then for each scale != 1 the
    same clips with that condition dropped (guidance: the labels, as the unconditional task; track_guidance: the
    object track, as seen nowhere). -> (cond (nB, 3), track (nB, V, K, 3) or None, the dropped branches' scales)."""
    conds, tracks, scales = [cond], [track], []
    if guidance != 1.0:
        conds.append(null_condition(cond, model.layout))
        tracks.append(track)
        scales.append(guidance)
    if track_guidance != 1.0:
        if track is None:
            raise ValueError("track guidance needs the object track the model is given; there is none")
        conds.append(cond)
        tracks.append(model.track_or_unseen(None, len(track), track.device))
        scales.append(track_guidance)
    return torch.cat(conds), None if track is None else torch.cat(tracks), scales


def track_guidance_weights(model: MaskedVideoTransformer, track: torch.Tensor, radius: float,
                           family: torch.Tensor | None = None) -> torch.Tensor:
    """track (B, V, K, 3), the tracks the clips are given -> (B, N, 1): per video token exp(-d^2 / (2 radius^2)), d
    its distance in token cells from the motion module's centre of the object (`predict_track`, given the clips'
    condition's `family` ids) in the token's view and latent frame; 0 in a view where the object was never seen in
    the given frames."""
    d2 = model.offset_from_centres(model.predict_track(track, family)).square().sum(-1)     # (B, N)
    seen = track[..., 2].amax(-1)[:, model.view_index]                                     # (B, N)
    return (torch.exp(-d2 / (2 * radius ** 2)) * seen)[..., None]


def _guided_call(model: MaskedVideoTransformer, x: torch.Tensor, cond: torch.Tensor | None, scales: list[float],
                 cache=None, ref=None, track=None) -> torch.Tensor:
    """The model's logits for the B clips x, guided: cond and track hold every branch of `guidance_branches` (cond is
    None after an AR cache's first call), scales the dropped branches' scales ([] = plain logits). With a KV cache
    (AR), x holds the new tokens only. track: None for a model without track_frames. A scale may be a tensor (B, N,
    1) of per-token scales (`track_guidance_radius`)."""
    n = len(scales) + 1
    if n == 1:
        return (model(x, cond, track=track) if cache is None
                else model.step(cache, cond=cond, tokens=x, ref=ref, track=track))
    xx = torch.cat([x] * n)
    rr = None if ref is None else torch.cat([ref] * n)
    out = (model(xx, cond, track=track) if cache is None
           else model.step(cache, cond=cond, tokens=xx, ref=rr, track=track)).float().log_softmax(-1).chunk(n)
    if n == 2:   # the one-scale form null + s (full - null), as before both scales existed: samples stay bit-identical
        return out[1] + scales[0] * (out[0] - out[1])
    return out[0] + sum((s - 1) * (out[0] - dropped) for s, dropped in zip(scales, out[1:]))


def mask_schedule(ratio: float) -> float:
    """Cosine schedule: the fraction of the unknown tokens still masked after a fraction `ratio` of the steps."""
    return math.cos(math.pi / 2 * ratio)


@torch.no_grad()
def maskgit_sample(model: MaskedVideoTransformer, seq: torch.Tensor, given: torch.Tensor, cond: torch.Tensor,
                   gens: list[torch.Generator], *, steps: int = 12, temperature: float = 1.0,
                   choice_temperature: float = 4.5, order: str = "all", guidance: float = 1.0,
                   track: torch.Tensor | None = None, track_guidance: float = 1.0,
                   track_guidance_radius: float = 0.0, copy_bias: float = 0.0) -> torch.Tensor:
    """Fill every non-given position of seq (B, N) in `steps` parallel decoding steps; returns (B, N) ids.
    guidance / track_guidance s != 1: classifier-free guidance towards cond's labels / the object track (module doc);
    track_guidance_radius > 0: the track's scale per token, falling off with the distance from the object;
    copy_bias > 0: the prior towards the given token at the same place in an earlier latent frame (module doc).
    order "all": every unknown token at once (MaskGIT). "frames": one latent frame (all views) after another,
    `steps` steps each, later frames still masked, so each frame is drawn seeing the frames before it complete: a
    small object is then placed once per frame and moves on from where it was, instead of being drawn in several
    frames at once in places that do not follow each other."""
    if order not in DECODE_ORDERS:
        raise UserError(f"decode order {order!r}; allowed: {', '.join(DECODE_ORDERS)}")
    mask_id = model.layout.mask_id
    given = given.to(seq.device)
    x = torch.where(given, seq, torch.full_like(seq, mask_id))
    B = len(x)
    cond, track, scales = guidance_branches(model, cond, track, guidance, track_guidance)
    if track_guidance != 1.0 and track_guidance_radius > 0:   # (the track branch is the last)
        scales[-1] = 1 + (track_guidance - 1) * track_guidance_weights(model, track[:B], track_guidance_radius,
                                                                       cond[:B, 2])
    bias = copy_prior(model.layout, seq, given, copy_bias) if copy_bias else None
    if order == "all":
        return _maskgit_fill(model, x, ~given, cond, gens, steps, temperature, choice_temperature, scales, track, bias)
    frame = model.layout.grid_index()["t"].to(seq.device)
    for j in range(model.layout.t):
        todo = ~given & (frame == j)[None]
        if todo.any():
            x = _maskgit_fill(model, x, todo, cond, gens, steps, temperature, choice_temperature, scales, track,
                              bias)
    return x


def copy_references(layout: TokenLayout, seq: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """(B, N) ids and given mask -> (B, N): per position the id given at the same place of its view in the latest
    earlier latent frame that has one there (-1: none; for predict, the last given latent frame's id from the first
    predicted latent frame on)."""
    grid = layout.to_grid(torch.where(given, seq, torch.full_like(seq, -1)))    # (B, V, t, h, w)
    ref = torch.full_like(grid, -1)
    for j in range(1, layout.t):
        ref[:, :, j] = torch.where(grid[:, :, j - 1] >= 0, grid[:, :, j - 1], ref[:, :, j - 1])
    return layout.to_sequence(ref)


def copy_prior(layout: TokenLayout, seq: torch.Tensor, given: torch.Tensor, bias: float) -> torch.Tensor:
    """(B, N, codebook_size) float: `bias` on each position's copy reference (copy_references), 0 elsewhere."""
    ref = copy_references(layout, seq, given.to(seq.device))
    prior = torch.zeros(*ref.shape, layout.codebook_size, device=seq.device)
    return prior.scatter_(-1, ref.clamp_min(0)[..., None], bias) * (ref >= 0)[..., None]


def _maskgit_fill(model: MaskedVideoTransformer, x: torch.Tensor, unknown: torch.Tensor, cond: torch.Tensor,
                  gens: list[torch.Generator], steps: int, temperature: float, choice_temperature: float,
                  scales: list[float], track: torch.Tensor | None = None,
                  prior: torch.Tensor | None = None) -> torch.Tensor:
    """Decode the `unknown` positions of x (B, N) in `steps` steps; every other position keeps its id (MASK
    included, so a later frame can stay masked). cond, track, scales: `guidance_branches`; prior (B, N, codebook):
    added to the guided logits (copy_prior)."""
    mask_id = model.layout.mask_id
    total = unknown.sum(1)                                            # tokens to generate per clip
    for s in range(steps):
        logits = _guided_call(model, x, cond, scales, track=track).float()
        if prior is not None:
            logits = logits + prior
        noise = _gumbel(gens, logits.shape[1:], logits.device) if temperature > 0 else None
        sampled = torch.where(unknown, _draw(logits, temperature, noise), x)
        picked = torch.where(unknown, sampled, 0)[..., None]          # (a still-masked later frame has no logit)
        confidence = F.log_softmax(logits, -1).gather(-1, picked)[..., 0]
        ratio = (s + 1) / steps
        if s == steps - 1:
            n_mask = torch.zeros_like(total)
        else:  # at least one more masked (so later steps have work), at least one decoded now
            n_mask = torch.floor(total * mask_schedule(ratio)).long()
            n_mask = torch.minimum(n_mask.clamp_min(1), unknown.sum(1) - 1).clamp_min(0)
        confidence = confidence + choice_temperature * (1 - ratio) * _gumbel(gens, (x.shape[1],), x.device)
        confidence = confidence.masked_fill(~unknown, float("inf"))   # decoded and given tokens stay
        cutoff = confidence.sort(-1).values.gather(-1, n_mask[:, None])
        remask = confidence < cutoff                                  # the n_mask least confident unknown tokens
        x = torch.where(remask, torch.full_like(sampled, mask_id), sampled)
        unknown = remask
    return x


@torch.no_grad()
def ar_sample(model: MaskedVideoTransformer, seq: torch.Tensor, given: torch.Tensor, cond: torch.Tensor,
              gens: list[torch.Generator], *, temperature: float = 1.0, top_k: int = 0,
              use_cache: bool = True, guidance: float = 1.0, track: torch.Tensor | None = None,
              track_guidance: float = 1.0) -> torch.Tensor:
    """Fill every non-given position of seq (B, N) one token at a time in sequence order. The prefix that is given
    in every clip goes through the model in one pass; after it, a given token is fed in place of a sample.
    use_cache=False recomputes the whole prefix each step (the reference the KV cache must reproduce).
    The Gumbel noise of every position is drawn up front, so a clip's tokens depend on its generator only.
    guidance / track_guidance s != 1: classifier-free guidance, as maskgit_sample (the KV cache then holds every
    branch)."""
    given = given.to(seq.device)
    N, K = seq.shape[1], model.layout.codebook_size
    noise = _gumbel(gens, (N, K), seq.device) if temperature > 0 else None
    x = torch.where(given, seq, torch.zeros_like(seq))
    prefix = int(given.all(0).long().cumprod(0).sum())
    cond, track, scales = guidance_branches(model, cond, track, guidance, track_guidance)
    cache = model.new_cache() if use_cache else None
    if use_cache:   # (a position's copy guesses come from the latent frame before it: decoded by then)
        logits = _guided_call(model, x[:, :prefix], cond, scales, cache, model.step_references(x, prefix),
                              track)
    for i in range(prefix, N):
        if not use_cache:
            logits = _guided_call(model, x[:, :i + 1], cond, scales, track=track)[:, -1]   # sees cond, x[:, :i]
        drawn = _draw(logits, temperature, None if noise is None else noise[:, i], top_k)
        x[:, i] = torch.where(given[:, i], seq[:, i], drawn)
        if use_cache and i < N - 1:
            logits = _guided_call(model, x[:, i:i + 1], None, scales, cache, model.step_references(x, i + 1),
                                  track)
    return x


def sample(model: MaskedVideoTransformer, seq: torch.Tensor, given: torch.Tensor, cond: torch.Tensor,
           gens: list[torch.Generator], *, steps: int = 12, temperature: float = 1.0, choice_temperature: float = 4.5,
           top_k: int = 0, order: str = "all", guidance: float = 1.0, track: torch.Tensor | None = None,
           track_guidance: float = 1.0, track_guidance_radius: float = 0.0, copy_bias: float = 0.0) -> torch.Tensor:
    """Either sampler, by the model's architecture (steps / choice_temperature / order: masked; top_k: ar). track:
    the object track (B, V, K, 3) a model with track_frames is given (predict; generate with tasks.generate_track),
    else None. guidance / track_guidance: classifier-free guidance scales (module doc); track_guidance_radius and
    copy_bias: masked model only."""
    if model.causal:
        for name, value in (("--track-guidance-radius", track_guidance_radius), ("--copy-bias", copy_bias)):
            if value:
                raise UserError(f"{name} {value:g} applies to the masked model (parallel decoding); this one is "
                                f"autoregressive: use 0")
        return ar_sample(model, seq, given, cond, gens, temperature=temperature, top_k=top_k, guidance=guidance,
                         track=track, track_guidance=track_guidance)
    return maskgit_sample(model, seq, given, cond, gens, steps=steps, temperature=temperature,
                          choice_temperature=choice_temperature, order=order, guidance=guidance, track=track,
                          track_guidance=track_guidance, track_guidance_radius=track_guidance_radius,
                          copy_bias=copy_bias)
