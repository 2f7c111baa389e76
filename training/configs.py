"""Every run config, torch-free: the model sections, the train section all three training loops share, and each
run kind's config (what a preset under datagen/presets/<kind>/ and `--set KEY=VALUE` fill in). Loading or validating
a config imports no torch, so `magvit3d config show` and the demo's up-front checks stay quick.

Bad values are one-line UserErrors naming the key and what is allowed. The probe's config lives in
evaluation/configs.py and shares TrainSection from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from datagen.config import UserError, load_config


# ----------------------------------------------------------------------------------------------------------------------
# model sections

QUANTIZERS = ("vq", "lfq", "fsq")
NORMS = ("group", "layer")


# ----------------------------------------------------------------------------------------------------------------------
# config

@dataclass
class TokenizerConfig:
    channels: int = 32                             # base width; level i has channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 2)      # one entry per level; every level but the last halves H and W
    num_res_blocks: int = 1                        # residual blocks per level (encoder and decoder)
    temporal_downsample: tuple[bool, ...] = (True, True)  # per downsampling level (len(channel_mult) - 1): also halve T?
    norm: str = "group"                            # "group": GroupNorm per frame (MAGVIT); "layer": LayerNorm over
                                                   # channels at each position (no statistics over H, W: what a
                                                   # model trained on crops learns carries over to whole frames)
    norm_groups: int = 8                           # GroupNorm groups; every level's width must be a multiple
    temporal_kernel: int = 3                       # time taps of the 3x3 convs (causal); 1 = no mixing of latent
                                                   # frames: with patching, a 2D net per latent frame
    z_channels: int = 16                           # vq code dimension (lfq: log2(codebook_size), fsq: len(fsq_levels))
    quantizer: str = "vq"                          # "vq" | "lfq" | "fsq"
    codebook_size: int = 1024                      # vq: K; lfq: 2 ** d; fsq: must equal prod(fsq_levels)
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0                   # vq only
    entropy_weight: float = 0.0                    # 0 skips the entropy computation (an (N, K) softmax)
    entropy_temperature: float = 0.01
    dead_code_threshold: int = 100                 # vq: restart codes unused for this many training steps; 0 = never
    fsq_levels: tuple[int, ...] = (8, 8, 4, 4)
    patch_size: int = 1                            # pixels folded into channels first (p x p), as in ViT patching:
    patch_frames: int = 1                          # ...and frames (q); the convs then run at 1/p resolution, 1/q rate
    encoder_kernel: int = 3                        # spatial kernel of the encoder's convs. 1: a token's code sees only
                                                   # its own patch, so codes change only where the pixels do (with 3,
                                                   # seven 3x3 convs let a moving object flip codes ~3 tokens away)

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return self.patch_frames * 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def code_dim(self) -> int:
        """Channels of the latent the quantizer sees."""
        if self.quantizer == "lfq":
            return int(math.log2(self.codebook_size))
        if self.quantizer == "fsq":
            return len(self.fsq_levels)
        return self.z_channels

    def validate(self, resolution: int | tuple[int, int] | None = None, frames: int | None = None) -> None:
        """Raise UserError (one line, naming the value and what is allowed) for a config or clip size that can't work."""
        if self.quantizer not in QUANTIZERS:
            raise UserError(f"unknown quantizer {self.quantizer!r}; allowed: {', '.join(QUANTIZERS)}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise UserError(f"channel_mult {tuple(self.channel_mult)} must be a non-empty tuple of integers >= 1")
        if len(self.temporal_downsample) != len(self.channel_mult) - 1:
            raise UserError(f"temporal_downsample {tuple(self.temporal_downsample)} must have "
                             f"len(channel_mult) - 1 = {len(self.channel_mult) - 1} entries (one per downsampling level)")
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; allowed: {', '.join(NORMS)}")
        if self.norm_groups < 1:
            raise UserError(f"norm_groups {self.norm_groups} must be >= 1")
        for m in self.channel_mult:
            if self.channels < 1 or (self.norm == "group" and (self.channels * m) % self.norm_groups):
                raise UserError(f"width channels*mult = {self.channels}*{m} is not a multiple of "
                                 f"norm_groups = {self.norm_groups}")
        if self.temporal_kernel < 1:
            raise UserError(f"temporal_kernel {self.temporal_kernel} must be >= 1 (1: no mixing across latent frames)")
        if self.encoder_kernel < 1 or self.encoder_kernel % 2 == 0:
            raise UserError(f"encoder_kernel {self.encoder_kernel} must be an odd integer >= 1 (1: each token's code "
                             f"depends on its own patch only)")
        if self.encoder_kernel == 1 and len(self.channel_mult) > 1:
            raise UserError(f"encoder_kernel 1 needs a single level (channel_mult {tuple(self.channel_mult)} has "
                             f"{len(self.channel_mult)}): its strided downsampling convs would mix neighbouring tokens")
        if self.patch_size < 1 or self.patch_frames < 1:
            raise UserError(f"patch_size {self.patch_size} and patch_frames {self.patch_frames} must be >= 1")
        if self.num_res_blocks < 0:
            raise UserError(f"num_res_blocks {self.num_res_blocks} must be >= 0")
        if self.quantizer == "vq" and (self.z_channels < 1 or self.codebook_size < 2):
            raise UserError(f"vq needs z_channels >= 1 and codebook_size >= 2; got {self.z_channels}, {self.codebook_size}")
        if self.quantizer == "lfq" and (self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1)):
            raise UserError(f"lfq codebook_size {self.codebook_size} must be a power of two >= 2 (2 ** bits)")
        if self.quantizer == "fsq":
            if not self.fsq_levels or any(lv < 2 for lv in self.fsq_levels):
                raise UserError(f"fsq_levels {tuple(self.fsq_levels)} must be a non-empty tuple of integers >= 2")
            if math.prod(self.fsq_levels) != self.codebook_size:
                raise UserError(f"fsq codebook_size {self.codebook_size} must equal prod(fsq_levels "
                                 f"{tuple(self.fsq_levels)}) = {math.prod(self.fsq_levels)}")
        if self.dead_code_threshold < 0:
            raise UserError(f"dead_code_threshold {self.dead_code_threshold} must be >= 0 (0 disables restarts)")
        if resolution is not None:
            for r in ((resolution, resolution) if isinstance(resolution, int) else resolution):
                if r < 1 or r % self.spatial_factor:
                    raise UserError(f"resolution {r} is not divisible by the spatial downsampling factor "
                                     f"{self.spatial_factor} (patch_size * 2 ** (len(channel_mult) - 1))")
        if frames is not None and (frames < 1 or frames % self.temporal_factor):
            raise UserError(f"frames {frames} is not a multiple of the temporal downsampling factor "
                             f"{self.temporal_factor}; latent frame j covers frames [j*f, (j+1)*f)")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the token grid for a clip of this size."""
        self.validate((height, width), frames)
        return frames // self.temporal_factor, height // self.spatial_factor, width // self.spatial_factor


ARCHS = ("masked", "ar")


@dataclass
class TransformerConfig:
    """The architecture, as a user sets it (datagen/presets/transformer/*.toml, section [model])."""
    arch: str = "masked"      # masked (bidirectional, parallel decoding) | ar (causal, raster order, KV cache)
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # a learned bonus on the logit of the token at the same view/row/col one latent frame earlier (the "copy"
    # guess): most tokens do not change from latent to latent, so the model starts from copying and learns what moves
    copy_logit: bool = True
    # ...scaled per token by the network (a zero-initialised linear read of the final hidden state): copy static
    # ground hard, and less where the object is about to move
    copy_gate: bool = False
    # copy from a neighbourhood (pointer over a (2r+1)^2 window, r = copy_window): each token's distribution mixes
    # the vocabulary softmax with "the token at offset (dy, dx) one latent frame earlier", offsets weighted by a
    # per-token softmax. Moving the object is then picking one offset, shared by every code, instead of learning
    # each code's new place; offset (0, 0) is the copy guess, so it replaces copy_logit. 0 = off
    copy_window: int = 0
    # FSQ token caches: embed and predict each token also through its per-channel levels ("digits"), so nearby codes
    # share what is learned and a nearly right guess is rewarded (a 1000-way softmax alone gives no partial credit)
    code_digits: bool = True
    # rotary position embedding over (t, row, col) in every attention layer: attention sees relative offsets such as
    # "one latent frame earlier, one column left" directly, which is what extrapolating motion needs
    rope: bool = True
    # the predict task also gives the object's 2D track in the given frames (the dataset's centres, read with the
    # token cache, in training and in `generate`); a motion module predicts from it the object's centre in every
    # latent frame, and every token embeds its offset from the object in each given frame and from that prediction:
    # where the object goes is then read from the track, not decoded from code ids. The number of given frames
    # (= tasks.predict_frames); 0 = off
    track_frames: int = 0
    # the motion module also reads the family label where the task gives one (generate; null elsewhere, so
    # prediction is not told the family): a class-conditional clip's track is continued as a sinusoid when a
    # sinusoid is asked for, not only as its first frames suggest. Needs track_frames and tasks.generate_track
    track_family: bool = False

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise UserError(f"unknown arch {self.arch!r}; allowed: {', '.join(ARCHS)}")
        if self.width < 1 or self.depth < 1 or self.heads < 1 or self.width % self.heads:
            raise UserError(f"width {self.width} must be a positive multiple of heads {self.heads}, depth >= 1")
        if self.mlp_ratio <= 0 or not 0 <= self.dropout < 1:
            raise UserError("mlp_ratio must be > 0 and dropout in [0, 1)")
        if self.copy_window < 0:
            raise UserError(f"copy_window {self.copy_window} must be >= 0 (0: off; r: offsets up to r tokens)")
        if self.copy_window and self.copy_gate:
            raise UserError("copy_gate scales the copy logit, which copy_window > 0 replaces: use one of them")
        if self.copy_gate and not self.copy_logit:
            raise UserError("copy_gate = true scales the copy bonus: it needs copy_logit = true")
        if self.track_frames < 0:
            raise UserError(f"track_frames {self.track_frames} must be >= 0 (0: off; else tasks.predict_frames)")


# ----------------------------------------------------------------------------------------------------------------------
# the train section every run shares: optimizer, schedule, cadence

# train.precision: where training runs under bf16 autocast
PRECISIONS = {
    "bf16-cuda": "bf16 on CUDA; fp32 on CPU and MPS (the default: CPU runs stay fp32)",
    "bf16-native": "bf16 on CUDA and on CPUs with bf16 instructions (AVX512-BF16 or AMX); fp32 elsewhere",
    "bf16": "bf16 on every device (slow on a CPU without bf16 instructions)",
    "fp32": "fp32 on every device",
}


def check_precision(precision: str, where: str = "train.precision") -> str:
    if precision not in PRECISIONS:
        raise UserError(f"{where} = {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision


@dataclass
class TrainSection:
    """AdamW with linear warm-up and cosine decay, gradient clipping, an EMA of the weights, and the cadence of
    logging, validation and checkpoints. Each run kind subclasses it with its own defaults and extra keys."""
    steps: int = 2000
    batch_size: int = 8
    lr: float = 3e-4
    min_lr_ratio: float = 0.1         # cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0            # max gradient norm; 0 = off
    ema_decay: float = 0.99           # 0 = no EMA (validation and checkpoints then use the raw weights)
    val_every: int = 200
    ckpt_every: int = 200
    log_every: int = 10
    seed: int = 0
    precision: str = "bf16-cuda"      # where to train under bf16 autocast: one of PRECISIONS above

    # integer keys that must be >= 1 (subclasses add theirs)
    POSITIVE = ("steps", "batch_size", "val_every", "ckpt_every", "log_every")

    def validate(self) -> None:
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} = {getattr(self, name)}: must be >= 1")
        if self.lr <= 0:
            raise UserError(f"train.lr = {self.lr}: must be > 0")
        for name, low, high in (("min_lr_ratio", 0, 1), ("beta1", 0, 1), ("beta2", 0, 1)):
            if not low <= getattr(self, name) <= high:
                raise UserError(f"train.{name} = {getattr(self, name)}: must be in [{low}, {high}]")
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name} = {getattr(self, name)}: must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"train.ema_decay = {self.ema_decay}: must be in [0, 1)")
        check_precision(self.precision)


def _model_error(e: UserError) -> UserError:
    return UserError(f"model: {e}")


# ----------------------------------------------------------------------------------------------------------------------
# tokenizer runs (magvit3d train-tokenizer)

@dataclass
class TokenizerTrainSection(TrainSection):
    steps: int = 2000
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 0.01
    beta2: float = 0.99
    ema_decay: float = 0.99
    recon_loss: str = "l1"            # l1 | l2
    motion_weight: float = 0.0        # extra loss weight on moving pixels: 1 + w * |x - clip's temporal mean| a pixel
    perceptual_weight: float = 0.0    # LPIPS loss weight; used when AlexNet's weights are found or downloaded
    lpips_weights: str = ""           # torchvision alexnet-owt-7be5be79.pth; "" = look in the torch hub cache
    disc_weight: float = 0.0          # adversarial loss weight; 0 = no discriminator
    disc_start: int = 1000            # step at which the discriminator starts (reconstruction first)
    disc_lr: float = 1e-4
    disc_channels: int = 32
    lecam_weight: float = 0.001
    val_clips: int = 16               # view-clips reconstructed per validation
    workers: int = 1                  # DataLoader worker processes
    crop_size: int = 0                # train on random crop_size x crop_size windows (0 = whole frames): the model is
    crop_frames: int = 0              # convolutional, and on a CPU smaller windows buy more, more varied steps
    compile: bool = False             # torch.compile the model (CUDA recommended)
    baselines: bool = True            # fit the same-budget baselines (k-means, block and clip means) once per run

    POSITIVE = TrainSection.POSITIVE + ("val_clips",)

    def validate(self) -> None:
        super().validate()
        if self.recon_loss not in ("l1", "l2"):
            raise UserError(f"train.recon_loss = {self.recon_loss!r}; allowed: l1, l2")
        if self.workers < 0:
            raise UserError(f"train.workers = {self.workers}: must be >= 0")
        if (self.disc_weight < 0 or self.disc_start < 0 or self.disc_lr <= 0 or self.disc_channels < 1
                or self.lecam_weight < 0):
            raise UserError("train.disc_weight, disc_start and lecam_weight must be >= 0, disc_lr > 0, disc_channels >= 1")
        if self.motion_weight < 0:
            raise UserError(f"train.motion_weight = {self.motion_weight}: must be >= 0")
        if self.perceptual_weight < 0:
            raise UserError(f"train.perceptual_weight = {self.perceptual_weight}: must be >= 0")


@dataclass
class TokenizerRunConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TokenizerTrainSection = field(default_factory=TokenizerTrainSection)

    def validate(self) -> None:
        t = self.train
        try:
            self.model.validate()
        except UserError as e:
            raise _model_error(e) from None
        t.validate()
        sf, tf = self.model.spatial_factor, self.model.temporal_factor
        if t.crop_size < 0 or t.crop_size % sf:
            raise UserError(f"train.crop_size = {t.crop_size}: must be 0 (whole frames) or a multiple of the spatial "
                            f"downsampling factor {sf}")
        if t.crop_frames < 0 or t.crop_frames % tf:
            raise UserError(f"train.crop_frames = {t.crop_frames}: must be 0 (whole clips) or a multiple of the "
                            f"temporal downsampling factor {tf}")


def load_tokenizer_config(source, overrides=None) -> TokenizerRunConfig:
    return load_config(TokenizerRunConfig, "tokenizer", source, overrides)


# ----------------------------------------------------------------------------------------------------------------------
# transformer runs (magvit3d train-transformer)

@dataclass
class TaskSection:
    """Task mix (relative weights, normalised) and the predict task's conditioning length."""
    predict: float = 0.4
    generate: float = 0.2
    complete_view: float = 0.2
    unconditional: float = 0.2
    predict_frames: int = 4           # frames given in "predict": a multiple of the tokenizer's temporal factor
    # the share of predict clips whose every future token is masked (the rest draw the cosine ratio): sampling
    # starts there, with nothing of the future visible, and must place the object from the given frames alone
    predict_full_mask: float = 0.0
    # the generate task is given an object track too (model.track_frames frames per view): in training the clip's
    # own, in `magvit3d generate` that of a training clip of the requested shape and family (the track prior). The
    # labels alone left the family at chance: the model drew where the object goes from nothing
    generate_track: bool = False

    def weights(self) -> dict[str, float]:
        return {"predict": self.predict, "generate": self.generate, "complete-view": self.complete_view,
                "unconditional": self.unconditional}


DECODE_ORDERS = ("all", "frames")   # masked sampling: every token at once, or one latent frame after another
AUGMENTATIONS = ("time-reverse", "hflip")   # copies of a train clip the token cache can hold (training/tokenize.py)


def check_augmentations(names, where: str) -> list[str]:
    """A list of augmentation names, each known and once, or a one-line error naming `where`."""
    names = list(names)
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad or len(set(names)) != len(names):
        raise UserError(f"{where} = {names}: each of {', '.join(AUGMENTATIONS)} at most once")
    return names


@dataclass
class TransformerTrainSection(TrainSection):
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.05
    beta2: float = 0.95
    ema_decay: float = 0.999
    label_smoothing: float = 0.0
    # loss weight of scored tokens equal to their copy guess (the token one latent frame earlier); 1 = plain mean.
    # Below 1 the loss concentrates on the tokens that change, where the motion is.
    unchanged_weight: float = 1.0
    # extra loss weight on the tokens whose pixels move: 1 + w * (the token's mean |pixel - the clip's temporal
    # median|, from the cache's train_motion.npy). The object is a few % of the tokens and the ground's code flicker
    # outweighs it in a plain mean; 0 = off
    motion_weight: float = 0.0
    # weight of the copy window's motion loss (model.copy_window > 0): on the tokens around the object, the window's
    # offset weights are trained towards the object's displacement (from the dataset's positions) and its gate
    # towards copying; 0 = off
    pointer_weight: float = 0.0
    # weight of the motion module's loss (model.track_frames > 0): its predicted centre of the object in each latent
    # frame to fill in, against the dataset's (smooth L1 in token cells)
    track_weight: float = 1.0
    # steps of fitting the motion module alone before the token training starts: full batch over every train clip's
    # track, each clip mirrored left-right half the time (no trajectory family changes under it), its own AdamW. In
    # joint training alone the module sees a few tracks per step and stays near constant velocity on circles; 0 = off
    track_prefit_steps: int = 0
    # fraction of the clips given the track (predict; generate with tasks.generate_track) that get it "seen nowhere"
    # instead, as classifier-free guidance trains its null branch: track guidance (`generate --track-guidance`)
    # contrasts each clip with itself so, and without any dropout that branch is one the model never saw; 0 = off
    track_dropout: float = 0.0
    # copies of the train clips the token cache holds besides the clips (`magvit3d tokenize --augment`), trained on
    # as extra clips with the same labels: time-reverse (every family here is a path the object can run backwards),
    # hflip (one-view datasets only). The run refuses a cache without them.
    augment: list[str] = field(default_factory=list)
    val_clips: int = 32               # clips of the val split scored per validation (per task)
    workers: int = 0                  # DataLoader worker processes (the cache is in memory: 0 is usually best)
    compile: bool = False             # torch.compile the model (CUDA recommended)

    POSITIVE = TrainSection.POSITIVE + ("val_clips",)

    def validate(self) -> None:
        super().validate()
        if self.workers < 0:
            raise UserError(f"train.workers = {self.workers}: must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"train.label_smoothing = {self.label_smoothing}: must be in [0, 1)")
        if not 0 < self.unchanged_weight <= 1:
            raise UserError(f"train.unchanged_weight = {self.unchanged_weight}: must be in (0, 1]")
        if self.motion_weight < 0:
            raise UserError(f"train.motion_weight = {self.motion_weight}: must be >= 0")
        if self.pointer_weight < 0:
            raise UserError(f"train.pointer_weight = {self.pointer_weight}: must be >= 0")
        if self.track_weight < 0:
            raise UserError(f"train.track_weight = {self.track_weight}: must be >= 0")
        if self.track_prefit_steps < 0:
            raise UserError(f"train.track_prefit_steps = {self.track_prefit_steps}: must be >= 0")
        if not 0 <= self.track_dropout < 1:
            raise UserError(f"train.track_dropout = {self.track_dropout}: must be in [0, 1)")
        check_augmentations(self.augment, "train.augment")


@dataclass
class TransformerRunConfig:
    model: TransformerConfig = field(default_factory=TransformerConfig)
    tasks: TaskSection = field(default_factory=TaskSection)
    train: TransformerTrainSection = field(default_factory=TransformerTrainSection)

    def validate(self) -> None:
        w = self.tasks.weights()
        try:
            self.model.validate()
        except UserError as e:
            raise _model_error(e) from None
        if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise UserError(f"task weights {w} must be >= 0 with a positive sum")
        if not 0 <= self.tasks.predict_full_mask <= 1:
            raise UserError(f"tasks.predict_full_mask = {self.tasks.predict_full_mask}: must be in [0, 1]")
        if self.tasks.predict_frames < 1:
            raise UserError(f"tasks.predict_frames = {self.tasks.predict_frames}: must be >= 1")
        self.train.validate()
        if self.model.track_frames not in (0, self.tasks.predict_frames):
            raise UserError(f"model.track_frames = {self.model.track_frames}: the track is that of the given frames, "
                            f"so it must equal tasks.predict_frames = {self.tasks.predict_frames} (or 0: off)")
        if self.tasks.generate_track and not self.model.track_frames:
            raise UserError("tasks.generate_track = true gives the generate task the object's track: set "
                            "model.track_frames = tasks.predict_frames (or tasks.generate_track = false)")
        if self.model.track_family and not self.tasks.generate_track:
            raise UserError("model.track_family = true gives the motion module the family of the generate task's "
                            "track: set tasks.generate_track = true (or model.track_family = false)")
        if self.train.pointer_weight > 0 and not self.model.copy_window:
            raise UserError(f"train.pointer_weight = {self.train.pointer_weight} trains the copy window: set "
                            f"model.copy_window >= 1 (or train.pointer_weight = 0)")
        if self.train.track_prefit_steps and not self.model.track_frames:
            raise UserError(f"train.track_prefit_steps = {self.train.track_prefit_steps} fits the motion module: set "
                            f"model.track_frames = tasks.predict_frames (or train.track_prefit_steps = 0)")


def load_transformer_config(source, overrides=None) -> TransformerRunConfig:
    return load_config(TransformerRunConfig, "transformer", source, overrides)
