"""Train the video transformer on a token cache: what is specific to it (training.loop.Trainer runs the loop).

    magvit3d train-transformer --tokens RUN_OR_CACHE --out RUN [--config tiny|demo|full|FILE] [--set KEY=VALUE] [--resume]

Per step: a batch of token clips (N, V, t, h, w) from the cache's train split; every clip draws a task from the
mix in [tasks] (COMMIT-style: predict, generate, complete-view, unconditional), which decides the given tokens
and the condition (training/sampling.py). The masked model then masks a cosine-scheduled fraction of the tokens
that are not given and is trained with cross-entropy on the masked ones; the autoregressive baseline (arch "ar")
sees the clip teacher-forced and is trained on every token that is not given. With train.augment the cache's
augmented copies of the train clips (tokenize --augment) are trained on as more clips. With train.unchanged_weight
< 1 the tokens equal to their copy guess (the model's reference token, one latent frame earlier) weigh less; with
train.motion_weight > 0 the tokens whose pixels move (the cache's token motion) weigh more. tasks.predict_full_mask
is the share of predict clips with every future token masked (as when sampling starts). With
train.track_prefit_steps the motion module is first fitted alone on the train clips' tracks. AdamW
with linear warm-up and cosine decay, gradient clipping, an EMA of the weights, bf16 autocast (train.precision),
DDP under torchrun.

Every `val_every` steps the EMA model is scored on the cache's val split per task (fixed masks): masked-token (or
next-token) loss and accuracy, into RUN/metrics.jsonl and TensorBoard. Checkpoints (safetensors + JSON config,
which records the token cache: tokenizer run, step, codebook size, grid) go to RUN/checkpoints; `--resume`
continues bit for bit on the CPU. SIGINT / SIGTERM stop at a step boundary with a checkpoint.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datagen.config import UserError, to_dict
from training.configs import TransformerRunConfig, TransformerTrainSection, load_transformer_config
from training.data import infinite_loader
from training.device import autocast_for
from training.loop import TrainTask, Trainer
from training.sampling import TASK_ID, condition, given_latent_frames
from training.token_cache import TokenCache, load_augmented, load_token_cache
from training.transformer import TASKS, MaskedVideoTransformer, TokenLayout

load_run_config = load_transformer_config   # (the name every training loop module uses)


class TokenClips(Dataset):
    """(tokens int64 (V, t, h, w), shape id, family id) per clip of one or more caches (a split and its augmented
    copies), one after another, held in memory; `limit`: the first clips only."""

    def __init__(self, *caches: TokenCache, limit: int | None = None):
        self.tokens = torch.from_numpy(np.concatenate([c.tokens for c in caches])[:limit].astype("int64"))
        self.shape = torch.from_numpy(np.concatenate([c.shape_ids for c in caches])[:limit])
        self.family = torch.from_numpy(np.concatenate([c.family_ids for c in caches])[:limit])
        # how much each token's pixels move (train.motion_weight); zeros for a cache written before it
        self.motion = torch.from_numpy(np.concatenate([c.motion if c.motion is not None else
                                                       np.zeros(c.tokens.shape, np.float32) for c in caches])[:limit])
        # the token cell of the object's centre per view and latent frame (-1: not visible): pointer_targets
        self.cells = torch.from_numpy(np.concatenate([c.cells for c in caches])[:limit])
        # the object's centre and visibility per view and frame (model.track_frames reads the given frames')
        self.track = torch.from_numpy(np.concatenate([c.track for c in caches])[:limit])

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens[i], self.shape[i], self.family[i], self.motion[i], self.cells[i], self.track[i]


def tracked(tasks: torch.Tensor, generate_track: bool, dropped: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) task ids -> (B,) bool: the clips given the object's track (predict; generate too with
    tasks.generate_track), less the `dropped` ones (train.track_dropout)."""
    keep = tasks == TASK_ID["predict"]
    keep = keep | (tasks == TASK_ID["generate"]) if generate_track else keep
    return keep if dropped is None else keep & ~dropped


def given_track(model: MaskedVideoTransformer, track: torch.Tensor, tasks: torch.Tensor,
                generate_track: bool = False, dropped: torch.Tensor | None = None) -> torch.Tensor | None:
    """The clips' object tracks (B, V, T, 3) -> what a model with track_frames K is given: the first K frames'
    (B, V, K, 3) in the `tracked` clips, nothing (zeros) in the others; None for a model without it."""
    K = model.cfg.track_frames
    if not K:
        return None
    return track[:, :, :K] * tracked(tasks, generate_track, dropped).to(track.dtype)[:, None, None, None]


def prefit_motion_module(model: MaskedVideoTransformer, track: torch.Tensor, latent_frames: int, steps: int,
                         seed: int, lr: float = 3e-3, family: torch.Tensor | None = None) -> dict:
    """Fit the motion module (model.track_motion) alone, in place, on the tracks (N, V, T, 3) of every train clip:
    track_loss on the latent frames from `latent_frames` on, full batch, each clip mirrored left-right (x -> 1 - x
    where seen) half the time, its own AdamW; seeded, leaves the global RNG alone. A model with track_family reads
    the clips' `family` ids (N,) at each step in half the clips, drawn anew, and the null id in the others (predict
    gives none). -> {"steps", "clips", "err_cells_before", "err_cells_after" (unmirrored, no family, in token cells),
    with track_family also "err_cells_after_family" (given the family), "seconds"}."""
    t0 = time.perf_counter()
    K, module = model.cfg.track_frames, model.track_motion
    device = next(module.parameters()).device
    track = track.to(device, torch.float32)
    null = torch.full((len(track),), model.layout.num_families, device=device)
    labelled = model.cfg.track_family
    if labelled and family is None:
        raise ValueError("a model with track_family fits its motion module on the clips' family ids: pass family")
    family = family.to(device) if labelled else None

    def error(fam: torch.Tensor) -> float:
        with torch.no_grad():
            return model.track_loss(model.predict_track(track[:, :, :K], fam), track,
                                    latent_frames)[1]["track_err_cells"].item()

    before, gen = error(null), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    seen = track[..., 2] > 0
    for _ in range(steps):
        flip = (torch.rand(len(track), generator=gen) < 0.5).to(device)[:, None, None] & seen
        x = track.clone()
        x[..., 0] = torch.where(flip, 1 - track[..., 0], track[..., 0])
        fam = null
        if labelled:
            fam = torch.where((torch.rand(len(track), generator=gen) < 0.5).to(device), family, null)
        loss, _ = model.track_loss(model.predict_track(x[:, :, :K], fam), x, latent_frames)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    out = {"steps": steps, "clips": len(track), "err_cells_before": round(before, 4),
           "err_cells_after": round(error(null), 4)}
    if labelled:
        out["err_cells_after_family"] = round(error(family), 4)
    return {**out, "seconds": round(time.perf_counter() - t0, 2)}


def draw_tasks(weights: dict[str, float], batch: int, gen: torch.Generator) -> torch.Tensor:
    """(B,) task ids drawn from the mix."""
    probs = torch.tensor([weights.get(name, 0.0) for name in TASKS], dtype=torch.float64)
    return torch.multinomial(probs / probs.sum(), batch, replacement=True, generator=gen)


def make_batch(layout: TokenLayout, tokens: torch.Tensor, shape: torch.Tensor, family: torch.Tensor,
               tasks: torch.Tensor, latent_frames: int, arch: str, gen: torch.Generator, full_mask: float = 0.0):
    """One training (or validation) batch on the CPU: token grids (B, V, t, h, w) and a task id per clip ->
    (inputs (B, N), targets (B, N), loss mask (B, N), condition (B, 3)).

    Given tokens: predict - the first `latent_frames` latent frames; complete-view - all views but a random one;
    generate / unconditional - none (generate gives the class labels in the condition). masked: of the tokens not
    given, a fraction cos(pi/2 * u), u ~ U(0, 1), at least one, is replaced by MASK and scored. ar: the clip goes in
    whole (teacher forcing) and every token not given is scored."""
    B = tokens.shape[0]
    seq = layout.to_sequence(tokens)
    index = layout.grid_index()
    view = torch.randint(layout.views, (B, 1), generator=gen)
    given = torch.zeros(B, layout.num_tokens, dtype=torch.bool)
    given |= (tasks == TASK_ID["predict"])[:, None] & (index["t"] < latent_frames)[None]
    given |= (tasks == TASK_ID["complete-view"])[:, None] & (index["view"][None] != view)
    is_generate = tasks == TASK_ID["generate"]
    cond = condition(layout, tasks, torch.where(is_generate, shape, layout.num_shapes),
                     torch.where(is_generate, family, layout.num_families))
    if arch == "ar":
        return seq, seq, ~given, cond
    free = (~given).sum(1)
    ratio = torch.cos(math.pi / 2 * torch.rand(B, generator=gen, dtype=torch.float64))
    if full_mask > 0:   # some predict clips see none of the future (as the sampler's first step does)
        full = (tasks == TASK_ID["predict"]) & (torch.rand(B, generator=gen, dtype=torch.float64) < full_mask)
        ratio = torch.where(full, 1.0, ratio)
    n_mask = torch.ceil(ratio * free).long().clamp(min=1).minimum(free)
    scores = torch.rand(B, layout.num_tokens, generator=gen).masked_fill(given, 2.0)  # given ones rank last
    masked = scores.argsort(1).argsort(1) < n_mask[:, None]
    return seq.masked_fill(masked, layout.mask_id), seq, masked, cond


def token_weights(unchanged: torch.Tensor, motion: torch.Tensor, t: TransformerTrainSection) -> torch.Tensor | None:
    """Per scored token, its loss weight: train.unchanged_weight where it equals its copy guess (`unchanged`), times
    1 + train.motion_weight * how much its pixels move (`motion`, the cache's token motion); None = a plain mean."""
    weights = None
    if t.unchanged_weight < 1:   # tokens equal to their copy guess count less: the loss goes where things change
        weights = torch.where(unchanged, t.unchanged_weight, 1.0)
    if t.motion_weight > 0:      # the object's tokens count more: the ground's code flicker outweighs it otherwise
        moving = 1.0 + t.motion_weight * motion
        weights = moving if weights is None else weights * moving
    return weights


def pointer_targets(model: MaskedVideoTransformer, inputs: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(B, N) -> the copy window's offset index (into model.offsets) that moves the object, per token: for a token
    within one cell of the object's cell in its latent frame, the object's displacement from its copy guess's frame
    to this one, reversed (the token copies from where that part of the object was); -1 elsewhere, where the
    object is not visible in either frame, or the displacement leaves the window."""
    L, r = model.layout, model.window
    view, t, row, col = model.view_index, model.t_index, model.row_index, model.col_index   # (N,) buffers
    lag = model.reference_lags(inputs)
    flat = cells.reshape(len(inputs), L.views * L.t)
    now = flat[:, view * L.t + t]
    then = flat.gather(1, view * L.t + (t - lag).clamp_min(0))
    near = ((row - now // L.w).abs() <= 1) & ((col - now % L.w).abs() <= 1)
    dy, dx = then // L.w - now // L.w, then % L.w - now % L.w
    ok = (lag > 0) & (now >= 0) & (then >= 0) & near & (dy.abs() <= r) & (dx.abs() <= r)
    return torch.where(ok, (dy + r) * (2 * r + 1) + dx + r, -1)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Task and mask randomness of one step: a function of (seed, step, rank) only, so resume needs no state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


@torch.no_grad()
def validate(model: MaskedVideoTransformer, data: TokenClips, weights: dict[str, float], latent_frames: int,
             device: torch.device, batch_size: int, seed: int, generate_track: bool = False,
             precision: str = "bf16-cuda") -> dict:
    """Per task with weight > 0: loss and accuracy on the scored tokens of `data`, with masks drawn from a fixed
    generator (the same every validation); "loss" / "acc" average the tasks. generate_track: the generate task
    is given the track (tasks.generate_track)."""
    model.eval()
    out = {}
    for name in TASKS:
        if weights.get(name, 0) <= 0:
            continue
        gen = torch.Generator().manual_seed(seed)
        loss_sum, correct, count, changed, changed_correct = 0.0, 0, 0, 0, 0
        offsets_right, offsets_known, track_err, track_n = 0, 0, 0.0, 0
        pointer = bool(model.window)
        for i in range(0, len(data), batch_size):
            rows = slice(i, i + batch_size)
            tokens, shape, family = data.tokens[rows], data.shape[rows], data.family[rows]
            tasks = torch.full((len(tokens),), TASK_ID[name])
            inputs, targets, scored, cond = make_batch(model.layout, tokens, shape, family, tasks, latent_frames,
                                                       model.cfg.arch, gen)
            inputs, scored = inputs.to(device), scored.to(device)
            track = given_track(model, data.track[rows], tasks, generate_track)
            with autocast_for(device, precision):
                picked, extras = model(inputs, cond.to(device), scored, extras=True,
                                       track=None if track is None else track.to(device))
            if "centres" in extras and name == "predict":   # how far the motion module's centres are off
                _, found = model.track_loss(extras["centres"], data.track[rows].to(device), latent_frames)
                track_err += found["track_err_cells"].item() * len(tokens)
                track_n += len(tokens)
            if pointer:   # how often the window's most likely offset is the one the object moved by
                offset = pointer_targets(model, inputs, data.cells[rows].to(device))[scored]
                known = offset >= 0
                offsets_right += (extras["shift"].argmax(-1) == offset)[known].sum().item()
                offsets_known += known.sum().item()
            picked = picked.float()
            wanted = targets.to(device)[scored]
            hit = picked.argmax(-1) == wanted
            moved = model.reference_tokens(inputs)[scored] != wanted
            loss_sum += F.cross_entropy(picked, wanted, reduction="sum").item()
            correct += hit.sum().item()
            count += len(wanted)
            changed += moved.sum().item()
            changed_correct += (hit & moved).sum().item()
        key = name.replace("-", "_")
        out[f"loss_{key}"], out[f"acc_{key}"] = loss_sum / max(count, 1), correct / max(count, 1)
        # accuracy on the tokens that differ from their copy guess: copying scores 0 here
        out[f"acc_changed_{key}"] = changed_correct / changed if changed else None
        if pointer:
            out[f"offset_acc_{key}"] = offsets_right / offsets_known if offsets_known else None
        if track_n:
            out["track_err_cells"] = track_err / track_n
    model.train()
    names = [k[len("loss_"):] for k in out if k.startswith("loss_")]
    out["loss"] = sum(out[f"loss_{n}"] for n in names) / len(names)
    out["acc"] = sum(out[f"acc_{n}"] for n in names) / len(names)
    return out


def run_config_for(cfg: TransformerRunConfig, cache: TokenCache) -> dict:
    """The config every checkpoint of the run carries: what was asked for, plus the token cache's provenance
    and the layout the model was built for."""
    return {"kind": "transformer", "model": to_dict(cfg.model), "tasks": to_dict(cfg.tasks),
            "train": to_dict(cfg.train), "tokens": cache.source, "layout": to_dict(cache.layout())}


def train_transformer(cfg: TransformerRunConfig, tokens: Path, out: Path, *, resume: bool = False,
                      device: str = "auto", progress: bool = True, max_steps_this_run: int | None = None,
                      log=print) -> dict:
    """Train (or resume) a transformer run on a token cache (a tokenizer run or its tokens directory); returns the
    summary also written to RUN/summary.json. max_steps_this_run stops early (with a checkpoint) as an
    interruption would."""
    task = TransformerTask(cfg, tokens, log)
    return Trainer(task, cfg.train, out, task.run_config, resume=resume, device=device, progress=progress,
                   max_steps_this_run=max_steps_this_run, log=log).fit()


class TransformerTask(TrainTask):
    """The transformer's part of the loop (training.loop.Trainer does the rest): token clips, a task per clip,
    masks from (seed, step, rank) -> cross-entropy on the scored tokens."""
    kind, same_sections, diverged_hint = "transformer", ("tokens", "model", "tasks", "train"), "lower train.lr"
    prefit: dict | None = None   # what prefit_motion_module did (train.track_prefit_steps), kept across resumes

    def __init__(self, cfg: TransformerRunConfig, tokens: Path, log):
        self.cfg, self.log = cfg, log
        t = cfg.train
        cfg.validate()
        self.label = f"transformer ({cfg.model.arch})"
        train_cache = load_token_cache(tokens, "train")
        has_val = (train_cache.directory / "val_tokens.npy").is_file()
        val_cache = load_token_cache(tokens, "val") if has_val else train_cache
        self.val_split = "val"
        if len(val_cache) == 0 or val_cache is train_cache:  # no val split: validate on the first training clips
            val_cache, self.val_split = train_cache, "train"
            log(f"notice: the token cache {tokens} has no val clips; validation scores training clips and is logged "
                f"as split 'train'")
        self.latent_frames = given_latent_frames(cfg.tasks.predict_frames, train_cache.source, "tasks.predict_frames")
        self.layout = train_cache.layout()
        self.weights_mix = cfg.tasks.weights()
        if self.layout.views < 2 and self.weights_mix["complete-view"] > 0:
            raise UserError("tasks.complete_view > 0 needs at least 2 views; the token cache has 1")
        if len(train_cache) < t.batch_size:
            raise UserError(f"train.batch_size = {t.batch_size} exceeds the {len(train_cache)} training clips of "
                            f"{train_cache.directory}")
        self.run_config = run_config_for(cfg, train_cache)
        # the augmented copies join the train clips (validation stays on the val clips as they are)
        extra = [load_augmented(train_cache, t.augment)] if t.augment else []
        if extra:
            log(f"training on {len(train_cache)} clips + {len(extra[0])} augmented copies ({', '.join(t.augment)})")
        if t.motion_weight > 0 and any(c.motion is None for c in (train_cache, *extra)):
            raise UserError(f"train.motion_weight = {t.motion_weight} needs the token motion that `magvit3d tokenize` "
                            f"writes now; {train_cache.directory} predates it: run `magvit3d tokenize` again")
        self.train_set, self.val_set = TokenClips(train_cache, *extra), TokenClips(val_cache, limit=t.val_clips)

    def build(self, tr: Trainer) -> MaskedVideoTransformer:
        return MaskedVideoTransformer(self.cfg.model, self.layout).to(tr.device)

    def train_module(self, tr: Trainer) -> torch.nn.Module:
        return torch.compile(tr.model) if self.cfg.train.compile else tr.model

    def start(self, tr: Trainer) -> None:
        t = self.cfg.train
        self.autocast = tr.autocast()
        if t.track_prefit_steps and tr.step == 0:   # (a resumed run has the fitted module in its checkpoint)
            self.prefit = prefit_motion_module(tr.model, self.train_set.track, self.latent_frames,
                                               t.track_prefit_steps, t.seed, family=self.train_set.family)
            if tr.ema is not None:
                tr.ema.track_motion.load_state_dict(tr.model.track_motion.state_dict())
            self.log(f"motion module fitted alone on {self.prefit['clips']} train clips' tracks: "
                     f"{self.prefit['err_cells_before']:.2f} -> {self.prefit['err_cells_after']:.2f} cells off"
                     + (f" ({self.prefit['err_cells_after_family']:.2f} given the family)"
                        if "err_cells_after_family" in self.prefit else "")
                     + f" ({t.track_prefit_steps} steps, {self.prefit['seconds']:.1f} s)")
        self.batches = infinite_loader(self.train_set, t.batch_size, t.seed, t.workers, start_step=tr.step,
                                       rank=tr.rank, world=tr.world)

    def loss(self, tr: Trainer, step: int) -> tuple[torch.Tensor, dict]:
        t = self.cfg.train
        tokens, shape, family, motion, cells, track = next(self.batches)
        gen = step_generator(t.seed, step, tr.rank)
        tasks = draw_tasks(self.weights_mix, len(tokens), gen)
        inputs, targets, scored, cond = (x.to(tr.device, non_blocking=True) for x in make_batch(
            self.layout, tokens, shape, family, tasks, self.latent_frames, self.cfg.model.arch, gen,
            self.cfg.tasks.predict_full_mask))
        pointer = t.pointer_weight > 0
        # train.track_dropout: some clips that would be given the track get "seen nowhere", the branch track
        # guidance contrasts with (drawn only when on, so runs without it keep their random stream)
        dropped = torch.rand(len(tokens), generator=gen) < t.track_dropout if t.track_dropout > 0 else None
        given = given_track(tr.model, track, tasks, self.cfg.tasks.generate_track, dropped)
        moving = given is not None and t.track_weight > 0
        with self.autocast:   # logits of the scored tokens only (and what the extra losses read)
            picked = tr.train_model(inputs, cond, scored, extras=pointer or moving,
                                    track=None if given is None else given.to(tr.device))
        picked, extras = picked if pointer or moving else (picked, {})
        wanted, weights = targets[scored], None
        if t.unchanged_weight < 1 or t.motion_weight > 0:   # (a plain mean needs neither input)
            weights = token_weights(tr.model.reference_tokens(inputs)[scored] == wanted,
                                    self.layout.to_sequence(motion).to(tr.device)[scored], t)
        loss, parts = tr.model.loss(picked, wanted, t.label_smoothing, weights)
        row = {"loss": loss.detach(), "acc": parts["acc"], "scored_tokens": scored.sum()}
        if pointer:
            moved, found = tr.model.pointer_loss(extras, pointer_targets(tr.model, inputs, cells.to(tr.device))[scored])
            loss = loss + t.pointer_weight * moved
            row.update(token_loss=row["loss"], pointer_loss=moved.detach(), **found)
        if moving:   # the motion module, on the clips given a track
            keep = tracked(tasks, self.cfg.tasks.generate_track, dropped).to(tr.device)
            moved, found = tr.model.track_loss(extras["centres"][keep], track.to(tr.device)[keep],
                                               self.latent_frames)
            loss = loss + t.track_weight * moved
            row.update(token_loss=row.get("token_loss", row["loss"]), track_loss=moved.detach(), **found)
        row["loss"] = loss.detach()
        return loss, row

    def train_state(self) -> dict:
        return {"track_prefit": self.prefit} if self.prefit else {}

    def load_state(self, latest: Path, state: dict) -> None:
        self.prefit = state.get("track_prefit")   # (a resumed run's summary still says what the fit did)

    def validate(self, tr: Trainer, model: MaskedVideoTransformer) -> dict:
        t = self.cfg.train
        return validate(model, self.val_set, self.weights_mix, self.latent_frames, tr.device, t.batch_size, t.seed,
                        self.cfg.tasks.generate_track, tr.precision)

    def validation_line(self, val: dict) -> str:
        return (f"step {val['step']}: {val['split']} loss {val['loss']:.3f}, token accuracy {val['acc']:.1%}"
                + (f" (predict {val['acc_predict']:.1%}, on changed tokens {val['acc_changed_predict']:.1%})"
                   if val.get("acc_changed_predict") is not None else "")
                + (f", window offset right on {val['offset_acc_predict']:.1%} of the object's"
                   if val.get("offset_acc_predict") is not None else "")
                + (f", motion module off by {val['track_err_cells']:.2f} cells"
                   if val.get("track_err_cells") is not None else ""))

    def postfix(self, row: dict) -> dict:
        return {"loss": f"{row['loss']:.3f}", "acc": f"{row['acc']:.2f}"}

    def summary(self, tr: Trainer) -> dict:
        t, done = self.cfg.train, tr.step - tr.start_step
        return {"run": str(tr.out), "step": tr.step, "finished": tr.step >= t.steps, "arch": self.cfg.model.arch,
                "seconds_this_run": round(tr.seconds, 2), "s_per_step": round(tr.seconds / done, 4) if done else None,
                "device": str(tr.device), "parameters": tr.model.num_parameters(),
                "tokens_per_clip": self.layout.num_tokens, "last_validation": tr.last_val, "world_size": tr.world,
                "global_batch": t.batch_size * tr.world, **({"track_prefit": self.prefit} if self.prefit else {})}
