"""`magvit3d`: the toolkit's one command line (click).

Bad input (an unknown option or preset, a config key that doesn't exist, a value out of range) is reported
as one line on stderr with exit status 2, and nothing is written. A failure of the machine (disk full, permission
denied) is one line with status 1; so is a bug ("internal error"), whose traceback MAGVIT3D_DEBUG=1 shows.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import click

from datagen.config import UserError, check_output_dir

PROG = "magvit3d"
MAX_PREVIEW_SCALE = 16   # a 128 px frame becomes 2048 px; more only makes a multi-gigabyte contact sheet


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _dataset_config(config: str, overrides: list[str], flags: dict):
    """Load a dataset config from a preset name or TOML path, then --set overrides, then explicit flags."""
    from datagen.config import load_config
    from datagen.spec import DatasetConfig

    flag_map = {"num_samples": "dataset.num_samples", "seed": "dataset.seed", "resolution": "render.resolution",
                "frames": "render.frames", "samples": "render.samples", "engine": "render.engine"}
    items = list(overrides) + [f"{flag_map[k]}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    return load_config(DatasetConfig, "dataset", config, items)


class FiniteFloat(click.ParamType):
    """A float that is finite (click's FLOAT takes 'nan' and 'inf', which pass every range check) and >= `min`
    (> `min` with min_open=True)."""
    name = "float"

    def __init__(self, min: float | None = None, min_open: bool = False):
        self.min = min
        self.min_open = min_open

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        below = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        if not math.isfinite(number) or below:
            allowed = "a finite number" + (f" {'>' if self.min_open else '>='} {self.min:g}"
                                           if self.min is not None else "")
            self.fail(f"{value!r} is not {allowed}", param, ctx)
        return number


CONFIG_HELP = ("Preset name (tiny, demo, full: configs/dataset/<name>.toml) or a path to a TOML file. "
               "Flags and --set override it.")
SET_HELP = "Override any config key, e.g. --set render.samples=16 --set 'objects.shapes=[\"cube\"]'. Repeatable."


class LazyGroup(click.Group):
    """Commands of other packages are imported only when used, so `magvit3d render` never imports torch and
    datagen does not depend on training at import time."""

    lazy = {"train-tokenizer": "training.cli:train_tokenizer_cmd", "tokenize": "training.cli:tokenize_cmd",
            "reconstruct": "training.cli:reconstruct_cmd", "train-transformer": "training.cli:train_transformer_cmd",
            "generate": "training.cli:generate_cmd",
            "train-probe": "evaluation.cli:train_probe_cmd", "evaluate": "evaluation.cli:evaluate_cmd",
            "compare": "evaluation.cli:compare_cmd", "demo": "evaluation.pipeline:demo_cmd"}

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="magvit3d", prog_name=PROG)
def cli():
    """Synthetic multi-view 3D-motion videos with Blender, a MAGVIT-style tokenizer and masked transformer,
    and evaluation. Run `magvit3d COMMAND --help` for each command's options."""


@cli.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "-c", default="demo", show_default=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--num-samples", "-n", type=int, help="Number of clips in the dataset (all shards together).")
@click.option("--resolution", type=int, help="Image width = height in pixels; a multiple of 8.")
@click.option("--frames", type=int, help="Frames per clip (>= 2).")
@click.option("--samples", type=int, help="Cycles samples per pixel.")
@click.option("--engine", type=click.Choice(["cycles", "eevee"]), help="Render engine (EEVEE needs a GPU).")
@click.option("--seed", type=int, help="Dataset seed; each sample's seed derives from it and the sample id.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Cycles device. auto: OPTIX > CUDA > HIP > ONEAPI > METAL, else CPU with a notice; "
                   "gpu: error when no GPU is found.")
@click.option("--workers", "-j", type=click.IntRange(min=1), help="Blender worker processes, each using cores/workers threads [default: one per two cores].")
@click.option("--shard", metavar="I/N", help="Render only samples with id % N == I (for job arrays); "
                                            "run `pack` once all shards are done.")
@click.option("--allow-software-eevee", is_flag=True,
              help="Let EEVEE render without a GPU through software GL (~20 s per 128x128 frame).")
@click.option("--sample-timeout", type=FiniteFloat(min=0, min_open=True), default=600, show_default=True,
              metavar="SECONDS",
              help="A render worker that gives no reply to a sample for this long (a hung Blender or GPU driver) is "
                   "killed and replaced, and its sample retried once.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def render(dataset, config, overrides, num_samples, resolution, frames, samples, engine, seed, device, workers,
           shard, allow_software_eevee, sample_timeout, no_progress):
    """Render a dataset of textured cubes, cylinders and cones on 3D trajectories, seen by a keyed camera rig.

    Complete samples already in DATASET are skipped, so an interrupted render resumes where it stopped.
    Writes DATASET/dataset.json, DATASET/samples/NNNNNN/{meta.json,spec.json,viewK/rgb|mask/FFFF.png} and a
    render_summary.json with timings.
    """
    from datagen.render import parse_shard, render_dataset

    cfg = _dataset_config(config, overrides, dict(num_samples=num_samples, resolution=resolution, frames=frames,
                                                   samples=samples, engine=engine, seed=seed))
    check_output_dir(dataset, "DATASET")
    summary = render_dataset(cfg, dataset, device=device, workers=workers, shard=parse_shard(shard),
                             allow_software_eevee=allow_software_eevee, progress=not no_progress,
                             log=lambda m: click.echo(m, err=True), sample_timeout_s=sample_timeout)
    if summary["rendered"]:
        click.echo(f"rendered {summary['rendered']} clips in {summary['seconds']:.1f} s "
                   f"({summary['clips_per_s']:.2f} clips/s, {summary['camera_frames_per_s']:.1f} camera-frames/s) "
                   f"on {summary['device']} into {dataset}")
    if summary["failed"]:
        ids = [f["sample_id"] for f in summary["failed"]]
        click.echo(f"{PROG}: error: {len(ids)} sample(s) failed twice: {ids}; see {dataset}/logs and rerun to retry",
                   err=True)
        return 1
    return 0


@cli.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tolerance", type=FiniteFloat(min=0), default=1.5, show_default=True,
              help="Pixels by which a mask's box may exceed the projected 3D box.")
@click.option("--no-images", is_flag=True, help="Skip decoding PNGs (schema, counts and meta only).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def verify(dataset, tolerance, no_images, as_json, no_progress):
    """Check a rendered dataset: schema, file counts, image sizes, decodable PNGs, and that every exported
    camera projects the object's 3D box onto its mask. Exits 1 listing the failing sample ids."""
    from datagen.verify import verify_dataset

    report = verify_dataset(dataset, tolerance_px=tolerance, check_images=not no_images, progress=not no_progress)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    if report["ok"]:
        click.echo(f"ok: {report['samples_checked']} samples in {dataset} verified")
        return 0
    bad = sorted({e["sample_id"] for e in report["errors"] if e["sample_id"] is not None})
    for e in report["errors"][:20]:
        click.echo(f"  sample {e['sample_id']}: {e['error']}", err=True)
    more = len(report["errors"]) - 20
    if more > 0:
        click.echo(f"  ... and {more} more", err=True)
    click.echo(f"{PROG}: verify failed: {len(report['errors'])} problem(s); failing sample ids: {bad}", err=True)
    return 1


@cli.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def pack(dataset, no_progress):
    """Pack every split into uint8 arrays DATASET/packed/<split>_rgb.npy (N, V, T, H, W, 3), opened with mmap
    by training, plus <split>_index.json (ids, labels, 3D positions, 2D centres, cameras). Splits are fixed by
    sample id in dataset.json, so shards rendered separately pack into the same splits."""
    from datagen.pack import pack_dataset

    summary = pack_dataset(dataset, progress=not no_progress)
    for split, info in summary["splits"].items():
        click.echo(f"{split}: {info['samples']} clips -> {info['rgb']} {tuple(info['shape'])}")
    return 0


@cli.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--sample", "sample_id", type=int, required=True, help="Sample id to show.")
@click.option("--out", "out_prefix", type=click.Path(path_type=Path),
              help="Output path prefix (writes PREFIX.png and PREFIX.gif) [default: DATASET/previews/NNNNNN].")
@click.option("--scale", type=click.IntRange(1, MAX_PREVIEW_SCALE),
              help=f"Integer upscaling of each frame, 1..{MAX_PREVIEW_SCALE} [default: to >= 128 px].")
def preview(dataset, sample_id, out_prefix, scale):
    """Contact sheet (views x frames) with the projected 3D centre drawn on every frame, and a GIF."""
    from datagen.preview import write_preview

    if out_prefix is not None:
        if out_prefix.is_dir() or out_prefix.name in ("", ".", ".."):
            raise click.BadParameter(f"{str(out_prefix)!r} is a directory; give a file prefix such as DIR/name "
                                     f"(writes DIR/name.png and DIR/name.gif)", param_hint="'--out'")
        check_output_dir(out_prefix.parent, "--out")
    png, gif = write_preview(dataset, sample_id, out_prefix=out_prefix, scale=scale)
    click.echo(f"wrote {png} and {gif}")
    return 0


DEBUG_ENV = "MAGVIT3D_DEBUG"   # set to 1 to see the traceback of an unexpected error


def _os_error_text(e: OSError) -> str:
    """'/x/report/index.html: File too large' from an OSError (disk full, permission denied, ...)."""
    reason = e.strerror or str(e) or type(e).__name__
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def main(argv=None) -> None:
    """Entry point: run the click group, turning bad input into one line on stderr and exit status 2, an error of
    the machine (disk full, permission denied) into one line and status 1, and a bug into one line and status 1
    (the traceback with MAGVIT3D_DEBUG=1). No traceback reaches the user otherwise."""
    try:
        code = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:   # bare `magvit3d`: the help, as --help shows it
        click.echo(e.ctx.get_help())
        sys.exit(0)
    except click.exceptions.UsageError as e:
        click.echo(f"{PROG}: error: {_one_line(e.format_message())}", err=True)
        sys.exit(2)
    except click.exceptions.ClickException as e:
        click.echo(f"{PROG}: error: {_one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code if e.exit_code else 2)
    except UserError as e:
        click.echo(f"{PROG}: error: {_one_line(e)}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(f"{PROG}: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except OSError as e:
        if os.environ.get(DEBUG_ENV):
            raise
        click.echo(f"{PROG}: error: {_one_line(_os_error_text(e))}", err=True)
        sys.exit(1)
    except Exception as e:
        if os.environ.get(DEBUG_ENV):
            raise
        click.echo(f"{PROG}: internal error: {type(e).__name__}: {_one_line(e)[:300]} (a bug: please report it with "
                   f"the traceback that {DEBUG_ENV}=1 shows)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
