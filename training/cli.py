"""Training commands of `magvit3d` (registered lazily by datagen.cli so `magvit3d render` never imports torch)."""
from __future__ import annotations

from pathlib import Path

import click

CONFIG_HELP = ("Preset name (tiny, demo, full: configs/tokenizer/<name>.toml) or a path to a TOML file. "
               "--set overrides it.")


@click.command("train-tokenizer")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A rendered and packed dataset (magvit3d render + pack).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option("--config", "-c", default="demo", show_default=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.steps=500 --set model.quantizer=lfq. Repeatable.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda or mps.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train_tokenizer_cmd(data, out, config, overrides, resume, device, no_progress):
    """Train the causal 3D-CNN video tokenizer on a packed dataset. Logs losses and validation PSNR, SSIM and
    codebook usage to OUT/metrics.jsonl; checkpoints (safetensors + JSON) to OUT/checkpoints."""
    from training.train_tokenizer import load_run_config, train_tokenizer

    cfg = load_run_config(config, list(overrides))
    summary = train_tokenizer(cfg, data, out, resume=resume, device=device, progress=not no_progress,
                              log=lambda m: click.echo(m, err=True))
    val = summary.get("last_validation")  # None on DDP ranks other than 0
    if val:
        click.echo(f"step {summary['step']}: val PSNR {val['psnr']:.2f} dB, SSIM {val['ssim']:.3f}, "
                   f"codebook usage {val['usage']:.1%} ({summary['view_clips_per_s']} view-clips/s) -> {out}")
    return 0


@click.command("tokenize")
@click.option("--run", required=True, type=click.Path(file_okay=False, path_type=Path), help="A tokenizer run.")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), help="The packed dataset.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda or mps.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def tokenize_cmd(run, data, device, batch_size, no_progress):
    """Encode every split of a packed dataset into the token cache RUN/tokens/<split>_tokens.npy
    (int16, N x V x t x h x w) with the run's latest (EMA) tokenizer."""
    from training.tokenize import tokenize_dataset
    from training.train_tokenizer import pick_device

    summary = tokenize_dataset(run, data, device=pick_device(device), batch_size=batch_size, progress=not no_progress)
    for split, info in summary.items():
        click.echo(f"{split}: {tuple(info['shape'])} -> {info['tokens']}")
    return 0


@click.command("reconstruct")
@click.option("--run", required=True, type=click.Path(file_okay=False, path_type=Path), help="A tokenizer run.")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), help="The packed dataset.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--sample", "samples", type=int, multiple=True, help="Sample id(s) [default: the first 4 of the split].")
@click.option("--split", default="test", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda or mps.")
def reconstruct_cmd(run, data, out, samples, split, device):
    """Write originals next to reconstructions (PNG grid: per view, original over reconstruction; and a GIF)."""
    from datagen.pack import load_packed
    from training.tokenize import reconstruct_samples
    from training.train_tokenizer import pick_device

    ids = list(samples) or load_packed(data, split).sample_ids[:4]
    for path in reconstruct_samples(run, data, out, ids, split=split, device=pick_device(device)):
        click.echo(f"wrote {path}")
    return 0
