"""Tokenizer recipe sweep: train several variants of a tokenizer preset side by side and tabulate their validation
curves, so a preset is chosen from measurements instead of guesses.

    .venv/bin/python benchmarks/tokenizer_sweep.py --data demo_out/dataset --out sweep_out [--device cuda] [--jobs 6]
        [--variant NAME:STEPS:KEY=VALUE,KEY=VALUE ...]

Each variant is one `magvit3d train-tokenizer` run (a subprocess, --config PRESET plus its --set overrides, with
train.steps = STEPS) in OUT/NAME; up to --jobs run at once. The table lists each variant's validation PSNR / SSIM /
codebook usage at its last step and its training seconds per step on the device it ran on. To compare variants at an
equal CPU budget, give each the number of steps the 2-core machine trains in that budget (its s/step measured there
with --device cpu --jobs 1, or from a demo run's metrics.jsonl), since the cosine schedule depends on the total.
Writes OUT/sweep.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name:steps:overrides, each against the demo preset (FSQ, a 2D net per latent frame, whole frames). The first five
# change one thing at equal steps; the last is the whole previous demo preset (VQ, time taps, crops) at its own steps.
# This is the root-cause ablation of BENCHMARKS.md "Tokenizer: root cause and recipe"; ~10 minutes on 2 CPU cores.
DEFAULT_VARIANTS = [
    "demo-600:600:",
    "vq:600:model.quantizer=vq,model.z_channels=16,model.dead_code_threshold=20",
    "vq-no-restarts:600:model.quantizer=vq,model.z_channels=16,model.dead_code_threshold=0",
    "time-taps:600:model.temporal_kernel=3",
    "crops-32x32x8:600:train.crop_size=32,train.crop_frames=8",
    "old-demo-preset:1400:model.quantizer=vq,model.codebook_size=1024,model.z_channels=16,model.dead_code_threshold=20,"
    "model.temporal_kernel=3,model.channels=128,model.num_res_blocks=2,train.crop_size=32,train.crop_frames=8,"
    "train.batch_size=8,train.lr=4e-3,train.warmup_steps=30,train.ema_decay=0.99",
]


def parse_variant(text: str) -> tuple[str, int, list[str]]:
    try:
        name, steps, sets = text.split(":", 2)
        return name, int(steps), [s for s in sets.split(",") if s]
    except ValueError:
        raise SystemExit(f"--variant {text!r} is not NAME:STEPS:KEY=VALUE,... (e.g. whole-l2:300:train.recon_loss=l2)")


def run_variant(args, name: str, steps: int, sets: list[str]) -> dict:
    out = args.out / name
    val_every = max(1, steps // args.val_points)
    cmd = [sys.executable, "-m", "datagen.cli", "train-tokenizer", "--data", str(args.data), "--out", str(out),
           "--config", args.config, "--device", args.device, "--no-progress",
           "--set", f"train.steps={steps}", "--set", f"train.val_every={val_every}", "--set", f"train.ckpt_every={steps}"]
    for s in sets:
        cmd += ["--set", s]
    if (out / "summary.json").is_file():
        cmd.append("--resume")  # a finished run resumes to its end at once; an interrupted one continues
    t0 = time.time()
    with open(args.out / f"{name}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    row = {"name": name, "steps": steps, "overrides": sets, "rc": rc, "wall_s": round(time.time() - t0, 1)}
    metrics = out / "metrics.jsonl"
    if rc != 0 or not metrics.is_file():
        return row
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    vals = [r for r in rows if r.get("split") == "val"]
    train = [r for r in rows if "seconds" in r and r.get("split") is None]
    row["curve"] = [(r["step"], round(r["psnr"], 3), round(r["usage"], 4)) for r in vals]
    if vals:
        last = vals[-1]
        row.update({k: round(last[k], 4) for k in ("psnr", "ssim", "usage", "effective_dim", "duplicate_codes",
                                                    "motion_ratio", "psnr_over_kmeans") if last.get(k) is not None})
    if len(train) >= 2:
        row["s_per_step"] = round((train[-1]["seconds"] - train[0]["seconds"]) / (train[-1]["step"] - train[0]["step"]), 4)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--val-points", type=int, default=6, help="validations per run")
    p.add_argument("--variant", action="append", help="NAME:STEPS:KEY=VALUE,... (repeatable; default: a built-in list)")
    args = p.parse_args()
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda v: run_variant(args, *v), variants))
    (args.out / "sweep.json").write_text(json.dumps({"config": args.config, "device": args.device,
                                                     "results": results}, indent=1))
    print("| variant | steps | val PSNR | - k-means | SSIM | usage | effective dim | duplicate codes | motion ratio "
          "| s/step | rc |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['steps']} | {r.get('psnr', '-')} | {r.get('psnr_over_kmeans', '-')} | "
              f"{r.get('ssim', '-')} | {r.get('usage', '-')} | {r.get('effective_dim', '-')} | "
              f"{r.get('duplicate_codes', '-')} | {r.get('motion_ratio', '-')} | {r.get('s_per_step', '-')} | {r['rc']} |")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
