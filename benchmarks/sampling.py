"""Sampling benchmark: 12-step masked (MaskGIT) decoding vs the autoregressive baseline with a KV cache.

    .venv/bin/python benchmarks/sampling.py --tokens TOKENIZER_RUN [--config demo] [--steps N] [--workdir DIR]
    .venv/bin/python benchmarks/sampling.py --tokens TOKENIZER_RUN --masked RUN --ar RUN     # already trained runs
    .venv/bin/python benchmarks/sampling.py --tokens TOKENIZER_RUN --data DATASET --probe PROBE_RUN \
        --section "The 2D experiments: masked vs autoregressive"                     # + evaluate, own section

1. Models: unless --masked / --ar name trained runs, a masked and an AR transformer of the same width and depth
   (the --config preset, --set overrides) are trained on the same token cache for the same number of steps.
   A one-view (2D) cache needs --set tasks.complete_view=0 (there is no other view to complete).
2. Speed: the wall time to generate one clip, all its views (frame prediction: the given latent frames of every
   view given, the rest generated) on the CPU (--device cuda: on the GPU), --repeats times after a warm-up, median:
   --decode-steps (12) steps of parallel decoding vs one token at a time with the KV cache. On a CPU both are
   compute-bound, and 12 passes over all N tokens are more arithmetic than N one-token passes with the cache;
   masked decoding's advantage lies where a pass is latency-bound (a GPU), so look at both devices.
3. Quality: `generate --task predict` on the test clips with each model; PSNR of the predicted frames (the ones
   not given) against the renders, next to copy-last-frame (the last given rendered frame repeated) and the
   tokenizer's own reconstruction of the true tokens (the ceiling for any transformer).
4. With --data DATASET --probe PROBE_RUN: `generate --task predict` with each model as the demo samples prediction
   (temperature 0.5, composite over the last given frame), `generate --task generate` (class-conditional,
   --per-class clips per shape x family, at the demo's temperature for --config), the tokenizer ceiling (`--method ceiling`, composite) once,
   and one `evaluate` over all of them with that probe. The table's numbers are read from its metrics.json: PSNR and
   object-region PSNR of the predicted frames, ADE (px and % of the image width on a one-view dataset, % of the scene
   extent on a 3-view one), class-conditional family accuracy, sampling seconds per clip; and the reference rows
   copy-last, constant velocity, learned extrapolation, the tokenizer ceiling and the probe on the renders.
Results go to BENCHMARKS.md (section "sampling", or the one --section names) unless --no-write.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
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
from evaluation.pipeline import DEMO_RUNS, DEMO_TRACK_GUIDANCE, generate_temperature  # noqa: E402
from evaluation.evaluate import evaluate  # noqa: E402
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


# prediction as the demo samples it (evaluation.pipeline.DEMO_RUNS: its temperature, composited over the last given
# frame); class-conditional generation at the demo's temperature for the preset, the ceiling at temperature 1
PREDICT_SETTINGS = {"temperature": DEMO_RUNS["predict"][2], "composite": True}


def generate_settings(run: Path, config: str) -> dict:
    """Class-conditional generation as the demo of preset `config` samples it: with track guidance for a model that
    follows a training clip's track (evaluation.pipeline.demo_track_guidance), at the preset's temperature
    (evaluation.pipeline.generate_temperature)."""
    _, saved = ckpt.load_run(run, "transformer")
    return {"track_guidance": DEMO_TRACK_GUIDANCE if saved["tasks"].get("generate_track") else 1.0,
            "temperature": generate_temperature(config)}


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


def evaluated(runs: dict[str, Path], data: Path, probe: Path, workdir: Path, decode_steps: int, clips: int | None,
              per_class: int, device: str, config: str, visual_clips: int = 12) -> dict:
    """Generate (predict, class-conditional) with each model and the tokenizer ceiling once, evaluate them all with
    `probe` in one report, and return the table's numbers as evaluate's metrics.json has them."""
    quiet = {"steps": decode_steps, "device": device, "progress": False, "log": lambda m: None}
    gens = {}
    for arch, run in runs.items():
        gens[arch, "predict"] = workdir / f"eval_{arch}_predict"
        generate(run, "predict", gens[arch, "predict"], num=clips, **PREDICT_SETTINGS, **quiet)
        gens[arch, "generate"] = workdir / f"eval_{arch}_generate"
        generate(run, "generate", gens[arch, "generate"], num=per_class, **generate_settings(run, config), **quiet)
    # the ceiling decodes the test clips' true tokens, so it is the same whichever run names the cache
    gens["ceiling", "predict"] = workdir / "eval_ceiling_predict"
    generate(runs["masked"], "predict", gens["ceiling", "predict"], num=clips, method="ceiling", composite=True,
             **quiet)
    report = workdir / "eval_report"
    metrics = evaluate(data, list(gens.values()), probe, report, max_visual_clips=visual_clips, progress=False,
                       log=lambda m: None)
    by_dir = {Path(r["generated"]).resolve(): r for r in metrics["runs"]}
    entry = {key: by_dir[path.resolve()] for key, path in gens.items()}

    def summary(key):
        return entry[key]["tasks"][key[1]]["summary"]

    out = {"report": str(report / "index.html"), "kind": metrics.get("tracks", {}).get("kind", "3d"),
           "scale": metrics.get("image_width") or metrics.get("scene_extent"), "archs": {}, "references": {}}
    for arch in runs:
        p, g = summary((arch, "predict")), summary((arch, "generate"))
        out["archs"][arch] = {**{k: p["model"].get(k) for k in ("psnr", "object_psnr", "ade", "ade_pct")},
                              "family_accuracy_predict": p["model"]["family_accuracy"],
                              "family_accuracy": g["model"]["family_accuracy"], "generate_clips": g["clips"],
                              "predict_clips": p["clips"],
                              "s_per_clip_predict": entry[arch, "predict"]["info"]["sampling_seconds_per_clip"],
                              "s_per_clip_generate": entry[arch, "generate"]["info"]["sampling_seconds_per_clip"]}
    # the baselines come from the renders and the probe, the same for both models: the masked run's copy
    p = summary(("masked", "predict"))
    for name in ("copy_last", "constant_velocity", "learned_extrapolation"):
        if name in p:
            out["references"][name] = p[name]
    out["references"]["ceiling"] = summary(("ceiling", "predict"))["model"]
    out["references"]["floor"] = p["floor"]
    return out


def _num(v, fmt: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{fmt}}{suffix}"


def evaluated_table(ev: dict, decode_steps: int) -> str:
    """The markdown table of `evaluated`: rows the two models and the references, columns the issue-14 measures."""
    two_d = ev["kind"] == "2d"

    def ade(row):
        if row.get("ade") is None:
            return "–"
        return f"{row['ade']:.2f} px ({row['ade_pct']:.1f}%)" if two_d else f"{row['ade_pct']:.2f}%"

    head = ("| | PSNR dB | object PSNR dB | ADE | family accuracy, class-conditional | family accuracy, predicted "
            "clips | sampling s/clip, predict | sampling s/clip, class-conditional |\n"
            "|---|---|---|---|---|---|---|---|")
    names = {"masked": f"masked (MAGVIT-style), {decode_steps} steps",
             "ar": "autoregressive (VideoGPT-style), KV cache"}
    rows = [f"| {names[arch]} | {_num(a['psnr'])} | {_num(a['object_psnr'])} | {ade(a)} | "
            f"{_num(100 * a['family_accuracy'], '.0f', '%')} | {_num(100 * a['family_accuracy_predict'], '.0f', '%')} "
            f"| {_num(a['s_per_clip_predict'], '.3f')} | {_num(a['s_per_clip_generate'], '.3f')} |"
            for arch, a in ev["archs"].items()]
    refs = ev["references"]
    titles = {"copy_last": "copy last frame", "constant_velocity": "constant velocity (probe track)",
              "learned_extrapolation": "learned extrapolation (probe track)",
              "ceiling": "tokenizer ceiling (true tokens decoded, composite)", "floor": "probe on the renders (floor)"}
    for name, title in titles.items():
        if name in refs:
            r = refs[name]
            fam = _num(100 * r["family_accuracy"], ".0f", "%") if "family_accuracy" in r else "–"
            rows.append(f"| {title} | {_num(r.get('psnr'))} | {_num(r.get('object_psnr'))} | {ade(r)} | – | "
                        f"{fam} | – | – |")
    return "\n".join([head, *rows])


def section_marker(title: str | None) -> str:
    """The BENCHMARKS.md marker of a section: 'sampling' by default, else the title made a slug."""
    return "sampling" if title is None else "sampling-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


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
    ap.add_argument("--data", type=Path, help="the packed dataset of the token cache: with --probe, also generate and "
                    "evaluate (see 4. above)")
    ap.add_argument("--probe", type=Path, help="a probe run trained on --data's frames (magvit3d train-probe)")
    ap.add_argument("--per-class", type=int, default=4,
                    help="class-conditional clips per shape x family for the family accuracy (with --probe)")
    ap.add_argument("--visual-clips", type=int, default=12,
                    help="clips per run shown as GIFs in the evaluation report (with --probe; the metrics cover all)")
    ap.add_argument("--section", default=None,
                    help="title of the BENCHMARKS.md section [default: the 'sampling' section], e.g. \"The 2D "
                         "experiments: masked vs autoregressive\"; another title writes a section of its own")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--markdown", type=Path, default=BENCHMARKS_MD, help="file to write the section into")
    args = ap.parse_args()
    if (args.data is None) != (args.probe is None):
        ap.error("--data and --probe go together")

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
    ev = (evaluated(runs, args.data, args.probe, workdir, args.decode_steps, args.clips, args.per_class, args.device,
                    args.config, args.visual_clips) if args.probe else None)
    m_med, a_med = statistics.median(m_times), statistics.median(a_times)
    res = {"masked_s": m_times, "ar_s": a_times, "masked_median_s": m_med, "ar_median_s": a_med,
           "speedup": a_med / m_med, "psnr": psnr, "model": m_info, "ar_model": a_info, "workdir": str(workdir),
           **({"evaluated": ev} if ev else {})}
    print(json.dumps(res, indent=1))
    if args.no_write:
        return
    V, t, h, w = m_info["grid"]
    k = psnr["given_frames"]
    cmd = "python benchmarks/sampling.py " + shlex.join(sys.argv[1:])
    views = f"{V} view{'s' if V > 1 else ''}"
    title = args.section or "Sampling: masked parallel decoding vs autoregressive"
    body = f"""## {title} (`benchmarks/sampling.py`)

Machine: {machine()}; sampling on {args.device}{f', {torch.get_num_threads()} torch thread(s)' if args.device == 'cpu' else ''}. Date: {today()}. Command: `{cmd}`.
Both models: width {m_info['width']}, {m_info['depth']} layers, {m_info['parameters'] / 1e6:.2f} M parameters,
trained {m_info['train_steps']} (masked) and {a_info['train_steps']} (AR) steps on the same token cache; token grid
{views} x {t} x {h} x {w} = {m_info['tokens']} tokens per clip, {m_info['generated_tokens']} of them generated
(frame prediction: the first {k} of {psnr['frames']} frames of every view given).

| measure | masked, {args.decode_steps} steps | autoregressive, KV cache |
|---|---|---|
| one {V}-view clip, median of {args.repeats} | {m_med:.3f} s | {a_med:.3f} s |
| speed-up of masked decoding | {a_med / m_med:.1f}x | 1x |
| PSNR of the {psnr['frames'] - k} predicted frames (temperature 1, as sampled), {psnr['clips']} test clips x {views} \
| {psnr['masked']:.2f} dB | {psnr['ar']:.2f} dB |

Reference points on the same frames: copy-last-frame {psnr['copy_last']:.2f} dB; the tokenizer decoding the true
tokens (the ceiling for either model) {psnr['tokenizer']:.2f} dB.
"""
    if ev:
        a, gs = ev["archs"]["masked"], generate_settings(runs["masked"], args.config)
        unit = "px (% of the image width)" if ev["kind"] == "2d" else "% of the scene extent"
        body += f"""
Evaluated by `magvit3d evaluate` (dataset `{args.data}`, probe `{args.probe}`): prediction sampled as the demo does
(temperature {PREDICT_SETTINGS['temperature']}, composite over the last given frame) on {a['predict_clips']} test clips,
class-conditional generation at temperature {gs['temperature']:g} and track guidance {gs['track_guidance']:g}
({args.per_class} per shape x family, {a['generate_clips']} clips in all).
PSNR and object-region PSNR over the predicted frames; ADE of the probe's track in {unit}; family accuracy: the
family of the best fit to the probe's track is the one asked for (class-conditional) or the clip's (predicted);
sampling s/clip: `generate`'s own timing, clips sampled 8 at a time (so below the one-clip latency above).

{evaluated_table(ev, args.decode_steps)}
"""
    marker = section_marker(args.section)
    write_section(marker, body, args.markdown)
    print(f"wrote the '{marker}' section of {args.markdown}")


if __name__ == "__main__":
    main()
