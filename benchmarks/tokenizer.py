"""Tokenizer benchmark: our VideoTokenizer vs magvit2-pytorch's, trained side by side on the same clips.

    .venv-bench/bin/python benchmarks/tokenizer.py [--budget-s 240] [--config demo] [--batch-size N]
                                                   [--data demo_out/dataset] [--out-md BENCHMARKS.md]
    make bench-tokenizer BUDGET=240            # builds .venv-bench first, then runs this

Setup (once). magvit2-pytorch is a benchmark-only dependency and must stay out of the main .venv (it pulls
opencv-python, whose newest release declares numpy>=2, which breaks bpy). It gets its own venv:

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 'numpy>=1.26,<2' magvit2-pytorch==0.5.1 \\
        einops safetensors 'scikit-image>=0.22,<0.26' tqdm click pillow

(`make bench-venv` does the same.) Our packages are imported from this checkout (the script puts the repo root on
sys.path), so they need no install there. The packed demo dataset must exist (`make demo`).

What runs:
- Ours: training.tokenizer.VideoTokenizer with --config (default: the demo preset), trained with the step of
  training/train_tokenizer.py: reconstruction + quantizer loss, AdamW (decay on >= 2-D weights except the codebook),
  gradient clipping, EMA of the weights (validation uses the EMA model), bf16 autocast on CUDA only.
- Peer: magvit2_pytorch.VideoTokenizer (0.5.1), conv-only and built to mirror ours level by level: init_dim = our
  base width; per level ('consecutive_residual', 2 * num_res_blocks) (its residual unit has one 3x3x3 conv, ours two),
  then compress_space (+ compress_time where ours halves T) to the next level's width; at the lowest level as many
  residual units as bring its parameter count closest to ours. Quantizer LFQ with our codebook size (its default
  entropy / commitment weights); use_gan=False and perceptual_loss_weight=0 (its default would build a torchvision
  VGG16 with ImageNet weights, a download that fails without network); its discriminator, built even with use_gan=False
  (~35 M parameters by default) but never used then, is built tiny and deleted. Called as forward(video, return_loss=True, video_contains_first_frame=False): the
  clip is T = 16 frames with no extra first frame, so 16 -> 4 latent frames like ours (its default expects 1 + 4k
  frames). Its loss is MSE reconstruction + LFQ aux losses, hard-coded; so by default (--recon-loss l2) ours is
  trained with L2 too (train.recon_loss=l2), the same objective family; --recon-loss config keeps our config's.
  Same optimizer, schedule, gradient clipping, EMA decay and batch size as ours.
- Whole clips for both: the config's train.crop_size / crop_frames (random crops, which make our CPU training
  cheaper per step) are not used here, so the two architectures see identical inputs.
- A patched config of ours (the demo preset: 4 frames x 8 x 8 px folded into channels) has no conv pyramid to
  mirror; the peer then gets a conventional pyramid reaching the same token grid (see pyramid_for).
- Schedule over a wall-clock budget: linear warm-up for train.warmup_steps steps, then cosine decay from train.lr to
  train.lr * min_lr_ratio over the model's own training time (progress = seconds trained / budget).
- Both models read the same packed clips (datagen.pack / training.data.PackedViewClips, views folded into the batch)
  in the same order (training.data.infinite_loader with the same seed, no loader workers), and are validated on the
  same held-out val view-clips (training.metrics.psnr_per_clip / ssim_per_clip).
- Interleaved in time: slices of --slice-s seconds of training A, then B, then A, ... until each has trained for
  --budget-s seconds, so background load on a shared machine hits both alike. Throughput = view-clips trained /
  seconds spent in that model's own training steps (batch fetch + forward + backward + optimizer + EMA); validation
  (every --val-every-s training seconds, and at the end) is excluded.
Results go to BENCHMARKS.md (section "tokenizer-<config>") unless --no-write.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETUP = ("python3.11 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 "
         "'numpy>=1.26,<2' magvit2-pytorch==0.5.1 einops safetensors 'scikit-image>=0.22,<0.26' tqdm click pillow"
         " (or: make bench-venv), then run this script with .venv-bench/bin/python")


def import_peer():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # its `torch.cuda.amp.autocast` use warns at import
            import magvit2_pytorch
            from magvit2_pytorch import VideoTokenizer as PeerTokenizer
    except ImportError as e:
        fail(f"magvit2_pytorch is not importable in {sys.executable} ({e}); set up the benchmark venv: {SETUP}")
    return PeerTokenizer, getattr(magvit2_pytorch, "__version__", None) or _dist_version("magvit2-pytorch")


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


import torch  # noqa: E402

from common import machine, today, write_section  # noqa: E402
from datagen.config import UserError, to_dict  # noqa: E402
from datagen.dataset import load_dataset_json  # noqa: E402
from datagen.pack import load_packed  # noqa: E402
from training.baselines import tokenizer_baselines  # noqa: E402
from training.data import PackedViewClips, infinite_loader, to_model_range, to_uint8  # noqa: E402
from training.metrics import psnr_per_clip, ssim_per_clip  # noqa: E402
from training.tokenizer import VideoTokenizer, weight_decay_groups  # noqa: E402
from training.configs import TokenizerTrainSection as TrainSection  # noqa: E402
from training.device import pick_device  # noqa: E402
from training.loop import adamw  # noqa: E402
from training.train_tokenizer import ema_update, load_run_config  # noqa: E402


def lr_at_time(step: int, progress: float, t: TrainSection) -> float:
    """train_tokenizer.lr_at with the cosine driven by the fraction of the time budget used instead of steps."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, max(0.0, progress))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in torch.nn.Module.parameters(module))


# ----------------------------------------------------------------------------------------------------------------------
# the peer's configuration, derived from ours

def pyramid_for(model_cfg) -> tuple[list[int], list[bool], int]:
    """(widths, temporal flags, per-level units) of the conventional conv pyramid the peer is built as. A patched
    config of ours (pixels folded into channels, convs at the token grid) has no pyramid to mirror, so the peer
    gets one that reaches the same token grid: log2(spatial factor) levels doubling from 32 channels up to our
    width, halving time on the first log2(temporal factor) of them."""
    if model_cfg.patch_size == 1 and model_cfg.patch_frames == 1:
        return ([model_cfg.channels * m for m in model_cfg.channel_mult], list(model_cfg.temporal_downsample),
                2 * model_cfg.num_res_blocks)
    n_space = int(math.log2(model_cfg.spatial_factor))
    n_time = int(math.log2(model_cfg.temporal_factor))
    top = model_cfg.channels * model_cfg.channel_mult[-1]
    widths = [min(top, 32 * 2 ** i) for i in range(n_space + 1)]
    return widths, [i < n_time for i in range(n_space)], 2


def peer_layers(model_cfg, bottom_units: int) -> tuple:
    widths, temporal, per_level = pyramid_for(model_cfg)
    layers = []
    for i, w in enumerate(widths):
        last = i == len(widths) - 1
        units = bottom_units if last else per_level
        if units:
            layers.append(("consecutive_residual", units))
        if not last:
            layers.append(("compress_space", widths[i + 1]))
            if temporal[i]:
                layers.append(("compress_time", widths[i + 1]))
    return tuple(layers)


def peer_kwargs(model_cfg, image_size: int, bottom_units: int) -> dict:
    size = model_cfg.codebook_size
    if size & (size - 1):   # LFQ: a power of two
        size = 1 << (size - 1).bit_length()
    return dict(image_size=image_size, init_dim=pyramid_for(model_cfg)[0][0],
                layers=peer_layers(model_cfg, bottom_units), codebook_size=size, use_gan=False,
                perceptual_loss_weight=0.0)


def build_peer(PeerTokenizer, kwargs: dict) -> torch.nn.Module:
    # its discriminator is built even with use_gan=False (~35 M parameters by default) and never used then: build a
    # tiny one (quicker) and delete it, as the package's own copy_for_eval does
    tiny_discr = dict(dim=8, image_size=kwargs["image_size"], channels=3, max_dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeerTokenizer(**kwargs, discr_kwargs=tiny_discr)
    del model.discr
    return model


def match_peer(PeerTokenizer, model_cfg, image_size: int, target: int, max_units: int = 64) -> tuple[dict, int]:
    """The peer's kwargs whose parameter count is closest to target (number of residual units at the lowest level)."""
    counts = {}

    def count(n):
        if n not in counts:
            counts[n] = num_params(build_peer(PeerTokenizer, peer_kwargs(model_cfg, image_size, n)))
        return counts[n]

    lo, hi = 0, max_units   # count(n) increases with n: binary search for the first n with count >= target
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < target else (lo, mid)
    best = min((n for n in (lo - 1, lo) if 0 <= n <= max_units), key=lambda n: abs(count(n) - target))
    return peer_kwargs(model_cfg, image_size, best), count(best)


# ----------------------------------------------------------------------------------------------------------------------
# contenders: one training step and one reconstruction each

class Contender:
    name: str

    def __init__(self, model, ema, opt, t: TrainSection, dev, batches, budget_s: float):
        self.model, self.ema, self.opt, self.t, self.dev = model, ema, opt, t, dev
        self.batches, self.budget_s = batches, budget_s
        self.steps, self.train_s, self.last_loss = 0, 0.0, float("nan")
        self.curve: list[dict] = []
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                         else torch.autocast("cpu", enabled=False))

    def step(self) -> None:
        sync(self.dev)
        t0 = time.perf_counter()
        x = to_model_range(next(self.batches).to(self.dev, non_blocking=True))
        for group in self.opt.param_groups:
            group["lr"] = lr_at_time(self.steps, self.train_s / self.budget_s, self.t)
        with self.autocast:
            loss = self.loss(x)
        if not torch.isfinite(loss):
            raise UserError(f"{self.name}: loss became {loss.item()} at step {self.steps}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable(), self.t.grad_clip)
        self.opt.step()
        self.update_ema()
        self.last_loss = loss.item()   # synchronizes
        sync(self.dev)
        self.train_s += time.perf_counter() - t0
        self.steps += 1

    @torch.no_grad()
    def validate(self, clips: torch.Tensor, batch_size: int, codebook_size: int) -> dict:
        net = self.ema if self.ema is not None else self.model
        was_training = net.training
        net.eval()
        recon, codes = [], []
        for i in range(0, len(clips), batch_size):
            x = to_model_range(clips[i:i + batch_size].to(self.dev))
            with self.autocast:
                x_hat, idx = self.reconstruct(net, x)
            recon.append(to_uint8(x_hat.float()).cpu())
            codes.append(idx.reshape(-1).cpu())
        net.train(was_training)
        a = clips.permute(0, 2, 3, 4, 1).numpy()
        b = torch.cat(recon).permute(0, 2, 3, 4, 1).numpy()
        used = torch.unique(torch.cat(codes)).numel()
        return {"psnr": float(psnr_per_clip(a, b).mean()), "ssim": float(ssim_per_clip(a, b).mean()),
                "usage": used / codebook_size}


class Ours(Contender):
    name = "ours"

    def __init__(self, cfg, dev, batches, budget_s):
        self.cfg = cfg
        model = VideoTokenizer(cfg.model).to(dev)
        ema = copy.deepcopy(model).eval() if cfg.train.ema_decay > 0 else None
        super().__init__(model, ema, adamw(model.param_groups(cfg.train.weight_decay), cfg.train), cfg.train, dev,
                         batches, budget_s)

    def loss(self, x):   # train_tokenizer's step without the (off by default) LPIPS and GAN terms
        x_hat, _, aux = self.model(x)
        return self.model.loss(x, x_hat, aux, self.t.recon_loss)[0]

    def trainable(self):
        return self.model.parameters()

    def update_ema(self):
        if self.ema is not None:
            ema_update(self.ema, self.model, self.t.ema_decay)

    def reconstruct(self, net, x):
        x_hat, idx, _ = net(x)
        return x_hat, idx


class Peer(Contender):
    name = "magvit2-pytorch"

    def __init__(self, PeerTokenizer, kwargs, t, dev, batches, budget_s):
        model = build_peer(PeerTokenizer, kwargs).to(dev)
        ema = copy.deepcopy(model).eval() if t.ema_decay > 0 else None
        groups = weight_decay_groups(torch.nn.Module.named_parameters(model), t.weight_decay)   # ours' rule
        super().__init__(model, ema, adamw(groups, t), t, dev, batches, budget_s)

    def loss(self, x):
        loss, _ = self.model(x, return_loss=True, video_contains_first_frame=False)
        return loss

    def trainable(self):
        return list(torch.nn.Module.parameters(self.model))

    @torch.no_grad()
    def update_ema(self):
        if self.ema is None:
            return
        for e, p in zip(torch.nn.Module.parameters(self.ema), torch.nn.Module.parameters(self.model)):
            e.lerp_(p.detach(), 1 - self.t.ema_decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def reconstruct(self, net, x):
        codes, x_hat = net(x, return_codes=True, return_recon=True, video_contains_first_frame=False)
        return x_hat, codes


# ----------------------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=240.0, help="training seconds per model (validation excluded)")
    ap.add_argument("--config", default="demo", help="our tokenizer preset (configs/tokenizer/NAME.toml) or a TOML path")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override of our config, KEY=VALUE")
    ap.add_argument("--batch-size", type=int, default=None, help="view-clips per step for both (default: the config's)")
    ap.add_argument("--recon-loss", choices=("l2", "config"), default="l2",
                    help="l2: ours trained with MSE like the peer (default); config: our config's train.recon_loss")
    ap.add_argument("--data", type=Path, default=ROOT / "demo_out" / "dataset")
    ap.add_argument("--slice-s", type=float, default=15.0, help="length of one interleaved training slice")
    ap.add_argument("--val-every-s", type=float, default=120.0,
                    help="validate every this many training seconds (0: only at the end)")
    ap.add_argument("--val-clips", type=int, default=0, help="held-out val view-clips to validate on (0: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=None, help="default: the config's train.seed")
    ap.add_argument("--out-md", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    try:
        run(args)
    except UserError as e:
        fail(str(e))


def fail(message: str) -> None:
    """One line on stderr, exit status 2 (the toolkit's convention for bad input or setup)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(args) -> None:
    PeerTokenizer, peer_version = import_peer()
    overrides = list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.recon_loss == "l2":
        overrides.append('train.recon_loss="l2"')
    cfg = load_run_config(args.config, overrides)
    t = cfg.train
    if args.budget_s <= 0 or args.slice_s <= 0:
        raise UserError("--budget-s and --slice-s must be > 0")
    if not (args.data / "dataset.json").is_file():
        raise UserError(f"no dataset at {args.data} (dataset.json missing); render and pack it first: make demo")
    info = load_dataset_json(args.data)
    W, H = info["image_size"]
    T = info["frames"]
    if W != H:
        raise UserError(f"magvit2-pytorch takes square frames only; {args.data} is {W}x{H}")
    try:
        grid = cfg.model.latent_shape(T, H, W)
    except ValueError as e:
        raise UserError(f"dataset {args.data} ({W}x{H}, {T} frames) does not fit the tokenizer: {e}") from None
    train_set = PackedViewClips(args.data, "train")
    val_set = PackedViewClips(args.data, "val") if info["counts"].get("val") else None
    if val_set is None:
        raise UserError(f"{args.data} has no val split; the benchmark validates on held-out clips")
    n_val = len(val_set) if args.val_clips <= 0 else min(args.val_clips, len(val_set))
    val_clips = torch.stack([val_set[i] for i in range(n_val)])
    dev = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(t.seed)
    ours = Ours(cfg, dev, infinite_loader(train_set, t.batch_size, t.seed, 0), args.budget_s)
    ours_params = ours.model.num_parameters()
    kwargs, peer_params = match_peer(PeerTokenizer, cfg.model, H, ours_params)
    torch.manual_seed(t.seed)
    peer = Peer(PeerTokenizer, kwargs, t, dev, infinite_loader(train_set, t.batch_size, t.seed, 0), args.budget_s)
    assert num_params(peer.model) == peer_params

    # both grids checked on one val clip before the clock starts
    with torch.no_grad():   # on the EMA copies in eval mode: no dead-code bookkeeping in the trained models
        x = to_model_range(val_clips[:1].to(dev))
        ours_grid = tuple(ours.reconstruct(ours.ema.eval() if ours.ema else ours.model.eval(), x)[1].shape[1:])
        peer_grid = tuple(peer.reconstruct(peer.ema.eval() if peer.ema else peer.model.eval(), x)[1].shape[1:])
    ours.model.train()
    peer.model.train()
    if ours_grid != peer_grid or ours_grid != grid:
        raise UserError(f"latent grids differ: ours {ours_grid}, magvit2-pytorch {peer_grid}")

    print(f"data {args.data}: {len(train_set)} train / {n_val} val view-clips of {T}x{H}x{W} -> tokens {grid}; "
          f"device {dev}, torch threads {torch.get_num_threads()}")
    print(f"ours: {ours_params:,} parameters, {cfg.model.quantizer} {cfg.model.codebook_size} codes, "
          f"recon {t.recon_loss}")
    print(f"magvit2-pytorch {peer_version}: {peer_params:,} parameters, layers {kwargs['layers']}, "
          f"LFQ {kwargs['codebook_size']} codes, recon l2")
    print(f"budget {args.budget_s:.0f} s each, slices of {args.slice_s:.0f} s, batch {t.batch_size}, lr {t.lr}, "
          f"warm-up {t.warmup_steps} steps then cosine to {t.lr * t.min_lr_ratio:g} over the budget")

    contenders = [ours, peer]
    codebook = {ours.name: cfg.model.codebook_size, peer.name: kwargs["codebook_size"]}
    # the trivial same-budget baselines on the same val view-clips (training.baselines), for each codebook size
    train_rgb = load_packed(args.data, "train").rgb
    baselines = {k: tokenizer_baselines(train_rgb.reshape(-1, *train_rgb.shape[2:]),
                                        val_clips.permute(0, 2, 3, 4, 1).numpy(), cfg.model.temporal_factor,
                                        cfg.model.spatial_factor, k, seed=0) for k in sorted(set(codebook.values()))}
    for k, b in baselines.items():
        print(f"baselines, {k} codes: k-means {b['kmeans']:.2f} dB, block means {b['block_mean']:.2f}, "
              f"clip mean {b['clip_mean']:.2f}")
    val_s = {c.name: 0.0 for c in contenders}

    def validate(c):
        t0 = time.perf_counter()
        row = {"train_s": round(c.train_s, 1), "steps": c.steps,
               **c.validate(val_clips, t.batch_size, codebook[c.name])}
        val_s[c.name] += time.perf_counter() - t0
        c.curve.append(row)
        print(f"  [{c.name}] val after {row['train_s']:.0f} s ({c.steps} steps): PSNR {row['psnr']:.2f} dB, "
              f"SSIM {row['ssim']:.3f}, codebook usage {row['usage']:.1%}", flush=True)

    wall0 = time.perf_counter()
    next_val = {c.name: args.val_every_s for c in contenders}
    while any(c.train_s < args.budget_s for c in contenders):
        for c in contenders:
            if c.train_s >= args.budget_s:
                continue
            s0, n0 = c.train_s, c.steps
            end = min(c.train_s + args.slice_s, args.budget_s)
            while c.train_s < end:
                c.step()
            print(f"[{c.name}] {c.train_s:6.1f}/{args.budget_s:.0f} s: {c.steps} steps, "
                  f"{(c.steps - n0) * t.batch_size / (c.train_s - s0):.2f} view-clips/s in this slice, "
                  f"loss {c.last_loss:.4f}", flush=True)
            if args.val_every_s > 0 and c.train_s >= next_val[c.name] and c.train_s < args.budget_s:
                validate(c)
                while next_val[c.name] <= c.train_s:
                    next_val[c.name] += args.val_every_s
    for c in contenders:
        validate(c)
    wall = time.perf_counter() - wall0

    res = {"date": today(), "machine": machine(), "device": str(dev), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "command": command_line(),
           "data": str(args.data), "frames": T, "image_size": [W, H], "token_grid": list(grid),
           "train_view_clips": len(train_set), "val_view_clips": n_val, "batch_size": t.batch_size,
           "budget_s": args.budget_s, "slice_s": args.slice_s, "wall_s": round(wall, 1),
           "optimizer": {k: getattr(t, k) for k in ("lr", "min_lr_ratio", "warmup_steps", "weight_decay", "beta1",
                                                    "beta2", "grad_clip", "ema_decay")},
           "ours": {"config": args.config, "overrides": overrides, "model": to_dict(cfg.model),
                    "recon_loss": t.recon_loss, "parameters": ours_params},
           "peer": {"package": f"magvit2-pytorch {peer_version}",
                    "kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
                    "recon_loss": "l2", "parameters": peer_params},
           "baselines": list(baselines.values())}
    for c in contenders:
        key = "ours" if c is ours else "peer"
        res[key].update({"steps": c.steps, "train_s": round(c.train_s, 2),
                         "view_clips_per_s": c.steps * t.batch_size / c.train_s, "validation_s": round(val_s[c.name], 1),
                         "final": c.curve[-1], "curve": c.curve})
    speedup = res["ours"]["view_clips_per_s"] / res["peer"]["view_clips_per_s"]
    dpsnr = res["ours"]["final"]["psnr"] - res["peer"]["final"]["psnr"]
    kmeans_ours = baselines[cfg.model.codebook_size]["kmeans"]
    res.update({"throughput_ratio": speedup, "psnr_gain_db": dpsnr,
                "ours_over_kmeans_db": res["ours"]["final"]["psnr"] - kmeans_ours,
                "goal_met": bool(speedup >= 1.5 and dpsnr > 0)})

    table = results_table(res)
    print("\n" + table)
    print(f"\nthroughput ours / magvit2-pytorch = {speedup:.2f}x (goal >= 1.5x); "
          f"PSNR ours - magvit2-pytorch = {dpsnr:+.2f} dB (goal > 0); goal {'met' if res['goal_met'] else 'NOT met'}; "
          f"PSNR ours - k-means of the same budget = {res['ours_over_kmeans_db']:+.2f} dB")
    if args.out_json:
        args.out_json.write_text(json.dumps(res, indent=1))
    if not args.no_write:
        write_section(f"tokenizer-{Path(args.config).stem}", markdown(res), args.out_md)
        print(f"wrote section tokenizer-{Path(args.config).stem} of {args.out_md}")


def command_line() -> str:
    return "python benchmarks/tokenizer.py " + " ".join(sys.argv[1:])


def results_table(res: dict) -> str:
    rows = ["| model | parameters | recon loss | steps | training s | view-clips/s | val PSNR | val SSIM | codebook usage |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, label in (("ours", f"ours ({res['ours']['config']})"), ("peer", res["peer"]["package"])):
        r = res[key]
        f = r["final"]
        rows.append(f"| {label} | {r['parameters'] / 1e6:.2f} M | {r['recon_loss']} | {r['steps']} | {r['train_s']:.0f} | "
                    f"{r['view_clips_per_s']:.2f} | {f['psnr']:.2f} dB | {f['ssim']:.3f} | {f['usage']:.1%} |")
    for b in res.get("baselines", []):
        rows.append(f"| k-means over raw {b['grid']} blocks, {b['codebook_size']} codes (no network) | - | - | - | - | - | "
                    f"{b['kmeans']:.2f} dB | - | - |")
    if res.get("baselines"):
        b = res["baselines"][0]
        rows.append(f"| block means at the {b['grid']} grid (continuous, no codebook) | - | - | - | - | - | "
                    f"{b['block_mean']:.2f} dB | - | - |")
        rows.append(f"| one mean colour per view-clip | - | - | - | - | - | {b['clip_mean']:.2f} dB | - | - |")
    return "\n".join(rows)


def markdown(res: dict) -> str:
    o, p, opt = res["ours"], res["peer"], res["optimizer"]
    m = o["model"]
    ours_desc = (f"channels {m['channels']}, channel_mult {list(m['channel_mult'])}, num_res_blocks "
                 f"{m['num_res_blocks']}, temporal_downsample {list(m['temporal_downsample'])}, "
                 f"{m.get('norm', 'group')} norm, quantizer "
                 f"{m['quantizer']} ({m['codebook_size']} codes, "
                 + (f"levels {list(m['fsq_levels'])})" if m['quantizer'] == 'fsq' else f"z_channels {m['z_channels']})")
                 + f", temporal_kernel {m.get('temporal_kernel', 3)}")
    layers = ", ".join(f"{a}:{b}" for a, b in p["kwargs"]["layers"])
    curve_rows = []
    for key, name in (("ours", "ours"), ("peer", "magvit2-pytorch")):
        pts = ", ".join(f"{r['train_s']:.0f} s: {r['psnr']:.2f}" for r in res[key]["curve"])
        curve_rows.append(f"- {name}: {pts}")
    verdict = "met" if res["goal_met"] else "not met"
    return f"""## Tokenizer vs magvit2-pytorch (`benchmarks/tokenizer.py`, {o['config']} config)

Machine: {res['machine']}; device {res['device']}, torch {res['torch']} (torch threads: {res['torch_threads']}). Date: {res['date']}.
Command: `{res['command'].strip()}` (in `.venv-bench`, see the script's docstring).
Data: {res['data']}, {res['train_view_clips']} train view-clips, validation on {res['val_view_clips']} held-out val
view-clips; {res['frames']}x{res['image_size'][1]}x{res['image_size'][0]} -> token grid {'x'.join(map(str, res['token_grid']))}
for both. Batch {res['batch_size']} view-clips, AdamW lr {opt['lr']} (betas {opt['beta1']}, {opt['beta2']}, weight decay
{opt['weight_decay']}), {opt['warmup_steps']} warm-up steps then cosine to {opt['lr'] * opt['min_lr_ratio']:g} over the budget,
gradient clipping {opt['grad_clip']}, {('EMA ' + str(opt['ema_decay']) + ' (validated)') if opt['ema_decay'] else 'no EMA (the raw weights validated)'} for both. Budget {res['budget_s']:.0f} s of training
each, interleaved in {res['slice_s']:.0f} s slices ({res['wall_s']:.0f} s wall in all, validation included).
- Ours: {ours_desc}; {o['parameters']:,} parameters; recon {o['recon_loss']} + quantizer losses.
- Peer: {p['package']} VideoTokenizer(init_dim {p['kwargs']['init_dim']}, layers [{layers}], LFQ
  {p['kwargs']['codebook_size']} codes, use_gan False, perceptual_loss_weight 0); {p['parameters']:,} parameters;
  its forward(return_loss=True): MSE + LFQ entropy/commitment losses.

{results_table(res)}

Throughput ours / peer: {res['throughput_ratio']:.2f}x (goal >= 1.5x); PSNR ours - peer: {res['psnr_gain_db']:+.2f} dB
(goal > 0): goal {verdict}. Ours - k-means of the same budget: {res['ours_over_kmeans_db']:+.2f} dB. Val PSNR (dB) over training seconds:
{chr(10).join(curve_rows)}
"""


if __name__ == "__main__":
    main()
