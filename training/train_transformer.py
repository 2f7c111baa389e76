"""Train the video transformer on a token cache: the whole loop, top to bottom.

    magvit3d train-transformer --tokens RUN_OR_CACHE --out RUN [--config tiny|demo|full|FILE] [--set KEY=VALUE] [--resume]

Per step: a batch of token clips (N, V, t, h, w) from the cache's train split; every clip draws a task from the
mix in [tasks] (COMMIT-style: predict, generate, complete-view, unconditional), which decides the given tokens
and the condition (training/sampling.py). The masked model then masks a cosine-scheduled fraction of the tokens
that are not given and is trained with cross-entropy on the masked ones; the autoregressive baseline (arch "ar")
sees the clip teacher-forced and is trained on every token that is not given. AdamW with linear warm-up and cosine
decay, gradient clipping, an EMA of the weights, bf16 autocast on CUDA, DDP under torchrun.

Every `val_every` steps the EMA model is scored on the cache's val split per task (fixed masks): masked-token (or
next-token) loss and accuracy, into RUN/metrics.jsonl and TensorBoard. Checkpoints (safetensors + JSON config,
which records the token cache: tokenizer run, step, codebook size, grid) go to RUN/checkpoints; `--resume`
continues bit for bit on the CPU. SIGINT / SIGTERM stop at a step boundary with a checkpoint.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from datagen.config import UserError, to_dict
from training import checkpoint as ckpt
from training import loop
from training.configs import TransformerRunConfig, load_transformer_config
from training.data import infinite_loader
from training.device import autocast_for, init_distributed, pick_device
from training.loop import GracefulStop, lr_at
from training.sampling import TASK_ID, condition, given_latent_frames
from training.token_cache import TokenCache, load_token_cache
from training.transformer import TASKS, MaskedVideoTransformer, TokenLayout

load_run_config = load_transformer_config   # (the name every training loop module uses)


class TokenClips(Dataset):
    """(tokens int64 (V, t, h, w), shape id, family id) per clip of a cache split, held in memory."""

    def __init__(self, cache: TokenCache, limit: int | None = None):
        self.tokens = torch.from_numpy(cache.tokens[:limit].astype("int64"))
        self.shape = torch.from_numpy(cache.shape_ids[:limit])
        self.family = torch.from_numpy(cache.family_ids[:limit])

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens[i], self.shape[i], self.family[i]


def draw_tasks(weights: dict[str, float], batch: int, gen: torch.Generator) -> torch.Tensor:
    """(B,) task ids drawn from the mix."""
    probs = torch.tensor([weights.get(name, 0.0) for name in TASKS], dtype=torch.float64)
    return torch.multinomial(probs / probs.sum(), batch, replacement=True, generator=gen)


def make_batch(layout: TokenLayout, tokens: torch.Tensor, shape: torch.Tensor, family: torch.Tensor,
               tasks: torch.Tensor, latent_frames: int, arch: str, gen: torch.Generator):
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
    n_mask = torch.ceil(ratio * free).long().clamp(min=1).minimum(free)
    scores = torch.rand(B, layout.num_tokens, generator=gen).masked_fill(given, 2.0)  # given ones rank last
    masked = scores.argsort(1).argsort(1) < n_mask[:, None]
    return seq.masked_fill(masked, layout.mask_id), seq, masked, cond


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Task and mask randomness of one step: a function of (seed, step, rank) only, so resume needs no state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


@torch.no_grad()
def validate(model: MaskedVideoTransformer, data: TokenClips, weights: dict[str, float], latent_frames: int,
             device: torch.device, batch_size: int, seed: int) -> dict:
    """Per task with weight > 0: loss and accuracy on the scored tokens of `data`, with masks drawn from a fixed
    generator (the same every validation); "loss" / "acc" average the tasks."""
    model.eval()
    out = {}
    for name in TASKS:
        if weights.get(name, 0) <= 0:
            continue
        gen = torch.Generator().manual_seed(seed)
        loss_sum, correct, count = 0.0, 0, 0
        for i in range(0, len(data), batch_size):
            rows = slice(i, i + batch_size)
            tokens, shape, family = data.tokens[rows], data.shape[rows], data.family[rows]
            tasks = torch.full((len(tokens),), TASK_ID[name])
            inputs, targets, scored, cond = make_batch(model.layout, tokens, shape, family, tasks, latent_frames,
                                                       model.cfg.arch, gen)
            scored = scored.to(device)
            with autocast_for(device):
                picked = model(inputs.to(device), cond.to(device), scored).float()
            wanted = targets.to(device)[scored]
            loss_sum += F.cross_entropy(picked, wanted, reduction="sum").item()
            correct += (picked.argmax(-1) == wanted).sum().item()
            count += len(wanted)
        key = name.replace("-", "_")
        out[f"loss_{key}"], out[f"acc_{key}"] = loss_sum / max(count, 1), correct / max(count, 1)
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
    from training.progress import step_bar

    out = Path(out)
    t = cfg.train
    cfg.validate()
    train_cache = load_token_cache(tokens, "train")
    has_val = (train_cache.directory / "val_tokens.npy").is_file()
    val_cache = load_token_cache(tokens, "val") if has_val else train_cache
    val_split = "val"
    if len(val_cache) == 0 or val_cache is train_cache:  # no val split: validate on the first training clips, say so
        val_cache, val_split = train_cache, "train"
        log(f"notice: the token cache {tokens} has no val clips; validation scores training clips and is logged as "
            f"split 'train'")
    latent_frames = given_latent_frames(cfg.tasks.predict_frames, train_cache.source, "tasks.predict_frames")
    layout = train_cache.layout()
    weights = cfg.tasks.weights()
    if layout.views < 2 and weights["complete-view"] > 0:
        raise UserError("tasks.complete_view > 0 needs at least 2 views; the token cache has 1")
    if len(train_cache) < t.batch_size:
        raise UserError(f"train.batch_size = {t.batch_size} exceeds the {len(train_cache)} training clips of "
                        f"{train_cache.directory}")
    run_config = run_config_for(cfg, train_cache)

    latest = ckpt.checkpoint_to_resume(out, resume, "transformer", log)

    rank, world, ddp_device = init_distributed(device)
    main = rank == 0
    dev = ddp_device or pick_device(device)
    if world > 1:
        progress = progress and main
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = MaskedVideoTransformer(cfg.model, layout).to(dev)
    ema = copy.deepcopy(model).eval() if t.ema_decay > 0 else None
    opt = loop.adamw(model.param_groups(t.weight_decay), t)
    step = 0
    if latest is not None:
        saved = ckpt.load_config_json(latest)
        if saved.get("kind") != "transformer":
            raise UserError(f"{latest} is a {saved.get('kind', 'unknown')!r} checkpoint, not a transformer")
        ckpt.require_same(saved, run_config, latest, ["tokens", "model", "tasks", "train"])
        ckpt.load_weights(latest / "model.safetensors", model)
        if ema is not None:
            ckpt.load_weights(latest / "ema.safetensors", ema, "EMA model")
        state = ckpt.load_train_state(latest)
        opt.load_state_dict(state["optimizer"])
        loop.restore_rng_state(state["rng"])
        step = int(saved["step"])
        log(f"resuming {out} from step {step}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    train_model = torch.compile(model) if t.compile else model
    if world > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[dev.index] if dev.type == "cuda" else None)
    autocast = autocast_for(dev)

    train_set, val_set = TokenClips(train_cache), TokenClips(val_cache, limit=t.val_clips)
    batches = infinite_loader(train_set, t.batch_size, t.seed, t.workers, start_step=step, rank=rank, world=world)

    def save():
        w = {"model": model.state_dict(), **({"ema": ema.state_dict()} if ema is not None else {})}
        ckpt.save_checkpoint(out, step, run_config, w, {"optimizer": opt.state_dict(), "rng": loop.rng_state()})

    metrics = loop.MetricsLog(out, step) if main else None
    start_step = step
    stop_at = t.steps if max_steps_this_run is None else min(t.steps, step + max_steps_this_run)
    bar = step_bar(t.steps, step, f"transformer ({cfg.model.arch})", progress, log)
    t0, last_val = time.perf_counter(), {}
    stop = GracefulStop()
    with loop.checkpoint_on_interrupt(stop, bar, metrics, save, lambda: step, log, main, run=out):
        while step < stop_at:
            if stop.requested:  # Ctrl-C or SIGTERM: stop at a step boundary
                raise KeyboardInterrupt
            tokens_b, shape_b, family_b = next(batches)
            gen = step_generator(t.seed, step, rank)
            tasks = draw_tasks(weights, len(tokens_b), gen)
            inputs, targets, scored, cond = (x.to(dev, non_blocking=True) for x in make_batch(
                layout, tokens_b, shape_b, family_b, tasks, latent_frames, cfg.model.arch, gen))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, t)
            with autocast:
                picked = train_model(inputs, cond, scored)   # logits of the scored tokens only
            loss, parts = model.loss(picked, targets[scored], t.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loop.backward_checked(loss, model.parameters(), t.grad_clip, step, out, hint="lower train.lr")
            opt.step()
            if ema is not None:
                loop.ema_update(ema, model, t.ema_decay)
            step += 1
            bar.update(1)
            if not main:
                continue
            if step % t.log_every == 0 or step == stop_at:
                acc = parts["acc"].item()
                row = {"step": step, "loss": loss.item(), "acc": acc, "scored_tokens": int(scored.sum()),
                       "lr": lr_at(step - 1, t), "seconds": round(time.perf_counter() - t0, 3)}
                metrics.log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{acc:.2f}")
            if step % t.val_every == 0 or step == t.steps:
                last_val = {"step": step, "split": val_split, **validate(ema or model, val_set, weights, latent_frames, dev,
                                                                     t.batch_size, t.seed)}
                metrics.log(last_val)
                bar.write(f"step {step}: {val_split} loss {last_val['loss']:.3f}, token accuracy {last_val['acc']:.1%}"
                          + (f" (predict {last_val['acc_predict']:.1%})" if "acc_predict" in last_val else ""))
            if step % t.ckpt_every == 0 or step == stop_at:
                save()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        if not main:
            return {"run": str(out), "step": step, "rank": rank}
    seconds = time.perf_counter() - t0
    done = step - start_step
    summary = {"run": str(out), "step": step, "finished": step >= t.steps, "arch": cfg.model.arch,
               "seconds_this_run": round(seconds, 2), "s_per_step": round(seconds / done, 4) if done else None,
               "device": str(dev), "parameters": model.num_parameters(), "tokens_per_clip": layout.num_tokens,
               "last_validation": last_val, "world_size": world, "global_batch": t.batch_size * world}
    loop.write_summary(out, summary)
    return summary
