"""What PSNR a standard video codec reaches on the demo clips with the bits a token grid carries.

A tokenizer with a T'xH'xW' grid and a codebook of K codes describes one view-clip with at most T'*H'*W'*log2(K) bits
(4x8x8 tokens of 1024 codes: 2,560 bits = 320 bytes). This script encodes every view-clip of a packed split with
x264 and x265 (4:4:4, veryslow, one GOP, constant QP swept from fine to coarse), decodes it, and measures PSNR exactly
as training validation does (training.metrics.psnr_per_clip). Per clip it keeps the best PSNR among the encodings that
fit the budget, and the fewest bits any encoding needed to reach a target PSNR. Headers (SPS/PPS/VPS) count against
the codec; x264's encoder-settings SEI is dropped, as it carries no picture information.

    make bench-codec
    .venv/bin/python benchmarks/codec_bound.py --data demo_out/dataset [--split val] [--grid 4x8x8 --codebook 1024]
        [--target-psnr 30] [--ffmpeg PATH] [--write-md] [--json OUT] [--from-json OUT]

ffmpeg: --ffmpeg, else $PATH, else the binary of the `imageio-ffmpeg` package (pip install imageio-ffmpeg; a
benchmark-only dependency, e.g. in .venv-bench). It is a reference point, not a bound in the strict sense: a learned
tokenizer may beat a general codec on one narrow kind of scene, given enough training.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, today, write_section  # noqa: E402
from datagen.pack import load_packed  # noqa: E402
from training.metrics import psnr_per_clip  # noqa: E402

CODECS = {
    # name: (encoder args with {qp}, raw stream format)
    "x264": (["-c:v", "libx264", "-preset", "veryslow", "-qp", "{qp}", "-pix_fmt", "yuv444p", "-g", "1000",
              "-bsf:v", "filter_units=remove_types=6"], "h264"),
    "x265": (["-c:v", "libx265", "-preset", "veryslow", "-pix_fmt", "yuv444p",
              "-x265-params", "qp={qp}:keyint=1000:info=0:log-level=error"], "hevc"),
}
QPS = list(range(12, 52, 3))  # 12 .. 51, the coarsest H.264 allows


def find_ffmpeg(explicit: str | None) -> str:
    if explicit:
        return explicit
    if shutil.which("ffmpeg"):
        return shutil.which("ffmpeg")
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        sys.exit("no ffmpeg: pass --ffmpeg PATH, put ffmpeg on PATH, or pip install imageio-ffmpeg")


def encode_decode(ffmpeg: str, clip: np.ndarray, codec: str, qp: int, workdir: Path) -> tuple[int, np.ndarray]:
    """clip uint8 (T, H, W, 3) -> (bytes of the elementary stream, decoded clip)."""
    t, h, w, _ = clip.shape
    args, fmt = CODECS[codec]
    stream = workdir / f"{codec}_{qp}.{fmt}"
    enc = [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "16",
           "-i", "-"] + [a.format(qp=qp) for a in args] + ["-f", fmt, str(stream)]
    subprocess.run(enc, input=clip.tobytes(), check=True, capture_output=True)
    dec = subprocess.run([ffmpeg, "-v", "error", "-i", str(stream), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    out = np.frombuffer(dec, np.uint8)
    if out.size != clip.size:
        raise RuntimeError(f"{codec} qp {qp}: decoded {out.size} bytes, expected {clip.size}")
    return stream.stat().st_size, out.reshape(clip.shape)


def clip_curve(ffmpeg: str, clip: np.ndarray) -> list[dict]:
    """Rate-distortion points of one view-clip for every codec and QP."""
    points = []
    with tempfile.TemporaryDirectory() as d:
        for codec in CODECS:
            for qp in QPS:
                size, out = encode_decode(ffmpeg, clip, codec, qp, Path(d))
                psnr = float(psnr_per_clip(clip[None], out[None])[0])
                points.append({"codec": codec, "qp": qp, "bits": 8 * size, "psnr": psnr})
    return points


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--grid", default="4x8x8", help="token grid per view-clip, T'xH'xW'")
    p.add_argument("--codebook", type=int, default=1024)
    p.add_argument("--target-psnr", type=float, default=30.0)
    p.add_argument("--ffmpeg")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--write-md", action="store_true", help="write the result into BENCHMARKS.md")
    p.add_argument("--from-json", type=Path, help="skip the encoding: re-print (and --write-md) a saved --json result")
    args = p.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        if args.write_md:
            write_section("codec-bound", markdown(result, args))
        print(markdown(result, args))
        return 0

    grid = [int(x) for x in args.grid.lower().split("x")]
    budget = math.prod(grid) * math.log2(args.codebook)
    ffmpeg = find_ffmpeg(args.ffmpeg)
    packed = load_packed(args.data, args.split)
    clips = np.asarray(packed.rgb).reshape(-1, *packed.rgb.shape[2:])  # (N*V, T, H, W, 3), views folded in
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:  # ffmpeg runs in subprocesses: threads are enough
        curves = list(pool.map(lambda c: clip_curve(ffmpeg, c), clips))
    seconds = time.perf_counter() - t0

    rows = []
    for curve in curves:
        fits = [q for q in curve if q["bits"] <= budget]
        best = max(fits, key=lambda q: q["psnr"]) if fits else None
        reach = [q for q in curve if q["psnr"] >= args.target_psnr]
        rows.append({"best_in_budget": best, "bits_for_target": min(q["bits"] for q in reach) if reach else None})
    in_budget = [r["best_in_budget"]["psnr"] for r in rows if r["best_in_budget"]]
    need = np.array([r["bits_for_target"] for r in rows if r["bits_for_target"] is not None], dtype=float)
    smallest = np.array([min(q["bits"] for q in c) for c in curves], dtype=float)
    result = {
        "data": str(args.data), "split": args.split, "view_clips": len(clips), "clip_shape": list(clips.shape[1:]),
        "grid": grid, "codebook": args.codebook, "budget_bits": budget,
        "psnr_in_budget_mean": float(np.mean(in_budget)) if in_budget else None,
        "psnr_in_budget_median": float(np.median(in_budget)) if in_budget else None,
        "clips_that_fit_budget": len(in_budget),
        "smallest_stream_bits_median": float(np.median(smallest)),
        "target_psnr": args.target_psnr, "clips_reaching_target": int(need.size),
        "bits_for_target_median": float(np.median(need)) if need.size else None,
        "bits_for_target_p90": float(np.percentile(need, 90)) if need.size else None,
        "by_codec_qp": {f"{c}@{qp}": {"bits_mean": float(np.mean([q["bits"] for cv in curves for q in cv
                                                                    if q["codec"] == c and q["qp"] == qp])),
                                      "psnr_mean": float(np.mean([q["psnr"] for cv in curves for q in cv
                                                                  if q["codec"] == c and q["qp"] == qp]))}
                        for c in CODECS for qp in QPS},
        "seconds": round(seconds, 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.write_md:
        write_section("codec-bound", markdown(result, args))
    return 0


def markdown(r: dict, args) -> str:
    tokens = "x".join(map(str, r["grid"]))
    lines = [
        "## A video codec at the token budget (`benchmarks/codec_bound.py`)",
        "",
        f"Machine: {machine()}. Date: {today()}.",
        f"Command: `python benchmarks/codec_bound.py --data {args.data} --split {args.split} --grid {args.grid} "
        f"--codebook {args.codebook} --target-psnr {args.target_psnr:g} --write-md`.",
        f"Data: {r['view_clips']} {r['split']} view-clips of {'x'.join(map(str, r['clip_shape'][:3]))}. A {tokens} "
        f"grid of {r['codebook']} codes carries at most {r['budget_bits']:.0f} bits per view-clip; x264 and x265 "
        f"(4:4:4, veryslow, constant QP {QPS[0]}..{QPS[-1]}) encode each clip, and the best PSNR whose stream fits "
        "that many bits is kept (PSNR as in training validation).",
        "",
        "| | value |",
        "|---|---|",
        *(f"| {c} at its coarsest (QP {QPS[-1]}), all view-clips: mean bits / PSNR | "
          f"{r['by_codec_qp'][f'{c}@{QPS[-1]}']['bits_mean']:.0f} / {r['by_codec_qp'][f'{c}@{QPS[-1]}']['psnr_mean']:.2f} dB |"
          for c in CODECS),
        f"| view-clips with any encoding within {r['budget_bits']:.0f} bits | {r['clips_that_fit_budget']} of "
        f"{r['view_clips']} (median smallest stream: {r['smallest_stream_bits_median']:.0f} bits) |",
        f"| their best PSNR within the budget, mean / median (the easier clips) | "
        + (f"{r['psnr_in_budget_mean']:.2f} / {r['psnr_in_budget_median']:.2f} dB |" if r["psnr_in_budget_mean"]
           else "none fit |"),
        f"| bits to reach {r['target_psnr']:g} dB, median / 90th percentile | "
        + (f"{r['bits_for_target_median']:.0f} / {r['bits_for_target_p90']:.0f} "
           f"({r['bits_for_target_median'] / r['budget_bits']:.1f}x / "
           f"{r['bits_for_target_p90'] / r['budget_bits']:.1f}x the budget) |" if r["bits_for_target_median"]
           else "not reached |"),
        f"| view-clips reaching {r['target_psnr']:g} dB at any QP tried | {r['clips_reaching_target']} of "
        f"{r['view_clips']} |",
        "",
        "Mean bits and PSNR per codec and QP:",
        "",
        "| QP | " + " | ".join(f"{c} bits | {c} PSNR" for c in CODECS) + " |",
        "|---|" + "---|---|" * len(CODECS),
    ]
    for qp in QPS:
        cells = []
        for c in CODECS:
            v = r["by_codec_qp"][f"{c}@{qp}"]
            cells += [f"{v['bits_mean']:.0f}", f"{v['psnr_mean']:.2f}"]
        lines.append(f"| {qp} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
