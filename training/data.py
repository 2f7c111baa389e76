"""Training data: view-clips out of the packed uint8 memmaps (datagen.pack.load_packed), never PNGs.

Views are folded into the batch: item i of a split with N clips and V views is view (i % V) of clip (i // V),
returned as uint8 (3, T, H, W). Conversion to float happens on the training device, so loader workers only
copy bytes out of the memmap.
"""
from __future__ import annotations

import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datagen.pack import load_packed


class PackedViewClips(Dataset):
    """Every (clip, view) of one packed split as a uint8 tensor (3, T, H, W)."""

    def __init__(self, root, split: str):
        self.packed = load_packed(root, split)
        self.num_clips, self.num_views, self.frames, self.height, self.width, _ = self.packed.rgb.shape

    def __len__(self) -> int:
        return self.num_clips * self.num_views

    def __getitem__(self, i: int) -> torch.Tensor:
        clip, view = divmod(int(i), self.num_views)
        frames = np.array(self.packed.rgb[clip, view])                   # (T, H, W, 3) copied out of the memmap
        return torch.from_numpy(frames).permute(3, 0, 1, 2)              # (3, T, H, W)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return x.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def random_crop(x: torch.Tensor, size: int, frames: int, frame_multiple: int, seed: int) -> torch.Tensor:
    """A random (frames, size, size) window of each clip in a batch (B, C, T, H, W); 0 keeps that dimension whole.
    Windows start on a multiple of frame_multiple in time, so a cropped clip splits into the tokenizer's frame groups
    the way a whole clip does. Drawn from `seed` alone, so a resumed run crops exactly like an uninterrupted one."""
    b, _, t, h, w = x.shape
    size_h, size_w, frames = size or h, size or w, frames or t
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(b):
        t0 = int(torch.randint((t - frames) // frame_multiple + 1, (1,), generator=g)) * frame_multiple
        y0 = int(torch.randint(h - size_h + 1, (1,), generator=g))
        x0 = int(torch.randint(w - size_w + 1, (1,), generator=g))
        out.append(x[i, :, t0:t0 + frames, y0:y0 + size_h, x0:x0 + size_w])
    return torch.stack(out)


def _ignore_interrupts(_worker_id: int) -> None:
    """Ctrl-C reaches the whole process group; a loader worker must not die of it while the training process
    finishes its step and saves a checkpoint (forked workers inherit the trainer's handler, spawned ones would not)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def infinite_loader(dataset: Dataset, batch_size: int, seed: int, workers: int, start_step: int = 0,
                    rank: int = 0, world: int = 1):
    """Yield batches forever, reshuffled every epoch from (seed, epoch), so a resumed run at step n sees exactly
    the batches an uninterrupted run would have seen from step n on (skipped batches are never loaded).
    Under DDP every rank draws the same global batch of batch_size * world clips and takes its own slice."""
    global_batch = batch_size * world
    if len(dataset) < global_batch:
        raise ValueError(f"batch size {batch_size} x {world} rank(s) is larger than the {len(dataset)} view-clips "
                         f"of the split")
    per_epoch = len(dataset) // global_batch
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        batches = order[: per_epoch * global_batch].view(per_epoch, world, batch_size)[skip:, rank].tolist()
        yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                              pin_memory=torch.cuda.is_available(), worker_init_fn=_ignore_interrupts)
        skip = 0
        epoch += 1
