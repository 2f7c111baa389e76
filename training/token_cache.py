"""Reading the token cache that `magvit3d tokenize` writes (training/tokenize.py is its writer):

    TOKENS/<split>_tokens.npy     int16 (N, V, t, h, w), in the pack order of the dataset's split
    TOKENS/<split>_motion.npy     float32 (N, V, t, h, w): how much each token's pixels move (absent in caches
                                  written before it; TokenCache.motion is then None)
    TOKENS/<split>_index.json     split, sample_ids, dataset, dataset_config_hash, tokenizer_step, codebook_size,
                                  shape, views, code_levels (FSQ digits; absent in caches written before them)
    TOKENS/train_augmented.{npy,json}  optional: transformed copies of the train clips (load_augmented), and
                                  train_augmented_motion.npy their token motion

TOKENS is RUN/tokens of a tokenizer run; either that run or the tokens directory itself may be passed. The class
labels come from the dataset's packed index. `source` describes where a cache came from (the tokenizer run, its
step and config hash, the grid, the dataset); a transformer checkpoint records it, and `check_compatible`
refuses a cache from a different tokenizer than the one a checkpoint was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datagen.config import UserError
from datagen.dataset import config_hash, load_dataset_json, read_json
from datagen.pack import load_packed
from training import checkpoint as ckpt
from training.transformer import TokenLayout

AUGMENTED = "train_augmented"   # TOKENS/train_augmented.{npy,json}: written by training.tokenize, read below

# what must agree between a checkpoint's cache and another cache for its tokens to mean the same
COMPATIBLE_KEYS = ("codebook_size", "grid", "tokenizer_step", "tokenizer_config_hash", "frames", "image_size",
                   "classes")


def tokens_dir(path: Path) -> Path:
    """A tokenizer run (RUN/tokens) or a tokens directory -> the tokens directory."""
    path = Path(path)
    for candidate in (path / "tokens", path):
        if candidate.is_dir() and any(candidate.glob("*_tokens.npy")):
            return candidate
    raise UserError(f"no token cache in {path} (expected {path}/tokens/<split>_tokens.npy or "
                    f"{path}/<split>_tokens.npy); run `magvit3d tokenize --run RUN --data DATASET` first")


def _tokenizer_run(directory: Path, step: int) -> tuple[Path | None, str | None]:
    """The tokenizer run that holds `directory` as RUN/tokens and its model-config hash; (None, None) when the
    cache lies elsewhere. A run trained past the cache's step is an error: the cache is stale."""
    run = directory.parent
    latest = ckpt.latest_checkpoint(run) if (run / "checkpoints" / "latest.json").is_file() else None
    if latest is None:
        return None, None
    saved = ckpt.load_config_json(latest)
    if saved.get("kind") != "tokenizer":
        return None, None
    if int(saved["step"]) != int(step):
        raise UserError(f"token cache {directory} was written by tokenizer step {step}, but {run} is now at step "
                        f"{saved['step']}; run `magvit3d tokenize --run {run} --data DATASET` again")
    return run.resolve(), config_hash(saved["model"])


@dataclass
class TokenCache:
    directory: Path
    split: str
    tokens: np.ndarray            # int16 (N, V, t, h, w)
    index: dict
    shape_ids: np.ndarray         # int64 (N,)
    family_ids: np.ndarray        # int64 (N,)
    source: dict                  # provenance: see load_token_cache
    motion: np.ndarray | None = None   # float32 (N, V, t, h, w) (metrics.token_motion), or None: not in the cache
    # int64 (N, V, t): the token cell (row * w + col) holding the object's centre per latent frame, -1 where it is
    # not visible (object_cells; from the dataset's packed index, so every cache has it)
    cells: np.ndarray | None = None
    # float32 (N, V, T, 3): per frame the object's centre as a fraction of the image (x / W, y / H) and whether it
    # is visible (object_track; from the packed index): the given frames' track that model.track_frames reads
    track: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def sample_ids(self) -> list[int]:
        return self.index["sample_ids"]

    @property
    def classes(self) -> dict[str, list[str]]:
        return self.source["classes"]

    @property
    def dataset(self) -> Path:
        return Path(self.source["dataset"])

    @property
    def temporal_factor(self) -> int:
        return self.source["frames"] // self.source["grid"][1]

    def layout(self) -> TokenLayout:
        V, t, h, w = self.source["grid"]
        return TokenLayout(codebook_size=self.source["codebook_size"], views=V, t=t, h=h, w=w,
                           num_shapes=len(self.classes["shape"]), num_families=len(self.classes["family"]),
                           code_levels=tuple(self.source.get("code_levels", ())))


def _cache_dataset(directory: Path, index: dict) -> Path:
    """The dataset a cache was encoded from: the one at the same place relative to the cache when there is one
    (a workdir moved or copied whole keeps using its own), else the path it was given."""
    near = directory / index["dataset_relative"] if index.get("dataset_relative") else None
    return near.resolve() if near is not None and (near / "dataset.json").is_file() else Path(index["dataset"])


def load_token_cache(path: Path, split: str) -> TokenCache:
    """One split of a token cache with its labels; a missing, truncated or stale cache is a one-line UserError."""
    directory = tokens_dir(path)
    ipath, tpath = directory / f"{split}_index.json", directory / f"{split}_tokens.npy"
    if not ipath.is_file() or not tpath.is_file():
        have = sorted(p.name[:-len("_tokens.npy")] for p in directory.glob("*_tokens.npy"))
        raise UserError(f"token cache {directory} has no {split!r} split; it holds: {', '.join(have)}")
    index = read_json(ipath, "token cache index")
    try:
        tokens = np.load(tpath, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"token cache {tpath} is unreadable ({e}); run `magvit3d tokenize` again") from None
    K = index.get("codebook_size")
    if tokens.dtype != np.int16 or tokens.ndim != 5 or list(tokens.shape) != index.get("shape"):
        raise UserError(f"{tpath} is {tokens.dtype} {tuple(tokens.shape)}; {ipath.name} says int16 "
                        f"{tuple(index.get('shape', ()))}")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= K):
        raise UserError(f"{tpath} holds token ids outside [0, {K}) (codebook_size in {ipath.name})")
    if "dataset" not in index:
        raise UserError(f"{ipath} does not name its dataset; run `magvit3d tokenize` again")
    dataset = _cache_dataset(directory, index)
    info = load_dataset_json(dataset)
    packed = load_packed(dataset, split)
    if packed.sample_ids != index["sample_ids"] or index.get("dataset_config_hash") != info["config_hash"]:
        raise UserError(f"token cache {tpath} is stale: the {split} split of {dataset} has other samples or another "
                        f"config now; run `magvit3d tokenize` again")
    run, tok_hash = _tokenizer_run(directory, index["tokenizer_step"])
    T = info["frames"]
    if T % tokens.shape[2]:
        raise UserError(f"{tpath}: {tokens.shape[2]} latent frames do not divide the dataset's {T} frames")
    source = {"tokens": str(directory.resolve()), "tokenizer_run": str(run) if run else None,
              "tokenizer_step": int(index["tokenizer_step"]), "tokenizer_config_hash": tok_hash,
              "codebook_size": int(K), "code_levels": list(index.get("code_levels", [])),
              "grid": list(tokens.shape[1:]), "frames": T,
              "image_size": list(info["image_size"]), "dataset": str(dataset.resolve()),
              "dataset_config_hash": info["config_hash"], "views": info["views"],
              "classes": {"shape": list(packed.index["classes"]["shape"]),
                          "family": list(packed.index["classes"]["family"])}}
    labels = packed.index["label_ids"]
    if len(tokens):
        centres, visible = packed.array("centers_2d"), packed.array("visibility", bool)
        cells = object_cells(centres, visible, tokens.shape[2:], info["image_size"])
        track = object_track(centres, visible, info["image_size"])
    else:
        cells, track = np.zeros(tokens.shape[:3], np.int64), np.zeros((0, tokens.shape[1], T, 3), np.float32)
    return TokenCache(directory, split, tokens, index, np.asarray(labels["shape"], np.int64),
                      np.asarray(labels["family"], np.int64), source, _load_motion(directory / f"{split}_motion.npy",
                                                                                  tokens.shape), cells, track)


def object_cells(centres: np.ndarray, visible: np.ndarray, grid: tuple[int, int, int], image_size) -> np.ndarray:
    """Where the object is, in token cells: centres (N, V, T, 2) px (x, y) and visibility (N, V, T) of the packed
    index, the token grid (t, h, w) and the image's [W, H] -> int64 (N, V, t): per latent frame the cell
    (row * w + col) holding the mean of its T / t frames' visible centres; -1 where the object is visible in none of
    them or that mean lies off the image."""
    t, h, w = grid
    N, V, T = visible.shape
    W, H = image_size
    xy = np.where(visible[..., None], centres, 0.0).reshape(N, V, t, T // t, 2).sum(3)
    seen = visible.reshape(N, V, t, T // t).sum(3)
    xy = xy / np.maximum(seen, 1)[..., None]
    col, row = np.floor(xy[..., 0] * w / W).astype(np.int64), np.floor(xy[..., 1] * h / H).astype(np.int64)
    inside = (seen > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    return np.where(inside, row * w + col, -1)


def object_track(centres: np.ndarray, visible: np.ndarray, image_size) -> np.ndarray:
    """centres (N, V, T, 2) px (x, y) and visibility (N, V, T) of the packed index, the image's [W, H] -> float32
    (N, V, T, 3): x / W, y / H and visibility (1 / 0) per frame; 0, 0, 0 where the object is not visible."""
    W, H = image_size
    xy = centres / np.array([W, H], np.float64)
    return np.concatenate([np.where(visible[..., None], xy, 0.0), visible[..., None]], -1).astype(np.float32)


def augment_track(track: np.ndarray, combination: str) -> np.ndarray:
    """One clip's object track (V, T, 3) (object_track) -> that of its augmented copy, as augment_cells."""
    names = combination.split("+")
    if "time-reverse" in names:
        track = track[:, ::-1]
    if "hflip" in names:
        track = track.copy()
        track[..., 0] = np.where(track[..., 2] > 0, 1.0 - track[..., 0], 0.0)
    return np.ascontiguousarray(track)


def augment_cells(cells: np.ndarray, combination: str, w: int) -> np.ndarray:
    """One clip's object cells (V, t) -> those of its augmented copy ("time-reverse", "hflip" or both, "+"-joined,
    as training/tokenize.py makes it): time-reverse plays the latent frames backwards, hflip mirrors the columns."""
    names = combination.split("+")
    if "time-reverse" in names:
        cells = cells[:, ::-1]
    if "hflip" in names:
        cells = np.where(cells >= 0, (cells // w) * w + (w - 1 - cells % w), -1)
    return cells


def _load_motion(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A cache's per-token motion (written with its tokens), or None when the cache predates it."""
    if not path.is_file():
        return None
    try:
        motion = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is unreadable ({e}); run `magvit3d tokenize` again") from None
    if motion.dtype != np.float32 or motion.shape != tuple(shape):
        raise UserError(f"{path} is {motion.dtype} {motion.shape}; its tokens are {tuple(shape)}: run `magvit3d "
                        f"tokenize` again")
    return motion


def load_augmented(cache: TokenCache, wanted: list[str]) -> TokenCache:
    """The augmented copies of `cache`'s train clips (`magvit3d tokenize --augment`, training/tokenize.py) made only
    with augmentations in `wanted`, labelled like the clips they came from; a one-line error when the cache does
    not hold them or they are from another tokenizer step or dataset config than the clips."""
    directory = cache.directory
    ipath, tpath = directory / f"{AUGMENTED}.json", directory / f"{AUGMENTED}.npy"
    hint = f"run `magvit3d tokenize --run RUN --data DATASET {' '.join('--augment ' + a for a in wanted)}`"
    if not ipath.is_file() or not tpath.is_file():
        raise UserError(f"token cache {directory} holds no augmented train clips ({', '.join(wanted)} asked for); "
                        f"{hint}")
    index = read_json(ipath, "augmented token index")
    if (index.get("tokenizer_step") != cache.index.get("tokenizer_step")
            or index.get("dataset_config_hash") != cache.index.get("dataset_config_hash")):
        raise UserError(f"{tpath} is stale (another tokenizer step or dataset config than the train tokens); {hint}")
    missing = [a for a in wanted if a not in index.get("augment", [])]
    if missing:
        raise UserError(f"{tpath} holds the augmentations {index.get('augment')}, not {missing}; {hint}")
    try:
        tokens = np.load(tpath, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{tpath} is unreadable ({e}); {hint}") from None
    if list(tokens.shape) != index.get("shape") or tokens.shape[1:] != cache.tokens.shape[1:]:
        raise UserError(f"{tpath} is {tuple(tokens.shape)}; {ipath.name} says {tuple(index.get('shape', ()))} and "
                        f"the train tokens are (N, {', '.join(map(str, cache.tokens.shape[1:]))}); {hint}")
    keep = [i for i, a in enumerate(index["augmentation"]) if set(a.split("+")) <= set(wanted)]
    position = {sid: i for i, sid in enumerate(cache.sample_ids)}
    try:
        source = [position[index["sample_ids"][i]] for i in keep]
    except KeyError as e:
        raise UserError(f"{tpath} holds sample {e} that the train split does not; {hint}") from None
    motion = _load_motion(directory / f"{AUGMENTED}_motion.npy", tokens.shape)
    w = cache.tokens.shape[-1]
    cells = np.stack([augment_cells(cache.cells[s], index["augmentation"][i], w) for i, s in zip(keep, source)]) \
        if keep else np.zeros((0, *cache.cells.shape[1:]), np.int64)
    track = np.stack([augment_track(cache.track[s], index["augmentation"][i]) for i, s in zip(keep, source)]) \
        if keep else np.zeros((0, *cache.track.shape[1:]), np.float32)
    return TokenCache(directory, "train", tokens[keep],
                      {**index, "sample_ids": [index["sample_ids"][i] for i in keep],
                       "augmentation": [index["augmentation"][i] for i in keep]},
                      cache.shape_ids[source], cache.family_ids[source], cache.source,
                      None if motion is None else motion[keep], cells, track)


def check_compatible(expected: dict, found: dict, where: str) -> None:
    """`found` (a cache's source) must match what a checkpoint recorded (`expected`) in everything that gives
    token ids their meaning; one line naming the differences."""
    diffs = []
    for key in COMPATIBLE_KEYS:
        a, b = expected.get(key), found.get(key)
        if key == "tokenizer_config_hash" and (a is None or b is None):
            continue  # a cache copied out of its run: the step, codebook and grid still have to agree
        if a != b:
            diffs.append(f"{key}: {b!r} vs {a!r}")
    if diffs:
        raise UserError(f"token cache {found['tokens']} comes from a different tokenizer than {where} was trained "
                        f"on ({'; '.join(diffs[:3])})")
