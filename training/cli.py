"""Training commands of `magvit3d` (registered lazily by datagen.cli so `magvit3d render` never imports torch)."""
from __future__ import annotations

import click

from datagen.cli import DIR, Command, DeviceChoice, FiniteFloat, example
from datagen.config import check_output_dir
from training.configs import AUGMENTATIONS, DECODE_ORDERS
from training.generated import METHOD_TITLES

MAX_STEPS = 1000          # parallel decoding steps: more than the tokens of a clip only repeat work
MAX_PER_CLASS = 1000      # --num clips per shape x family (generate): all of them are held in memory
MAX_SEED = 2**62          # clip i uses seed + i as a 64-bit generator seed

CONFIG_HELP = ("Preset name (tiny, demo, full: datagen/presets/tokenizer/<name>.toml) or a path to a TOML file. "
               "--set overrides it; `magvit3d config show tokenizer -c NAME` prints it.")
DEVICE_HELP = "auto: cuda when available (else Apple's mps, else cpu); cuda: an error when there is none."


def device_option():
    return click.option("--device", type=DeviceChoice(also=["mps"]), default="auto", show_default=True,
                        help=DEVICE_HELP)


@click.command("train-tokenizer", cls=Command, epilog=example(
    "magvit3d train-tokenizer --data ds --out runs/tok -c tiny",
    "magvit3d train-tokenizer --data ds --out runs/tok --set train.steps=500 --resume"))
@click.option("--data", required=True, type=DIR, help="A rendered and packed dataset (magvit3d render + pack).")
@click.option("--out", required=True, type=DIR, help="Run directory.")
@click.option("--config", "-c", default="demo", show_default=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.steps=500 --set model.quantizer=lfq. Repeatable.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@device_option()
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train_tokenizer_cmd(data, out, config, overrides, resume, device, no_progress):
    """Train the causal 3D-CNN video tokenizer on a packed dataset. Logs losses and validation PSNR, SSIM and
    codebook usage to OUT/metrics.jsonl; checkpoints (safetensors + JSON) to OUT/checkpoints."""
    from training.train_tokenizer import load_run_config, train_tokenizer

    cfg = load_run_config(config, list(overrides))
    check_output_dir(out)
    summary = train_tokenizer(cfg, data, out, resume=resume, device=device, progress=not no_progress,
                              log=lambda m: click.echo(m, err=True))
    val = summary.get("last_validation")  # None on DDP ranks other than 0
    if val:
        click.echo(f"step {summary['step']}: val PSNR {val['psnr']:.2f} dB, SSIM {val['ssim']:.3f}, "
                   f"codebook usage {val['usage']:.1%} ({summary['view_clips_per_s']} view-clips/s) -> {out}")
    return 0


@click.command("tokenize", cls=Command, epilog=example("magvit3d tokenize --run runs/tok --data ds"))
@click.option("--run", required=True, type=DIR, help="A tokenizer run (magvit3d train-tokenizer).")
@click.option("--data", required=True, type=DIR, help="The packed dataset.")
@device_option()
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="View-clips encoded at once.")
@click.option("--code-hysteresis", default=0.0, show_default=True, type=FiniteFloat(min=0),
              help="FSQ only: a token keeps the previous latent frame's code while its latent stays within 0.5 + "
                   "this many levels of it, so static content stops flickering between neighbouring codes "
                   "(0 = plain rounding; below 1).")
@click.option("--augment", multiple=True, type=click.Choice(AUGMENTATIONS),
              help="Also encode transformed copies of the train clips (every combination of those given) into "
                   "RUN/tokens/train_augmented.npy, for a transformer with train.augment: time-reverse (played "
                   "backwards), hflip (mirrored; one-view datasets only). Repeatable.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def tokenize_cmd(run, data, device, batch_size, code_hysteresis, augment, no_progress):
    """Encode every split of a packed dataset into the token cache RUN/tokens/<split>_tokens.npy
    (int16, N x V x t x h x w) with the run's latest (EMA) tokenizer."""
    from training.tokenize import tokenize_dataset
    from training.device import pick_device

    summary = tokenize_dataset(run, data, device=pick_device(device), batch_size=batch_size,
                               hysteresis=code_hysteresis, augment=list(augment), progress=not no_progress)
    for split, info in summary.items():
        click.echo(f"{split}: {tuple(info['shape'])} -> {info['tokens']}")
    return 0


@click.command("reconstruct", cls=Command, epilog=example(
    "magvit3d reconstruct --run runs/tok --data ds --out recon            # the first 4 test clips",
    "magvit3d reconstruct --run runs/tok --data ds --out recon --split train --sample 0 --sample 5"))
@click.option("--run", required=True, type=DIR, help="A tokenizer run (magvit3d train-tokenizer).")
@click.option("--data", required=True, type=DIR, help="The packed dataset.")
@click.option("--out", required=True, type=DIR, help="Output directory.")
@click.option("--sample", "samples", type=int, multiple=True, help="Sample id(s) [default: the first 4 of the split].")
@click.option("--split", default="test", show_default=True, help="Split the samples come from.")
@device_option()
def reconstruct_cmd(run, data, out, samples, split, device):
    """Write originals next to reconstructions (PNG grid: per view, original over reconstruction; and a GIF)."""
    from datagen.pack import load_packed
    from training.tokenize import reconstruct_samples
    from training.device import pick_device

    check_output_dir(out)
    ids = list(samples) or load_packed(data, split).sample_ids[:4]   # (an empty split: reconstruct_samples says so)
    for path in reconstruct_samples(run, data, out, ids, split=split, device=pick_device(device)):
        click.echo(f"wrote {path}")
    return 0


TRANSFORMER_CONFIG_HELP = ("Preset name (tiny, demo, 2d, study, full: datagen/presets/transformer/<name>.toml) or a "
                           "path to a TOML file. --set overrides it; `magvit3d config show transformer -c NAME` "
                           "prints it.")


@click.command("train-transformer", cls=Command, epilog=example(
    "magvit3d train-transformer --tokens runs/tok --out runs/tr -c tiny",
    "magvit3d train-transformer --tokens runs/tok --out runs/ar --set model.arch=ar   # the autoregressive baseline"))
@click.option("--tokens", required=True, type=DIR,
              help="A tokenizer run with a token cache (magvit3d tokenize), or the token cache directory itself.")
@click.option("--out", required=True, type=DIR, help="Run directory.")
@click.option("--config", "-c", default="demo", show_default=True, help=TRANSFORMER_CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set model.arch=ar --set tasks.predict=0.5. Repeatable.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@device_option()
@click.option("--no-progress", is_flag=True, help="Log a plain line every train.log_every steps instead of a bar.")
def train_transformer_cmd(tokens, out, config, overrides, resume, device, no_progress):
    """Train the masked video transformer (or, with --set model.arch=ar, the autoregressive baseline) on a token
    cache, with the tasks predict, generate, complete-view and unconditional mixed. Logs loss and masked-token
    accuracy to OUT/metrics.jsonl; checkpoints (safetensors + JSON) to OUT/checkpoints."""
    from training.train_transformer import load_run_config, train_transformer

    cfg = load_run_config(config, list(overrides))
    check_output_dir(out)
    summary = train_transformer(cfg, tokens, out, resume=resume, device=device, progress=not no_progress,
                                log=lambda m: click.echo(m, err=True))
    val = summary.get("last_validation")  # None on DDP ranks other than 0
    if val:
        click.echo(f"step {summary['step']}: val loss {val['loss']:.3f}, token accuracy {val['acc']:.1%} "
                   f"({summary['s_per_step']} s/step) -> {out}")
    return 0


@click.command("generate", cls=Command, epilog=example(
    "magvit3d generate --transformer runs/tr --task predict --out gen/predict",
    "magvit3d generate --transformer runs/tr --task generate --out gen/cones --shape cone -n 2"))
@click.option("--transformer", required=True, type=DIR, help="A transformer run (magvit3d train-transformer).")
@click.option("--task", required=True, type=click.Choice(["predict", "generate", "complete-view"]),
              help="predict: continue held-out clips from their first frames; complete-view: generate one view "
                   "from the others; generate: class-conditional clips per shape x family (a model trained "
                   "with tasks.generate_track follows the object track of a training clip of each).")
@click.option("--out", required=True, type=DIR, help="Output directory.")
@click.option("--steps", default=12, show_default=True, type=int,
              help=f"Parallel decoding steps (masked model), 1..{MAX_STEPS}.")
@click.option("--num", "-n", "num", type=click.IntRange(min=1),
              help=f"Clips of the split (predict, complete-view) [default: all], or clips per shape x family "
                   f"(generate, at most {MAX_PER_CLASS}) [default: 1].")
@click.option("--temperature", default=1.0, show_default=True, type=FiniteFloat(min=0),
              help="Sampling temperature (0 = argmax).")
@click.option("--choice-temperature", default=4.5, show_default=True, type=FiniteFloat(min=0),
              help="Scale of the Gumbel noise on the confidences, annealed to 0 (masked model).")
@click.option("--order", default="all", show_default=True, type=click.Choice(DECODE_ORDERS),
              help="Masked model: decode every token at once (all, MaskGIT) or one latent frame after another "
                   "(frames: each frame sees the ones before it complete; --steps steps per frame).")
@click.option("--top-k", default=0, show_default=True, type=int, help="Sample among the k likeliest (AR; 0 = all).")
@click.option("--guidance", default=1.0, show_default=True, type=FiniteFloat(min=0),
              help="generate: classifier-free guidance scale s: sample from the log-probabilities null + s * "
                   "(labelled - null), null being the unconditional task's (1 = off; above 1 pushes towards the "
                   "shape and family).")
@click.option("--track-guidance", default=1.0, show_default=True, type=FiniteFloat(min=0),
              help="Classifier-free guidance scale towards the object track the model is given (predict with a "
                   "model.track_frames model; generate with tasks.generate_track), against the same clip with the "
                   "object seen nowhere (1 = off; 3 draws the object along the track more firmly: class-conditional "
                   "family 44% -> 67% in 3D, BENCHMARKS.md). Costs one more model call per step.")
@click.option("--track-guidance-radius", default=0.0, show_default=True, type=FiniteFloat(min=0),
              help="Masked model: give each token the track guidance in proportion to exp(-d^2 / 2R^2), d its distance "
                   "in token cells from where the motion module puts the object (0 = the whole scale everywhere). The "
                   "demo predicts with --track-guidance 2 --track-guidance-radius 1.5 --temperature 0.")
@click.option("--copy-bias", default=0.0, show_default=True, type=FiniteFloat(min=0),
              help="predict, masked model: add B to the log-probability of the last given latent frame's token at "
                   "each place, a prior towards 'nothing changes here' (0 = off). The 3D demo predicts with 1: the "
                   "ground the model would redraw keeps its tokens, and the composite shows it as rendered.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED),
              help="Clip i is sampled with seed + i.")
@click.option("--split", default="test", show_default=True, help="Split of the held-out clips.")
@click.option("--given-frames", type=int,
              help="predict: frames given (a multiple of the tokenizer's temporal factor) [default: as trained].")
@click.option("--view", type=int, help="complete-view: the view to generate [default: clip i generates view i % V].")
@click.option("--shape", "shapes", multiple=True, help="generate: shape class(es) [default: all]. Repeatable.")
@click.option("--family", "families", multiple=True, help="generate: trajectory family(ies) [default: all]. Repeatable.")
@click.option("--tokens", type=DIR,
              help="Token cache to condition on [default: the one the transformer was trained on]; must come from "
                   "the same tokenizer. generate with a track prior draws the tracks from its train split.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Clips sampled at once.")
@click.option("--method", default="model", show_default=True, type=click.Choice(list(METHOD_TITLES)),
              help="model: the transformer samples; ceiling: the held-out clips' true tokens decoded (the best any "
                   "transformer can do with this tokenizer); copy-latent (predict): the last given latent frame "
                   "repeated, decoded; object-warp (predict): the same with the object's tokens moved by its true "
                   "displacement, to whole token cells (what a copy window with perfect offsets would make).")
@click.option("--paste/--no-paste", default=True, show_default=True,
              help="The given frames / views of the output are the renders (paste) or their tokens decoded.")
@click.option("--composite/--no-composite", default=None,
              help="predict: predicted frames keep the last given frame wherever the decoded prediction does not "
                   "differ from the decoded last given frame, so what does not move stays as rendered; that frame's "
                   "object itself is never kept (needs the dataset's mask PNGs) [default: on for predict].")
@device_option()
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def generate_cmd(transformer, task, out, steps, num, temperature, choice_temperature, order, top_k, guidance,
                 track_guidance, track_guidance_radius, copy_bias, seed,
                 split, given_frames, view, shapes, families, tokens, batch_size, method, paste, composite, device,
                 no_progress):
    """Sample clips with a trained transformer and decode them with its tokenizer into OUT: generated_rgb.npy,
    target_rgb.npy (predict, complete-view), generated.json (what each clip was generated from) and a PNG + GIF
    per clip in OUT/clips (conditioning | generated | ground truth)."""
    from training.generate import generate

    if steps > MAX_STEPS:   # (below 1: generate says so)
        raise click.BadParameter(f"{steps} is more than {MAX_STEPS} (more steps than tokens to decode only repeat "
                                 f"work)", param_hint="'--steps'")
    if task == "generate" and num is not None and num > MAX_PER_CLASS:
        raise click.BadParameter(f"{num} clips per shape x family is more than {MAX_PER_CLASS}; run again with "
                                 f"another --seed for more", param_hint="'--num'")
    check_output_dir(out)
    summary = generate(transformer, task, out, steps=steps, num=num, temperature=temperature,
                       choice_temperature=choice_temperature, order=order, top_k=top_k, guidance=guidance,
                       track_guidance=track_guidance, track_guidance_radius=track_guidance_radius,
                       copy_bias=copy_bias, seed=seed,
                       split=split,
                       given_frames=given_frames, view=view, shapes=shapes, families=families, tokens=tokens,
                       device=device, batch_size=batch_size, method=method, paste=paste,
                       composite=task == "predict" if composite is None else composite, progress=not no_progress,
                       log=lambda m: click.echo(m, err=True))
    click.echo(f"{summary['clips']} clip(s) ({summary['arch']}, {summary['task']}, {summary['method']}), "
               f"{summary['sampling_seconds_per_clip']} s/clip sampling -> {out}")
    return 0
