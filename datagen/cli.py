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

from datagen.config import Interrupted, UserError, check_output_dir

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


CONFIG_HELP = ("Preset name (tiny, demo, demo-textured, 2d, 2d-fast, study, full: datagen/presets/dataset/<name>.toml; "
               "docs/dataset.md#scene-difficulty) or a path to a TOML file. "
               "Flags and --set override it; `magvit3d config show dataset -c NAME` prints it.")
SET_HELP = "Override any config key, e.g. --set render.samples=16 --set 'objects.shapes=[\"cube\"]'. Repeatable."
DIR = click.Path(file_okay=False, path_type=Path)

# ----------------------------------------------------------------------------------------------------------------------
# One naming scheme for every command: --data (the input dataset), --out (what the command writes), -c/--config,
# --set, -n/--num (how many clips), --device auto|cpu|cuda. The spellings of the previous release still work for one
# more release, hidden from --help: Option(old=...) for a renamed option, OldPositional for a positional argument that
# became an option.

DEVICES = ("auto", "cpu", "cuda")
# `magvit3d --help` lists the commands in the order a pipeline runs them, each with this line
PIPELINE = {"render": "Render a dataset of multi-view clips with Blender.",
            "verify": "Check a rendered dataset (files, images, cameras vs masks).",
            "pack": "Pack a dataset's splits into arrays for training.",
            "preview": "Contact sheet and GIF of one sample, 3D centre drawn.",
            "train-tokenizer": "Train the video tokenizer on a packed dataset.",
            "reconstruct": "Originals next to a tokenizer's reconstructions.",
            "tokenize": "Encode a packed dataset into a token cache.",
            "train-transformer": "Train the masked transformer on a token cache.",
            "generate": "Sample clips: predict, generate or complete-view.",
            "train-probe": "Train the probe that finds the object in frames.",
            "evaluate": "Score generated clips (pixels, 3D motion): HTML report.",
            "compare": "Side-by-side page of any two sets of clips.",
            "demo": "All of the above in one resumable command.",
            "config": "Show a preset's config with every default."}


class Option(click.Option):
    """click.Option whose `old` spellings are accepted but left out of --help and of error messages.
    late_required=True: required, but checked by Command once an OldPositional had its chance to fill it in."""

    def __init__(self, *args, old=(), late_required: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.old, self.late_required = set(old), late_required

    def _shown(self) -> list[str]:
        return [o for o in self.opts if o not in self.old]

    def get_help_record(self, ctx):
        opts, self.opts = self.opts, self._shown()
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts

    def get_help_extra(self, ctx):
        extra = super().get_help_extra(ctx)
        if self.late_required:
            extra["required"] = "required"
        return extra

    def get_error_hint(self, ctx):
        return " / ".join(f"'{o}'" for o in self._shown())


def option(*decls, old=(), **kwargs):
    """click.option with old spellings: option("--num", "-n", "num", old=["--num-samples"], type=int)."""
    return click.option(*decls, *old, cls=Option, old=old, **kwargs)


class OldPositional(click.Argument):
    """The positional argument a command took before it became the option `target` (`verify DATASET`, now
    `verify --data DATASET`): still accepted, left out of the usage line; Command moves its value to the option."""

    def __init__(self, decls, target: str, **kwargs):
        super().__init__(decls, required=False, **kwargs)
        self.target = target

    def get_usage_pieces(self, ctx):
        return []


def old_positional(name: str, target: str):
    return click.argument(name, cls=OldPositional, target=target, type=DIR)


INTERRUPTED = "interrupted; rerun the same command to run it again"   # unless the command says more (Interrupted)


class Stopped(Exception):
    """Ctrl-C in a command, carried past click (which would print an empty line and turn it into a bare Abort) to
    main(), which prints its one line and exits with status 130."""


class Command(click.Command):
    """Every magvit3d command: fills an option from its old positional form, then checks late-required options;
    Ctrl-C becomes Stopped with the command's own advice (Interrupted) or the general one."""

    def invoke(self, ctx):
        try:
            return self._invoke(ctx)
        except Interrupted as e:
            raise Stopped(_one_line(e)) from None
        except KeyboardInterrupt:
            raise Stopped(INTERRUPTED) from None

    def _invoke(self, ctx):
        by_name = {p.name: p for p in self.params}
        for p in self.params:
            if isinstance(p, OldPositional):
                value = ctx.params.pop(p.name, None)
                if value is None:
                    continue
                hint = by_name[p.target].get_error_hint(ctx)
                if ctx.params.get(p.target) is not None:
                    given = ctx.params[p.target]
                    raise click.UsageError(f"got both {hint} {given} and a positional {value}; give {hint} once", ctx)
                ctx.params[p.target] = value
        for p in self.params:
            if getattr(p, "late_required", False) and ctx.params.get(p.name) is None:
                raise click.MissingParameter(ctx=ctx, param=p)
        return super().invoke(ctx)


class DeviceChoice(click.Choice):
    """auto | cpu | cuda, the device words of every command. `also`: words still accepted without being advertised
    (render's older 'gpu'; 'mps', Apple's GPU, which auto picks by itself)."""

    def __init__(self, also=()):
        super().__init__(DEVICES)
        self.also = tuple(also)

    def convert(self, value, param, ctx):
        if value in self.also:
            return value
        return super().convert(value, param, ctx)


def example(*lines: str) -> str:
    """The 'Example:' paragraph that ends a command's --help (its epilog; \\b keeps click from rewrapping it)."""
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)


class LazyGroup(click.Group):
    """Commands of other packages are imported only when used, so `magvit3d render` never imports torch and
    datagen does not depend on training at import time. Commands are listed in pipeline order."""

    command_class = Command
    lazy = {"train-tokenizer": "training.cli:train_tokenizer_cmd", "tokenize": "training.cli:tokenize_cmd",
            "reconstruct": "training.cli:reconstruct_cmd", "train-transformer": "training.cli:train_transformer_cmd",
            "generate": "training.cli:generate_cmd",
            "train-probe": "evaluation.cli:train_probe_cmd", "evaluate": "evaluation.cli:evaluate_cmd",
            "compare": "evaluation.cli:compare_cmd", "demo": "evaluation.pipeline:demo_cmd",
            "config": "evaluation.pipeline:config_group"}

    def list_commands(self, ctx):
        names = {*super().list_commands(ctx), *self.lazy}
        return [n for n in PIPELINE if n in names] + sorted(names - set(PIPELINE))

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name].split(":")
            command = getattr(importlib.import_module(module), attr)
        else:
            command = super().get_command(ctx, name)
        if command is not None and name in PIPELINE:
            command.short_help = PIPELINE[name]
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="magvit3d", prog_name=PROG)
def cli():
    """Synthetic multi-view 3D-motion videos with Blender, a MAGVIT-style tokenizer and masked transformer,
    and evaluation. The commands below, in pipeline order; `magvit3d COMMAND --help` explains each, with an example.

    \b
    The whole pipeline in one command (about 20 minutes on a 2-core CPU):
      magvit3d demo --out demo_out
    """


@cli.command(epilog=example("magvit3d render --out ds -c tiny                  # 6 clips in seconds",
                            "magvit3d render --out ds -n 64 --set render.samples=8",
                            "magvit3d render --out /shared/ds -c full --shard 3/16  # shard 3 of a 16-task job array"))
@old_positional("dataset_arg", target="out")
@option("--out", "out", type=DIR, late_required=True, metavar="DATASET",
        help="Dataset directory to render into (created; a rerun skips its complete samples).")
@click.option("--config", "-c", default="demo", show_default=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@option("--num", "-n", "num", old=["--num-samples"], type=int,
        help="Number of clips in the dataset (all shards together).")
@click.option("--resolution", type=int, help="Image width = height in pixels; a multiple of 8.")
@click.option("--frames", type=int, help="Frames per clip (>= 2).")
@click.option("--samples", type=int, help="Cycles samples per pixel.")
@click.option("--engine", type=click.Choice(["cycles", "eevee"]), help="Render engine (EEVEE needs a GPU).")
@click.option("--seed", type=int, help="Dataset seed; each sample's seed derives from it and the sample id.")
@click.option("--device", type=DeviceChoice(also=["gpu"]), default="auto", show_default=True,
              help="auto: the GPU when Blender finds one (OPTIX > CUDA > HIP > ONEAPI > METAL), else the CPU with a "
                   "notice; cuda: the GPU, an error when there is none; cpu.")
@click.option("--workers", "-j", type=click.IntRange(min=1), help="Blender worker processes, each using cores/workers threads [default: one per two cores].")
@click.option("--shard", metavar="I/N", help="Render only samples with id % N == I, I counted from 0 (for job "
                                            "arrays); run `pack` once all shards are done.")
@click.option("--allow-software-eevee", is_flag=True,
              help="Let EEVEE render without a GPU through software GL (~20 s per 128x128 frame).")
@click.option("--sample-timeout", type=FiniteFloat(min=0, min_open=True), default=600, show_default=True,
              metavar="SECONDS",
              help="A render worker that gives no reply to a sample for this long (a hung Blender or GPU driver) is "
                   "killed and replaced, and its sample retried once.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def render(out, config, overrides, num, resolution, frames, samples, engine, seed, device, workers,
           shard, allow_software_eevee, sample_timeout, no_progress):
    """Render a dataset of textured cubes, cylinders and cones on 3D trajectories, seen by a keyed camera rig.

    Complete samples already in DATASET are skipped, so an interrupted render resumes where it stopped.
    Writes DATASET/dataset.json, DATASET/samples/NNNNNN/{meta.json,spec.json,viewK/rgb|mask/FFFF.png} and a
    render_summary.json with timings.
    """
    from datagen.render import parse_shard, render_dataset

    cfg = _dataset_config(config, overrides, dict(num_samples=num, resolution=resolution, frames=frames,
                                                   samples=samples, engine=engine, seed=seed))
    check_output_dir(out, "--out")
    summary = render_dataset(cfg, out, device=device, workers=workers, shard=parse_shard(shard),
                             allow_software_eevee=allow_software_eevee, progress=not no_progress,
                             log=lambda m: click.echo(m, err=True), sample_timeout_s=sample_timeout)
    if summary["rendered"]:
        click.echo(f"rendered {summary['rendered']} clips in {summary['seconds']:.1f} s "
                   f"({summary['clips_per_s']:.2f} clips/s, {summary['camera_frames_per_s']:.1f} camera-frames/s) "
                   f"on {summary['device']} into {out}")
    if summary["failed"]:
        ids = [f["sample_id"] for f in summary["failed"]]
        click.echo(f"{PROG}: error: {len(ids)} sample(s) failed twice: {ids}; see {out}/logs and rerun to retry",
                   err=True)
        return 1
    return 0


@cli.command(epilog=example("magvit3d verify --data ds", "magvit3d verify --data ds --json > report.json"))
@old_positional("dataset_arg", target="data")
@option("--data", "data", type=DIR, late_required=True, metavar="DATASET", help="The rendered dataset to check.")
@click.option("--tolerance", type=FiniteFloat(min=0), default=1.5, show_default=True,
              help="Pixels by which a mask's box may exceed the projected 3D box.")
@click.option("--no-images", is_flag=True, help="Skip decoding PNGs (schema, counts and meta only).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON (the only output on stdout).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def verify(data, tolerance, no_images, as_json, no_progress):
    """Check a rendered dataset: schema, file counts, image sizes, decodable PNGs, and that every exported
    camera projects the object's 3D box onto its mask. Exits 1 listing the failing sample ids."""
    from datagen.verify import verify_dataset

    report = verify_dataset(data, tolerance_px=tolerance, check_images=not no_images, progress=not no_progress)
    if as_json:   # stdout is the JSON document alone, so `verify --json | jq` works; the verdict is the exit code
        click.echo(json.dumps(report, indent=1))
    if report["ok"]:
        if not as_json:
            click.echo(f"ok: {report['samples_checked']} samples in {data} verified")
        return 0
    bad = sorted({e["sample_id"] for e in report["errors"] if e["sample_id"] is not None})
    for e in report["errors"][:20]:
        click.echo(f"  sample {e['sample_id']}: {e['error']}", err=True)
    more = len(report["errors"]) - 20
    if more > 0:
        click.echo(f"  ... and {more} more", err=True)
    click.echo(f"{PROG}: verify failed: {len(report['errors'])} problem(s); failing sample ids: {bad}", err=True)
    return 1


@cli.command(epilog=example("magvit3d pack --data ds"))
@old_positional("dataset_arg", target="data")
@option("--data", "data", type=DIR, late_required=True, metavar="DATASET",
        help="The rendered dataset; the arrays go to DATASET/packed/.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def pack(data, no_progress):
    """Pack every split into uint8 arrays DATASET/packed/<split>_rgb.npy (N, V, T, H, W, 3), opened with mmap
    by training, plus <split>_index.json (ids, labels, 3D positions, 2D centres, cameras). Splits are fixed by
    sample id in dataset.json, so shards rendered separately pack into the same splits."""
    from datagen.pack import pack_dataset

    summary = pack_dataset(data, progress=not no_progress)
    for split, info in summary["splits"].items():
        click.echo(f"{split}: {info['samples']} clips -> {info['rgb']} {tuple(info['shape'])}")
    if summary["warning"]:
        click.echo(f"warning: {summary['warning']}", err=True)
    return 0


@cli.command(epilog=example("magvit3d preview --data ds --sample 3   # writes ds/previews/000003.png and .gif",
                            "magvit3d preview --data ds --sample 3 --out /tmp/s3"))
@old_positional("dataset_arg", target="data")
@option("--data", "data", type=DIR, late_required=True, metavar="DATASET", help="A rendered dataset.")
@click.option("--sample", "sample_id", type=int, required=True, help="Sample id to show.")
@click.option("--out", "out_prefix", type=click.Path(path_type=Path),
              help="Output path prefix (writes PREFIX.png and PREFIX.gif) [default: DATASET/previews/NNNNNN].")
@click.option("--scale", type=click.IntRange(1, MAX_PREVIEW_SCALE),
              help=f"Integer upscaling of each frame, 1..{MAX_PREVIEW_SCALE} [default: to >= 128 px].")
def preview(data, sample_id, out_prefix, scale):
    """Contact sheet (views x frames) with the projected 3D centre drawn on every frame, and a GIF."""
    from datagen.preview import write_preview

    if out_prefix is not None:
        if out_prefix.is_dir() or out_prefix.name in ("", ".", ".."):
            raise click.BadParameter(f"{str(out_prefix)!r} is a directory; give a file prefix such as DIR/name "
                                     f"(writes DIR/name.png and DIR/name.gif)", param_hint="'--out'")
        check_output_dir(out_prefix.parent, "--out")
    png, gif = write_preview(data, sample_id, out_prefix=out_prefix, scale=scale)
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
    except Stopped as e:   # Ctrl-C: what was kept and how to continue, as the interrupted code knows it
        click.echo(f"{PROG}: {e}", err=True)
        sys.exit(130)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(f"{PROG}: {INTERRUPTED}", err=True)
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
    # `python -m datagen.cli` runs this file as __main__, a second copy of the module: run the imported datagen.cli,
    # whose classes (Command, Stopped) are the ones the other packages' commands use
    from datagen.cli import main as imported_main

    imported_main()
