"""Where predicted frames lose to copy-last: their squared error split by region of the frame.

    .venv/bin/python benchmarks/error_regions.py --data DATASET GEN [GEN ...] [--oracle CEILING_GEN]

GEN: `magvit3d generate --task predict` outputs of the same clips (composited or not). Per predicted frame of every
view, the pixels fall in one of three regions, all from the renders:

- object: where the object is in the last given frame or in any predicted frame (the mask PNGs), grown by 4 px
  as `magvit3d evaluate` grows its object region (evaluation.metrics.dilate_masks);
- moved ground: outside that, where the render differs from the last given frame by more than 0.04 (largest
  channel): the object's shadow, mostly;
- still ground: the rest, where copy-last is all but exact.

Printed per GEN: each region's share of the pixels and its contribution to the mean squared error (x 1e-4) for GEN
and for copy-last (the last given render held), and the whole-frame PSNR (dB, mean over frames and clips, as
`magvit3d evaluate` computes it). With --oracle (e.g. the ceiling: true tokens decoded): also GEN's PSNR with the
oracle's pixels in one region, i.e. what drawing that region as well as the oracle would be worth.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datagen.dataset import read_mask, sample_dir  # noqa: E402
from evaluation.metrics import dilate_masks  # noqa: E402
from training.generated import load_generated  # noqa: E402
from training.metrics import psnr_from_mse  # noqa: E402

REGIONS = ("object", "moved ground", "still ground")
MARGIN_PX, MOVED = 4, 0.04


def regions(data: Path, views: list[str], sample_id: int, target: np.ndarray, given: int) -> np.ndarray:
    """int8 (V, T - given, H, W): the region index (REGIONS) of every pixel of the predicted frames."""
    root, T = sample_dir(data, sample_id), target.shape[1]
    obj = np.stack([np.stack([read_mask(root, v, f) for f in range(given - 1, T)]).any(0) for v in views])
    obj = np.repeat(dilate_masks(obj, MARGIN_PX)[:, None], T - given, 1)
    t = target[:, given:].astype(np.int16)
    moved = np.abs(t - target[:, given - 1:given].astype(np.int16)).max(-1) / 255.0 > MOVED
    return np.where(obj, 0, np.where(moved, 1, 2)).astype(np.int8)


def frame_psnr(sq: np.ndarray) -> float:
    """Squared error (V, T, H, W) -> mean over frames of the per-frame PSNR."""
    return float(psnr_from_mse(sq.reshape(-1, sq.shape[-2] * sq.shape[-1]).mean(-1)).mean())


def analyse(data: Path, gen: Path, oracle: Path | None = None) -> dict:
    gs = load_generated(gen)
    target = np.load(gen / "target_rgb.npy", mmap_mode="r")
    orc = None
    if oracle is not None:
        og = load_generated(oracle)
        orc = {int(r.sample_id): og.rgb[i] for i, r in enumerate(og.records)}
    views = gs.info["views"]
    sums = np.zeros((3, 3))   # region x (gen, copy-last, count)
    psnr = {"model": [], "copy-last": [], **({f"oracle's {r}": [] for r in REGIONS} if orc else {})}
    for i, rec in enumerate(gs.records):
        k, tgt = rec.given_frames, np.asarray(target[i])
        reg = regions(data, views, int(rec.sample_id), tgt, k)
        t = tgt[:, k:].astype(np.float64) / 255
        sq = ((gs.rgb[i][:, k:] / 255.0 - t) ** 2).mean(-1)
        cl = ((tgt[:, k - 1:k] / 255.0 - t) ** 2).mean(-1)
        for r in range(3):
            sums[r] += [sq[reg == r].sum(), cl[reg == r].sum(), (reg == r).sum()]
        psnr["model"].append(frame_psnr(sq))
        psnr["copy-last"].append(frame_psnr(cl))
        if orc:
            osq = ((orc[int(rec.sample_id)][:, k:] / 255.0 - t) ** 2).mean(-1)
            for r, name in enumerate(REGIONS):
                psnr[f"oracle's {name}"].append(frame_psnr(np.where(reg == r, osq, sq)))
    total = sums[:, 2].sum()
    return {"gen": str(gen), "clips": len(gs.records),
            "regions": {name: {"share": sums[r, 2] / total, "mse_1e4": sums[r, 0] / total * 1e4,
                               "copy_last_mse_1e4": sums[r, 1] / total * 1e4} for r, name in enumerate(REGIONS)},
            "psnr": {k: float(np.mean(v)) for k, v in psnr.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the dataset the clips were generated from")
    ap.add_argument("gen", type=Path, nargs="+", help="magvit3d generate --task predict outputs")
    ap.add_argument("--oracle", type=Path, help="a generate output of the same clips (e.g. --method ceiling)")
    a = ap.parse_args(argv)
    for g in a.gen:
        if not (g / "target_rgb.npy").is_file():
            ap.error(f"{g}: no target_rgb.npy (expected a `magvit3d generate --task predict` output)")
        res = analyse(a.data, g, a.oracle)
        print(f"\n{res['gen']} ({res['clips']} clips)\n")
        print("| region | share of pixels | MSE x 1e-4, this | copy-last |\n|---|---|---|---|")
        for name, r in res["regions"].items():
            print(f"| {name} | {r['share']:.3f} | {r['mse_1e4']:.2f} | {r['copy_last_mse_1e4']:.2f} |")
        print("\nPSNR dB: " + ", ".join(f"{k} {v:.2f}" for k, v in res["psnr"].items()))


if __name__ == "__main__":
    main()
