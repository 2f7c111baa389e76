"""The triangulation probe: a small CNN that finds the object in one frame of one view.

    magvit3d train-probe --data DATASET --out RUN [--config tiny|demo|FILE] [--set KEY=VALUE] [--resume]

Two stages of the same kind (`LocStage`): a strided conv encoder (BatchNorm + ReLU) with a top-down decoder
(upsample + lateral 1x1 skips) back to a heatmap at 1/`heatmap_stride` of its input, each heatmap cell with a
sub-cell offset (tanh, at most one cell). The softmax over the heatmap weights the cells' (centre + offset), and
the expectation (soft-argmax) is the 2D centre, sub-pixel. Heatmap cell (i, j) at stride s covers the pixel block
whose centre is ((j + 0.5) s, (i + 0.5) s), so positions are in the DESIGN pixel convention (pixel (row i, col j)
has its centre at (j + 0.5, i + 0.5), the image's top-left corner at (0, 0)).
  coarse   sees the whole frame (optionally average-pooled by `coarse_input_stride`) and finds the object to a
           pixel or two;
  refine   (optional, crop > 0) sees a `crop` x `crop` window of the full-resolution frame at an integer offset
           around the current estimate (edge pixels replicated beyond the border) and places the centre inside it;
           run `refine_iters` times, each window re-centred on the last estimate. Meant for large frames, where most
           of a frame is background; at 64x64 (the demo) it was no better than the coarse stage alone for the same
           CPU time (median 1.01 px after 300 steps vs 0.90 px after 400), so the presets leave it off.
The last stage run also predicts the expected localization error in px, `sigma` (trained with a Laplace likelihood of
the detached error, so it estimates the mean error of that frame and never pulls the centre itself). From it:
    confidence = 1 / (1 + sigma^2)  in (0, 1]   (sigma = 0.3 px -> 0.92; 3 px -> 0.1)
    DLT weight = 1 / sigma                      (rows of the DLT system scaled by the inverse error std)
Frames where the object is not visible (packed index `visibility`) are left out of the centre losses; there sigma
is pushed towards the image size, so their confidence is ~0.

Training: rendered frames from the packed arrays (views and frames folded into the batch) with the 2D centres of
the packed index, and with train.reconstructions (a tokenizer run) the same frames as that tokenizer decodes them;
horizontal flips (u -> W - u), optionally quarter turns, brightness/contrast/colour jitter and mild blur/noise so
generated clips (softer than renders) are not out of distribution. The refine stage is trained on windows around the
true centre shifted by up to `crop_jitter` px (what the coarse stage leaves). Loss per stage: L1 on the soft-argmax
centre (integral regression) + cross-entropy of the heatmap vs the bilinear target + the sigma term. AdamW,
warm-up + cosine decay, seeded; metrics to RUN/metrics.jsonl (+ TensorBoard), safetensors checkpoints with a JSON
config (training.checkpoint), RUN/summary.json with the validation errors in px. The training resolution is
recorded: using the probe on frames of another size is a one-line error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from datagen.config import UserError, from_dict, to_dict
from datagen.dataset import load_dataset_json
from datagen.pack import load_packed
from evaluation.configs import (ProbeModelConfig, ProbeRunConfig, ProbeTrainSection,  # noqa: F401 - re-exported
                                StageConfig, load_probe_config)
from training import checkpoint as ckpt
from training.loop import TrainTask, Trainer

KIND = "probe"
load_run_config = load_probe_config   # (the name every training loop module uses)


# --------------------------------------------------------------------------------------------------------------------
# model

def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def soft_argmax(logits: torch.Tensor, offsets: torch.Tensor | None, stride: int) -> torch.Tensor:
    """Heatmap logits (B, h, w) at `stride` (+ per-cell offsets (B, 2, h, w) in cells, bounded by tanh to one
    cell) -> the expectation of (cell centre + offset) under the softmax: (u, v) in input pixels (B, 2)."""
    B, h, w = logits.shape
    prob = torch.softmax(logits.float().flatten(1), 1).view(B, h, w)
    us = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) * stride
    vs = (torch.arange(h, device=logits.device, dtype=torch.float32) + 0.5) * stride
    grid = torch.stack(torch.broadcast_tensors(us[None, :], vs[:, None]))              # (2, h, w)
    if offsets is not None:
        grid = grid + torch.tanh(offsets.float()) * stride
    return (prob[:, None] * grid).flatten(2).sum(2)


class LocStage(nn.Module):
    """Frames (B, 3, H, W) in [-1, 1] -> heatmap logits (B, H/s, W/s), offsets (B, 2, H/s, W/s), sigma head (B,)."""

    def __init__(self, cfg: StageConfig):
        super().__init__()
        self.cfg = cfg
        ch = list(cfg.channels)
        self.down = nn.ModuleList()
        cin = 3
        for c, n in zip(ch, cfg.blocks):
            self.down.append(nn.Sequential(_conv(cin, c, 2), *[_conv(c, c) for _ in range(n)]))
            cin = c
        d = cfg.decoder_channels
        n_up = len(ch) - int(math.log2(cfg.heatmap_stride))       # decoder steps from the deepest level
        self.top = nn.Conv2d(ch[-1], d, 1)
        self.lateral = nn.ModuleList(nn.Conv2d(ch[-2 - k], d, 1) for k in range(n_up))
        self.smooth = nn.ModuleList(_conv(d, d) for _ in range(n_up))
        self.heat = nn.Conv2d(d, 3, 1)                        # logit, and the cell's offset (du, dv) in cells
        self.sigma_head = nn.Sequential(nn.Linear(ch[-1] + d, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = []
        for stage in self.down:
            x = stage(x)
            feats.append(x)
        y = self.top(feats[-1])
        for k, (lat, smooth) in enumerate(zip(self.lateral, self.smooth)):
            skip = feats[-2 - k]
            y = smooth(F.interpolate(y, size=skip.shape[-2:], mode="nearest") + lat(skip))
        out = self.heat(y)
        logits, offsets = out[:, 0], out[:, 1:]                               # (B, h, w), (B, 2, h, w)
        prob = torch.softmax(logits.flatten(1), 1).view_as(logits)
        pooled = torch.cat([feats[-1].mean((2, 3)), (y * prob[:, None]).sum((2, 3))], 1)
        return logits, offsets, self.sigma_head(pooled)[:, 0]


def crop_at(x: torch.Tensor, centre: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of size x size around `centre` (B, 2) px from x (B, C, H, W), at integer offsets (no resampling;
    edge pixels replicated beyond the border) -> (crops (B, C, size, size), origin (B, 2) = the window's (u, v)
    offset: a point at (u, v) in the window is at (u, v) + origin in the frame)."""
    B, C, H, W = x.shape
    c = torch.nan_to_num(centre.detach().float(), nan=W / 2)
    origin = torch.stack([(c[:, 0] - size / 2).round().clamp(-size // 2, W - size // 2),
                          (c[:, 1] - size / 2).round().clamp(-size // 2, H - size // 2)], 1)
    pad = size
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    steps = torch.arange(size, device=x.device)
    cols = (origin[:, 0].long() + pad)[:, None] + steps                     # (B, size)
    rows = (origin[:, 1].long() + pad)[:, None] + steps
    b = torch.arange(B, device=x.device)[:, None, None]
    crops = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, size, size, C)
    return crops.permute(0, 3, 1, 2), origin


class ProbeNet(nn.Module):
    """The coarse stage and (crop > 0) the refine stage; `locate` gives centres (B, 2) px and sigma (B,) px."""

    def __init__(self, cfg: ProbeModelConfig):
        super().__init__()
        self.cfg = cfg
        self.coarse = LocStage(cfg.coarse)
        self.refine = LocStage(cfg.refine) if cfg.crop else None

    def _coarse(self, x: torch.Tensor):
        s = self.cfg.coarse_input_stride
        logits, offsets, raw = self.coarse(F.avg_pool2d(x, s) if s > 1 else x)
        return logits, offsets, raw, soft_argmax(logits, offsets, self.cfg.coarse.heatmap_stride * s)

    def _refine(self, x: torch.Tensor, centre: torch.Tensor):
        crops, origin = crop_at(x, centre, self.cfg.crop)
        logits, offsets, raw = self.refine(crops)
        return logits, offsets, raw, soft_argmax(logits, offsets, self.cfg.refine.heatmap_stride), origin

    def _locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, raw, uv = self._coarse(x)
        if self.refine is not None:
            for _ in range(self.cfg.refine_iters):
                _, _, raw, local, origin = self._refine(x, uv)
                uv = local + origin
        return uv, _sigma(raw, self.cfg.sigma_floor)

    def locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres (B, 2) px and sigma (B,) px; with flip_test (outside training) the mean of the estimates on the
        frame and on its mirror image (u -> W - u), which halves the variance of errors that are independent."""
        uv, sigma = self._locate(x)
        if self.cfg.flip_test and not self.training:
            uv_m, sigma_m = self._locate(x.flip(-1))
            uv_m = torch.stack([x.shape[-1] - uv_m[:, 0], uv_m[:, 1]], 1)
            uv, sigma = (uv + uv_m) / 2, (sigma + sigma_m) / 2
        return uv, sigma

    def forward(self, x: torch.Tensor, uv: torch.Tensor, visible: torch.Tensor, t: ProbeTrainSection,
                gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Training: the loss (see loss()), as forward() so that DDP can wrap the probe. Inference is locate()."""
        return self.loss(x, uv, visible, t, gen)

    def loss(self, x: torch.Tensor, uv: torch.Tensor, visible: torch.Tensor, t: ProbeTrainSection,
             gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The coarse stage on the frames + the refine stage on windows around the true centre shifted by up to
        t.crop_jitter px (`gen` draws the shifts); both stages' terms summed (see _stage_terms).
        -> (loss, breakdown of floats: loss, per-stage L1, heatmap cross-entropy, sigma NLL and error in px)."""
        cfg = self.cfg
        H, W = x.shape[-2:]
        logits, offsets, raw, pred = self._coarse(x)
        loss, parts = _stage_terms(logits, offsets, raw, pred, uv, visible, cfg.coarse.heatmap_stride *
                                   cfg.coarse_input_stride, cfg.sigma_floor, max(H, W), t)
        parts = {f"coarse_{k}": v for k, v in parts.items()}
        if self.refine is not None:
            shift = (2 * torch.rand(len(x), 2, generator=gen) - 1).to(x.device) * t.crop_jitter
            centre = torch.where(visible[:, None], uv + shift, torch.tensor([W / 2, H / 2], device=x.device))
            logits, offsets, raw, local, origin = self._refine(x, centre)
            l2, p2 = _stage_terms(logits, offsets, raw, local, uv - origin, visible, cfg.refine.heatmap_stride,
                                  cfg.sigma_floor, max(H, W), t)
            loss = loss + l2
            parts.update(p2)
        else:
            parts.update({k[len("coarse_"):]: v for k, v in parts.items()})
        return loss, {"loss": loss.item(), **parts}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on the conv and linear weights; none on biases and BatchNorm."""
        return [{"params": [p for p in self.parameters() if p.ndim >= 2], "weight_decay": weight_decay},
                {"params": [p for p in self.parameters() if p.ndim < 2], "weight_decay": 0.0}]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _sigma(raw: torch.Tensor, floor: float) -> torch.Tensor:
    return floor + F.softplus(raw.float())


def confidence_from_sigma(sigma):
    """confidence = 1 / (1 + sigma^2) (sigma in px), numpy or torch."""
    return 1.0 / (1.0 + sigma ** 2)


# A frame counts as "object found" when the probe expects to be within this many px (confidence >= 0.2). Chosen on
# the demo (64x64): every rendered visible frame of its test split is below it (p99 0.88 px, max 1.95 px), a
# featureless grey frame is above (2.8 px). The probe only learns what absence looks like from frames where the
# object is invisible; a dataset without any (the demo's) gives it no such frames, so there a low confidence means
# "unsure" rather than a verified "no object" (uniform noise still gets 1.5 px).
DETECTION_MAX_SIGMA_PX = 2.0


def detected(sigma, max_sigma_px: float = DETECTION_MAX_SIGMA_PX):
    """bool array: the probe found the object (its expected error sigma <= max_sigma_px; NaN sigma: not found)."""
    return np.asarray(sigma, dtype=np.float64) <= max_sigma_px


def to_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------------------------------------------------
# data and augmentation

@dataclass
class ProbeFrames:
    """Every frame of every view of a packed split: uint8 frames (M, H, W, 3), centres (M, 2), visibility (M,)."""
    frames: torch.Tensor
    uv: torch.Tensor
    visible: torch.Tensor

    def __len__(self) -> int:
        return len(self.frames)


def load_frames(root: Path, split: str) -> ProbeFrames:
    """Fold (N, V, T) of a packed split into one frame axis (read into memory: a 64x64 demo split is ~120 MB)."""
    p = load_packed(root, split)
    N, V, T, H, W, _ = p.rgb.shape
    frames = torch.from_numpy(np.array(p.rgb).reshape(N * V * T, H, W, 3))
    uv = torch.from_numpy(p.array("centers_2d", np.float32).reshape(N * V * T, 2)) if N else torch.zeros(0, 2)
    vis = torch.from_numpy(p.array("visibility", bool).reshape(N * V * T)) if N else torch.zeros(0, dtype=torch.bool)
    return ProbeFrames(frames, uv, vis & torch.isfinite(uv).all(1))


def reconstructed_frames(tokenizer_run: Path, data: Path, split: str, frames: ProbeFrames) -> ProbeFrames:
    """`frames` (load_frames of the same split) with a tokenizer's reconstructions (its true tokens decoded) appended,
    labelled with the same centres and visibility: the probe then also learns to find the object in decoded video,
    which is softer than a render (a blurred object the render-only probe places pixels off)."""
    from training.tokenize import check_dataset, load_tokenizer, reconstruct_clips

    if not Path(tokenizer_run).is_dir():
        raise UserError(f"train.reconstructions = {str(tokenizer_run)!r}: not a directory (a tokenizer run)")
    model, saved = load_tokenizer(Path(tokenizer_run))
    check_dataset(data, saved)
    rgb = np.asarray(load_packed(data, split).rgb)
    N, V, T, H, W, _ = rgb.shape
    recon = reconstruct_clips(model, rgb.reshape(N * V, T, H, W, 3), "cpu")      # view-clips, 8 at a time
    recon = torch.from_numpy(recon.reshape(N * V * T, H, W, 3))
    return ProbeFrames(torch.cat([frames.frames, recon]), torch.cat([frames.uv, frames.uv]),
                       torch.cat([frames.visible, frames.visible]))


def augment(x: torch.Tensor, uv: torch.Tensor, t: ProbeTrainSection, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """x float (B, 3, H, W) in [0, 1], uv (B, 2) -> augmented copies (same ranges). Seeded by `gen`."""
    B, _, H, W = x.shape
    rand = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    uv = uv.clone()
    if t.flip:
        flip = rand(B) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        uv[:, 0] = torch.where(flip, W - uv[:, 0], uv[:, 0])                # pixel centre j+0.5 -> W-j-0.5
    if t.rot90 and H == W:  # counter-clockwise by k quarter turns: (u, v) -> (v, W - u) per turn
        ks = (rand(B) * 4).long().clamp(max=3)
        x = x.clone()
        for k in (1, 2, 3):
            sel = ks == k
            if sel.any():
                x[sel] = torch.rot90(x[sel], k, dims=(2, 3))
                for _ in range(k):
                    uv[sel] = torch.stack([uv[sel, 1], W - uv[sel, 0]], 1)
    if t.jitter > 0:
        contrast = 1 + t.jitter * (2 * rand(B, 1, 1, 1) - 1)
        bright = t.jitter * 0.5 * (2 * rand(B, 1, 1, 1) - 1)
        colour = 1 + 0.5 * t.jitter * (2 * rand(B, 3, 1, 1) - 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * colour + bright
    if t.blur_prob > 0:  # a blend towards the 3x3 box blur: roughly a Gaussian blur of sigma up to ~0.8 px
        amount = torch.where(rand(B) < t.blur_prob, 0.3 + 0.7 * rand(B), torch.zeros(B))[:, None, None, None]
        x = torch.lerp(x, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), amount)
    if t.noise > 0:
        x = x + t.noise * rand(B, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1), uv


# --------------------------------------------------------------------------------------------------------------------
# loss, inference, validation

def bilinear_target(uv: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    """(B, 2) pixel centres -> (B, h, w) weights on the 4 heatmap cells around each centre (bilinear, clamped at
    the border), whose expectation of cell centres is the centre itself."""
    B = len(uv)
    out = torch.zeros(B, h, w, device=uv.device)
    cu, cv = uv[:, 0] / stride - 0.5, uv[:, 1] / stride - 0.5                  # in cell-centre units
    j0, i0 = cu.floor(), cv.floor()
    fu, fv = cu - j0, cv - i0
    rows = torch.arange(B, device=uv.device)
    for di, wi in ((0, 1 - fv), (1, fv)):
        for dj, wj in ((0, 1 - fu), (1, fu)):
            i = (i0 + di).clamp(0, h - 1).long()
            j = (j0 + dj).clamp(0, w - 1).long()
            out.index_put_((rows, i, j), wi * wj, accumulate=True)
    return out


def _stage_terms(logits, offsets, raw, pred, uv, visible, stride, floor, image_side, t):
    """One stage's loss over visible frames: L1 on the soft-argmax centre + heatmap_weight * cross-entropy vs the
    bilinear target + sigma_weight * Laplace NLL of the detached error; invisible frames: sigma_weight *
    (log sigma - log image_side)^2."""
    sigma = _sigma(raw, floor)
    err = (pred - uv).norm(dim=1)
    vis = visible.float()
    n_vis = vis.sum().clamp(min=1)
    l_uv = ((pred - uv).abs().sum(1) * vis).sum() / n_vis
    target = bilinear_target(uv.float(), *logits.shape[1:], stride)
    ce = -(target * torch.log_softmax(logits.float().flatten(1), 1).view_as(logits)).sum((1, 2))
    l_heat = (ce * vis).sum() / n_vis
    nll = err.detach() / sigma + sigma.log()
    absent = (sigma.log() - math.log(image_side)) ** 2
    l_sigma = torch.where(visible, nll, absent).mean()
    loss = l_uv + t.heatmap_weight * l_heat + t.sigma_weight * l_sigma
    return loss, {"l1_px": l_uv.item(), "heatmap_ce": l_heat.item(), "sigma_nll": l_sigma.item(),
                  "err_px": ((err * vis).sum() / n_vis).item()}


@torch.no_grad()
def predict_frames(model: ProbeNet, frames, device=None, batch_size: int = 256) -> dict[str, np.ndarray]:
    """uint8 frames (..., H, W, 3) (numpy or torch) -> {"uv": (..., 2), "sigma": (...), "confidence": (...)}."""
    device = device or next(model.parameters()).device
    lead, (H, W) = tuple(frames.shape[:-3]), tuple(frames.shape[-3:-1])
    flat = frames.reshape(-1, H, W, 3)  # numpy (memmaps too: copied batch by batch) or torch
    was_training = model.training
    model.eval()
    uv, sig = [], []
    for i in range(0, len(flat), batch_size):
        chunk = flat[i:i + batch_size]
        chunk = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk, dtype=np.uint8))
        centre, sigma = model.locate(to_input(chunk.to(device)))
        uv.append(centre.double().cpu())
        sig.append(sigma.double().cpu())
    model.train(was_training)
    uv = torch.cat(uv).numpy() if uv else np.zeros((0, 2))
    sigma = torch.cat(sig).numpy() if sig else np.zeros(0)
    return {"uv": uv.reshape(*lead, 2), "sigma": sigma.reshape(lead), "confidence": confidence_from_sigma(sigma).reshape(lead)}


def error_stats(pred_uv: np.ndarray, gt_uv: np.ndarray, visible: np.ndarray | None = None) -> dict:
    """Pixel distance between predicted and true centres over the visible entries: median, mean, p90, max, n."""
    err = np.linalg.norm(np.asarray(pred_uv, dtype=np.float64) - np.asarray(gt_uv, dtype=np.float64), axis=-1)
    keep = np.isfinite(err) if visible is None else (np.asarray(visible, bool) & np.isfinite(err))
    e = err[keep]
    if not len(e):
        return {"median_px": None, "mean_px": None, "p90_px": None, "max_px": None, "n": 0}
    return {"median_px": float(np.median(e)), "mean_px": float(e.mean()), "p90_px": float(np.percentile(e, 90)),
            "max_px": float(e.max()), "n": int(len(e))}


# --------------------------------------------------------------------------------------------------------------------
# a trained probe

class Probe:
    """A trained probe, loaded from RUN/checkpoints/<latest> (safetensors + JSON config)."""

    def __init__(self, model: ProbeNet, config: dict, path: Path):
        self.model, self.config, self.path = model, config, Path(path)
        W, H = config["data"]["image_size"]
        self.image_size = (int(W), int(H))

    def check_size(self, width: int, height: int, what: str) -> None:
        """One-line UserError when `what` (frames of width x height) is not at the training resolution."""
        if (int(width), int(height)) != self.image_size:
            W, H = self.image_size
            raise UserError(f"the probe {self.path} was trained on {W}x{H} frames; {what} is {width}x{height} "
                            f"(train a probe on a dataset of that resolution)")

    def predict(self, frames, batch_size: int = 256) -> dict[str, np.ndarray]:
        """uint8 (..., H, W, 3) at the training resolution -> uv (..., 2) px, sigma (...) px, confidence (...)."""
        H, W = np.shape(frames)[-3:-1]
        self.check_size(W, H, "the input")
        return predict_frames(self.model, frames, batch_size=batch_size)


def load_probe(run: Path, device: str | torch.device = "cpu") -> Probe:
    """The latest checkpoint of a probe run; one-line UserError when RUN is not a finished/saved probe run."""
    latest, config = ckpt.load_run(run, KIND)
    model = ProbeNet(from_dict(ProbeModelConfig, config["model"], "model"))
    ckpt.load_weights(latest / "model.safetensors", model, "probe")
    return Probe(model.to(device).eval(), config, latest)


# --------------------------------------------------------------------------------------------------------------------
# training

def train_probe(cfg: ProbeRunConfig, data: Path, out: Path, *, resume: bool = False, device: str = "auto",
                progress: bool = True, max_steps_this_run: int | None = None, log=print) -> dict:
    """Train (or resume) a probe run on DATASET's packed train split (validation on val); returns the summary also
    written to RUN/summary.json. max_steps_this_run stops early with a checkpoint, as an interruption would."""
    task = ProbeTask(cfg, Path(data))
    return Trainer(task, cfg.train, out, task.run_config, resume=resume, device=device, progress=progress,
                   max_steps_this_run=max_steps_this_run, log=log).fit()


class ProbeTask(TrainTask):
    """The probe's part of the loop (training.loop.Trainer does the rest): augmented frames in epoch-wise order
    from (seed, epoch) -> ProbeNet.loss; validation = 2D error in px on a fixed set of frames."""
    kind = label = KIND
    same_sections, loss_name = ("model", "train", "data"), "probe loss"
    diverged_hint, weights_name = "lower train.lr or check the dataset's 2D centres", "probe"

    def __init__(self, cfg: ProbeRunConfig, data: Path):
        self.cfg = cfg
        t = cfg.train
        info = load_dataset_json(data)
        self.image_size = W, H = info["image_size"]
        try:
            cfg.model.check_image(H, W)
        except UserError as e:
            raise UserError(f"dataset {data}: {e}; use fewer model.channels levels") from None
        self.train_set = load_frames(data, "train")
        if t.reconstructions:
            self.train_set = reconstructed_frames(Path(t.reconstructions), data, "train", self.train_set)
        if len(self.train_set) < t.batch_size:   # (under torchrun: per rank)
            raise UserError(f"train.batch_size = {t.batch_size} exceeds the {len(self.train_set)} training frames of "
                            f"{data}")
        self.val_split = "val" if info["counts"].get("val") else "train"
        val_set = self.train_set if self.val_split == "train" else load_frames(data, "val")
        pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(t.seed + 1))[:t.val_frames]
        self.val_frames, self.val_uv = val_set.frames[pick], val_set.uv[pick].numpy()
        self.val_vis = val_set.visible[pick].numpy()
        self.run_config = {"kind": KIND, "model": to_dict(cfg.model), "train": to_dict(t),
                           "data": {"path": str(data), "config_hash": info["config_hash"], "image_size": [W, H],
                                    "frames": info["frames"], "views": info["views"]}}

    def build(self, tr: Trainer) -> ProbeNet:
        if self.cfg.train.threads:
            torch.set_num_threads(self.cfg.train.threads)
        return ProbeNet(self.cfg.model).to(tr.device)

    def start(self, tr: Trainer) -> None:
        self.rank, self.world = tr.rank, tr.world
        if len(self.train_set) < self.cfg.train.batch_size * tr.world:
            raise UserError(f"train.batch_size = {self.cfg.train.batch_size} on {tr.world} ranks exceeds the "
                            f"{len(self.train_set)} training frames")

    def batch_indices(self, step: int) -> torch.Tensor:
        """Step s's frames: epoch-wise permutations from (seed, epoch), so a resumed run sees the same batches;
        under DDP each rank takes its own slice of the global batch."""
        t = self.cfg.train
        epoch, k = divmod(step, len(self.train_set) // (t.batch_size * self.world))
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        first = (k * self.world + self.rank) * t.batch_size
        return order[first:first + t.batch_size]

    def loss(self, tr: Trainer, step: int) -> tuple[torch.Tensor, dict]:
        t, frames = self.cfg.train, self.train_set
        idx = self.batch_indices(step)
        gen = torch.Generator().manual_seed(t.seed * 7_919 + step)        # augmentation: a function of the step
        x = frames.frames[idx].permute(0, 3, 1, 2).float().div_(255.0)
        x, uv = augment(x, frames.uv[idx], t, gen)
        x, uv, vis = (x * 2 - 1).to(tr.device), uv.to(tr.device), frames.visible[idx].to(tr.device)
        with tr.autocast():
            return tr.train_model(x, uv, vis, t, gen)

    def validate(self, tr: Trainer, model: ProbeNet) -> dict:
        res = predict_frames(model, self.val_frames, tr.device)
        stats = error_stats(res["uv"], self.val_uv, self.val_vis)
        return {**stats, "mean_sigma_px": float(res["sigma"][self.val_vis].mean()) if self.val_vis.any() else None}

    def validation_line(self, val: dict) -> str:
        return (f"step {val['step']}: {val['split']} 2D error median {val['median_px']:.3f} px, "
                f"mean {val['mean_px']:.3f} px, p90 {val['p90_px']:.3f} px")

    def postfix(self, row: dict) -> dict:
        return {"err": f"{row['err_px']:.2f}px"}

    def summary(self, tr: Trainer) -> dict:
        t = self.cfg.train
        if not tr.last_val:  # nothing validated in this run (--resume of a finished run): the summary still says how good
            tr.last_val = tr.validate()
        return {"run": str(tr.out), "step": tr.step, "finished": tr.step >= t.steps,
                "seconds_this_run": round(tr.seconds, 2),
                "frames_per_s": round((tr.step - tr.start_step) * t.batch_size / tr.seconds, 1)
                if tr.seconds > 0 else None,
                "device": str(tr.device), "threads": torch.get_num_threads(), "parameters": tr.model.num_parameters(),
                "image_size": list(self.image_size), "last_validation": tr.last_val}
