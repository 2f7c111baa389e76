"""Render benchmark: camera-frames/s, the fixed per-frame overhead, and image quality vs a reference.

    .venv/bin/python benchmarks/render.py [--config demo] [--resolution 128] [--clips 4] [--ref-frames 3]

1. Throughput: the real pipeline (datagen.render.render_dataset, one worker per core) renders --clips clips
   with the config's settings; reports s/clip, clips/s and camera-frames/s. Also the latency of one clip
   rendered by a single worker using every core.
2. Fixed per-frame overhead: the same clips at 1 sample per pixel, no denoiser.
3. Quality: --ref-frames frames per view of each clip are rendered again at --ref-samples (default 1024)
   samples, no denoiser, and Blender's default 12 bounces; PSNR (8-bit PNGs on [0, 1], per frame, then
   averaged) of the default render against that reference.
Results go to BENCHMARKS.md (section "render") unless --no-write.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, today, write_section  # noqa: E402
from datagen import dataset as ds  # noqa: E402
from datagen.config import load_config  # noqa: E402
from datagen.render import RenderWorker, cpu_count, render_dataset  # noqa: E402
from datagen.spec import DatasetConfig, build_spec  # noqa: E402
from training.metrics import psnr_per_clip  # noqa: E402


def frames_subset(spec: dict, frames: list[int], **render) -> dict:
    """The same scene restricted to some frames (poses re-keyed at 0..k-1), with render settings replaced."""
    s = copy.deepcopy(spec)
    s["object"]["location"] = [spec["object"]["location"][f] for f in frames]
    s["object"]["rotation"] = [spec["object"]["rotation"][f] for f in frames]
    for c, c0 in zip(s["cameras"], spec["cameras"]):
        for key in ("location", "rotation", "R", "t"):
            c[key] = [c0[key][f] for f in frames]
    s["render"].update(frames=len(frames), **render)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--ref-frames", type=int, default=3, help="frames per view and clip compared with the reference")
    ap.add_argument("--ref-samples", type=int, default=1024)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--ref-cache", type=Path, default=Path(tempfile.gettempdir()) / "magvit3d-render-refs",
                    help="reference renders are kept here and reused when their spec is identical")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    overrides = [f"dataset.num_samples={args.clips}", f"render.resolution={args.resolution}", *args.overrides]
    cfg = load_config(DatasetConfig, "dataset", args.config, overrides)
    floor_cfg = load_config(DatasetConfig, "dataset", args.config,
                            overrides + ["render.samples=1", 'render.denoiser="none"'])
    work = args.workdir or Path(tempfile.mkdtemp(prefix="render-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    args.ref_cache.mkdir(parents=True, exist_ok=True)
    r = cfg.render
    V, T = len(cfg.cameras.rig), r.frames
    quiet = dict(progress=False, log=lambda m: None)

    # 1. throughput through the real pipeline
    main_sum = render_dataset(cfg, work / "default", **quiet)
    floor_sum = render_dataset(floor_cfg, work / "floor", **quiet)

    # latency of one clip: one worker, all cores
    worker = RenderWorker("cpu", cpu_count(), work / "latency.log")
    worker.wait_ready()
    spec = build_spec(cfg, 0)
    t0 = time.perf_counter()
    reply = worker.render(spec, work / "latency")
    latency = time.perf_counter() - t0
    assert reply["event"] == "done", reply

    # 3. quality vs the reference, on a few frames of every clip
    pick = sorted({round(i * (T - 1) / max(1, args.ref_frames - 1)) for i in range(args.ref_frames)})
    scores, t_ref = [], time.perf_counter()
    for sid in range(args.clips):
        ref_spec = frames_subset(build_spec(cfg, sid), pick, samples=args.ref_samples, denoiser="none",
                                 max_bounces=12)
        # references are slow (minutes); keep them across runs, keyed by their exact spec
        key = hashlib.sha1(json.dumps(ref_spec, sort_keys=True).encode()).hexdigest()[:16]
        out = args.ref_cache / key
        if not out.is_dir():
            tmp = args.ref_cache / f".tmp-{key}"
            shutil.rmtree(tmp, ignore_errors=True)
            rep = worker.render(ref_spec, tmp)
            assert rep["event"] == "done", rep
            os.replace(tmp, out)
        for view in cfg.cameras.rig:
            for j, f in enumerate(pick):
                ref = np.asarray(Image.open(ds.frame_path(out, view.name, "rgb", j)))
                got = np.asarray(Image.open(ds.frame_path(ds.sample_dir(work / "default", sid), view.name, "rgb", f)))
                scores.append(float(psnr_per_clip(got[None, None], ref[None, None])[0]))
    worker.close()
    t_ref = time.perf_counter() - t_ref

    frames_total = args.clips * V * T
    res = {
        "config": args.config, "overrides": overrides, "resolution": args.resolution, "clips": args.clips,
        "views": V, "frames": T, "samples": r.samples, "denoiser": r.denoiser,
        "denoise_prefilter": r.denoise_prefilter, "denoise_quality": r.denoise_quality, "max_bounces": r.max_bounces,
        "workers": main_sum["workers"], "threads_per_worker": main_sum["threads_per_worker"],
        "pipeline_s_per_clip": main_sum["seconds"] / args.clips,
        "clips_per_s": main_sum["clips_per_s"],
        "camera_frames_per_s": main_sum["camera_frames_per_s"],
        "single_clip_latency_s": latency,
        "floor_s_per_clip": floor_sum["seconds"] / args.clips,
        "floor_s_per_frame_in_worker": floor_sum["mean_sample_seconds_in_worker"] / (V * T),
        "default_s_per_frame_in_worker": main_sum["mean_sample_seconds_in_worker"] / (V * T),
        "psnr_db_mean": float(np.mean(scores)), "psnr_db_min": float(np.min(scores)),
        "psnr_frames": len(scores), "ref_samples": args.ref_samples, "ref_seconds": t_ref,
        "frames_rendered": frames_total,
    }
    print(json.dumps(res, indent=1))
    if args.no_write:
        return
    cmd = "python benchmarks/render.py " + " ".join(sys.argv[1:])
    body = f"""## Rendering at {args.resolution}x{args.resolution} (`benchmarks/render.py`)

Machine: {machine()}; no GPU. Date: {today()}. Command: `{cmd.strip()}`.
Settings under test ({args.config} preset at {args.resolution}x{args.resolution}): Cycles {r.samples} spp,
denoiser {r.denoiser} (prefilter {r.denoise_prefilter}, quality {r.denoise_quality}), max_bounces {r.max_bounces},
{V} views x {T} frames per clip, {main_sum["workers"]} worker(s) x {main_sum["threads_per_worker"]} thread(s).

| measure | value |
|---|---|
| pipeline wall time per clip ({args.clips} clips, all workers) | {res['pipeline_s_per_clip']:.2f} s |
| camera-frames/s | {res['camera_frames_per_s']:.1f} |
| one clip, one worker using all cores (latency) | {latency:.2f} s |
| fixed floor: 1 spp, no denoiser, pipeline wall per clip | {res['floor_s_per_clip']:.2f} s |
| fixed floor per camera-frame inside a worker | {res['floor_s_per_frame_in_worker'] * 1000:.1f} ms |
| default settings per camera-frame inside a worker | {res['default_s_per_frame_in_worker'] * 1000:.1f} ms |
| PSNR vs {args.ref_samples}-spp reference (12 bounces, no denoiser), mean / min over {len(scores)} frames | {res['psnr_db_mean']:.1f} / {res['psnr_db_min']:.1f} dB |
"""
    write_section(f"render-{args.resolution}", body)


if __name__ == "__main__":
    main()
