"""Train the video tokenizer on a packed dataset: what is specific to it (training.loop.Trainer runs the loop).

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

import json
import math
from pathlib import Path

import numpy as np
import torch

from datagen.config import UserError, to_dict
from datagen.dataset import load_dataset_json, write_json_atomic
from datagen.pack import load_packed
from training import checkpoint as ckpt
from training import loop
from training.baselines import tokenizer_baselines
from training.configs import TokenizerRunConfig, load_tokenizer_config
from training.data import PackedViewClips, infinite_loader, random_crop, to_model_range, to_uint8
from training.discriminator import LeCAM, PatchDiscriminator3D, hinge_d_loss
from training.loop import TrainTask, Trainer, lr_at  # noqa: F401 - lr_at for tests
from training.lpips_metric import load_lpips
from training.metrics import motion_ratio, moving_psnr, psnr_per_clip, ssim_per_clip
from training.tokenizer import TokenizerConfig, VideoTokenizer, code_space_health

load_run_config = load_tokenizer_config   # (the name every training loop module uses)


# The EMA averages the encoder/decoder weights but copies the quantizer: dead-code restarts move codebook rows in one
# step, and an averaged row sits between its old and new place where no latent maps to it (measured on the demo
# data: validation codebook usage 2.6% with the averaged codebook).
EMA_COPY = ("quantizer.",)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """The tokenizer's EMA update (see EMA_COPY); benchmarks/tokenizer.py uses it too."""
    loop.ema_update(ema, model, decay, copy_prefixes=EMA_COPY)


@torch.no_grad()
def validate(model: VideoTokenizer, clips: torch.Tensor, device: torch.device, batch_size: int) -> dict:
    """Reconstruct uint8 view-clips (N, 3, T, H, W): PSNR and SSIM; codebook usage and perplexity; the code space's
    health (effective dimension, duplicate codes: see tokenizer.code_space_health); whether the reconstructions keep
    each clip's mean colour (mean absolute error of the per-clip mean, in 0..255 levels) and move as much as the input
    (motion_ratio: mean absolute frame-to-frame change of the reconstructions over that of the input); PSNR over the
    moving pixels alone (moving_psnr: a blurred object costs little whole-frame PSNR on a still background)."""
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
    clip_colour = lambda v: v.mean(axis=(1, 2, 3), dtype=np.float64)   # noqa: E731 - (N, 3) mean colour per clip
    return {"psnr": float(psnr_per_clip(a, b).mean()), "ssim": float(ssim_per_clip(a, b).mean()),
            "usage": float((counts > 0).double().mean()), "perplexity": float(math.exp(entropy)),
            **code_space_health(torch.cat(latents), idx),
            "mean_colour_error": float(np.abs(clip_colour(a) - clip_colour(b)).mean()),
            "motion_ratio": motion_ratio(a, b), "moving_psnr": moving_psnr(a, b)}


def validation_line(val: dict, baselines: dict) -> str:
    """One log line per validation, with the same-budget k-means baseline beside the PSNR."""
    versus = (f" (k-means at the same budget {baselines['kmeans']:.2f} dB, block means {baselines['block_mean']:.2f}, "
              f"clip mean {baselines['clip_mean']:.2f})" if baselines else "")
    motion = f", motion ratio {val['motion_ratio']:.2f}" if val.get("motion_ratio") is not None else ""
    if motion and baselines.get("kmeans_motion_ratio") is not None:
        motion += f" (k-means {baselines['kmeans_motion_ratio']:.2f})"
    moving = ""
    if val.get("moving_psnr") is not None:
        moving = f", moving pixels {val['moving_psnr']:.2f} dB"
        if (baselines.get("moving") or {}).get("kmeans") is not None:
            moving += f" (k-means {baselines['moving']['kmeans']:.2f})"
    return (f"step {val['step']}: {val['split']} PSNR {val['psnr']:.2f} dB{versus}{moving}, SSIM {val['ssim']:.3f}, "
            f"codebook usage {val['usage']:.1%}, effective dim {val['effective_dim']:.2f}, duplicate codes "
            f"{val['duplicate_codes']:.1%}{motion}")


def baselines_for(run: Path, data: Path, info: dict, val_clips: torch.Tensor, model_cfg: TokenizerConfig,
                  val_split: str, log) -> dict:
    """The same-budget baselines (training.baselines) on the validation clips, cached in RUN/baselines.json so a
    resumed run does not refit k-means; refit when the dataset, the clips or the token grid differ."""
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
    task = TokenizerTask(cfg, Path(data), Path(out), log)
    return Trainer(task, cfg.train, out, task.run_config, resume=resume, device=device, progress=progress,
                   max_steps_this_run=max_steps_this_run, log=log).fit()


class TokenizerTask(TrainTask):
    """The tokenizer's part of the loop (training.loop.Trainer does the rest): view-clips (random crops when set)
    -> reconstruction + quantizer (+ LPIPS, + adversarial) loss; with the GAN on, a discriminator step per step."""
    kind, label, same_sections = "tokenizer", "tokenizer", ("model", "train", "data")
    ema_copy_prefixes = EMA_COPY

    def __init__(self, cfg: TokenizerRunConfig, data: Path, out: Path, log):
        self.cfg, self.data, self.out, self.log = cfg, data, out, log
        t = cfg.train
        self.info = info = load_dataset_json(data)
        W, H = info["image_size"]
        try:
            cfg.model.validate((H, W), info["frames"])
        except UserError as e:
            raise UserError(f"dataset {data} ({W}x{H}, {info['frames']} frames) does not fit the tokenizer: {e}") from None
        self.train_set = PackedViewClips(data, "train")
        self.val_split = "val" if info["counts"].get("val") else "train"
        if self.val_split == "train":
            log(f"notice: {data} has no val split; validation reconstructs training clips and is logged as split "
                f"'train'")
        self.val_set = self.train_set if self.val_split == "train" else PackedViewClips(data, "val")
        if t.crop_size > min(H, W) or t.crop_frames > info["frames"]:
            raise UserError(f"train.crop_size {t.crop_size} / crop_frames {t.crop_frames} exceed the dataset's "
                            f"{W}x{H}x{info['frames']} clips")
        if len(self.train_set) < t.batch_size:
            raise UserError(f"train.batch_size = {t.batch_size} exceeds the {len(self.train_set)} training view-clips "
                            f"of {data}")
        self.run_config = {"model": to_dict(cfg.model), "train": to_dict(t),
                           "data": {"path": str(data), "config_hash": info["config_hash"], "image_size": [W, H],
                                    "frames": info["frames"]}, "kind": "tokenizer"}

    def build(self, tr: Trainer) -> VideoTokenizer:
        t = self.cfg.train
        model = VideoTokenizer(self.cfg.model).to(tr.device)
        self.adversary, self.opt_d = None, None
        if t.disc_weight > 0:
            self.adversary = torch.nn.ModuleDict({"disc": PatchDiscriminator3D(t.disc_channels),
                                                  "lecam": LeCAM()}).to(tr.device)
            self.opt_d = torch.optim.AdamW(self.adversary.parameters(), lr=t.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
        return model

    def weights(self) -> dict:
        return {"disc": self.adversary.state_dict()} if self.adversary is not None else {}

    def train_state(self) -> dict:
        return {"disc_optimizer": self.opt_d.state_dict()} if self.adversary is not None else {}

    def load_state(self, latest: Path, state: dict) -> None:
        if self.adversary is not None:
            ckpt.load_weights(latest / "disc.safetensors", self.adversary, "discriminator")
            self.opt_d.load_state_dict(state["disc_optimizer"])

    def start(self, tr: Trainer) -> None:
        t = self.cfg.train
        self.perceptual = None
        if t.perceptual_weight > 0:
            metric = load_lpips(t.lpips_weights or None, device=tr.device)
            if metric.available:
                self.perceptual = metric.net.eval().requires_grad_(False)
            else:
                self.log(f"notice: LPIPS unavailable ({metric.reason}); training without the perceptual loss")
        if t.compile:
            # The convs only: the quantizer's data-dependent dead-code restarts and usage statistics made a whole-model
            # compile recompile until dynamo's limit (seen on an H200: 116 view-clips/s compiled vs 164 eager).
            tr.model.encoder.compile()
            tr.model.decoder.compile()
        self.disc = tr.ddp(self.adversary["disc"]) if self.adversary is not None else None
        self.autocast = tr.autocast()
        self.val_clips = torch.stack([self.val_set[i] for i in range(min(t.val_clips, len(self.val_set)))])
        self.baselines = (baselines_for(self.out, self.data, self.info, self.val_clips, self.cfg.model, self.val_split,
                                        self.log) if tr.main and t.baselines else {})
        self.batches = infinite_loader(self.train_set, t.batch_size, t.seed, t.workers, start_step=tr.step,
                                       rank=tr.rank, world=tr.world)

    def loss(self, tr: Trainer, step: int) -> tuple[torch.Tensor, dict]:
        t = self.cfg.train
        x = next(self.batches)
        if t.crop_size or t.crop_frames:
            x = random_crop(x, t.crop_size, t.crop_frames, self.cfg.model.temporal_factor, t.seed * 1_000_003 + step)
        x = to_model_range(x.to(tr.device, non_blocking=True))
        self.adversarial = self.adversary is not None and step >= t.disc_start
        with self.autocast:
            x_hat, _, aux = tr.train_model(x)
            loss, parts = tr.model.loss(x, x_hat, aux, t.recon_loss, self.perceptual, t.perceptual_weight,
                                        self.disc if self.adversarial else None, t.disc_weight,
                                        motion_weight=t.motion_weight)
        self.x, self.x_hat = (x, x_hat) if self.adversarial else (None, None)   # for the discriminator's step
        return loss, {**parts, "loss": loss.detach()}

    def after_step(self, tr: Trainer, step: int, parts: dict) -> None:
        """With the GAN on: a discriminator step on the same batch (hinge + LeCAM)."""
        if not self.adversarial:
            return
        t = self.cfg.train
        with self.autocast:
            # one forward over real and fake together (DDP wants one forward per backward)
            real, fake = self.disc(torch.cat([self.x, self.x_hat.detach()])).chunk(2)
            d_loss = hinge_d_loss(real.float(), fake.float())
            d_loss = d_loss + t.lecam_weight * self.adversary["lecam"](real.float(), fake.float())
        self.opt_d.zero_grad(set_to_none=True)
        loop.backward_checked(d_loss, self.adversary.parameters(), t.grad_clip, step, self.out, "discriminator loss")
        self.opt_d.step()
        parts["d_loss"] = d_loss.detach()
        self.x = self.x_hat = None   # (the batch is not kept alive until the next step)

    def validate(self, tr: Trainer, model: VideoTokenizer) -> dict:
        val = validate(model, self.val_clips, tr.device, self.cfg.train.batch_size)
        if self.baselines:
            val["psnr_over_kmeans"] = val["psnr"] - self.baselines["kmeans"]
        return val

    def validation_line(self, val: dict) -> str:
        return validation_line(val, self.baselines)

    def postfix(self, row: dict) -> dict:
        return {"loss": f"{row['loss']:.4f}", "usage": f"{row.get('usage', 0):.2f}"}

    def summary(self, tr: Trainer) -> dict:
        t = self.cfg.train
        return {"run": str(tr.out), "step": tr.step, "finished": tr.step >= t.steps,
                "seconds_this_run": round(tr.seconds, 2),
                "view_clips_per_s": round((tr.step - tr.start_step) * t.batch_size / tr.seconds, 3)
                if tr.seconds > 0 else None,
                "device": str(tr.device), "parameters": tr.model.num_parameters(), "last_validation": tr.last_val,
                "perceptual_loss": "lpips" if self.perceptual is not None else "off", "world_size": tr.world,
                "global_batch": t.batch_size * tr.world, "baselines": self.baselines}
