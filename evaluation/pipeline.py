"""`magvit3d demo`: the whole pipeline, stage by stage, in one output directory (--out); and `magvit3d config show`.

    render -> verify -> pack -> train tokenizer -> tokenize -> train transformer -> train probe
           -> generate (predict, class-conditional generate, complete-view) -> evaluate (REPORT/index.html)

Each stage runs the same function as its own command, with the preset's config
(datagen/presets/<kind>/<preset>.toml) plus `--set STAGE.KEY=VALUE` overrides. OUT/demo_state.json records, per
finished stage, a key: the hash of its config and of the keys of the stages it reads from. A stage whose key is
unchanged and whose output exists is skipped; an unfinished training stage resumes from its last checkpoint; a stage
whose config changed is redone from scratch (its output, which lives inside OUT, is replaced), and so is everything
downstream of it.

It lives in `evaluation` because that is the one package allowed to import all the others.
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from datagen.cli import DIR, Command, DeviceChoice, example, option
from datagen.config import Interrupted, UserError, check_output_dir, load_config, preset_path, to_dict, to_toml
from datagen.dataset import read_json, write_json_atomic
from datagen.spec import DatasetConfig
from evaluation.configs import load_probe_config
from training.configs import load_tokenizer_config, load_transformer_config

# demo-textured: a dataset preset, study: dataset, tokenizer and transformer presets; their other kinds use demo's.
# 2d-fast: a dataset preset (the 2d scene at 48 px); its other kinds use 2d's. Both sample as the model they train
# (_sampling_setting).
PRESETS = ("tiny", "demo", "demo-textured", "full", "2d", "2d-fast", "study")
STAGE_KINDS = ("dataset", "tokenizer", "transformer", "probe")   # the config kinds `--set KIND.KEY=VALUE` addresses
STATE_FILE = "demo_state.json"
# The demo's generated runs: name -> (task, method, sampling temperature); predict is composited over the last given
# frame. predict-ceiling decodes the test clips' true tokens through the same composite: the best any transformer
# could do with this tokenizer. Prediction samples at temperature 0.5 (+0.4 dB over 1.0 on the demo, BENCHMARKS.md;
# PREDICT_TEMPERATURE: presets measured otherwise); class-conditional generation keeps 1.0 (GENERATE_TEMPERATURE:
# presets measured otherwise). benchmarks/sampling.py samples prediction at 0.5 without track guidance, what both
# architectures can do.
DEMO_RUNS = {"predict": ("predict", "model", 0.5), "predict-ceiling": ("predict", "ceiling", 1.0),
             "generate": ("generate", "model", 1.0), "complete-view": ("complete-view", "model", 1.0)}
# Class-conditional clips of a model given a training clip's track (tasks.generate_track) sample with track guidance
# 3: the object is drawn along the track more firmly (3D family 44% -> 67% of 48 clips, BENCHMARKS.md).
DEMO_TRACK_GUIDANCE = 3.0
# Prediction samples with track guidance where a preset is measured on the track (study: 3D ADE 6.76% -> 5.21% on the
# demo's model at 2). The demo guides only near the object (PREDICT_GUIDANCE_RADIUS, token cells) and takes the most
# likely token (PREDICT_TEMPERATURE): on its val clips ADE -1.22 points [-1.76, -0.71] at the same whole-frame PSNR,
# where guidance everywhere cost 0.1-0.3 dB; the same setting on the 2D demo: ADE -2.16 [-3.16, -1.36], PSNR -0.07
# [-0.34, +0.21] (BENCHMARKS.md "Track guidance near the object"); on the study's model: PSNR +0.16 [+0.08, +0.24] at
# the same ADE, checked on its val clips (BENCHMARKS.md "The study, rerun").
PREDICT_TRACK_GUIDANCE = {"study": 2.0, "demo": 2.0, "2d": 2.0}
PREDICT_GUIDANCE_RADIUS = {"demo": 1.5, "2d": 1.5, "study": 1.5}
PREDICT_TEMPERATURE = {"demo": 0.0, "2d": 0.0, "study": 0.0}
# ...and with a prior towards the last given latent frame's token at each place (generate --copy-bias), where a preset
# is measured on it: the 3D demo's model redraws still ground that copy-last keeps exact (BENCHMARKS.md "The demo's
# PSNR tie with copy-last"); with 1, chosen on its val clips, PSNR +0.19 dB there and +0.31 [+0.15, +0.46] on test.
PREDICT_COPY_BIAS = {"demo": 1.0}
# Class-conditional clips sample colder where a preset is measured on it: 2d, whose motion module reads the family
# (the most likely token shows the requested family in 170 of 192 clips against 150 at 0.8, training seeds 0 and 2;
# BENCHMARKS.md "The motion module told the family"), and demo at 0.5 (233 of 312 clips against 198 at 1, training
# seeds 0 and 1; 0 gets 239 but draws nearly every clip's object the same magenta: BENCHMARKS.md "Class-conditional
# 3D clips, colder").
GENERATE_TEMPERATURE = {"2d": 0.0, "demo": 0.5}


def _sampling_setting(table: dict, preset: str, default: float) -> float:
    """The entry of one of the sampling tables above for the transformer preset `preset` trains with, else `default`.
    The tables hold settings of a trained model, so a dataset-only preset samples as the preset whose model it trains
    (datagen.config.PRESET_FALLBACKS), as measured for both: 2d-fast with the 2d settings (BENCHMARKS.md "The 2D demo
    at 48x48 px"), demo-textured with the demo's against the defaults (ADE -2.2 points at the same PSNR,
    class-conditional +8.9 points; BENCHMARKS.md "The textured demo, sampled as the demo")."""
    return table.get(preset_path("transformer", preset).stem, default)


@dataclass
class DemoPlan:
    preset: str
    workdir: Path
    device: str = "auto"
    overrides: dict[str, list[str]] = field(default_factory=dict)
    generate_steps: int = 12
    seed: int = 0

    @property
    def dataset(self) -> Path:
        return self.workdir / "dataset"

    @property
    def tokenizer(self) -> Path:
        return self.workdir / "tokenizer"

    @property
    def transformer(self) -> Path:
        return self.workdir / "transformer"

    @property
    def probe(self) -> Path:
        return self.workdir / "probe"

    def generated(self, task: str) -> Path:
        return self.workdir / "generated" / task

    @property
    def report(self) -> Path:
        return self.workdir / "report"


def split_overrides(items) -> dict[str, list[str]]:
    """'tokenizer.train.steps=5' -> {'tokenizer': ['train.steps=5']}; the first dotted part names the stage config."""
    out: dict[str, list[str]] = {k: [] for k in STAGE_KINDS}
    for item in items:
        kind, _, rest = item.partition(".")
        if kind not in STAGE_KINDS or not rest or "=" not in rest:
            raise UserError(f"--set {item!r}: expected KIND.KEY=VALUE with KIND one of {', '.join(STAGE_KINDS)}, "
                            f"e.g. tokenizer.train.steps=100")
        out[kind].append(rest)
    return out


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _peak_rss_gb() -> dict:
    """Peak resident memory of this process and of its largest finished child (Blender workers, loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # Linux reports KiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {"self_gb": round(own, 3), "largest_child_gb": round(children, 3)}


class StageRunner:
    """Runs stages in order, skipping the ones whose key and output are unchanged, timing the others."""

    def __init__(self, plan: DemoPlan, log):
        self.plan, self.log = plan, log
        self.path = plan.workdir / STATE_FILE
        self.state = read_json(self.path, "demo state") if self.path.exists() else {"stages": {}}
        self.keys: dict[str, str] = {}
        self.rows: list[dict] = []

    def run(self, name: str, config, inputs: list[str], outputs: list[Path], fn, owned: Path | None = None):
        """fn() does the stage's work and returns a dict of headline numbers. `outputs` must exist for the stage to
        count as done; `owned` is the directory the stage writes, removed before a rerun after a config change (with an
        unchanged key an unfinished stage resumes in it instead)."""
        key = _key(name, config, [self.keys[i] for i in inputs])
        self.keys[name] = key
        saved = self.state["stages"].get(name, {})
        if saved.get("key") == key and saved.get("done") and all(p.exists() for p in outputs):
            self.log(f"[{name}] up to date, skipped")
            self.rows.append({"stage": name, "seconds": 0.0, "skipped": True, **saved.get("result", {})})
            return saved.get("result", {})
        if saved.get("key") not in (None, key) and owned is not None:
            shutil.rmtree(owned, ignore_errors=True)   # config changed: the old output can't be resumed or reused
        self.state["stages"][name] = {"key": key, "done": False}
        self._save()
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        try:
            result = fn() or {}
        except KeyboardInterrupt:   # the stage's own advice (e.g. a training's --resume) does not apply here
            raise Interrupted(f"interrupted in stage {name}; rerun the same command to resume (finished stages are "
                              f"skipped, an unfinished training continues from its last checkpoint)") from None
        seconds = time.perf_counter() - t0
        self.state["stages"][name] = {"key": key, "done": True, "seconds": round(seconds, 1), "result": result}
        self._save()
        self.rows.append({"stage": name, "seconds": round(seconds, 1), "skipped": False, **result})
        self.log(f"[{name}] done in {seconds:.1f} s")
        return result

    def _save(self):
        self.plan.workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.state)


def load_stage_config(kind: str, source, overrides=()):
    """The config of one kind (dataset, tokenizer, transformer, probe) from a preset name or a TOML file plus
    KEY=VALUE overrides: what `render`, `train-*`, `demo` and `config show` load."""
    loaders = {"dataset": lambda src, ov: load_config(DatasetConfig, "dataset", src, ov),
               "tokenizer": load_tokenizer_config, "transformer": load_transformer_config, "probe": load_probe_config}
    if kind not in loaders:
        raise UserError(f"unknown config kind {kind!r}; allowed: {', '.join(STAGE_KINDS)}")
    return loaders[kind](source, list(overrides))


def generate_temperature(preset: str) -> float:
    """The temperature the demo of `preset` samples class-conditional clips at: GENERATE_TEMPERATURE's, else
    DEMO_RUNS'."""
    return _sampling_setting(GENERATE_TEMPERATURE, preset, DEMO_RUNS["generate"][2])


def demo_runs(preset: str, views: int) -> dict[str, tuple[str, str, float]]:
    """DEMO_RUNS as `preset` samples them on a dataset of `views` views: its class-conditional temperature
    (generate_temperature), its prediction temperature (PREDICT_TEMPERATURE), and no view completion with one view
    (the 2D experiment)."""
    runs = dict(DEMO_RUNS)
    runs["generate"] = (*runs["generate"][:2], generate_temperature(preset))
    runs["predict"] = (*runs["predict"][:2], _sampling_setting(PREDICT_TEMPERATURE, preset, DEMO_RUNS["predict"][2]))
    if views < 2:
        del runs["complete-view"]
    return runs


def demo_track_guidance(preset: str, cfgs: dict, task: str, method: str = "model") -> float:
    """The track guidance the demo samples `task` with: DEMO_TRACK_GUIDANCE for class-conditional clips of a model
    given a training clip's track (tasks.generate_track), PREDICT_TRACK_GUIDANCE's for prediction with a model given
    the track (model.track_frames), else 1 (off; always for a method that samples nothing, e.g. the ceiling)."""
    if method != "model":
        return 1.0
    if task == "generate" and cfgs["transformer"].tasks.generate_track:
        return DEMO_TRACK_GUIDANCE
    if task == "predict" and cfgs["transformer"].model.track_frames:
        return _sampling_setting(PREDICT_TRACK_GUIDANCE, preset, 1.0)
    return 1.0


def demo_guidance_radius(preset: str, cfgs: dict, task: str, method: str = "model") -> float:
    """The radius (token cells) the demo's track guidance of `task` falls off over: PREDICT_GUIDANCE_RADIUS's for
    guided prediction with the masked model, else 0 (the scale on every token)."""
    guided = demo_track_guidance(preset, cfgs, task, method) != 1.0
    if task == "predict" and guided and cfgs["transformer"].model.arch == "masked":
        return _sampling_setting(PREDICT_GUIDANCE_RADIUS, preset, 0.0)
    return 0.0


def demo_copy_bias(preset: str, cfgs: dict, task: str, method: str = "model") -> float:
    """The copy bias the demo predicts with: PREDICT_COPY_BIAS's for prediction by the masked model, else 0."""
    if task == "predict" and method == "model" and cfgs["transformer"].model.arch == "masked":
        return _sampling_setting(PREDICT_COPY_BIAS, preset, 0.0)
    return 0.0


def load_stage_configs(plan: DemoPlan) -> dict:
    """Every stage's config from the preset + overrides; all of them load (and fail) before any work starts,
    including whether the tokenizer and the probe take the dataset's frames (a clash would otherwise surface only
    when their stage starts, minutes of rendering later)."""
    cfgs = {kind: load_stage_config(kind, plan.preset, plan.overrides.get(kind, [])) for kind in STAGE_KINDS}
    render = cfgs["dataset"].render
    for kind, check in (("tokenizer", lambda: cfgs["tokenizer"].model.validate(render.resolution, render.frames)),
                        ("probe", lambda: cfgs["probe"].model.check_image(render.resolution, render.resolution))):
        try:
            check()
        except UserError as e:
            raise UserError(f"the {kind} config does not take the dataset's {render.frames} frames of "
                            f"{render.resolution}x{render.resolution} px: {e}") from None
    return cfgs


def run_demo(plan: DemoPlan, *, progress: bool = True, log=print) -> dict:
    """Run (or resume) the whole pipeline; returns the summary also written to WORKDIR/demo_summary.json."""
    from datagen.pack import pack_dataset
    from datagen.render import render_dataset
    from datagen.verify import verify_dataset
    from evaluation.evaluate import evaluate
    from evaluation.probe import train_probe
    from training.generate import generate
    from training.tokenize import tokenize_dataset
    from training.train_tokenizer import train_tokenizer
    from training.train_transformer import train_transformer

    if plan.preset not in PRESETS:
        raise UserError(f"unknown preset {plan.preset!r}; allowed: {', '.join(PRESETS)}")
    check_output_dir(plan.workdir, "--out")
    cfgs = load_stage_configs(plan)
    plan.workdir.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(plan, log)
    t_start = time.perf_counter()

    def render():
        s = render_dataset(cfgs["dataset"], plan.dataset, device=plan.device, progress=progress, log=log)
        if s["failed"]:
            raise UserError(f"{len(s['failed'])} sample(s) failed to render twice: "
                            f"{[f['sample_id'] for f in s['failed']]}; see {plan.dataset}/logs and rerun to retry")
        return {"clips": s["rendered"] + s.get("already_complete", 0), "device": s["device"]}

    def verify():
        r = verify_dataset(plan.dataset, progress=progress)
        if not r["ok"]:
            bad = sorted({e["sample_id"] for e in r["errors"] if e["sample_id"] is not None})
            raise UserError(f"verify found {len(r['errors'])} problem(s) in {plan.dataset}; failing samples {bad}; "
                            f"run `magvit3d verify --data {plan.dataset}` for details")
        return {"samples_checked": r["samples_checked"]}

    def pack():
        s = pack_dataset(plan.dataset, progress=progress)
        return {"splits": {k: v["samples"] for k, v in s["splits"].items()}}

    def finished(summary: dict, stage: str) -> dict:
        if not summary.get("finished", True):   # stopped early: never record an unfinished training as done
            raise UserError(f"{stage} stopped at step {summary['step']} before its last step; rerun to continue")
        return summary

    def tokenizer():
        s = finished(train_tokenizer(cfgs["tokenizer"], plan.dataset, plan.tokenizer, resume=True,
                                     device=plan.device, progress=progress, log=log), "train-tokenizer")
        v = s.get("last_validation") or {}
        return {"val_psnr": v.get("psnr"), "val_ssim": v.get("ssim"), "codebook_usage": v.get("usage")}

    def tokenize():
        s = tokenize_dataset(plan.tokenizer, plan.dataset, device=_device(plan.device), progress=progress,
                             augment=cfgs["transformer"].train.augment)
        return {"shapes": {k: v["shape"] for k, v in s.items()}}

    def transformer():
        s = finished(train_transformer(cfgs["transformer"], plan.tokenizer, plan.transformer, resume=True,
                                       device=plan.device, progress=progress, log=log), "train-transformer")
        v = s.get("last_validation") or {}
        return {k: v[k] for k in ("acc", "acc_predict", "loss") if k in v}

    def probe():
        s = finished(train_probe(cfgs["probe"], plan.dataset, plan.probe, resume=True, device=plan.device,
                                 progress=progress, log=log), "train-probe")
        v = s.get("last_validation") or {}
        return {k: v[k] for k in ("median_px", "mean_px") if k in v}

    def gen(run):
        task, method, temperature = RUNS[run]
        def fn():
            s = generate(plan.transformer, task, plan.generated(run), steps=plan.generate_steps, seed=plan.seed,
                         num=1 if task == "generate" else None, method=method, composite=task == "predict",
                         temperature=temperature, track_guidance=demo_track_guidance(plan.preset, cfgs, task, method),
                         track_guidance_radius=demo_guidance_radius(plan.preset, cfgs, task, method),
                         copy_bias=demo_copy_bias(plan.preset, cfgs, task, method),
                         tokens=plan.tokenizer,   # (this workdir's cache, not the path the transformer recorded)
                         device=plan.device, progress=progress, log=log)
            return {"clips": s.get("clips")}
        return fn

    def report():
        m = evaluate(plan.dataset, [plan.generated(r) for r in RUNS], plan.probe, plan.report, progress=progress,
                     log=log)
        return {"metrics": str(plan.report / "metrics.json"), "headline": headline(m)}

    RUNS = demo_runs(plan.preset, len(cfgs["dataset"].cameras.rig))
    P = plan
    runner.run("render", to_dict(cfgs["dataset"]), [], [P.dataset / "dataset.json"], render, owned=P.dataset)
    runner.run("verify", {}, ["render"], [P.dataset / "dataset.json"], verify)
    runner.run("pack", {}, ["verify"], [P.dataset / "packed"], pack, owned=P.dataset / "packed")
    runner.run("train-tokenizer", to_dict(cfgs["tokenizer"]), ["pack"], [P.tokenizer / "summary.json"], tokenizer,
               owned=P.tokenizer)
    # what the transformer needs from the cache, in the key only when asked for (older workdirs stay up to date):
    # augmented copies, and token motion (caches written before it lack it)
    t = cfgs["transformer"].train
    needs = {**({"augment": t.augment} if t.augment else {}), **({"token_motion": True} if t.motion_weight else {})}
    runner.run("tokenize", needs, ["train-tokenizer"], [P.tokenizer / "tokens"], tokenize,
               owned=P.tokenizer / "tokens")
    runner.run("train-transformer", to_dict(cfgs["transformer"]), ["tokenize"], [P.transformer / "summary.json"],
               transformer, owned=P.transformer)
    probe_key = to_dict(cfgs["probe"])
    if not cfgs["probe"].train.reconstructions:   # the probe must find the object in decoded video too
        cfgs["probe"].train.reconstructions = str(P.tokenizer)
        # (named, not its path, in the key: a workdir moved or copied whole keeps its probe)
        probe_key["train"]["reconstructions"] = "the workdir's tokenizer"
    runner.run("train-probe", probe_key, ["train-tokenizer"], [P.probe / "summary.json"], probe, owned=P.probe)
    for run, (task, method, temperature) in RUNS.items():
        tg = demo_track_guidance(P.preset, cfgs, task, method)
        guided = {"track_guidance": tg} if tg != 1.0 else {}   # (in the key only when on: older workdirs stay done)
        radius = demo_guidance_radius(P.preset, cfgs, task, method)
        guided.update({"track_guidance_radius": radius} if radius else {})
        bias = demo_copy_bias(P.preset, cfgs, task, method)
        guided.update({"copy_bias": bias} if bias else {})
        # (the composite's rule in the key: a workdir composited before the object's mask was kept out redoes it)
        composite = "over the last given frame, its object kept out" if task == "predict" else False
        runner.run(f"generate-{run}", {"steps": P.generate_steps, "seed": P.seed, "method": method,
                                       "composite": composite, "temperature": temperature, **guided},
                   ["train-transformer"], [P.generated(run)], gen(run), owned=P.generated(run))
    runner.run("evaluate", {}, [f"generate-{r}" for r in RUNS] + ["train-probe"], [P.report / "index.html"], report,
               owned=P.report)
    summary = {"preset": plan.preset, "workdir": str(plan.workdir), "report": str(plan.report / "index.html"),
               "wall_seconds_this_run": round(time.perf_counter() - t_start, 1),
               "stage_seconds_total": round(sum(s.get("seconds", 0) for s in runner.state["stages"].values()), 1),
               "peak_rss": _peak_rss_gb(), "stages": runner.rows}
    write_json_atomic(plan.workdir / "demo_summary.json", summary)
    return summary


def _device(name: str):
    from training.device import pick_device

    return pick_device(name)


def headline(metrics: dict) -> dict:
    """The few numbers the summary table shows, from evaluate's metrics.json: per task and method (model, floor,
    copy_last, constant_velocity) PSNR, ADE in % of the scene extent, reprojection error and family accuracy."""
    out = {}
    for run in metrics.get("runs", []):
        for task, block in run.get("tasks", {}).items():
            where = task if run.get("name", task) == task else run["name"]   # e.g. predict-ceiling
            for method, vals in (block.get("summary") or {}).items():
                if not isinstance(vals, dict):
                    continue
                for k in ("psnr", "psnr_object", "lpips", "ade_pct", "reprojection_px", "family_accuracy"):
                    if vals.get(k) is not None:
                        out[f"{where}.{method}.{k}"] = vals[k]
    return out


# ----------------------------------------------------------------------------------------------------------------------
# command line (registered lazily by datagen.cli as `magvit3d demo`)

@click.command("demo", cls=Command, epilog=example(
    "magvit3d demo --out demo_out                      # what `make demo` runs",
    "magvit3d demo -c tiny --out /tmp/tiny             # tiny settings: checks that every stage runs",
    "magvit3d demo -c 2d --out demo2d                  # the seed's 2D experiment: one view, flat shapes",
    "magvit3d demo -c 2d-fast --out demo2d_fast        # the same at 48x48 px: under 10 minutes on 2 cores",
    "magvit3d demo -c study --out study                # the longer CPU run the per-family goals are measured on",
    "magvit3d demo -c full --out full_out --device cuda",
    "magvit3d demo --out demo_out -n 64 --set tokenizer.train.steps=300"))
@option("--config", "-c", "preset", old=["--preset"], default="demo", show_default=True, type=click.Choice(PRESETS),
        help="Preset of every stage (datagen/presets/<kind>/<name>.toml). tiny: seconds per stage (tests); "
             "demo: ~20 min on a 2-core CPU, plain ground (CLEVR-like); demo-textured: the demo on textured "
             "ground (the dataset preset; the other stages use demo's and sample as the demo); 2d: squares, discs "
             "and triangles moving in a plane under one orthographic camera, 18-23 min on 2 cores; 2d-fast: the 2d "
             "scene at 48x48 px, ~8 min on 2 cores, about as accurate; study: the demo at 1024 clips and 5000 "
             "transformer steps, prediction sampled with track guidance 2 (~65-90 min on 2 cores); full: the seed's "
             "scale, one GPU.")
@option("--out", "out", old=["--workdir"], default="demo_out", show_default=True, type=DIR,
        help="Everything goes here: dataset/, tokenizer/, transformer/, probe/, generated/, report/.")
@click.option("--set", "overrides", multiple=True, metavar="KIND.KEY=VALUE",
              help="Override a stage config key, KIND one of dataset, tokenizer, transformer, probe, "
                   "e.g. --set tokenizer.train.steps=100 --set dataset.render.samples=8. Repeatable.")
@click.option("--num", "-n", "num", type=click.IntRange(min=1),
              help="Clips to render (dataset.dataset.num_samples) [default: the preset's].")
@click.option("--device", type=DeviceChoice(), default="auto", show_default=True,
              help="For every stage. auto: the GPU when there is one, else the CPU; cuda: the GPU for training and "
                   "for Cycles (any GPU backend Blender finds), an error when there is none; cpu.")
@click.option("--steps", "generate_steps", default=12, show_default=True, type=click.IntRange(min=1),
              help="Parallel-decoding steps when generating.")
@click.option("--no-progress", is_flag=True, help="Plain log lines instead of progress bars.")
def demo_cmd(preset, out, overrides, num, device, generate_steps, no_progress):
    """Run the whole pipeline end to end: render -> verify -> pack -> train tokenizer -> tokenize -> train
    transformer -> train probe -> generate (frame prediction on held-out clips, class-conditional generation for
    every shape x family, view completion) -> evaluate, ending with OUT/report/index.html.

    Rerunning resumes: finished stages whose config is unchanged are skipped, an interrupted training continues
    from its last checkpoint. Stage times and headline numbers go to OUT/demo_summary.json."""
    items = list(overrides) + ([f"dataset.dataset.num_samples={num}"] if num is not None else [])
    plan = DemoPlan(preset=preset, workdir=out, device=device, overrides=split_overrides(items),
                    generate_steps=generate_steps)
    summary = run_demo(plan, progress=not no_progress, log=lambda m: click.echo(m, err=True))
    click.echo(format_summary(summary))
    return 0


@click.group("config")
def config_group():
    """Look at configs: `magvit3d config show KIND -c PRESET` prints one with every key and its value."""


@config_group.command("show", cls=Command, short_help="Print a config as TOML, every default filled in.", epilog=example(
    "magvit3d config show dataset -c demo              # what `magvit3d render` uses by default",
    "magvit3d config show tokenizer -c tiny --set train.steps=50",
    "magvit3d config show dataset > my_rig.toml        # edit it, then: magvit3d render -c my_rig.toml ..."))
@click.argument("kind", type=click.Choice(STAGE_KINDS), metavar="KIND")
@click.option("--config", "-c", default="demo", show_default=True,
              help="Preset name (tiny, demo, demo-textured, 2d, 2d-fast, study, full: datagen/presets/KIND/<name>.toml; "
                   "demo-textured is demo's but for the dataset, 2d-fast 2d's but for the dataset, study demo's but "
                   "for the dataset, tokenizer and transformer) or "
                   "a path to a TOML file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any key, as the commands' --set does. Repeatable.")
def config_show_cmd(kind, config, overrides):
    """Print the config of KIND (dataset, tokenizer, transformer, probe) as the commands resolve it: the preset or
    file, then --set, with every key that was left to its default filled in. Valid TOML: save it, edit it and pass
    the file to -c."""
    cfg = load_stage_config(kind, config, overrides)
    sets = "".join(f" --set {o}" for o in overrides)
    click.echo(f"# magvit3d config show {kind} -c {config}{sets}: every key, defaults included\n{to_toml(cfg)}",
               nl=False)
    return 0


def format_summary(summary: dict) -> str:
    lines = [f"{'stage':<28}{'seconds':>9}  result"]
    for row in summary["stages"]:
        extra = {k: v for k, v in row.items() if k not in ("stage", "seconds", "skipped", "headline", "metrics")}
        text = "skipped (up to date)" if row["skipped"] else ", ".join(f"{k}={_short(v)}" for k, v in extra.items())
        lines.append(f"{row['stage']:<28}{row['seconds']:>9.1f}  {text}")
        groups: dict[str, list[str]] = {}
        for k, v in (row.get("headline") or {}).items():
            prefix, _, metric = k.rpartition(".")
            groups.setdefault(prefix, []).append(f"{metric}={_short(v)}")
        width = max((len(p) for p in groups), default=0) + 2   # (long labels such as
        for prefix, items in groups.items():                    # predict-ceiling.learned_extrapolation fit)
            lines.append(f"{'':<39}{prefix:<{width}}{', '.join(items)}")
    rss = summary["peak_rss"]
    lines.append(f"wall time this run {summary['wall_seconds_this_run']:.0f} s; peak RSS {rss['self_gb']:.2f} GB "
                 f"(largest child {rss['largest_child_gb']:.2f} GB)")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
