"""Probe quality on held-out renders: the 2D error of a trained probe and the 3D floor (ADE of its triangulated tracks
against the ground truth, in % of the scene extent), per shape; the numbers `magvit3d evaluate` reports as the
floor, without needing generated clips.

    .venv/bin/python benchmarks/probe_floor.py --data demo_out/dataset --probe demo_out/probe [--split test]

Prints one JSON object (and writes it to --json when given). Goal of the evaluation issue: median 2D error <= 0.5 px
at 64x64 and a 3D floor <= 1% of the scene extent.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluation.evaluate import References, open_dataset, probe_reference  # noqa: E402
from evaluation.probe import load_probe  # noqa: E402
from evaluation.trajectory import scene_extent  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--probe", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    ds = open_dataset(args.data)
    extent = scene_extent(np.concatenate([s.array("positions").reshape(-1, 3) for s in ds.splits.values()]))
    ref = probe_reference(ds, References(ds, load_probe(args.probe)), args.split, extent)
    out = {"data": str(args.data), "probe": str(args.probe), "scene_extent": extent,
           "median_px": ref["2d_error"]["median_px"], "mean_px": ref["2d_error"]["mean_px"],
           "ade_pct": ref["ade_pct"], "reprojection_px": ref["reprojection_px"],
           "by_shape": {k: {"median_px": v["median_px"], "ade_pct": v["ade_pct"]}
                        for k, v in ref["2d_error_by_shape"].items()}}
    print_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
