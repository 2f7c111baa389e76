"""A one-view (2D) dataset through the command line, stage by stage: train-tokenizer -> tokenize -> train-transformer
(masked, and the autoregressive baseline on the same token cache) -> generate (predict, class-conditional) ->
train-probe -> evaluate, after `pack` of a fake one-view 2D dataset (`make_fake_dataset(kind="2d")`: the tiny-2d
config's specs with masks drawn from each flat shape's outline, no Blender). Tiny sizes and steps: the point is that
every stage accepts V = 1 and that what comes out has the one-view shape and the 2D metrics, not the numbers."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from datagen.pack import load_packed, pack_dataset
from fakes import fake_config, make_fake_dataset

FRAMES, SIZE, SAMPLES = 8, 32, 16          # splits 8 / 4 / 4
GIVEN = 2                                  # the tiny transformer preset's tasks.predict_frames
SPLITS = {"dataset": {"splits": {"train": 0.5, "val": 0.25, "test": 0.25}}}   # 8 / 4 / 4 clips
_CFG = fake_config(SAMPLES, SIZE, FRAMES, "2d", **SPLITS)
VIEW = _CFG.cameras.rig[0].name
SHAPES, FAMILIES = tuple(_CFG.objects.shapes), tuple(_CFG.trajectories.families)   # what class-conditional covers
FAST = {"tokenizer": ["train.steps=6", "train.val_every=3", "train.ckpt_every=6", "train.val_clips=2"],
        "transformer": ["train.steps=6", "train.val_every=3", "train.ckpt_every=6", "train.val_clips=2",
                        "tasks.complete_view=0"],
        "probe": ["train.steps=20", "train.val_every=10", "train.ckpt_every=20", "train.val_frames=16"]}


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see conftest.py


def cli(*args) -> int:
    """`magvit3d ARGS` in this process; its exit status (0 when it returned)."""
    from datagen.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code or 0
    return 0


def sets(kind: str, *extra: str) -> list[str]:
    return [a for o in (*FAST[kind], *extra) for a in ("--set", o)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, one_thread):
    """Every stage once, as a user would type it; returns the paths."""
    w = tmp_path_factory.mktemp("oneview")
    data = make_fake_dataset(w / "ds", num_samples=SAMPLES, resolution=SIZE, frames=FRAMES, kind="2d", **SPLITS)
    pack_dataset(data, progress=False)
    p = {"data": data,
         "tok": w / "tok", "masked": w / "masked", "ar": w / "ar", "probe": w / "probe",
         "predict": w / "gen" / "predict", "generate": w / "gen" / "generate", "ar-predict": w / "gen" / "ar-predict",
         "ar-generate": w / "gen" / "ar-generate", "report": w / "report"}
    common = ["--device", "cpu", "--no-progress"]
    steps = [
        ["train-tokenizer", "--data", p["data"], "--out", p["tok"], "-c", "tiny", *sets("tokenizer"), *common],
        ["tokenize", "--run", p["tok"], "--data", p["data"], *common],
        ["train-transformer", "--tokens", p["tok"], "--out", p["masked"], "-c", "tiny", *sets("transformer"), *common],
        ["train-transformer", "--tokens", p["tok"], "--out", p["ar"], "-c", "tiny",
         *sets("transformer", "model.arch=ar"), *common],
        # prediction as the demo samples it (evaluation/pipeline.py RUNS): temperature 0.5, composite (the default)
        ["generate", "--transformer", p["masked"], "--task", "predict", "--out", p["predict"], "--steps", 4,
         "--temperature", 0.5, *common],
        ["generate", "--transformer", p["masked"], "--task", "generate", "--out", p["generate"], "--steps", 4,
         *common],
        ["generate", "--transformer", p["ar"], "--task", "predict", "--out", p["ar-predict"], "--temperature", 0.5,
         *common],
        ["generate", "--transformer", p["ar"], "--task", "generate", "--out", p["ar-generate"], *common],
        ["train-probe", "--data", p["data"], "--out", p["probe"], "-c", "tiny", *sets("probe"), *common],
        ["evaluate", "--data", p["data"], "--probe", p["probe"], "--out", p["report"], "-n", 2, "--no-progress",
         *[a for run in ("predict", "generate", "ar-predict", "ar-generate") for a in ("--generated", p[run])]],
    ]
    for args in steps:
        assert cli(*args) == 0, args
    return p


def test_token_cache_has_one_view(pipeline):
    tokens = pipeline["tok"] / "tokens"
    for split in ("train", "val", "test"):
        n = len(load_packed(pipeline["data"], split).rgb)
        grid = np.load(tokens / f"{split}_tokens.npy")
        assert n > 0 and grid.ndim == 5 and grid.shape[:2] == (n, 1), (split, grid.shape)   # (N, V, t, h, w)
        assert grid.shape[2] < FRAMES                                             # the temporal factor applies
    index = json.loads((tokens / "test_index.json").read_text())
    assert index["views"] == [VIEW] and index["shape"] == list(grid.shape)


@pytest.mark.parametrize("arch", ["masked", "ar"])
def test_predict_keeps_the_given_frames_and_generates_one_view(pipeline, arch):
    """Predicted clips: (4 test clips, V = 1, T, H, W, 3); the given frames are the renders (pasted), the target is
    the test split as packed, the predicted frames are not (the renders were not pasted over them), and both
    architectures read the one token cache."""
    out = pipeline["predict" if arch == "masked" else "ar-predict"]
    rgb, target = np.load(out / "generated_rgb.npy"), np.load(out / "target_rgb.npy")
    test = np.asarray(load_packed(pipeline["data"], "test").rgb)
    assert rgb.shape == target.shape == test.shape == (4, 1, FRAMES, SIZE, SIZE, 3)
    np.testing.assert_array_equal(target, test)
    np.testing.assert_array_equal(rgb[:, :, :GIVEN], test[:, :, :GIVEN])
    assert all(not np.array_equal(rgb[i, :, GIVEN:], test[i, :, GIVEN:]) for i in range(4))
    info = json.loads((out / "generated.json").read_text())
    assert info["arch"] == arch and info["views"] == [VIEW] and info["composite"] is True
    assert info["tokens"] == str((pipeline["tok"] / "tokens").resolve())
    assert info["transformer"] == str(pipeline[arch].resolve())
    assert [c["given_frames"] for c in info["clips"]] == [GIVEN] * 4


@pytest.mark.parametrize("arch", ["masked", "ar"])
def test_class_conditional_generates_every_shape_and_family_in_one_view(pipeline, arch):
    out = pipeline["generate" if arch == "masked" else "ar-generate"]
    rgb = np.load(out / "generated_rgb.npy")
    n = len(SHAPES) * len(FAMILIES)
    assert rgb.shape == (n, 1, FRAMES, SIZE, SIZE, 3) and not (out / "target_rgb.npy").exists()
    clips = json.loads((out / "generated.json").read_text())["clips"]
    assert {(c["shape"], c["family"]) for c in clips} == {(s, f) for s in SHAPES for f in FAMILIES}


def test_evaluate_reports_2d_metrics_for_both_architectures(pipeline):
    report = pipeline["report"]
    m = json.loads((report / "metrics.json").read_text())
    assert m["dataset"]["views"] == [VIEW] and m["tracks"]["kind"] == "2d"
    assert m["image_width"]["value"] == SIZE and "scene_extent" not in m
    runs = {r["name"]: r for r in m["runs"]}
    assert {r["info"]["arch"] for r in m["runs"]} == {"masked", "ar"}
    for run in runs.values():
        (task, block), = run["tasks"].items()
        s = block["summary"]
        if task == "predict":
            assert set(s["model"]) == {"psnr", "ssim", "lpips", "object_psnr", "ade", "ade_pct", "fde", "fde_pct",
                                       "detection_rate", "family_accuracy"}
            assert set(s) >= {"floor", "copy_last", "constant_velocity", "learned_extrapolation", "paired"}
            assert np.isfinite(s["model"]["psnr"]) and 0 < s["model"]["psnr"] < 100       # generated, not pasted
            assert s["model"]["ade_pct"] == pytest.approx(100 * s["model"]["ade"] / SIZE)
            assert [c["eval_frames"] for c in block["clips"]] == [list(range(GIVEN, FRAMES))] * 4
            assert all(c["eval_views"] == [0] for c in block["clips"])
        else:
            assert task == "generate" and set(s["model"]) == {"family_accuracy"}
            assert len(block["clips"]) == len(SHAPES) * len(FAMILIES)
        for row in block["clips"]:
            assert not {"reprojection_px", "probe_2d_error_px"} & set(row)
    html = (report / "index.html").read_text()
    assert "<title>magvit3d evaluation (2D)</title>" in html and "% of the image width" in html
    assert not re.search(r"\b3D\b", html) and "reprojection" not in html


def test_one_view_cache_refuses_complete_view_training(pipeline, tmp_path, capsys):
    """The tiny preset mixes in complete-view (0.2): on a one-view cache that is one line, exit 2, no run."""
    capsys.readouterr()
    code = cli("train-transformer", "--tokens", pipeline["tok"], "--out", tmp_path / "cv", "-c", "tiny",
               "--set", "tasks.complete_view=0.2", "--device", "cpu", "--no-progress")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err == "magvit3d: error: tasks.complete_view > 0 needs at least 2 views; the token cache has 1"
    assert not (tmp_path / "cv").exists()


def test_one_view_run_refuses_complete_view_generation(pipeline, tmp_path, capsys):
    capsys.readouterr()
    code = cli("generate", "--transformer", pipeline["masked"], "--task", "complete-view", "--out", tmp_path / "g",
               "--device", "cpu", "--no-progress")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("magvit3d: error: --task complete-view needs at least 2 views;") and err.endswith("with 1")
    assert not (tmp_path / "g").exists()


def test_sampling_benchmark_evaluates_both_architectures_into_its_own_section(pipeline, tmp_path, monkeypatch,
                                                                              capsys):
    """benchmarks/sampling.py on the one-view runs with --data/--probe (in this process: torch is imported already):
    its table's numbers are the ones in the metrics.json of the evaluate it ran, and --section writes a section of
    its own next to 'sampling'."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "sampling.py"
    monkeypatch.setattr(sys, "path", list(sys.path))        # the script prepends its folders; undone afterwards
    spec = importlib.util.spec_from_file_location("sampling_benchmark", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- sampling:begin -->\nthe 3D run\n<!-- sampling:end -->\n")
    args = ["--tokens", pipeline["tok"], "--masked", pipeline["masked"], "--ar", pipeline["ar"], "--workdir",
            tmp_path / "w", "--repeats", 1, "--decode-steps", 4, "--threads", 1, "--clips", 2, "--per-class", 1,
            "--visual-clips", 1, "--data", pipeline["data"], "--probe", pipeline["probe"], "--section",
            "The 2D experiments: masked vs autoregressive", "--markdown", md]
    monkeypatch.setattr(sys, "argv", ["sampling.py", *map(str, args)])
    capsys.readouterr()
    bench.main()
    out = capsys.readouterr().out
    res, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
    ev = res["evaluated"]
    m = json.loads((tmp_path / "w" / "eval_report" / "metrics.json").read_text())
    runs = {Path(r["generated"]).name: r for r in m["runs"]}
    assert set(runs) == {"eval_masked_predict", "eval_masked_generate", "eval_ar_predict", "eval_ar_generate",
                         "eval_ceiling_predict"}
    assert ev["kind"] == "2d" and ev["scale"]["value"] == SIZE
    for arch in ("masked", "ar"):
        p = runs[f"eval_{arch}_predict"]
        s, g = p["tasks"]["predict"]["summary"], runs[f"eval_{arch}_generate"]["tasks"]["generate"]["summary"]
        assert p["info"]["temperature"] == 0.5 and p["info"]["composite"] is True and p["info"]["arch"] == arch
        assert runs[f"eval_{arch}_generate"]["info"]["temperature"] == 0.5   # --config demo: the 3D demo's, not 2d's
        a = ev["archs"][arch]
        assert (a["psnr"], a["object_psnr"], a["ade"], a["ade_pct"]) == tuple(
            s["model"][k] for k in ("psnr", "object_psnr", "ade", "ade_pct"))
        assert a["family_accuracy"] == g["model"]["family_accuracy"] and g["clips"] == a["generate_clips"] == len(SHAPES) * len(FAMILIES)
        assert a["s_per_clip_predict"] == p["info"]["sampling_seconds_per_clip"] > 0
    s = runs["eval_masked_predict"]["tasks"]["predict"]["summary"]
    assert ev["references"]["copy_last"] == s["copy_last"] and ev["references"]["floor"] == s["floor"]
    assert set(ev["references"]) == {"copy_last", "constant_velocity", "learned_extrapolation", "ceiling", "floor"}
    assert runs["eval_ceiling_predict"]["info"]["method"] == "ceiling"

    text = md.read_text()
    assert "<!-- sampling:begin -->\nthe 3D run\n<!-- sampling:end -->" in text
    section = text[text.index("<!-- sampling-the-2d-experiments-masked-vs-autoregressive:begin -->"):]
    assert "## The 2D experiments: masked vs autoregressive (`benchmarks/sampling.py`)" in section
    a = ev["archs"]["masked"]
    assert f"| masked (MAGVIT-style), 4 steps | {a['psnr']:.2f} | {a['object_psnr']:.2f} | {a['ade']:.2f} px " \
           f"({a['ade_pct']:.1f}%) | {100 * a['family_accuracy']:.0f}% |" in section
    assert "| copy last frame |" in section and "| tokenizer ceiling" in section and "1 view x" in section
    assert "class-conditional generation at temperature 0.5 and track guidance" in section


def test_error_regions_benchmark_splits_the_evaluated_error(pipeline, tmp_path, monkeypatch, capsys):
    """benchmarks/error_regions.py on the one-view predict run: the regions tile the predicted frames, their error
    adds up to the clips' whole error, its PSNR is the one `magvit3d evaluate` reported for the same clips, and the
    run used as its own oracle changes nothing. A directory without targets is a usage error."""
    import importlib.util
    import sys
    from pathlib import Path

    from training.generated import load_generated

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "error_regions.py"
    monkeypatch.setattr(sys, "path", list(sys.path))        # the script prepends the repo root; undone afterwards
    spec = importlib.util.spec_from_file_location("error_regions", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.analyse(pipeline["data"], pipeline["predict"], oracle=pipeline["predict"])
    regions = res["regions"]
    assert set(regions) == set(bench.REGIONS) and sum(r["share"] for r in regions.values()) == pytest.approx(1.0)

    gs = load_generated(pipeline["predict"])
    target = np.load(pipeline["predict"] / "target_rgb.npy")
    k = gs.records[0].given_frames
    whole = ((gs.rgb[:, :, k:] / 255.0 - target[:, :, k:] / 255.0) ** 2).mean() * 1e4
    held = ((target[:, :, k - 1:k] / 255.0 - target[:, :, k:] / 255.0) ** 2).mean() * 1e4
    assert sum(r["mse_1e4"] for r in regions.values()) == pytest.approx(whole)
    assert sum(r["copy_last_mse_1e4"] for r in regions.values()) == pytest.approx(held)

    m = json.loads((pipeline["report"] / "metrics.json").read_text())
    run = next(r for r in m["runs"] if r["name"] == "predict")["tasks"]["predict"]["summary"]
    assert res["clips"] == run["clips"] == len(gs.records)
    assert res["psnr"]["model"] == pytest.approx(run["model"]["psnr"])
    assert res["psnr"]["copy-last"] == pytest.approx(run["copy_last"]["psnr"])
    assert all(res["psnr"][f"oracle's {r}"] == pytest.approx(res["psnr"]["model"]) for r in bench.REGIONS)

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        bench.main(["--data", str(pipeline["data"]), str(tmp_path / "empty")])
    assert e.value.code == 2 and "no target_rgb.npy" in capsys.readouterr().err
