"""Pack the PNG samples of each split into one uint8 array + a JSON index, and the one reader of packed data.

    packed/<split>_rgb.npy       uint8 (N, V, T, H, W, 3), in pack order (sorted sample ids)
    packed/<split>_index.json    sample ids, labels, positions, rotations, 2D centres, visibility, cameras

Training and evaluation read packed data through `load_packed` only, never PNGs. Packing is deterministic
(the same dataset gives byte-identical files) and atomic per file: the array and its index are written in full to
temp files (plain sequential writes, then fsync: a full disk is an error here, where writing through a memory map
would kill the process with SIGBUS), then renamed, so an interrupted pack never leaves a half-written array under
the final name. A failed write (disk full, quota, file size limit) raises datagen.dataset.WriteFailed (an OSError naming
the file: one line on the CLI), and the arrays packed before stay as they were.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datagen.config import UserError
from datagen.dataset import (complete_sample_ids, empty_splits_warning, frame_path, load_dataset_json, load_meta,
                             naming, read_json, sample_dir, write_errors, write_json_atomic)
from datagen.verify import SampleError, check_meta, decode_png

PACKED_DIR = "packed"


def rgb_path(root, split: str) -> Path:
    return Path(root) / PACKED_DIR / f"{split}_rgb.npy"


def index_path(root, split: str) -> Path:
    return Path(root) / PACKED_DIR / f"{split}_index.json"


def _id_list(ids: list[int], first: int = 5) -> str:
    return ", ".join(map(str, ids[:first])) + (f", ... ({len(ids)} in all)" if len(ids) > first else "")


def _read_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        im = decode_png(path, "image")
    except UserError as e:
        raise UserError(f"{e}; run verify on the dataset") from None
    if im.mode != "RGB" or im.size != size:
        raise UserError(f"{path} is {im.mode} {im.size[0]}x{im.size[1]}, expected RGB {size[0]}x{size[1]}")
    return np.asarray(im)


def _sample_entry(meta: dict, sample_id: int, info: dict) -> dict:
    """The index fields of one sample, from its meta.json (checked as verify does: keys, shapes, P = K[R|t])."""
    try:
        check_meta(meta, sample_id, info)
    except SampleError as e:
        raise UserError(f"sample {sample_id}: {e}; run verify on the dataset") from None
    classes = info["classes"]
    shape, family = meta["shape"].get("name"), meta["trajectory"].get("family")
    for kind, label in (("shape", shape), ("family", family)):
        if label not in classes[kind]:
            raise UserError(f"sample {sample_id}: {kind} {label!r} is not in dataset.json classes {classes[kind]}")
    return {
        "shape": shape, "family": family,
        "shape_id": classes["shape"].index(shape), "family_id": classes["family"].index(family),
        "position": meta["trajectory"]["position"], "rotation": meta["trajectory"]["rotation"],
        "centers_2d": meta["centers_2d"], "visibility": meta["visibility"],
        "camera": {"K": [v["K"] for v in meta["views"]], "R": [v["R"] for v in meta["views"]],
                   "t": [v["t"] for v in meta["views"]], "P": [v["P"] for v in meta["views"]]},
    }


def _build_index(info: dict, split: str, ids: list[int], entries: list[dict]) -> dict:
    W, H = info["image_size"]
    return {
        "schema_version": info["schema_version"],
        "split": split,
        "config_hash": info["config_hash"],
        "rgb_shape": [len(ids), len(info["views"]), info["frames"], H, W, 3],
        "image_size": [W, H],
        "frames": info["frames"],
        "fps": info["fps"],
        "views": info["views"],
        "classes": info["classes"],
        "sample_ids": ids,
        "labels": {"shape": [e["shape"] for e in entries], "family": [e["family"] for e in entries]},
        "label_ids": {"shape": [e["shape_id"] for e in entries], "family": [e["family_id"] for e in entries]},
        "positions": [e["position"] for e in entries],
        "rotations": [e["rotation"] for e in entries],
        "centers_2d": [e["centers_2d"] for e in entries],
        "visibility": [e["visibility"] for e in entries],
        "cameras": [e["camera"] for e in entries],
    }


def _pack_split(root: Path, info: dict, split: str, ids: list[int], progress: bool) -> dict:
    from tqdm import tqdm

    W, H = info["image_size"]
    views, T = info["views"], info["frames"]
    shape = (len(ids), len(views), T, H, W, 3)
    final, final_index = rgb_path(root, split), index_path(root, split)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp_index = final_index.with_name(f".{final_index.name}.tmp-{os.getpid()}")
    entries = []
    try:
        with open(tmp, "wb") as fh:
            with naming(final):  # writes into the temp file name the array they are for
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                         "shape": shape})
            sample = np.empty(shape[1:], np.uint8)
            for sid in tqdm(ids, desc=f"pack {split}", unit="sample", disable=not progress):
                entries.append(_sample_entry(load_meta(root, sid), sid, info))
                d = sample_dir(root, sid)
                for v, view in enumerate(views):
                    for f in range(T):
                        sample[v, f] = _read_rgb(frame_path(d, view, "rgb", f), (W, H))
                with naming(final):
                    fh.write(sample.tobytes())
            with naming(final):
                fh.flush()
                os.fsync(fh.fileno())  # a disk that fills up late says so here, not after the rename
        # the index goes to its temp file before either is renamed: a failed write leaves the old pair alone
        write_json_atomic(tmp_index, _build_index(info, split, ids, entries), indent=None)
        os.replace(tmp, final)
        os.replace(tmp_index, final_index)
    finally:
        for t in (tmp, tmp_index):
            if t.exists():
                t.unlink()
    return {"samples": len(ids), "rgb": str(final), "index": str(final_index), "shape": list(shape)}


def pack_dataset(root, progress: bool = True) -> dict:
    """Pack every split of dataset.json; UserError (before writing anything) when samples are missing. The summary
    has per split its file and shape, and a `warning` line when a split is empty (else None)."""
    root = Path(root)
    info = load_dataset_json(root)
    present = complete_sample_ids(root)
    splits = {name: sorted(int(i) for i in ids) for name, ids in info["splits"].items()}
    for name, ids in splits.items():
        missing = [i for i in ids if i not in present]
        if missing:
            raise UserError(f"cannot pack {root}: split {name!r} is missing {len(missing)} of {len(ids)} samples "
                            f"(ids {_id_list(missing)}); finish rendering first")
    with write_errors("pack", "the packed files from before are unchanged; free space and run pack again"):
        (root / PACKED_DIR).mkdir(exist_ok=True)
        return {"dataset": str(root),
                "splits": {name: _pack_split(root, info, name, ids, progress) for name, ids in splits.items()},
                "warning": empty_splits_warning(splits, _split_fractions(info))}


def _split_fractions(info: dict) -> dict:
    """dataset.splits of the config in dataset.json (every split counts as wanted when it is not there)."""
    config = info.get("config")
    section = config.get("dataset") if isinstance(config, dict) else None
    fractions = section.get("splits") if isinstance(section, dict) else None
    return fractions if isinstance(fractions, dict) else {name: 1.0 for name in info["splits"]}


# --- the reader ----------------------------------------------------------------------------------

@dataclass(repr=False)
class PackedSplit:
    """One packed split: `rgb` is a read-only memmap (N, V, T, H, W, 3) uint8, `index` the JSON index."""
    split: str
    rgb: np.ndarray
    index: dict

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def __repr__(self) -> str:
        return f"PackedSplit({self.split!r}, rgb {tuple(self.rgb.shape)} {self.rgb.dtype})"

    def array(self, key: str, dtype=np.float64) -> np.ndarray:
        """An index field as an array, e.g. array('positions') -> (N, T, 3)."""
        return np.asarray(self.index[key], dtype=dtype)

    @property
    def sample_ids(self) -> list[int]:
        return self.index["sample_ids"]

    @property
    def views(self) -> list[str]:
        return self.index["views"]

    def projections(self) -> np.ndarray:
        """P matrices (N, V, T, 3, 4)."""
        return np.asarray([c["P"] for c in self.index["cameras"]], dtype=np.float64).reshape(len(self), len(self.views),
                                                                                           -1, 3, 4)


def _available_splits(root: Path) -> list[str]:
    folder = root / PACKED_DIR
    return sorted(p.name[: -len("_index.json")] for p in folder.glob("*_index.json")) if folder.is_dir() else []


def load_packed(root, split: str) -> PackedSplit:
    """Open packed/<split>_rgb.npy (mmap) and its index; UserError (one line, naming the file) when either is
    missing, truncated, of the wrong dtype, or inconsistent with the other."""
    root = Path(root)
    ipath, rpath = index_path(root, split), rgb_path(root, split)
    if not ipath.is_file():
        have = _available_splits(root)
        raise UserError(f"packed index not found: {ipath}; "
                        + (f"packed splits here: {', '.join(have)}" if have else "pack the dataset first"))
    index = read_json(ipath, "packed index")
    if not isinstance(index, dict):
        raise UserError(f"packed index {ipath} is not a JSON object; pack the dataset again")
    if not rpath.is_file():
        raise UserError(f"packed array not found: {rpath}; pack the dataset again")
    try:
        rgb = np.load(rpath, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"packed array {rpath} is unreadable (truncated or not .npy: {e}); pack the dataset again") from None
    if not isinstance(rgb, np.memmap) or rpath.stat().st_size != rgb.offset + rgb.nbytes:
        raise UserError(f"packed array {rpath} has {rpath.stat().st_size} bytes, its header says "
                        f"{getattr(rgb, 'offset', 0) + rgb.nbytes}; truncated? pack the dataset again")
    if rgb.dtype != np.uint8:
        raise UserError(f"packed array {rpath} has dtype {rgb.dtype}, expected uint8")
    try:
        W, H = index.get("image_size", (None, None))
        want = (len(index.get("sample_ids", [])), len(index.get("views", [])), index.get("frames"), H, W, 3)
    except (TypeError, ValueError):
        raise UserError(f"packed index {ipath} is malformed (image_size, sample_ids or views); pack the dataset "
                        f"again") from None
    if tuple(rgb.shape) != want:
        raise UserError(f"packed array {rpath} has shape {tuple(rgb.shape)}, but {ipath.name} says (N, V, T, H, W, 3) "
                        f"= {want}; pack the dataset again")
    _check_fresh(root, split, index, ipath)
    return PackedSplit(split, rgb, index)


def _check_fresh(root: Path, split: str, index: dict, ipath: Path) -> None:
    """A pack made before the dataset changed (more samples, other config) must not be read silently."""
    if not (root / "dataset.json").is_file():
        return  # packed arrays copied on their own: nothing to compare with
    info = load_dataset_json(root)
    ids = sorted(info["splits"].get(split, []))
    if index.get("config_hash") != info["config_hash"] or index.get("sample_ids") != ids:
        raise UserError(f"{ipath} is stale: it does not match {root / 'dataset.json'} "
                        f"(config hash or {split} sample ids differ); pack the dataset again")
