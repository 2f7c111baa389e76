"""Does the object survive the tokenizer? A trained probe localizes the object in every frame of the renders and of
the tokenizer's reconstructions (the true tokens decoded), and both are scored against the true 2D centres. The
renders give the probe's floor; the gap to it is what the tokenizer loses of the object's position. Also prints the
reconstructions' PSNR and motion ratio (mean |frame-to-frame change| of the reconstructions over the renders').

    .venv/bin/python benchmarks/tokenizer_probe.py --data demo_out/dataset --tokenizer demo_out/tokenizer \\
        --probe demo_out/probe [--split test] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_json  # noqa: E402
from datagen.pack import load_packed  # noqa: E402
from evaluation.probe import error_stats, load_probe  # noqa: E402
from training.metrics import motion_ratio, psnr_per_clip  # noqa: E402
from training.tokenize import load_tokenizer, reconstruct_clips  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--probe", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    model, _ = load_tokenizer(args.tokenizer)
    probe = load_probe(args.probe)
    packed = load_packed(args.data, args.split)
    uv = packed.array("centers_2d", np.float64)                 # (N, V, T, 2)
    visible = packed.array("visibility", bool) & np.isfinite(uv).all(-1)
    found = {"renders": [], "reconstructions": []}
    psnrs, ratios = [], []
    for n in tqdm(range(len(packed.sample_ids)), desc="clips", unit="clip"):
        clip = np.array(packed.rgb[n])                          # (V, T, H, W, 3)
        recon = reconstruct_clips(model, clip, "cpu")
        found["renders"].append(probe.predict(clip)["uv"])
        found["reconstructions"].append(probe.predict(recon)["uv"])
        psnrs.extend(psnr_per_clip(recon, clip))
        ratios.append(motion_ratio(clip, recon))
    out = {"data": str(args.data), "tokenizer": str(args.tokenizer), "probe": str(args.probe), "split": args.split,
           "clips": len(packed.sample_ids), "psnr_db": float(np.mean(psnrs)),
           "motion_ratio": float(np.mean([r for r in ratios if r is not None]))}
    for name, uvs in found.items():
        out[f"probe_2d_on_{name}"] = error_stats(np.stack(uvs), uv, visible)
    print_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
