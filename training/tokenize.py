"""Use a trained tokenizer: load it from a run, encode a packed dataset into the token cache, and write
reconstructions next to the originals for a visual check.

    RUN/tokens/<split>_tokens.npy     int16 (N, V, t, h, w), in the pack order of the dataset's split
    RUN/tokens/<split>_motion.npy     float32 (N, V, t, h, w): how much each token's pixels move (metrics.token_motion;
                                      the transformer's train.motion_weight)
    RUN/tokens/<split>_index.json     sample ids, the dataset's config hash, the tokenizer step, the grid shape,
                                      code_levels (FSQ: id = sum_i digit_i * prod(levels[:i]); [] otherwise)
    RUN/tokens/train_augmented.npy    with --augment: int16 (M, V, t, h, w), the train clips transformed before
    RUN/tokens/train_augmented_motion.npy   the copies' token motion
    RUN/tokens/train_augmented.json   encoding (one copy per non-empty combination of the augmentations asked for);
                                      per row its sample id and augmentation ("time-reverse+hflip"), the tokenizer
                                      step and the dataset's config hash (training/token_cache.py reads them)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from datagen.config import UserError, from_dict
from datagen.dataset import load_dataset_json, write_json_atomic
from datagen.pack import load_packed
from training import checkpoint as ckpt
from training.configs import check_augmentations
from training.data import to_model_range, to_uint8
from training.metrics import token_motion
from training.token_cache import AUGMENTED
from training.tokenizer import TokenizerConfig, VideoTokenizer


def load_tokenizer(run: Path, device: torch.device | str = "cpu") -> tuple[VideoTokenizer, dict]:
    """The latest checkpoint of a tokenizer run (EMA weights when the run kept them), in eval mode, and its config."""
    latest, saved = ckpt.load_run(run, "tokenizer")
    model = VideoTokenizer(from_dict(TokenizerConfig, saved["model"], where="model"))
    return ckpt.load_model_weights(latest, model).to(device).eval(), saved


def check_dataset(data: Path, saved: dict) -> dict:
    """The dataset's info, or a one-line error when its clips are not the size the tokenizer was trained on."""
    info = load_dataset_json(data)
    trained = saved["data"]
    if [*info["image_size"], info["frames"]] != [*trained["image_size"], trained["frames"]]:
        raise UserError(f"dataset {data} has {info['image_size'][0]}x{info['image_size'][1]}x{info['frames']} clips; "
                        f"the tokenizer was trained on {trained['image_size'][0]}x{trained['image_size'][1]}x"
                        f"{trained['frames']}")
    return info


@torch.no_grad()
def encode_clips(model: VideoTokenizer, rgb: np.ndarray, device, batch_size: int, hysteresis: float = 0.0
                 ) -> np.ndarray:
    """uint8 (M, T, H, W, 3) view-clips -> int64 tokens (M, t, h, w)."""
    out = []
    for i in range(0, len(rgb), batch_size):
        x = torch.from_numpy(np.array(rgb[i:i + batch_size])).permute(0, 4, 1, 2, 3).to(device)
        out.append(model.encode_indices(to_model_range(x), hysteresis).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def reconstruct_clips(model: VideoTokenizer, rgb: np.ndarray, device, batch_size: int = 8) -> np.ndarray:
    """uint8 (M, T, H, W, 3) view-clips -> their uint8 reconstructions (the true tokens decoded), same shape."""
    out = []
    for i in range(0, len(rgb), batch_size):
        x = torch.from_numpy(np.array(rgb[i:i + batch_size])).permute(0, 4, 1, 2, 3).to(device)
        out.append(to_uint8(model(to_model_range(x))[0].float()).permute(0, 2, 3, 4, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros_like(rgb)


def augmentation_combinations(names: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty combination of the augmentations, in a fixed order: [a], [b], [a, b], ..."""
    return [tuple(n for i, n in enumerate(names) if mask >> i & 1) for mask in range(1, 2 ** len(names))]


def augment_clip(rgb: np.ndarray, combination: tuple[str, ...]) -> np.ndarray:
    """(V, T, H, W, 3) -> the clip played backwards (time-reverse) and / or mirrored left-right (hflip)."""
    if "time-reverse" in combination:
        rgb = rgb[:, ::-1]
    if "hflip" in combination:
        rgb = rgb[:, :, :, ::-1]
    return np.ascontiguousarray(rgb)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def tokenize_dataset(run: Path, data: Path, *, device="cpu", batch_size: int = 8, hysteresis: float = 0.0,
                     augment: list[str] = (), progress: bool = True) -> dict:
    """Encode every packed split of `data` with the run's tokenizer into RUN/tokens (atomically, per file).
    hysteresis (FSQ): a code sticks across latent frames while its latent stays within 0.5 + hysteresis levels.
    augment (AUGMENTATIONS): also encode transformed copies of the train clips into RUN/tokens/train_augmented.*
    (without it, an earlier run's augmented copies are removed: they would not match the tokens any more)."""
    from tqdm import tqdm

    if not 0 <= hysteresis < 1:
        raise UserError(f"--code-hysteresis {hysteresis}: must be in [0, 1) (levels beyond the rounding half-step)")
    augment = check_augmentations(augment, "--augment")
    model, saved = load_tokenizer(run, device)
    if hysteresis and model.cfg.quantizer != "fsq":
        raise UserError(f"--code-hysteresis needs an FSQ tokenizer; {run} uses {model.cfg.quantizer}")
    info = check_dataset(Path(data), saved)
    if "hflip" in augment and len(info["views"]) > 1:   # refused before anything is written
        raise UserError(f"--augment hflip mirrors each view on its own, which is not the same scene seen by the same "
                        f"rig; it is allowed for one-view datasets only ({data} has {len(info['views'])} views)")
    K = model.cfg.codebook_size
    if K > np.iinfo(np.int16).max + 1:
        raise UserError(f"codebook_size {K} does not fit the int16 token cache")
    out_dir = Path(run) / "tokens"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split in info["splits"]:
        packed = load_packed(data, split)
        N, V = packed.rgb.shape[:2]
        t, h, w = model.cfg.latent_shape(info["frames"], info["image_size"][1], info["image_size"][0])
        tokens = np.zeros((N, V, t, h, w), dtype=np.int16)
        motion = np.zeros((N, V, t, h, w), dtype=np.float32)
        for n in tqdm(range(N), desc=f"tokenize {split}", unit="clip", disable=not progress):
            tokens[n] = encode_clips(model, packed.rgb[n], device, batch_size, hysteresis)
            motion[n] = token_motion(np.asarray(packed.rgb[n]), model.cfg.temporal_factor, model.cfg.spatial_factor)
        final = out_dir / f"{split}_tokens.npy"
        _save_npy(out_dir / f"{split}_motion.npy", motion)   # (before the tokens and the index that vouch for it)
        _save_npy(final, tokens)
        write_json_atomic(out_dir / f"{split}_index.json", {
            "split": split, "sample_ids": packed.sample_ids, "dataset": str(data),
            # (and from here: a workdir moved or copied whole still finds its own dataset)
            "dataset_relative": os.path.relpath(Path(data).resolve(), out_dir.resolve()),
            "dataset_config_hash": info["config_hash"], "tokenizer_step": saved["step"],
            "codebook_size": K, "shape": list(tokens.shape), "views": info["views"],
            # FSQ: a token id is the mixed-radix number of its per-channel levels (the transformer uses the digits)
            "code_levels": list(model.cfg.fsq_levels) if model.cfg.quantizer == "fsq" else [],
            "code_hysteresis": hysteresis})
        summary[split] = {"tokens": str(final), "shape": list(tokens.shape)}
    for suffix in (".json", ".npy", "_motion.npy"):   # the index goes first: never an index without tokens
        (out_dir / f"{AUGMENTED}{suffix}").unlink(missing_ok=True)
    if augment and "train" in info["splits"]:
        summary[AUGMENTED] = _tokenize_augmented(model, data, out_dir, augment, saved["step"], info, device,
                                                 batch_size, hysteresis, progress)
    return summary


def _tokenize_augmented(model, data: Path, out_dir: Path, augment: list[str], step: int, info: dict, device,
                        batch_size: int, hysteresis: float, progress: bool) -> dict:
    from tqdm import tqdm

    packed = load_packed(data, "train")
    N, V = packed.rgb.shape[:2]
    combos = augmentation_combinations(augment)
    t, h, w = model.cfg.latent_shape(info["frames"], info["image_size"][1], info["image_size"][0])
    tokens = np.zeros((len(combos) * N, V, t, h, w), dtype=np.int16)
    motion = np.zeros((len(combos) * N, V, t, h, w), dtype=np.float32)
    rows = [(c, n) for c in combos for n in range(N)]
    for i, (combo, n) in enumerate(tqdm(rows, desc="tokenize train (augmented)", unit="clip", disable=not progress)):
        clip = augment_clip(np.asarray(packed.rgb[n]), combo)
        tokens[i] = encode_clips(model, clip, device, batch_size, hysteresis)
        motion[i] = token_motion(clip, model.cfg.temporal_factor, model.cfg.spatial_factor)
    path = out_dir / f"{AUGMENTED}.npy"
    _save_npy(out_dir / f"{AUGMENTED}_motion.npy", motion)
    _save_npy(path, tokens)
    write_json_atomic(out_dir / f"{AUGMENTED}.json", {
        "split": "train", "augment": augment, "dataset": str(data), "dataset_config_hash": info["config_hash"],
        "tokenizer_step": step, "shape": list(tokens.shape),
        "sample_ids": [packed.sample_ids[n] for _, n in rows], "augmentation": ["+".join(c) for c, _ in rows]})
    return {"tokens": str(path), "shape": list(tokens.shape)}


@torch.no_grad()
def reconstruct_samples(run: Path, data: Path, out: Path, sample_ids: list[int], *, split: str = "test",
                        device="cpu") -> list[Path]:
    """For each sample: a PNG grid (per view: original row over reconstruction row; columns = frames) and a GIF
    of the same grid over time. Returns the written paths."""
    from PIL import Image

    model, saved = load_tokenizer(run, device)
    check_dataset(Path(data), saved)
    packed = load_packed(data, split)
    if not packed.sample_ids:
        raise UserError(f"the {split} split of {data} is empty, so there is nothing to reconstruct; pass --split "
                        f"with a split that has clips, or render more clips (one per split at least)")
    if not sample_ids:
        raise UserError("no sample ids given; pass --sample ID")
    position = {sid: i for i, sid in enumerate(packed.sample_ids)}
    missing = [s for s in sample_ids if s not in position]
    if missing:
        raise UserError(f"sample ids {missing} are not in the {split} split of {data}; "
                        f"it holds {packed.sample_ids[:8]}{' ...' if len(packed.sample_ids) > 8 else ''}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sid in sample_ids:
        orig = np.array(packed.rgb[position[sid]])                                  # (V, T, H, W, 3)
        recon = reconstruct_clips(model, orig, device)                              # (V, T, H, W, 3)
        rows = np.stack([orig, recon], 1).reshape(-1, *orig.shape[1:])            # view0 orig, view0 recon, ...
        grid = rearrange(rows, "r t h w c -> (r h) (t w) c")
        png = out / f"recon_{sid:06d}.png"
        Image.fromarray(grid).save(png)
        frames = [Image.fromarray(np.concatenate(list(rows[:, f]), axis=0)) for f in range(orig.shape[1])]
        gif = out / f"recon_{sid:06d}.gif"
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
        written += [png, gif]
    return written
