"""The probe's run config, torch-free (`magvit3d train-probe`, datagen/presets/probe/*.toml): the network's
stages and a train section built on the one every training loop shares (training/configs.py). The probe keeps
torch's AdamW betas and trains without gradient clipping or an EMA, as it always has; the keys are there to set."""
from __future__ import annotations

from dataclasses import dataclass, field

from datagen.config import UserError, load_config
from training.configs import TrainSection


@dataclass
class StageConfig:
    channels: tuple[int, ...] = (16, 24, 32, 48)   # widths at strides 2, 4, 8, 16 (one entry per level)
    blocks: tuple[int, ...] = (0, 1, 1, 1)         # extra 3x3 convs per level after its strided one
    decoder_channels: int = 16                      # width of the top-down path
    heatmap_stride: int = 4                         # heatmap = input / s; a power of 2 from 2 to 2 ** levels

    def validate(self, name: str) -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            raise UserError(f"{name}.channels = {list(self.channels)}: need one or more widths >= 1")
        if len(self.blocks) != len(self.channels) or any(b < 0 for b in self.blocks):
            raise UserError(f"{name}.blocks = {list(self.blocks)}: need one count >= 0 per level "
                             f"({len(self.channels)})")
        if self.decoder_channels < 1:
            raise UserError(f"{name}.decoder_channels must be >= 1")
        allowed = [2 ** k for k in range(1, len(self.channels) + 1)]
        if self.heatmap_stride not in allowed:
            raise UserError(f"{name}.heatmap_stride = {self.heatmap_stride}; allowed with {len(self.channels)} "
                             f"levels: {', '.join(map(str, allowed))}")

    @property
    def multiple(self) -> int:
        return 2 ** len(self.channels)


@dataclass
class ProbeModelConfig:
    coarse: StageConfig = field(default_factory=StageConfig)
    refine: StageConfig = field(default_factory=lambda: StageConfig((16, 32, 48), (1, 1, 1), 24, 2))
    coarse_input_stride: int = 1       # the coarse stage sees the frame average-pooled by this (1, 2 or 4)
    crop: int = 0                      # refine window (px, full resolution, e.g. 32); 0 = no refine stage
    refine_iters: int = 2              # refine passes at inference, each re-centred on the last estimate
    flip_test: bool = True             # inference also on the mirrored frame; the two estimates are averaged
    sigma_floor: float = 0.02          # px; sigma = floor + softplus(head)

    def validate(self) -> None:
        self.coarse.validate("coarse")
        if self.crop:
            self.refine.validate("refine")
            if self.crop % self.refine.multiple:
                raise UserError(f"crop = {self.crop} must be a multiple of {self.refine.multiple} "
                                 f"(2 ** refine levels)")
        if self.crop < 0 or self.refine_iters < 1 or self.sigma_floor <= 0:
            raise UserError("crop must be >= 0, refine_iters >= 1 and sigma_floor > 0")
        if self.coarse_input_stride not in (1, 2, 4):
            raise UserError(f"coarse_input_stride = {self.coarse_input_stride}; allowed: 1, 2, 4")

    def check_image(self, height: int, width: int) -> None:
        f = self.coarse.multiple * self.coarse_input_stride
        if height % f or width % f:
            raise UserError(f"{width}x{height} frames are not a multiple of {f} (coarse_input_stride x "
                             f"2 ** coarse levels)")
        if self.crop > min(height, width):
            raise UserError(f"crop = {self.crop} exceeds the {width}x{height} frames")


@dataclass
class ProbeTrainSection(TrainSection):
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    beta2: float = 0.999             # (torch's AdamW default, which the probe has always used)
    grad_clip: float = 0.0           # max gradient norm; 0 = off
    ema_decay: float = 0.0           # 0 = no EMA (the probe validates and saves its raw weights)
    val_every: int = 250
    ckpt_every: int = 500
    log_every: int = 25
    heatmap_weight: float = 1.0      # weight of the cross-entropy of the heatmaps vs their bilinear targets
    sigma_weight: float = 0.1        # weight of the sigma (error-prediction) term
    crop_jitter: float = 4.0         # px: refine windows are centred on the true centre + U(-j, j) per axis
    flip: bool = True                # random horizontal flips
    rot90: bool = False              # random quarter turns (square frames only; on the demo data: no better)
    jitter: float = 0.15             # brightness/contrast/colour jitter amplitude (0 = off)
    blur_prob: float = 0.25          # probability of a light blur per frame (a 30..100% blend with a 3x3 box blur)
    noise: float = 0.02              # max std of additive Gaussian noise on [0, 1] (0 = off)
    val_frames: int = 2048           # validation frames (from the val split, else train) evaluated each time
    threads: int = 0                 # torch CPU threads; 0 = torch's default
    reconstructions: str = ""        # a tokenizer run: also train on its reconstructions of the training clips, so the
                                     # probe finds the object in decoded video as well as in renders ("" = renders only)

    POSITIVE = TrainSection.POSITIVE + ("val_frames",)

    def validate(self) -> None:
        super().validate()
        if self.threads < 0:
            raise UserError(f"train.threads = {self.threads}: must be >= 0")
        if min(self.sigma_weight, self.heatmap_weight, self.jitter, self.noise, self.crop_jitter) < 0 \
                or not 0 <= self.blur_prob <= 1:
            raise UserError("train.sigma_weight, heatmap_weight, crop_jitter, jitter and noise must be >= 0, "
                            "blur_prob in [0, 1]")


@dataclass
class ProbeRunConfig:
    model: ProbeModelConfig = field(default_factory=ProbeModelConfig)
    train: ProbeTrainSection = field(default_factory=ProbeTrainSection)

    def validate(self) -> None:
        try:
            self.model.validate()
        except UserError as e:
            raise UserError(f"model: {e}") from None
        self.train.validate()


def load_probe_config(source, overrides=None) -> ProbeRunConfig:
    return load_config(ProbeRunConfig, "probe", source, overrides)
