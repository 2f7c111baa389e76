"""Training speed and memory per `train.precision`: seconds per step and peak RSS of a short tokenizer or transformer
run, each precision in a fresh process so the peaks do not mix.

    .venv/bin/python benchmarks/precision.py tokenizer --data demo_out/dataset --steps 100
    .venv/bin/python benchmarks/precision.py transformer --tokens demo_out/tokenizer --steps 100

Prints one JSON object per run and a summary (and writes it to --json when given). On a CPU without bf16
instructions `bf16-native` resolves to fp32 (the `precision` field says which ran). Quality is not measured here:
that needs full runs (BENCHMARKS.md "The demo in 20 minutes").
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, print_json, today  # noqa: E402


def run_one(stage: str, source: str, precision: str, steps: int, preset: str) -> dict:
    """Train `steps` steps in this process; return s/step, the precision that ran and this process' peak RSS."""
    with tempfile.TemporaryDirectory() as out:
        sets = [f"train.precision={precision}"]
        if stage == "tokenizer":
            from training.train_tokenizer import load_run_config, train_tokenizer
            cfg = load_run_config(preset, sets + ["train.baselines=false", "train.val_every=100000"])
            s = train_tokenizer(cfg, source, out, progress=False, log=lambda m: None, max_steps_this_run=steps)
            s_per_step = s["seconds_this_run"] / steps
        else:
            from training.train_transformer import load_run_config, train_transformer
            cfg = load_run_config(preset, sets + ["train.val_every=100000"])
            s = train_transformer(cfg, source, out, progress=False, log=lambda m: None, max_steps_this_run=steps)
            s_per_step = s["s_per_step"]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # Linux: KiB
    return {"stage": stage, "asked": precision, "precision": s["precision"], "steps": steps,
            "s_per_step": round(s_per_step, 4), "peak_rss_gb": round(peak_gb, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("tokenizer", "transformer"))
    p.add_argument("--data", help="a packed dataset (tokenizer)")
    p.add_argument("--tokens", help="a trained tokenizer directory with its token cache (transformer)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--precisions", default="fp32,bf16-native", help="comma-separated train.precision values")
    p.add_argument("--json", type=Path)
    p.add_argument("--one", help=argparse.SUPPRESS)   # internal: run this precision in this process
    a = p.parse_args()
    source = a.data if a.stage == "tokenizer" else a.tokens
    if not source:
        p.error(f"{a.stage} needs {'--data' if a.stage == 'tokenizer' else '--tokens'}")
    if a.one:
        print(json.dumps(run_one(a.stage, source, a.one, a.steps, a.preset)))
        return 0
    runs = []
    for precision in a.precisions.split(","):
        cmd = [sys.executable, __file__, a.stage, "--data" if a.stage == "tokenizer" else "--tokens", source,
               "--preset", a.preset, "--steps", str(a.steps), "--one", precision]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)
    print_json({"benchmark": "precision", "date": today(), "machine": machine(), "runs": runs}, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
