"""Sampling benchmark: 12-step masked (MaskGIT) decoding vs the autoregressive baseline with a KV cache.

    .venv/bin/python benchmarks/sampling.py --tokens TOKENIZER_RUN [--config demo] [--steps N] [--workdir DIR]
    .venv/bin/python benchmarks/sampling.py --tokens TOKENIZER_RUN --masked RUN --ar RUN     # already trained runs

1. Models: unless --masked / --ar name trained runs, a masked and an AR transformer of the same width and depth
   (the --config preset, --set overrides) are trained on the same token cache for the same number of steps.
2. Speed: the wall time to generate one 3-view clip (frame prediction: the first latent frame of every view
   given, the rest generated) on the CPU (--device cuda: on the GPU), --repeats times after a warm-up, median:
   --decode-steps (12) steps of parallel decoding vs one token at a time with the KV cache. On a CPU both are
   compute-bound, and 12 passes over all N tokens are more arithmetic than N one-token passes with the cache;
   masked decoding's advantage lies where a pass is latency-bound (a GPU), so look at both devices.
3. Quality: `generate --task predict` on the test clips with each model; PSNR of the predicted frames (the ones
   not given) against the renders, next to copy-last-frame (the last given rendered frame repeated) and the
   tokenizer's own reconstruction of the true tokens (the ceiling for any transformer).
Results go to BENCHMARKS.md (section "sampling") unless --no-write.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCHMARKS_MD, machine, today, write_section  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training.generate import generate, load_transformer  # noqa: E402
from training.generated import load_generated  # noqa: E402
from training.device import autocast_for  # noqa: E402
from training.metrics import psnr_per_clip  # noqa: E402
from training.sampling import condition, generators, given_latent_frames, given_mask, sample  # noqa: E402
from training.token_cache import load_token_cache  # noqa: E402
from training.tokenize import load_tokenizer  # noqa: E402
from training.train_transformer import load_run_config, train_transformer  # noqa: E402


def train_pair(tokens: Path, workdir: Path, config: str, overrides: list[str], device: str,
               given: dict[str, Path | None]) -> dict[str, Path]:
    """Train the archs not given as runs (e.g. --masked RUN trains only the AR model, with the same preset)."""
    runs = {arch: run for arch, run in given.items() if run is not None}
    for arch in ("masked", "ar"):
        if arch in runs:
            continue
        runs[arch] = workdir / f"transformer_{arch}"
        cfg = load_run_config(config, overrides + [f'model.arch="{arch}"'])
        summary = train_transformer(cfg, tokens, runs[arch], resume=True, device=device, log=lambda m: None)
        print(f"{arch}: {summary['step']} steps, {summary['s_per_step']} s/step, "
              f"val token accuracy {summary['last_validation'].get('acc', float('nan')):.3f}", flush=True)
    return runs


@torch.no_grad()
def time_one_clip(run: Path, repeats: int, decode_steps: int, device: str) -> tuple[list[float], dict]:
    """Seconds to sample one clip's tokens (predict task, test clip 0), repeats after one warm-up."""
    dev = torch.device(device)
    model, saved = load_transformer(run, dev)
    cache = load_token_cache(saved["tokens"]["tokens"], "test")
    layout = model.layout
    k = given_latent_frames(saved["tasks"]["predict_frames"], saved["tokens"], "tasks.predict_frames")
    seq = layout.to_sequence(torch.from_numpy(cache.tokens[:1].astype(np.int64))).to(dev)
    given = given_mask(layout, "predict", 1, latent_frames=k).to(dev)
    cond = condition(layout, "predict", batch=1).to(dev)
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        with autocast_for(dev):
            sample(model, seq, given, cond, generators([r]), steps=decode_steps)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t0)
    info = {"tokens": layout.num_tokens, "generated_tokens": int((~given).sum()), "parameters": model.num_parameters(),
            "width": model.cfg.width, "depth": model.cfg.depth, "grid": saved["tokens"]["grid"],
            "train_steps": saved["step"]}
    return times, info


def view_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR over clips and views of uint8 (N, V, T, H, W, 3) arrays (per frame, then frames, then clips)."""
    return float(psnr_per_clip(a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])).mean())


@torch.no_grad()
def quality(runs: dict[str, Path], workdir: Path, decode_steps: int, clips: int | None, device: str) -> dict:
    out = {}
    for arch, run in runs.items():
        gen_dir = workdir / f"generated_{arch}"
        generate(run, "predict", gen_dir, steps=decode_steps, num=clips, device=device, progress=False,
                 log=lambda m: None)
        gen = load_generated(gen_dir)
        k = gen.records[0].given_frames
        out[arch] = view_psnr(np.asarray(gen.rgb[:, :, k:]), np.asarray(gen.target[:, :, k:]))
    target = np.asarray(gen.target)
    out["copy_last"] = view_psnr(np.repeat(target[:, :, k - 1:k], target.shape[2] - k, axis=2), target[:, :, k:])
    # the ceiling: the tokenizer decoding the true tokens of the same clips
    saved = ckpt.load_config_json(ckpt.latest_checkpoint(runs["masked"]))
    cache = load_token_cache(saved["tokens"]["tokens"], "test")
    tokenizer, _ = load_tokenizer(saved["tokens"]["tokenizer_run"])
    recon = np.stack([tokenizer.decode_indices(torch.from_numpy(cache.tokens[i].astype(np.int64)))
                      .add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
                      for i in range(len(target))])
    out["tokenizer"] = view_psnr(recon[:, :, k:], target[:, :, k:])
    out["clips"], out["given_frames"], out["frames"] = len(target), k, target.shape[2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=Path, required=True, help="tokenizer run with a token cache (or the cache)")
    ap.add_argument("--masked", type=Path, help="a trained masked run (else one is trained)")
    ap.add_argument("--ar", type=Path, help="a trained autoregressive run (else one is trained)")
    ap.add_argument("--config", default="demo", help="transformer preset for the models trained here")
    ap.add_argument("--steps", type=int, help="training steps of both models [default: the preset's]")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, default=12)
    ap.add_argument("--clips", type=int, default=None, help="test clips for PSNR [default: all]")
    ap.add_argument("--device", default="cpu", help="where to sample and time: cpu (the comparison asked for) or cuda")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads [default: torch's]; 1 is robust on a machine shared with other jobs")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--markdown", type=Path, default=BENCHMARKS_MD, help="file to write the section into")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="magvit3d-sampling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = args.overrides + ([f"train.steps={args.steps}"] if args.steps else [])
    runs = train_pair(args.tokens, workdir, args.config, overrides, args.device, {"masked": args.masked, "ar": args.ar})
    speed = {arch: time_one_clip(run, args.repeats, args.decode_steps, args.device) for arch, run in runs.items()}
    (m_times, m_info), (a_times, a_info) = speed["masked"], speed["ar"]
    if (m_info["width"], m_info["depth"], m_info["grid"]) != (a_info["width"], a_info["depth"], a_info["grid"]):
        sys.exit(f"the two runs differ in width/depth/grid: {m_info} vs {a_info}")
    psnr = quality(runs, workdir, args.decode_steps, args.clips, args.device)
    m_med, a_med = statistics.median(m_times), statistics.median(a_times)
    res = {"masked_s": m_times, "ar_s": a_times, "masked_median_s": m_med, "ar_median_s": a_med,
           "speedup": a_med / m_med, "psnr": psnr, "model": m_info, "ar_model": a_info, "workdir": str(workdir)}
    print(json.dumps(res, indent=1))
    if args.no_write:
        return
    V, t, h, w = m_info["grid"]
    k = psnr["given_frames"]
    cmd = "python benchmarks/sampling.py " + " ".join(sys.argv[1:])
    body = f"""## Sampling: masked parallel decoding vs autoregressive (`benchmarks/sampling.py`)

Machine: {machine()}; sampling on {args.device}{f', {torch.get_num_threads()} torch thread(s)' if args.device == 'cpu' else ''}. Date: {today()}. Command: `{cmd}`.
Both models: width {m_info['width']}, {m_info['depth']} layers, {m_info['parameters'] / 1e6:.2f} M parameters,
trained {m_info['train_steps']} (masked) and {a_info['train_steps']} (AR) steps on the same token cache; token grid
{V} views x {t} x {h} x {w} = {m_info['tokens']} tokens per clip, {m_info['generated_tokens']} of them generated
(frame prediction: the first {k} of {psnr['frames']} frames of every view given).

| measure | masked, {args.decode_steps} steps | autoregressive, KV cache |
|---|---|---|
| one 3-view clip, median of {args.repeats} | {m_med:.3f} s | {a_med:.3f} s |
| speed-up of masked decoding | {a_med / m_med:.1f}x | 1x |
| PSNR of the {psnr['frames'] - k} predicted frames, {psnr['clips']} test clips x {V} views \
| {psnr['masked']:.2f} dB | {psnr['ar']:.2f} dB |

Reference points on the same frames: copy-last-frame {psnr['copy_last']:.2f} dB; the tokenizer decoding the true
tokens (the ceiling for either model) {psnr['tokenizer']:.2f} dB.
"""
    write_section("sampling", body, args.markdown)
    print(f"wrote the 'sampling' section of {args.markdown}")


if __name__ == "__main__":
    main()
