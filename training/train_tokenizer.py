"""Train the video tokenizer on a packed dataset: the whole loop, top to bottom.

    magvit3d train-tokenizer --data DATASET --out RUN [--config tiny|demo|full|FILE] [--set KEY=VALUE] [--resume]

Per step: a batch of view-clips (views folded into the batch) -> reconstruction loss (L1 or L2) + the quantizer's
commitment / codebook / entropy terms (+ LPIPS when its weights are present and train.perceptual_weight > 0,
+ an adversarial term once train.disc_start is reached when train.disc_weight > 0) -> AdamW with linear warm-up
and cosine decay, gradient clipping, an EMA of the weights; then, with the GAN on, one discriminator step
(hinge + LeCAM). Every `val_every` steps the EMA model reconstructs validation clips: PSNR, SSIM, codebook
usage and perplexity go to RUN/metrics.jsonl (and TensorBoard events in RUN/tensorboard) next to the training
losses. Checkpoints (safetensors + JSON config + optimizer/RNG state) go to RUN/checkpoints; `--resume`
continues bit for bit on the CPU: data order, RNG state, optimizer and schedule all restart where they stopped.
Under torchrun (WORLD_SIZE > 1) the same code runs DDP.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from datagen.config import UserError, to_dict
from datagen.dataset import load_dataset_json
from datagen.pack import load_packed
from training import checkpoint as ckpt
from training import loop
from training.baselines import tokenizer_baselines
from training.configs import TokenizerRunConfig, load_tokenizer_config
from training.data import PackedViewClips, infinite_loader, random_crop, to_model_range, to_uint8
from training.discriminator import LeCAM, PatchDiscriminator3D, hinge_d_loss
from training.device import autocast_for, init_distributed, pick_device
from training.loop import GracefulStop, lr_at
from training.metrics import motion_ratio, psnr_per_clip, ssim_per_clip
from training.tokenizer import TokenizerConfig, VideoTokenizer, code_space_health

load_run_config = load_tokenizer_config   # (the name every training loop module uses)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """EMA of the encoder/decoder weights. The quantizer is copied, not averaged: dead-code restarts move codebook
    rows in one step, and an averaged row sits between its old and new place where no latent maps to it
    (measured on the demo data: validation codebook usage 2.6% with the averaged codebook)."""
    loop.ema_update(ema, model, decay, copy_prefixes=("quantizer.",))


@torch.no_grad()
def validate(model: VideoTokenizer, clips: torch.Tensor, device: torch.device, batch_size: int) -> dict:
    """Reconstruct uint8 view-clips (N, 3, T, H, W): PSNR and SSIM; codebook usage and perplexity; the code space's
    health (effective dimension, duplicate codes: see tokenizer.code_space_health); whether the reconstructions keep
    each clip's mean colour (mean absolute error of the per-clip mean, in 0..255 levels) and move as much as the input
    (motion_ratio: mean absolute frame-to-frame change of the reconstructions over that of the input)."""
    model.eval()
    recon, indices, latents = [], [], []
    for i in range(0, len(clips), batch_size):
        x = to_model_range(clips[i:i + batch_size].to(device))
        z_q, idx, _ = model.encode(x)
        recon.append(to_uint8(model.decode(z_q).float()).cpu())
        indices.append(idx.cpu().flatten())
        latents.append(z_q.float().movedim(1, -1).reshape(-1, z_q.shape[1]).cpu())
    model.train()
    a = clips.permute(0, 2, 3, 4, 1).numpy()                      # (N, T, H, W, 3)
    b = torch.cat(recon).permute(0, 2, 3, 4, 1).numpy()
    idx = torch.cat(indices)
    counts = torch.bincount(idx, minlength=model.cfg.codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    af, bf = a.astype(np.float32), b.astype(np.float32)
    return {"psnr": float(psnr_per_clip(a, b).mean()), "ssim": float(ssim_per_clip(a, b).mean()),
            "usage": float((counts > 0).double().mean()), "perplexity": float(math.exp(entropy)),
            **code_space_health(torch.cat(latents), idx),
            "mean_colour_error": float(np.abs(af.mean(axis=(1, 2, 3)) - bf.mean(axis=(1, 2, 3))).mean()),
            "motion_ratio": motion_ratio(a, b)}


def validation_line(val: dict, baselines: dict) -> str:
    """One log line per validation, with the same-budget k-means baseline beside the PSNR."""
    versus = (f" (k-means at the same budget {baselines['kmeans']:.2f} dB, block means {baselines['block_mean']:.2f}, "
              f"clip mean {baselines['clip_mean']:.2f})" if baselines else "")
    motion = f", motion ratio {val['motion_ratio']:.2f}" if val.get("motion_ratio") is not None else ""
    if motion and baselines.get("kmeans_motion_ratio") is not None:
        motion += f" (k-means {baselines['kmeans_motion_ratio']:.2f})"
    return (f"step {val['step']}: {val['split']} PSNR {val['psnr']:.2f} dB{versus}, SSIM {val['ssim']:.3f}, "
            f"codebook usage {val['usage']:.1%}, effective dim {val['effective_dim']:.2f}, duplicate codes "
            f"{val['duplicate_codes']:.1%}{motion}")


def baselines_for(run: Path, data: Path, info: dict, val_clips: torch.Tensor, model_cfg: TokenizerConfig,
                  val_split: str, log) -> dict:
    """The same-budget baselines (training.baselines) on the validation clips, cached in RUN/baselines.json so a
    resumed run does not refit k-means; refit when the dataset, the clips or the token grid differ."""
    from datagen.dataset import write_json_atomic

    key = {"config_hash": info["config_hash"], "val_split": val_split, "val_clips": len(val_clips),
           "grid": [model_cfg.temporal_factor, model_cfg.spatial_factor], "codebook_size": model_cfg.codebook_size}
    path = Path(run) / "baselines.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["psnr"]
        except (json.JSONDecodeError, AttributeError, KeyError):
            pass   # a damaged cache is refit
    log(f"fitting the same-budget baselines (k-means with {model_cfg.codebook_size} codes over raw "
        f"{model_cfg.temporal_factor}x{model_cfg.spatial_factor}x{model_cfg.spatial_factor} blocks of the train clips)")
    train = load_packed(data, "train").rgb
    result = tokenizer_baselines(train.reshape(-1, *train.shape[2:]),
                                 val_clips.permute(0, 2, 3, 4, 1).numpy(), model_cfg.temporal_factor,
                                 model_cfg.spatial_factor, model_cfg.codebook_size, seed=0)
    write_json_atomic(path, {"key": key, "psnr": result})
    return result


def train_tokenizer(cfg: TokenizerRunConfig, data: Path, out: Path, *, resume: bool = False, device: str = "auto",
                    progress: bool = True, max_steps_this_run: int | None = None, log=print) -> dict:
    """Train (or resume) a tokenizer run; returns the summary also written to RUN/summary.json.
    max_steps_this_run stops early after that many steps (a checkpoint is saved), as an interruption would."""
    from training.progress import step_bar

    data, out = Path(data), Path(out)
    t = cfg.train
    info = load_dataset_json(data)
    W, H = info["image_size"]
    try:
        cfg.model.validate((H, W), info["frames"])
    except UserError as e:
        raise UserError(f"dataset {data} ({W}x{H}, {info['frames']} frames) does not fit the tokenizer: {e}") from None
    train_set = PackedViewClips(data, "train")
    val_split = "val" if info["counts"].get("val") else "train"
    if val_split == "train":
        log(f"notice: {data} has no val split; validation reconstructs training clips and is logged as split 'train'")
    val_set = train_set if val_split == "train" else PackedViewClips(data, "val")
    if t.crop_size > min(H, W) or t.crop_frames > info["frames"]:
        raise UserError(f"train.crop_size {t.crop_size} / crop_frames {t.crop_frames} exceed the dataset's "
                        f"{W}x{H}x{info['frames']} clips")
    if len(train_set) < t.batch_size:
        raise UserError(f"train.batch_size = {t.batch_size} exceeds the {len(train_set)} training view-clips of {data}")
    run_config = {"model": to_dict(cfg.model), "train": to_dict(cfg.train),
                  "data": {"path": str(data), "config_hash": info["config_hash"], "image_size": [W, H],
                           "frames": info["frames"]}, "kind": "tokenizer"}

    latest = ckpt.checkpoint_to_resume(out, resume, "tokenizer", log)

    rank, world, ddp_device = init_distributed(device)
    main = rank == 0  # only rank 0 writes metrics, validates and saves checkpoints
    dev = ddp_device or pick_device(device)
    if world > 1:
        progress = progress and main
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = VideoTokenizer(cfg.model).to(dev)
    ema = copy.deepcopy(model).eval() if t.ema_decay > 0 else None
    opt = loop.adamw(model.param_groups(t.weight_decay), t)
    adversary, opt_d = None, None
    if t.disc_weight > 0:
        adversary = torch.nn.ModuleDict({"disc": PatchDiscriminator3D(t.disc_channels), "lecam": LeCAM()}).to(dev)
        opt_d = torch.optim.AdamW(adversary.parameters(), lr=t.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
    step = 0
    if latest is not None:
        saved = ckpt.load_config_json(latest)
        ckpt.require_same(saved, run_config, latest, ["model", "train", "data"])
        ckpt.load_weights(latest / "model.safetensors", model)
        if ema is not None:
            ckpt.load_weights(latest / "ema.safetensors", ema, "EMA model")
        state = ckpt.load_train_state(latest)
        opt.load_state_dict(state["optimizer"])
        if adversary is not None:
            ckpt.load_weights(latest / "disc.safetensors", adversary, "discriminator")
            opt_d.load_state_dict(state["disc_optimizer"])
        loop.restore_rng_state(state["rng"])
        step = int(saved["step"])
        log(f"resuming {out} from step {step}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    perceptual = None
    if t.perceptual_weight > 0:
        from training.lpips_metric import load_lpips

        metric = load_lpips(t.lpips_weights or None, device=dev)
        if metric.available:
            perceptual = metric.net.eval().requires_grad_(False)
        else:
            log(f"notice: LPIPS unavailable ({metric.reason}); training without the perceptual loss")
    if t.compile:
        # The convs only: the quantizer's data-dependent dead-code restarts and usage statistics made a whole-model
        # compile recompile until dynamo's limit (seen on an H200: 116 view-clips/s compiled vs 164 eager).
        model.encoder.compile()
        model.decoder.compile()
    train_model = model
    disc = adversary["disc"] if adversary is not None else None
    if world > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if disc is not None:
            disc = DistributedDataParallel(disc, device_ids=[dev.index] if dev.type == "cuda" else None)
    autocast = autocast_for(dev)

    val_clips = torch.stack([val_set[i] for i in range(min(t.val_clips, len(val_set)))])
    baselines = baselines_for(out, data, info, val_clips, cfg.model, val_split, log) if main and t.baselines else {}
    batches = infinite_loader(train_set, t.batch_size, t.seed, t.workers, start_step=step, rank=rank, world=world)

    def save():
        weights = {"model": model.state_dict()}
        train_state = {"optimizer": opt.state_dict(), "rng": loop.rng_state()}
        if ema is not None:
            weights["ema"] = ema.state_dict()
        if adversary is not None:
            weights["disc"] = adversary.state_dict()
            train_state["disc_optimizer"] = opt_d.state_dict()
        ckpt.save_checkpoint(out, step, run_config, weights, train_state)

    metrics = loop.MetricsLog(out, step) if main else None
    log_metrics = metrics.log if main else None

    start_step = step
    stop_at = t.steps if max_steps_this_run is None else min(t.steps, step + max_steps_this_run)
    bar = step_bar(t.steps, step, "tokenizer", progress, log)
    t0, last_val = time.perf_counter(), {}
    stop = GracefulStop()
    with loop.checkpoint_on_interrupt(stop, bar, metrics, save, lambda: step, log, main, run=out):
        while step < stop_at:
            if stop.requested:  # Ctrl-C or SIGTERM (schedulers send it before killing): stop at a step boundary
                raise KeyboardInterrupt
            x = next(batches)
            if t.crop_size or t.crop_frames:
                x = random_crop(x, t.crop_size, t.crop_frames, cfg.model.temporal_factor, t.seed * 1_000_003 + step)
            x = to_model_range(x.to(dev, non_blocking=True))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, t)
            adversarial = adversary is not None and step >= t.disc_start
            with autocast:
                x_hat, _, aux = train_model(x)
                loss, parts = model.loss(x, x_hat, aux, t.recon_loss, perceptual, t.perceptual_weight,
                                         disc if adversarial else None, t.disc_weight)
            opt.zero_grad(set_to_none=True)
            loop.backward_checked(loss, model.parameters(), t.grad_clip, step, out)  # stops on nan/inf
            opt.step()
            if adversarial:  # discriminator step on the same batch: hinge + LeCAM
                with autocast:
                    # one forward over real and fake together (DDP wants one forward per backward)
                    real, fake = disc(torch.cat([x, x_hat.detach()])).chunk(2)
                    d_loss = hinge_d_loss(real.float(), fake.float())
                    d_loss = d_loss + t.lecam_weight * adversary["lecam"](real.float(), fake.float())
                opt_d.zero_grad(set_to_none=True)
                loop.backward_checked(d_loss, adversary.parameters(), t.grad_clip, step, out, "discriminator loss")
                opt_d.step()
            if ema is not None:
                ema_update(ema, model, t.ema_decay)
            step += 1
            bar.update(1)
            if not main:
                continue
            if step % t.log_every == 0 or step == stop_at:
                terms = {k: float(v.detach()) for k, v in parts.items()}
                recon, g_adv = terms.pop("recon"), terms.pop("g_adv", None)
                row = {"step": step, **terms, "loss": loss.item(), "recon": recon, "lr": lr_at(step - 1, t),
                       **({"g_adv": g_adv, "d_loss": d_loss.item()} if adversarial else {}),
                       "seconds": round(time.perf_counter() - t0, 3)}
                log_metrics(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", usage=f"{row.get('usage', 0):.2f}")
            if step % t.val_every == 0 or step == t.steps:
                last_val = {"step": step, "split": val_split, **validate(ema or model, val_clips, dev, t.batch_size)}
                if baselines:
                    last_val["psnr_over_kmeans"] = last_val["psnr"] - baselines["kmeans"]
                log_metrics(last_val)
                bar.write(validation_line(last_val, baselines))
            if step % t.ckpt_every == 0 or step == stop_at:
                save()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        if not main:
            return {"run": str(out), "step": step, "rank": rank}
    seconds = time.perf_counter() - t0
    summary = {"run": str(out), "step": step, "finished": step >= t.steps, "seconds_this_run": round(seconds, 2),
               "view_clips_per_s": round((step - start_step) * t.batch_size / seconds, 3) if seconds > 0 else None,
               "device": str(dev), "parameters": model.num_parameters(), "last_validation": last_val,
               "perceptual_loss": "lpips" if perceptual is not None else "off", "world_size": world,
               "global_batch": t.batch_size * world, "baselines": baselines}
    loop.write_summary(out, summary)
    return summary
