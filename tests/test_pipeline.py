"""`magvit3d demo` (evaluation/pipeline.py): the whole pipeline on the tiny preset with a real Blender render, stage
skipping and resume after an interruption, the full preset's configs at reduced size, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.config import UserError
from evaluation import pipeline
from evaluation.pipeline import DemoPlan, run_demo, split_overrides

REPO = Path(__file__).resolve().parent.parent
# the tiny preset with even fewer steps: the point here is the wiring, not the numbers
FAST = ["tokenizer.train.steps=6", "tokenizer.train.val_every=3", "tokenizer.train.ckpt_every=3",
        "transformer.train.steps=6", "transformer.train.val_every=3", "transformer.train.ckpt_every=3",
        "probe.train.steps=6", "probe.train.val_every=3", "probe.train.ckpt_every=3"]


def plan(workdir: Path, extra=(), preset="tiny") -> DemoPlan:
    return DemoPlan(preset=preset, workdir=workdir, device="cpu", overrides=split_overrides([*FAST, *extra]))


def stage_rows(summary: dict) -> dict:
    return {row["stage"]: row for row in summary["stages"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    summary = run_demo(plan(work), progress=False, log=lambda m: None)
    return work, summary


def test_tiny_demo_runs_every_stage_and_writes_the_report(finished):
    work, summary = finished
    rows = stage_rows(summary)
    assert list(rows) == ["render", "verify", "pack", "train-tokenizer", "tokenize", "train-transformer",
                          "train-probe", "generate-predict", "generate-predict-ceiling", "generate-generate",
                          "generate-complete-view", "evaluate"]
    assert not any(r["skipped"] for r in rows.values())
    assert rows["render"]["clips"] == 6
    html = (work / "report" / "index.html").read_text()
    metrics = json.loads((work / "report" / "metrics.json").read_text())
    assert {t for run in metrics["runs"] for t in run["tasks"]} == {"predict", "generate", "complete-view"}
    gifs = list((work / "report").rglob("*.gif"))
    assert gifs and all(p.relative_to(work / "report").as_posix() in html for p in gifs[:3])
    head = rows["evaluate"]["headline"]
    assert "predict.model.psnr" in head and "predict.copy_last.psnr" in head and "predict.floor.ade_pct" in head
    assert "predict-ceiling.model.psnr" in head   # the tokenizer ceiling, a run of its own
    ceiling = next(r for r in metrics["runs"] if r["name"] == "predict-ceiling")
    assert ceiling["info"]["method"] == "ceiling" and ceiling["info"]["composite"] is True
    saved = json.loads((work / "demo_summary.json").read_text())
    assert saved["report"] == str(work / "report" / "index.html") and saved["peak_rss"]["self_gb"] > 0


def test_rerun_skips_finished_stages_and_a_changed_config_redoes_only_downstream(finished):
    work, _ = finished
    again = stage_rows(run_demo(plan(work), progress=False, log=lambda m: None))
    assert all(r["skipped"] for r in again.values())
    tok_mtime = (work / "tokenizer" / "summary.json").stat().st_mtime
    changed = stage_rows(run_demo(plan(work, ["transformer.train.lr=0.001"]), progress=False, log=lambda m: None))
    upstream = ["render", "verify", "pack", "train-tokenizer", "tokenize", "train-probe"]
    assert all(changed[s]["skipped"] for s in upstream)
    assert not any(changed[s]["skipped"] for s in ("train-transformer", "generate-predict", "evaluate"))
    assert (work / "tokenizer" / "summary.json").stat().st_mtime == tok_mtime
    cfg = json.loads((work / "transformer" / "summary.json").read_text())
    assert cfg["step"] == 6


def test_interrupted_transformer_training_resumes_without_redoing_render_or_tokenizer(finished, tmp_path,
                                                                                       monkeypatch):
    import training.train_transformer as tt

    work, _ = finished
    fresh = tmp_path / "work"
    # reuse the finished run's dataset (a copy) so this test does not render again
    import shutil

    shutil.copytree(work / "dataset", fresh / "dataset")
    real = tt.train_transformer

    def interrupted(*args, **kwargs):
        real(*args, **{**kwargs, "max_steps_this_run": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(tt, "train_transformer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(plan(fresh), progress=False, log=lambda m: None)
    state = json.loads((fresh / "demo_state.json").read_text())["stages"]
    assert state["train-tokenizer"]["done"] and not state["train-transformer"]["done"]
    monkeypatch.setattr(tt, "train_transformer", real)
    logs = []
    rows = stage_rows(run_demo(plan(fresh), progress=False, log=logs.append))
    assert rows["train-tokenizer"]["skipped"] and rows["render"]["skipped"] and not rows["train-transformer"]["skipped"]
    assert any("from step 2" in m for m in logs), logs
    assert json.loads((fresh / "transformer" / "summary.json").read_text())["step"] == 6
    assert (fresh / "report" / "index.html").exists()


def test_full_preset_configs_load_and_one_step_of_each_training_stage_runs(tmp_path):
    """The full preset's own model sizes (tokenizer, 768 x 12 transformer, probe) at one training step each, on a
    small dataset; only the dataset size and step counts are overridden."""
    cfgs = pipeline.load_stage_configs(DemoPlan("full", tmp_path, overrides=split_overrides([])))
    assert cfgs["transformer"].model.width == 768 and cfgs["transformer"].model.depth == 12
    assert cfgs["dataset"].render.resolution == 128 and 1024 <= cfgs["tokenizer"].model.codebook_size <= 2048
    small = ["dataset.dataset.num_samples=6", "dataset.render.resolution=32", "dataset.render.frames=8",
             "dataset.render.samples=1"]
    one = [f"{kind}.train.{key}=1" for kind in ("tokenizer", "transformer", "probe")
           for key in ("steps", "val_every", "ckpt_every")]
    one += ["tokenizer.train.val_clips=2", "transformer.train.val_clips=2", "tokenizer.train.crop_size=0",
            "tokenizer.train.crop_frames=0", "tokenizer.train.batch_size=2", "tokenizer.train.workers=0", "transformer.train.batch_size=2", "probe.train.batch_size=8", "probe.train.val_frames=8",
            "tokenizer.train.warmup_steps=0", "transformer.train.warmup_steps=0", "probe.train.warmup_steps=0"]
    p = DemoPlan("full", tmp_path / "w", device="cpu", overrides=split_overrides(small + one),
                 generate_steps=2)
    summary = run_demo(p, progress=False, log=lambda m: None)
    rows = stage_rows(summary)
    assert rows["evaluate"]["headline"]
    for run in ("tokenizer", "transformer", "probe"):
        assert json.loads((tmp_path / "w" / run / "summary.json").read_text())["step"] == 1


def test_the_demo_samples_class_conditional_clips_with_track_guidance_where_the_model_has_a_track(tmp_path):
    for preset, generate, predict, radius in (("demo", 3.0, 2.0, 1.5), ("2d", 3.0, 2.0, 1.5), ("tiny", 1.0, 1.0, 0.0),
                                              ("study", 3.0, 2.0, 1.5)):
        cfgs = pipeline.load_stage_configs(DemoPlan(preset, tmp_path, overrides=split_overrides([])))
        assert pipeline.demo_track_guidance(preset, cfgs, "generate") == generate, preset
        assert pipeline.demo_track_guidance(preset, cfgs, "predict") == predict, preset
        assert pipeline.demo_track_guidance(preset, cfgs, "predict", "ceiling") == 1.0, preset   # samples nothing
        assert pipeline.demo_track_guidance(preset, cfgs, "complete-view") == 1.0, preset
        # guidance near the object only: the demo's masked prediction; never class-conditional clips or the ceiling
        assert pipeline.demo_guidance_radius(preset, cfgs, "predict") == radius, preset
        assert pipeline.demo_guidance_radius(preset, cfgs, "predict", "ceiling") == 0.0, preset
        assert pipeline.demo_guidance_radius(preset, cfgs, "generate") == 0.0, preset
    ar = pipeline.load_stage_configs(DemoPlan("demo", tmp_path, overrides=split_overrides(['transformer.model.arch="ar"'])))
    assert pipeline.demo_guidance_radius("demo", ar, "predict") == 0.0   # the AR prior takes the whole scale


def test_the_3d_demo_predicts_with_a_copy_bias_and_no_other_run_does(tmp_path):
    """The copy bias (the prior towards the last given latent frame's tokens) is the demo preset's, for the masked
    model's prediction only: not the ceiling, not class-conditional clips, not the AR prior, not the presets it was
    not measured on."""
    for preset, bias in (("demo", 1.0), ("2d", 0.0), ("study", 0.0), ("tiny", 0.0)):
        cfgs = pipeline.load_stage_configs(DemoPlan(preset, tmp_path, overrides=split_overrides([])))
        assert pipeline.demo_copy_bias(preset, cfgs, "predict") == bias, preset
        for task, method in (("predict", "ceiling"), ("generate", "model"), ("complete-view", "model")):
            assert pipeline.demo_copy_bias(preset, cfgs, task, method) == 0.0, (preset, task)
    ar = pipeline.load_stage_configs(DemoPlan("demo", tmp_path, overrides=split_overrides(['transformer.model.arch="ar"'])))
    assert pipeline.demo_copy_bias("demo", ar, "predict") == 0.0


def test_the_demos_sample_class_conditional_clips_colder_where_measured_and_2d_completes_no_view():
    runs = pipeline.demo_runs("2d", 1)
    assert runs["generate"] == ("generate", "model", 0.0)
    assert runs["predict"] == ("predict", "model", 0.0) and "complete-view" not in runs   # argmax, guided near it
    demo = pipeline.demo_runs("demo", 3)   # the 3D demo: every run; prediction argmax, class-conditional clips at 0.5
    assert demo["predict"] == ("predict", "model", 0.0) and demo.keys() == pipeline.DEMO_RUNS.keys()
    assert demo["generate"] == ("generate", "model", 0.5)
    study = pipeline.demo_runs("study", 3)   # prediction as the demo (measured on it too); class-conditional not
    assert study["predict"] == ("predict", "model", 0.0) and study["generate"] == ("generate", "model", 1.0)
    assert {k: v for k, v in demo.items() if k not in ("predict", "generate")} == {
        k: v for k, v in pipeline.DEMO_RUNS.items() if k not in ("predict", "generate")}
    assert pipeline.DEMO_RUNS["generate"][2] == 1.0
    assert [pipeline.generate_temperature(p) for p in ("2d", "2d-fast", "demo", "demo-textured", "study", "tiny")] == [
        0, 0, 0.5, 0.5, 1, 1]


def test_the_study_preset_is_the_demo_at_four_times_the_clips_and_more_steps(tmp_path):
    from datagen.config import to_dict

    study = pipeline.load_stage_configs(DemoPlan("study", tmp_path, overrides=split_overrides([])))
    demo = pipeline.load_stage_configs(DemoPlan("demo", tmp_path, overrides=split_overrides([])))
    assert (study["dataset"].dataset.num_samples, demo["dataset"].dataset.num_samples) == (1024, 256)
    study["dataset"].dataset.num_samples = 256
    assert to_dict(study["dataset"]) == to_dict(demo["dataset"])
    assert (study["transformer"].train.steps, demo["transformer"].train.steps) == (5000, 1000)
    # the "seen nowhere" track that guidance near the object contrasts with, trained as in the demo
    assert study["transformer"].train.track_dropout == demo["transformer"].train.track_dropout == 0.1
    assert to_dict(study["transformer"].model) == to_dict(demo["transformer"].model)
    # the study keeps the task mix it was measured with; the demo trains more on prediction since 2026-12-04
    assert (study["transformer"].tasks.predict, demo["transformer"].tasks.predict) == (0.6, 0.7)
    for t in (study["transformer"].tasks, demo["transformer"].tasks):
        t.predict = t.generate = t.unconditional = 0.0
    assert to_dict(study["transformer"].tasks) == to_dict(demo["transformer"].tasks)
    # the study keeps the tokenizer it was measured with: 2500 steps; both train in fp32 on a CPU (the default)
    assert (study["tokenizer"].train.steps, demo["tokenizer"].train.steps) == (2500, 2000)
    assert study["transformer"].train.precision == demo["transformer"].train.precision == "bf16-cuda"
    study["tokenizer"].train.steps = 2000
    assert to_dict(study["tokenizer"]) == to_dict(demo["tokenizer"])
    assert to_dict(study["probe"]) == to_dict(demo["probe"])


def test_demo_textured_renders_its_own_dataset_and_trains_and_samples_as_the_demo(tmp_path):
    from datagen.config import to_dict

    textured = pipeline.load_stage_configs(DemoPlan("demo-textured", tmp_path, overrides=split_overrides([])))
    demo = pipeline.load_stage_configs(DemoPlan("demo", tmp_path, overrides=split_overrides([])))
    assert textured["dataset"].ground.textures == ["checker", "bricks", "noise", "voronoi"]
    assert demo["dataset"].ground.textures == ["plain"]
    for kind in ("tokenizer", "transformer", "probe"):
        assert to_dict(textured[kind]) == to_dict(demo[kind]), kind
    # sampled as the demo: guided, copy-biased prediction at temperature 0, class-conditional clips at 0.5
    assert pipeline.demo_runs("demo-textured", 3) == pipeline.demo_runs("demo", 3)
    assert pipeline.demo_runs("demo-textured", 3)["generate"] == ("generate", "model", 0.5)
    assert (pipeline.demo_track_guidance("demo-textured", textured, "predict"),
            pipeline.demo_guidance_radius("demo-textured", textured, "predict"),
            pipeline.demo_copy_bias("demo-textured", textured, "predict")) == (2.0, 1.5, 1.0)


def test_2d_fast_is_the_2d_scene_at_48_px_trained_and_sampled_as_2d(tmp_path):
    from datagen.config import to_dict

    fast = pipeline.load_stage_configs(DemoPlan("2d-fast", tmp_path, overrides=split_overrides([])))
    full = pipeline.load_stage_configs(DemoPlan("2d", tmp_path, overrides=split_overrides([])))
    assert (fast["dataset"].render.resolution, full["dataset"].render.resolution) == (48, 64)
    fast_scene, full_scene = to_dict(fast["dataset"]), to_dict(full["dataset"])
    fast_scene["render"]["resolution"] = 64
    assert fast_scene == full_scene   # the same scene in world units, only rendered smaller
    for kind in ("tokenizer", "transformer", "probe"):
        assert to_dict(fast[kind]) == to_dict(full[kind]), kind
    # its demo samples every run as the 2d demo does, where a preset it does not name samples with the defaults
    for task in ("predict", "generate"):
        assert pipeline.demo_track_guidance("2d-fast", fast, task) == pipeline.demo_track_guidance("2d", full, task)
        assert pipeline.demo_guidance_radius("2d-fast", fast, task) == pipeline.demo_guidance_radius("2d", full, task)
        assert pipeline.demo_copy_bias("2d-fast", fast, task) == pipeline.demo_copy_bias("2d", full, task)
    assert pipeline.demo_runs("2d-fast", 1) == pipeline.demo_runs("2d", 1)
    assert pipeline.demo_runs("2d-fast", 1)["predict"] == ("predict", "model", 0.0)
    assert pipeline.demo_track_guidance("tiny", fast, "predict") == 1.0   # the table lookup is by preset, not config


def test_bad_set_is_a_one_line_error():
    with pytest.raises(UserError, match="expected KIND.KEY=VALUE with KIND one of dataset, tokenizer"):
        split_overrides(["model.width=3"])


def test_ctrl_c_in_a_stage_says_to_rerun_the_same_command(tmp_path):
    """The demo resumes by itself, so a training's own advice (add --resume) does not apply: one message, the demo's."""
    from datagen.config import Interrupted

    runner = pipeline.StageRunner(plan(tmp_path / "w"), log=lambda m: None)

    def interrupted_training():
        raise Interrupted("interrupted at step 3; checkpoint saved in X; rerun the same command with --resume to "
                          "continue")
    with pytest.raises(Interrupted) as e:
        runner.run("train-tokenizer", {}, [], [tmp_path / "never"], interrupted_training)
    assert str(e.value) == ("interrupted in stage train-tokenizer; rerun the same command to resume (finished stages "
                            "are skipped, an unfinished training continues from its last checkpoint)")


@pytest.mark.parametrize("args,needle", [
    (["-c", "huge"], "Invalid value for '--config' / '-c': 'huge' is not one of 'tiny', 'demo', 'demo-textured', 'full'"),
    (["--preset", "huge"], "'huge' is not one of 'tiny', 'demo', 'demo-textured', 'full'"),   # the old spelling, still accepted
    (["--set", "tokenizer.train.stpes=3"], "unknown config key 'train.stpes'"),
    (["--set", "nope"], "expected KIND.KEY=VALUE"),
    (["--device", "gpu"], "Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda'"),
    (["-n", "0"], "Invalid value for '--num' / '-n': 0 is not in the range x>=1"),
    # stages that cannot take the dataset's frames fail before anything renders, naming the stage
    (["-c", "2d-fast", "--set", "dataset.render.resolution=40"],
     "the probe config does not take the dataset's 16 frames of 40x40 px: 40x40 frames are not a multiple of 16"),
    (["--set", "dataset.render.frames=18"],
     "the tokenizer config does not take the dataset's 18 frames of 64x64 px: frames 18 is not a multiple of the "
     "temporal downsampling factor 4"),
])
def test_demo_bad_input_exit_2_and_nothing_written(tmp_path, args, needle):
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "demo", "--out", str(tmp_path / "w"), *args],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert not (tmp_path / "w").exists()


def test_summary_lines_keep_long_labels_apart_from_their_values():
    summary = {"stages": [{"stage": "evaluate", "seconds": 40.8, "skipped": False,
                           "headline": {"predict.model.psnr": 28.23, "predict.model.ade_pct": 5.407,
                                        "predict-ceiling.learned_extrapolation.ade_pct": 4.313}}],
               "peak_rss": {"self_gb": 1.98, "largest_child_gb": 1.5}, "wall_seconds_this_run": 1412.0,
               "report": "out/report/index.html"}
    lines = pipeline.format_summary(summary).splitlines()
    long = next(line for line in lines if "learned_extrapolation" in line)
    assert long.split() == ["predict-ceiling.learned_extrapolation", "ade_pct=4.313"]
    model = next(line for line in lines if "predict.model" in line)
    assert model.split() == ["predict.model", "psnr=28.23,", "ade_pct=5.407"]
    # the values of every label start in one column
    assert model.index("psnr=") == long.index("ade_pct=")
    assert lines[-2] == "wall time this run 1412 s; peak RSS 1.98 GB (largest child 1.50 GB)"


def test_a_workdir_copied_elsewhere_is_done_and_retrains_on_its_own_data(finished, tmp_path):
    """A demo workdir copied (or moved) whole: every stage stays done, and a changed transformer setting retrains
    it and generates from the copy's own dataset and token cache, not the paths the original recorded."""
    import shutil

    work, _ = finished
    run_demo(plan(work), progress=False, log=lambda m: None)   # (other tests leave it at other settings)
    copy = tmp_path / "elsewhere"
    shutil.copytree(work, copy)
    again = stage_rows(run_demo(plan(copy), progress=False, log=lambda m: None))
    assert [s for s, r in again.items() if not r["skipped"]] == []
    changed = stage_rows(run_demo(plan(copy, ["transformer.train.lr=0.001"]), progress=False, log=lambda m: None))
    assert not changed["train-transformer"]["skipped"] and changed["train-probe"]["skipped"]
    from training import checkpoint as ckpt

    source = ckpt.load_run(copy / "transformer", "transformer")[1]["tokens"]
    assert source["dataset"] == str((copy / "dataset").resolve())
    assert source["tokens"] == str((copy / "tokenizer" / "tokens").resolve())
    generated = json.loads((copy / "generated" / "predict" / "generated.json").read_text())
    assert generated["dataset"] == str((copy / "dataset").resolve())
    assert generated["tokens"] == str((copy / "tokenizer" / "tokens").resolve())


def test_a_rendered_workdir_copied_without_its_frames_resumes_after_pack(finished, tmp_path, monkeypatch):
    """benchmarks/gpu_workdir.py (how the GPU check gets data onto a machine without bpy): the copy has the packed
    dataset but no RGB PNGs and only the render / verify / pack stages; the demo there renders nothing, runs every
    stage after pack, and reads no RGB PNG."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_workdir import copy_rendered_workdir

    work, _ = finished
    run_demo(plan(work), progress=False, log=lambda m: None)   # (other tests leave it at other settings)
    dst = tmp_path / "gpu"
    r = copy_rendered_workdir(work, dst)
    assert r["stages"] == ["render", "verify", "pack"]
    assert not list(dst.rglob("rgb")) and list(dst.rglob("mask")) and (dst / "dataset" / "packed").is_dir()
    assert sorted(p.name for p in dst.iterdir()) == ["dataset", "demo_state.json"]
    with pytest.raises(SystemExit, match="exists"):
        copy_rendered_workdir(work, dst)
    from datagen import render

    monkeypatch.setattr(render, "render_dataset", lambda *a, **k: pytest.fail("rendered again"))
    rows = stage_rows(run_demo(plan(dst), progress=False, log=lambda m: None))
    assert [s for s, row in rows.items() if row["skipped"]] == ["render", "verify", "pack"]
    assert (dst / "report" / "index.html").is_file()
