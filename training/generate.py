"""`magvit3d generate`: sample token clips with a trained transformer and decode them with its frozen tokenizer.

    predict         held-out clips (--split, default test): the first --given-frames frames of every view are given
    complete-view   held-out clips: every view but one is given (--view, default: view i % V for the i-th clip)
    generate        class-conditional: --num clips for each requested (default: every) shape x family; a model
                    trained with tasks.generate_track also follows the object track of a training clip of that
                    shape and family (the track prior), which the motion module continues

The output directory is written only through training/generated.py (the contract with `magvit3d evaluate`):
decoded clips, the rendered clips they are compared with (predict / complete-view), generated.json listing what
each clip was generated from (sample id, task, classes, seed), and for people a PNG + GIF per clip in clips/
(per view: conditioning | generated | ground truth).
"""
from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import numpy as np
import torch

from datagen.config import UserError, from_dict
from datagen.dataset import read_mask, sample_dir
from datagen.pack import load_packed
from training import checkpoint as ckpt
from training.data import to_uint8
from training.generated import METHOD_TITLES
from training.generated import TASKS as GENERATE_TASKS
from training.generated import ClipRecord, write_generated
from training.device import autocast_for, pick_device
from training.sampling import condition, generators, given_latent_frames, given_mask, sample
from training.token_cache import check_compatible, load_token_cache
from training.tokenize import load_tokenizer
from training.transformer import MaskedVideoTransformer, TokenLayout, TransformerConfig

GAP = 2          # white pixels between panels in the PNG / GIF
EMPTY = 48       # grey level of a panel part that was not given


def decode_rgb(tokenizer, grid: torch.Tensor) -> np.ndarray:
    """One clip's token grid (V, t, h, w) -> uint8 (V, T, H, W, 3)."""
    return to_uint8(tokenizer.decode_indices(grid).float()).permute(0, 2, 3, 4, 1).cpu().numpy()


def load_transformer(run: Path, device="cpu") -> tuple[MaskedVideoTransformer, dict]:
    """The latest checkpoint of a transformer run (EMA weights when kept), in eval mode, and its config."""
    latest, saved = ckpt.load_run(run, "transformer")
    # runs saved before the copy logit, its gate, code digits and rotary positions existed were trained without them
    old = {"copy_logit": False, "copy_gate": False, "code_digits": False, "rope": False}
    model = MaskedVideoTransformer(from_dict(TransformerConfig, {**old, **saved["model"]}, where="model"),
                                   TokenLayout(**saved["layout"]))
    return ckpt.load_model_weights(latest, model).to(device).eval(), saved


# composite: a pixel counts as changed where the decoded prediction and the decoded last given frame differ by more
# than COMPOSITE_LOW (fully changed at COMPOSITE_HIGH; colour in [0, 1], largest channel), grown by one pixel
COMPOSITE_LOW, COMPOSITE_HIGH = 0.04, 0.12
# ...and inside the last given frame's object mask grown by this many px: the rendered object is never pasted
COMPOSITE_OBJECT_MARGIN = 2


def _check_args(task: str, steps: int, num: int | None, temperature: float, top_k: int, method: str = "model",
                composite: bool = False, guidance: float = 1.0, track_guidance: float = 1.0,
                track_guidance_radius: float = 0.0, copy_bias: float = 0.0) -> None:
    if task not in GENERATE_TASKS:
        raise UserError(f"unknown task {task!r}; allowed: {', '.join(GENERATE_TASKS)}")
    if method not in METHOD_TITLES:
        raise UserError(f"--method {method!r}: allowed: {', '.join(METHOD_TITLES)}")
    if method != "model" and task == "generate":
        raise UserError(f"--method {method} needs the true tokens of held-out clips; use it with --task predict "
                        f"or complete-view")
    if method in ("copy-latent", "object-warp") and task != "predict":
        raise UserError(f"--method {method} builds on the last given latent frame; it needs --task predict")
    if composite and task != "predict":
        raise UserError(f"--composite applies to --task predict (over the last given frame), not {task}")
    if steps < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    if num is not None and num < 1:
        raise UserError(f"--num {num}: must be >= 1")
    if guidance != 1.0 and task != "generate":
        raise UserError(f"--guidance {guidance} steers towards the class labels, which only --task generate has; "
                        f"use 1 (off) with --task {task}")
    for name, scale in (("--guidance", guidance), ("--track-guidance", track_guidance)):
        if not 0 <= scale <= 100:
            raise UserError(f"{name} {scale}: must be in [0, 100] (1 = off)")
    if track_guidance != 1.0 and method != "model":
        raise UserError(f"--track-guidance {track_guidance} steers the transformer's samples; --method {method} "
                        f"samples nothing: use 1 (off)")
    if track_guidance_radius < 0:
        raise UserError(f"--track-guidance-radius {track_guidance_radius}: must be >= 0 (0 = every token)")
    if track_guidance_radius and track_guidance == 1.0:
        raise UserError(f"--track-guidance-radius {track_guidance_radius} shapes the track guidance, which is off: "
                        f"pass --track-guidance other than 1, or radius 0")
    if temperature < 0 or top_k < 0:
        raise UserError(f"--temperature {temperature} and --top-k {top_k} must be >= 0")
    if not 0 <= copy_bias <= 100:
        raise UserError(f"--copy-bias {copy_bias}: must be in [0, 100] (0 = off)")
    if copy_bias and (task != "predict" or method != "model"):
        raise UserError(f"--copy-bias {copy_bias} favours the last given latent frame's tokens where the transformer "
                        f"predicts the frames after it: it needs --task predict and --method model; use 0 (off)")


def _pick(names: list[str] | tuple[str, ...], allowed: list[str], what: str) -> list[int]:
    bad = [n for n in names if n not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad[0]!r}; allowed: {', '.join(allowed)}")
    return [allowed.index(n) for n in names] if names else list(range(len(allowed)))


def _class_conditional(layout: TokenLayout, classes: dict, shapes, families, num: int | None, seed: int):
    """`generate`: --num clips of every requested shape x family, nothing given -> (seqs, given, cond, records,
    no target)."""
    combos = list(itertools.product(_pick(shapes, classes["shape"], "shape"),
                                    _pick(families, classes["family"], "family")))
    combos = [c for c in combos for _ in range(num or 1)]
    n = len(combos)
    seqs = torch.zeros(n, layout.num_tokens, dtype=torch.long)
    given = given_mask(layout, "generate", n)
    cond = condition(layout, "generate", torch.tensor([s for s, _ in combos]), torch.tensor([f for _, f in combos]))
    records = [ClipRecord(None, "generate", classes["shape"][s], classes["family"][f], seed + i)
               for i, (s, f) in enumerate(combos)]
    return seqs, given, cond, records, None


def track_prior(cache, shapes: list[int], families: list[int], seeds: list[int], frames: int,
                names: list[str]) -> tuple[torch.Tensor, list[int]]:
    """The track prior of class-conditional generation (tasks.generate_track): per requested shape and family id,
    the first `frames` frames' object track (V, frames, 3) of a clip of the token cache `cache` (the train split),
    drawn with the clip's seed among those of that shape and family, or of that family when no clip has both.
    -> (tracks (B, V, frames, 3), the drawn clips' sample ids). names: the family names, for the error."""
    tracks, drawn = [], []
    for shape, family, seed in zip(shapes, families, seeds):
        pool = np.flatnonzero((cache.family_ids == family) & (cache.shape_ids == shape))
        if not len(pool):
            pool = np.flatnonzero(cache.family_ids == family)
        if not len(pool):
            raise UserError(f"family {names[family]!r}: the train split of {cache.source['tokens']} has no clip of "
                            f"it to draw a track from; generate the families it has (--family)")
        pick = int(pool[np.random.default_rng(seed).integers(len(pool))])
        tracks.append(torch.from_numpy(np.ascontiguousarray(cache.track[pick, :, :frames])))
        drawn.append(int(cache.sample_ids[pick]))
    return torch.stack(tracks), drawn


def _from_cache(cache, layout: TokenLayout, classes: dict, task: str, split: str, num: int | None,
                view: int | None, latent_frames: int, seed: int, log):
    """`predict` / `complete-view`: the first --num clips of the cache's split, part of each given -> (seqs, given,
    cond, records, the rendered clips to compare with)."""
    if len(cache) == 0:
        raise UserError(f"the {split} split of the token cache {cache.source['tokens']} is empty, so there are no "
                        f"clips to {task}; pass --split with a split that has clips, or render more clips")
    n = len(cache) if num is None else min(num, len(cache))
    if num is not None and num > len(cache):
        log(f"notice: --num {num} exceeds the {len(cache)} clips of the {split} split; generating {n}")
    seqs = layout.to_sequence(torch.from_numpy(cache.tokens[:n].astype(np.int64)))
    views = torch.tensor([view if view is not None else i % layout.views for i in range(n)])
    given = given_mask(layout, task, n, latent_frames=latent_frames, generated_view=views)
    cond = condition(layout, task, batch=n)
    f = cache.temporal_factor
    records = [ClipRecord(int(cache.sample_ids[i]), task, classes["shape"][cache.shape_ids[i]],
                          classes["family"][cache.family_ids[i]], seed + i,
                          given_frames=latent_frames * f if task == "predict" else 0,
                          given_views=[v for v in range(layout.views) if v != int(views[i])]
                          if task == "complete-view" else [])
               for i in range(n)]
    return seqs, given, cond, records, np.array(load_packed(cache.dataset, split).rgb[:n])


@torch.no_grad()
def generate(transformer: Path, task: str, out: Path, *, steps: int = 12, num: int | None = None,
             temperature: float = 1.0, choice_temperature: float = 4.5, top_k: int = 0, seed: int = 0,
             split: str = "test", given_frames: int | None = None, view: int | None = None,
             shapes: tuple[str, ...] = (), families: tuple[str, ...] = (), tokens: Path | None = None,
             device: str = "auto", batch_size: int = 8, method: str = "model", paste: bool = True,
             composite: bool = False, order: str = "all", guidance: float = 1.0, track_guidance: float = 1.0,
             track_guidance_radius: float = 0.0, copy_bias: float = 0.0, progress: bool = True,
             log=print) -> dict:
    """Generate clips for `task` into `out` (see the module doc); returns a summary (clips, timing).

    A model with track_frames is given the object's track in the given frames (predict), from the token cache;
    one trained with tasks.generate_track gets, in generate, that of a training clip of the requested shape and
    family (`track_prior`; ClipRecord.track_from names the clip).
    method: model (sample), ceiling (the true tokens decoded) or copy-latent (predict: the last given latent frame
    repeated). paste: the given frames / views come from the renders instead of being re-decoded. composite
    (predict): predicted frames keep the last given frame wherever the decoded clip does not differ from the
    decoded last given frame, except on that frame's object (`composite_over_last`; needs the mask PNGs).
    order (masked model): "all" tokens at once or latent "frames" one after another
    (training.sampling.maskgit_sample). guidance (generate): classifier-free guidance scale towards
    the shape and family (1 = off). track_guidance: the same towards the object track the model is given, against
    the clip with the object seen nowhere (1 = off; needs a task that gives the model a track);
    track_guidance_radius > 0 (masked model): that scale per token, falling off with the distance from the object
    (training.sampling.track_guidance_weights). copy_bias > 0 (predict, masked model): added to the log-probability
    of the last given latent frame's token at each place (training.sampling.copy_prior)."""
    from tqdm import tqdm

    _check_args(task, steps, num, temperature, top_k, method, composite, guidance, track_guidance,
                track_guidance_radius, copy_bias)
    transformer = Path(transformer)
    _, saved = ckpt.load_run(transformer, "transformer")
    recorded = saved.get("tokens", {})
    layout = TokenLayout(**saved["layout"])
    latent_frames = 0
    if task == "predict":
        k = saved["tasks"]["predict_frames"] if given_frames is None else given_frames
        latent_frames = given_latent_frames(k, recorded)
    track_frames = saved["model"].get("track_frames", 0)
    if task == "predict" and track_frames and latent_frames * (recorded["frames"] // layout.t) != track_frames:
        raise UserError(f"--given-frames {given_frames}: {transformer} reads the object's track in the {track_frames} "
                        f"frames it was trained to be given (model.track_frames); use --given-frames {track_frames}")
    if task == "complete-view" and layout.views < 2:   # "all views but one given" would give nothing
        raise UserError(f"--task complete-view needs at least 2 views; {transformer} was trained on a token cache "
                        f"with 1")
    if task == "complete-view" and view is not None and not 0 <= view < layout.views:
        raise UserError(f"--view {view}: must be in 0..{layout.views - 1}")

    cache = None
    if task != "generate" or tokens is not None:
        cache = load_token_cache(tokens if tokens is not None else recorded["tokens"], split)
        check_compatible(recorded, cache.source, str(transformer))
    source = cache.source if cache is not None else recorded
    if source.get("tokenizer_run") is None:
        raise UserError(f"token cache {source['tokens']} lies outside its tokenizer run, so there is no tokenizer to "
                        f"decode with; pass --tokens RUN/tokens of the tokenizer run")
    dev = pick_device(device)
    model, _ = load_transformer(transformer, dev)
    tokenizer, tok_saved = load_tokenizer(source["tokenizer_run"], dev)
    if int(tok_saved["step"]) != source["tokenizer_step"]:
        raise UserError(f"tokenizer {source['tokenizer_run']} is at step {tok_saved['step']}, but the transformer "
                        f"was trained on its tokens of step {source['tokenizer_step']}")
    classes = source["classes"]

    # what to generate: conditioning tokens, given masks, labels, per-clip records
    tracks, prior_split = None, None   # the object tracks the model is given (B, V, K, 3); where generate's come from
    if task == "generate":
        seqs, given, cond, records, target = _class_conditional(layout, classes, shapes, families, num, seed)
        if saved["tasks"].get("generate_track"):   # the model draws the object along a training clip's track
            prior = load_token_cache(tokens if tokens is not None else recorded["tokens"], "train")
            check_compatible(recorded, prior.source, str(transformer))
            tracks, drawn = track_prior(prior, cond[:, 1].tolist(), cond[:, 2].tolist(), [r.seed for r in records],
                                        track_frames, classes["family"])
            for r, sid in zip(records, drawn):
                r.track_from = sid
            prior_split = "train split"
    else:
        seqs, given, cond, records, target = _from_cache(cache, layout, classes, task, split, num, view,
                                                         latent_frames, seed, log)
        if track_frames and task == "predict":   # the given frames' track, from the same cache
            tracks = torch.from_numpy(np.ascontiguousarray(cache.track[:len(records), :, :track_frames]))
    n = len(records)
    if track_guidance != 1.0 and tracks is None:
        needs = ("model.track_frames" if task == "predict" else "tasks.generate_track" if task == "generate"
                 else f"a task that gives one (predict, generate), not {task}")
        raise UserError(f"--track-guidance {track_guidance}: {transformer} is given no object track here (it needs "
                        f"{needs}); use 1 (off)")

    objects = None   # composite: the object's mask in the last given frame of each clip, read before any sampling
    if composite:
        objects = [last_given_object(cache.dataset, source["views"], r) for r in records]
    rgb = np.zeros((n, layout.views, source["frames"], source["image_size"][1], source["image_size"][0], 3), np.uint8)
    sampling_seconds = 0.0
    with tqdm(total=n, unit="clip", desc=f"generate ({model.cfg.arch}, {task})", disable=not progress) as bar:
        for i in range(0, n, batch_size):
            j = min(n, i + batch_size)
            t0 = time.perf_counter()
            if method == "ceiling":
                seq = seqs[i:j].to(dev)
            elif method == "copy-latent":
                seq = copy_latent(layout, seqs[i:j], latent_frames).to(dev)
            elif method == "object-warp":
                seq = object_warp(layout, seqs[i:j], torch.from_numpy(cache.cells[i:j]), latent_frames).to(dev)
            else:
                track = None if tracks is None else tracks[i:j].to(dev)
                with autocast_for(dev):
                    seq = sample(model, seqs[i:j].to(dev), given[i:j].to(dev), cond[i:j].to(dev),
                                 generators([r.seed for r in records[i:j]]), steps=steps, temperature=temperature,
                                 choice_temperature=choice_temperature, top_k=top_k, order=order,
                                 guidance=guidance, track=track, track_guidance=track_guidance,
                                 track_guidance_radius=track_guidance_radius, copy_bias=copy_bias)
            sampling_seconds += time.perf_counter() - t0
            grids = layout.to_grid(seq)
            for b in range(j - i):
                rgb[i + b] = decode_rgb(tokenizer, grids[b])
                if composite:
                    rgb[i + b] = composite_over_last(rgb[i + b], target[i + b], records[i + b].given_frames,
                                                     objects[i + b])
                if paste and target is not None:
                    rgb[i + b] = paste_given(rgb[i + b], target[i + b], records[i + b])
            bar.update(j - i)

    info = {"task": task, "dataset": source["dataset"], "split": split if task != "generate" else None,
            "dataset_config_hash": source["dataset_config_hash"], "image_size": source["image_size"],
            "frames": source["frames"], "views": source["views"], "steps": steps if not model.causal else None,
            "temperature": temperature, "choice_temperature": choice_temperature if not model.causal else None,
            "order": order if not model.causal else None,
            "top_k": top_k if model.causal else None, "guidance": guidance,
            "track_guidance": track_guidance, "track_guidance_radius": track_guidance_radius,
            "copy_bias": copy_bias, "seed": seed,
            "arch": model.cfg.arch,
            "transformer": str(transformer.resolve()), "transformer_step": saved["step"],
            "tokenizer": source["tokenizer_run"], "tokenizer_step": source["tokenizer_step"],
            "tokens": source["tokens"], "method": method, "method_title": METHOD_TITLES[method],
            "given_frames": "pasted" if paste and target is not None else "re-decoded", "composite": composite,
            "track_prior": prior_split, "sampling_seconds": round(sampling_seconds, 3),
            "sampling_seconds_per_clip": round(sampling_seconds / n, 4), "device": str(dev)}
    write_generated(out, rgb, records, info, target,
                    extra_files=lambda tmp: write_clip_visuals(Path(tmp) / "clips", rgb, target, records))
    return {"out": str(out), "clips": n, "task": task, "arch": model.cfg.arch, "method": method, "composite": composite,
            "track_prior": prior_split, "track_guidance": track_guidance,
            "sampling_seconds": round(sampling_seconds, 3), "sampling_seconds_per_clip": round(sampling_seconds / n, 4)}


def copy_latent(layout: TokenLayout, seq: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """(B, N) token clips -> the same with every latent frame from `latent_frames` on replaced by the last given one
    (the token-space "nothing moves" prediction)."""
    grid = layout.to_grid(seq).clone()
    grid[:, :, latent_frames:] = grid[:, :, latent_frames - 1:latent_frames]
    return layout.to_sequence(grid)


def object_warp(layout: TokenLayout, seq: torch.Tensor, cells: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """(B, N) token clips and the object's cells (B, V, t) (TokenCache.cells) -> the copy-latent clips with, in every
    predicted latent frame of every view, the 3x3 tokens around the object's cell in the last given frame moved to
    its true cell there, and their old place filled with that frame's most common token (the ground). What a copy
    window that always picks the object's offset would predict, to whole cells: a reference, like the ceiling.
    A view where the object is not visible in the frames involved stays copied."""
    grid = layout.to_grid(copy_latent(layout, seq, latent_frames)).clone()
    last = latent_frames - 1
    near = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    for b, v in itertools.product(range(grid.shape[0]), range(layout.views)):
        if cells[b, v, last] < 0:
            continue
        source = grid[b, v, last].clone()
        values, counts = source.unique(return_counts=True)
        ground = values[counts.argmax()]
        r0, c0 = divmod(int(cells[b, v, last]), layout.w)
        inside = [(dy, dx) for dy, dx in near if 0 <= r0 + dy < layout.h and 0 <= c0 + dx < layout.w]
        for t in range(latent_frames, layout.t):
            if cells[b, v, t] < 0:
                continue
            r1, c1 = divmod(int(cells[b, v, t]), layout.w)
            frame = grid[b, v, t]
            for dy, dx in inside:
                frame[r0 + dy, c0 + dx] = ground
            for dy, dx in inside:
                if 0 <= r1 + dy < layout.h and 0 <= c1 + dx < layout.w:
                    frame[r1 + dy, c1 + dx] = source[r0 + dy, c0 + dx]
    return layout.to_sequence(grid)


def composite_over_last(pred: np.ndarray, target: np.ndarray, given_frames: int,
                        last_object: np.ndarray | None = None) -> np.ndarray:
    """Predicted frames composited over the last given rendered frame: per pixel, the decoded prediction where it
    differs from the decoded last given frame (the object moved there, or away from there), the last given render
    where they agree (what the prediction leaves unchanged stays exactly as rendered). pred (decoded, its given part
    from the given tokens), target: uint8 (V, T, H, W, 3). last_object: bool (V, H, W), the object's mask in the
    last given frame (`last_given_object`); there, grown by COMPOSITE_OBJECT_MARGIN px, the prediction is always
    shown.

    The reference is the decoding of the very frame whose render is pasted. (It was the copy-latent clip's frame at
    the same time, the decoding of an earlier frame whenever the object moves inside a latent frame: where the object
    stood in the last given frame but not in that earlier one, both decodings showed ground, so the rendered object
    was pasted there, a sharp ghost left behind in 3 of every 4 predicted frames.) The object's mask is kept out
    for the same kind of reason: the decoded object is softer than the rendered one, so around it the two decodings
    agreed, and the rendered object's rim was pasted where the prediction had moved the object away, or dropped
    it: a faint copy of the last given frame's object that the probe found in every view."""
    ref = pred[:, given_frames - 1:given_frames].astype(np.int16)
    diff = np.abs(pred[:, given_frames:].astype(np.int16) - ref).max(-1) / 255.0      # (V, T - given, H, W)
    alpha = np.clip((diff - COMPOSITE_LOW) / (COMPOSITE_HIGH - COMPOSITE_LOW), 0.0, 1.0)
    alpha = torch.nn.functional.max_pool2d(torch.from_numpy(alpha).float(), 3, 1, 1).numpy()
    if last_object is not None:
        k = 2 * COMPOSITE_OBJECT_MARGIN + 1
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(last_object).float()[:, None], k, 1, k // 2).numpy()
        alpha = np.maximum(alpha, grown)                                              # (V, 1, H, W) broadcasts
    alpha = alpha[..., None]
    last = target[:, given_frames - 1:given_frames].astype(np.float32)
    out = pred.copy()
    out[:, given_frames:] = np.clip(np.rint(alpha * pred[:, given_frames:] + (1 - alpha) * last), 0, 255)
    return out


def last_given_object(dataset: Path, views: list[str], record: ClipRecord) -> np.ndarray:
    """The object's mask bool (V, H, W) in the last given frame of a predict record, from the dataset's mask PNGs
    (not packed); a one-line UserError when they are gone."""
    root = sample_dir(dataset, record.sample_id)
    try:
        return np.stack([read_mask(root, v, record.given_frames - 1) for v in views])
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"--composite needs the object masks beside the rendered frames, and sample "
                        f"{record.sample_id}'s cannot be read ({e}); pass --no-composite") from None


def paste_given(clip: np.ndarray, target: np.ndarray, record: ClipRecord) -> np.ndarray:
    """The given part of a clip (frames / views) replaced by the renders it was given from."""
    clip = clip.copy()
    if record.given_frames:
        clip[:, :record.given_frames] = target[:, :record.given_frames]
    for v in record.given_views:
        clip[v] = target[v]
    return clip


def conditioning_panel(target: np.ndarray, record: ClipRecord) -> np.ndarray:
    """The part of a rendered clip (V, T, H, W, 3) that was given; the rest grey."""
    panel = np.full_like(target, EMPTY)
    if record.given_frames:
        panel[:, :record.given_frames] = target[:, :record.given_frames]
    for v in record.given_views:
        panel[v] = target[v]
    return panel


def _hcat(images: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    space = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([x for im in images for x in (im, space)][:-1], axis=1)


def _vcat(images: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    space = np.full((gap, images[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for im in images for x in (im, space)][:-1], axis=0)


def write_clip_visuals(folder: Path, rgb: np.ndarray, target: np.ndarray | None, records: list[ClipRecord]) -> None:
    """Per clip a PNG (per view the rows conditioning, generated, ground truth; columns = frames; wider gaps
    between views) and a GIF (per
    frame: rows = views, columns = conditioning | generated | ground truth). Class-conditional clips have only the
    generated panel."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (clip, record) in enumerate(zip(rgb, records)):
        panels = [clip] if target is None else [conditioning_panel(target[i], record), clip, target[i]]
        V, T = clip.shape[:2]
        # class labels come from the dataset: keep them from naming a path ('/', '..') outside the folder
        name = (f"{i:04d}_sample{record.sample_id:06d}" if record.sample_id is not None
                else f"{i:04d}_" + re.sub(r"[^A-Za-z0-9_-]+", "-", f"{record.shape}_{record.family}"))
        per_view = [_vcat([_hcat(list(p[v])) for p in panels]) for v in range(V)]
        Image.fromarray(_vcat(per_view, 3 * GAP)).save(folder / f"{name}.png")
        frames = [Image.fromarray(_vcat([_hcat([p[v, f] for p in panels]) for v in range(V)])) for f in range(T)]
        frames[0].save(folder / f"{name}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
