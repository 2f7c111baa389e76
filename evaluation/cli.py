"""Evaluation commands of `magvit3d` (registered lazily by datagen.cli): train-probe, evaluate, compare."""
from __future__ import annotations

from pathlib import Path

import click

from datagen.cli import DIR, Command, example, option
from datagen.config import check_output_dir
from training.cli import device_option

LPIPS_HELP = ("torchvision's AlexNet weights file (alexnet-owt-7be5be79.pth) for LPIPS, for machines without a network "
              "[default: the torch hub cache, downloaded there on first use]. Without it LPIPS is reported as "
              "unavailable, with the reason.")


@click.command("train-probe", cls=Command, epilog=example(
    "magvit3d train-probe --data ds --out runs/probe -c tiny"))
@click.option("--data", required=True, type=DIR, help="A rendered and packed dataset (magvit3d render + pack).")
@click.option("--out", required=True, type=DIR, help="Run directory (checkpoints, metrics.jsonl, summary.json).")
@click.option("--config", "-c", default="demo", show_default=True,
              help="Preset name (tiny, demo, full: datagen/presets/probe/<name>.toml) or a path to a TOML file. --set "
                   "overrides it; `magvit3d config show probe -c NAME` prints it.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.steps=500 --set 'model.channels=[16,32,48,64]'. "
                   "Repeatable.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@device_option()
@click.option("--no-progress", is_flag=True, help="Log a plain line every train.log_every steps instead of a bar.")
def train_probe_cmd(data, out, config, overrides, resume, device, no_progress):
    """Train the triangulation probe: a small CNN that finds the object's projected 3D centre in one frame of one
    view (heatmap + soft-argmax, sub-pixel, with a confidence), on the rendered frames of the train split with the
    2D centres of the packed index. Validation 2D errors (px) go to OUT/metrics.jsonl and OUT/summary.json. The
    probe only accepts frames of the resolution it was trained on."""
    from evaluation.probe import load_run_config, train_probe

    cfg = load_run_config(config, list(overrides))
    check_output_dir(out)
    summary = train_probe(cfg, data, out, resume=resume, device=device, progress=not no_progress,
                          log=lambda m: click.echo(m, err=True))
    val = summary.get("last_validation")  # None on DDP ranks other than 0
    if val:
        click.echo(f"step {summary['step']}: {val['split']} 2D error median {val['median_px']:.3f} px, mean "
                   f"{val['mean_px']:.3f} px ({summary['seconds_this_run']:.0f} s, {summary['frames_per_s']} frames/s)"
                   f" -> {out}")
    return 0


@click.command("evaluate", cls=Command, epilog=example(
    "magvit3d evaluate --data ds --generated gen/predict --generated gen/generate --probe runs/probe --out report",
    "# then open report/index.html in a browser; its GIFs are files beside it (copy the whole folder)"))
@click.option("--data", required=True, type=DIR, help="The packed dataset the clips were generated from.")
@click.option("--generated", "generated", required=True, multiple=True, type=DIR,
              help="A directory written by `magvit3d generate`. Repeat to evaluate several models or tasks in one "
                   "report.")
@click.option("--probe", "probe_run", required=True, type=DIR, help="A probe run (magvit3d train-probe) trained on "
                                                                     "frames of the dataset's resolution.")
@click.option("--out", required=True, type=DIR, help="Report directory (replaced atomically): metrics.json, "
                                                     "index.html, clips/.")
@click.option("--lpips-weights", type=click.Path(dir_okay=False, path_type=Path), help=LPIPS_HELP)
@click.option("--split", help="Split for the probe's reference numbers [default: the generated clips' split, "
                              "else test].")
@option("--num", "-n", "num", old=["--max-clips"], default=12, show_default=True, type=click.IntRange(min=0),
        help="Clips per run and task shown as GIFs and 3D plots (the metrics cover every clip).")
@click.option("--object-margin-px", default=4, show_default=True, type=click.IntRange(min=0),
              help="Pixels by which the ground-truth object mask is dilated for the object-region PSNR.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def evaluate_cmd(data, generated, probe_run, out, lpips_weights, split, num, object_margin_px, no_progress):
    """Measure generated clips against the rendered ones and write a self-contained HTML report.

    Pixels: PSNR, SSIM, LPIPS over the generated part of each clip. 3D: the probe localizes the object in every
    frame of every view, confidence-weighted DLT with the dataset's cameras gives a 3D track: ADE / FDE (world
    units and % of the scene extent), reprojection error (multi-view consistency), trajectory-family accuracy.
    Always next to the floor (the probe on the renders) and, for frame prediction, copy-last-frame,
    constant-velocity and a learned track extrapolation (an MLP fitted on the train split) as baselines, with paired
    bootstrap intervals of model - baseline per trajectory family. Also PSNR inside the (dilated) object mask and the
    probe's detection rate. Class-conditional clips: family accuracy and reprojection error only.

    One-view (2D) datasets: no triangulation; the probe's image-plane track against the exported 2D centres, ADE /
    FDE in px and % of the image width, the same baselines in 2D, and a 2D family fit (no reprojection error)."""
    from evaluation.evaluate import evaluate

    metrics = evaluate(data, list(generated), probe_run, out, lpips_weights=lpips_weights, split=split,
                       max_visual_clips=num, progress=not no_progress, log=lambda m: click.echo(m, err=True),
                       object_margin_px=object_margin_px)
    ref = metrics["probe"]["reference"]
    two_d = metrics.get("tracks", {}).get("kind") == "2d"
    if two_d:
        click.echo(f"2D evaluation (one view); probe floor on {ref['split']}: ADE {_num(ref['ade'], 2)} px "
                   f"({_num(ref['ade_pct'], 2)}% of the image width), family accuracy {ref['family_accuracy']:.2f} "
                   f"(on the ground-truth centres {ref['family_accuracy_gt_centres']:.2f})")
    else:
        click.echo(f"probe floor on {ref['split']}: 2D median {ref['2d_error']['median_px']:.3f} px, ADE "
                   f"{ref['ade']:.4f} ({ref['ade_pct']:.2f}% of the scene extent)")
    for run in metrics["runs"]:
        for task, block in run["tasks"].items():
            m = block["summary"]["model"]
            if task == "generate":
                click.echo(f"{run['name']} [{task}]: family accuracy {m['family_accuracy']:.2f}"
                           + ("" if two_d else f", reprojection {_num(m['reprojection_px'])} px"))
            else:
                ade = f"{_num(m['ade'], 2)} px" if two_d else _num(m['ade'], 4)
                click.echo(f"{run['name']} [{task}]: PSNR {_num(m['psnr'])} dB (object {_num(m['object_psnr'])}), "
                           f"SSIM {_num(m['ssim'])}, LPIPS {_num(m['lpips'])}, ADE {ade} "
                           f"({_num(m['ade_pct'], 2)}%), family accuracy {m['family_accuracy']:.2f}, detection rate "
                           f"{_num(m['detection_rate'], 2)}")
    if not metrics["lpips"]["available"]:
        click.echo(f"LPIPS unavailable: {metrics['lpips']['reason']}")
    click.echo(f"report: {out / 'index.html'}")
    return 0


@click.command("compare", cls=Command, epilog=example(
    "magvit3d compare gen/predict ds --out cmp        # generated clips next to the renders they continue",
    "magvit3d compare gen/run1 gen/run2 --out cmp     # two models on the same clips"))
@click.argument("a", type=DIR)
@click.argument("b", type=DIR)
@click.option("--out", required=True, type=DIR, help="Report directory (replaced atomically).")
@click.option("--split", default="test", show_default=True, help="Split to read when A or B is a dataset.")
@click.option("--lpips-weights", type=click.Path(dir_okay=False, path_type=Path), help=LPIPS_HELP)
@option("--num", "-n", "num", old=["--max-clips"], default=12, show_default=True, type=click.IntRange(min=0),
        help="Clips shown as GIFs (the metrics cover every matched clip).")
def compare_cmd(a, b, out, split, lpips_weights, num):
    """Side by side A | B | difference for two sets of clips, each a `magvit3d generate` directory or a dataset
    (its packed --split), matched by sample id; PSNR / SSIM / LPIPS per clip in OUT/metrics.json and
    OUT/index.html."""
    from evaluation.evaluate import compare

    m = compare(a, b, out, split=split, lpips_weights=lpips_weights, max_visual_clips=num,
                log=lambda msg: click.echo(msg, err=True))
    s = m["summary"]
    click.echo(f"{m['matched']} clips matched: PSNR {_num(s['psnr'])} dB, SSIM {_num(s['ssim'])}, LPIPS "
               f"{_num(s['lpips'])}; report: {out / 'index.html'}")
    return 0


def _num(value, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return str(value)
