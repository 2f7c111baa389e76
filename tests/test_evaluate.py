"""evaluate and compare end to end on a fake dataset + fake generated dirs (training.generated.write_generated):
metrics.json keys and values (generated == target: PSNR at its cap, ADE equal to the floor), an index.html whose
GIFs exist inside the report, escaping, LPIPS unavailable/available paths, MP4 through ffmpeg, bad inputs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datagen.cli import main
from datagen.pack import load_packed, pack_dataset
from evaluation import metrics as ev_metrics
from evaluation.probe import train_probe, load_run_config
from fakes import make_fake_dataset
from training.generated import ClipRecord, write_generated
from training.lpips_metric import load_lpips
from training.metrics import psnr_per_clip, ssim_per_clip

FRAMES = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ds = make_fake_dataset(root / "ds", num_samples=10, resolution=32, frames=FRAMES,
                           dataset={"splits": {"train": 0.6, "val": 0.2, "test": 0.2}})
    pack_dataset(ds, progress=False)
    train_probe(load_run_config("tiny"), ds, root / "probe", progress=False)
    return root, ds


def records_for(split, task="predict", given_frames=2, given_views=()):
    return [ClipRecord(int(sid), task, split.index["labels"]["shape"][k], split.index["labels"]["family"][k], k,
                       given_frames=given_frames if task == "predict" else 0, given_views=list(given_views))
            for k, sid in enumerate(split.sample_ids)]


def write_gen(out, split, rgb, task="predict", with_target=True, **kw):
    info = {"task": task, "split": split.split, "dataset_config_hash": split.index["config_hash"], "arch": "fake"}
    return write_generated(out, rgb, records_for(split, task, **kw), info,
                           target=np.array(split.rgb) if with_target else None)


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return (e.value.code or 0), out.out, out.err


def html_links(report: Path) -> list[str]:
    text = (report / "index.html").read_text()
    return re.findall(r'(?:src|href)="([^"]+)"', text)


def test_evaluate_identical_clips(setup, tmp_path, capsys, monkeypatch):
    """generated == target: PSNR at the cap, SSIM 1, LPIPS 0 (random-backbone LPIPS, labelled as such), ADE == the
    floor's; copy-last and constant-velocity next to it; GIFs, plots and (fake) MP4s inside the report."""
    root, ds = setup
    test = load_packed(ds, "test")
    gen = write_gen(tmp_path / "gen", test, np.array(test.rgb))
    # a second run under the same directory name (the two get distinct names in the report)
    cv_dir = write_gen(tmp_path / "other" / "gen", test, np.array(test.rgb), task="complete-view", given_views=[0, 2])
    monkeypatch.setattr(ev_metrics, "load_lpips", lambda path=None, log=None: load_lpips(random_backbone=True))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ffmpeg").write_text('#!/bin/sh\nfor a; do last="$a"; done\ncat > "$last"\n')
    (fake_bin / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{__import__('os').environ['PATH']}")
    report = tmp_path / "report"
    code, out, err = run(["evaluate", "--data", str(ds), "--generated", str(gen), "--generated", str(cv_dir),
                          "--probe", str(root / "probe"), "--out", str(report), "--no-progress"], capsys)
    assert code == 0, err
    m = json.loads((report / "metrics.json").read_text())
    assert [r["name"] for r in m["runs"]] == ["gen", "gen_2"] and list(m["runs"][1]["tasks"]) == ["complete-view"]
    cvs = m["runs"][1]["tasks"]["complete-view"]
    assert cvs["clips"][0]["eval_views"] == [1] and cvs["clips"][0]["eval_frames"] == list(range(FRAMES))
    assert cvs["summary"]["model"]["psnr"] == 100.0 and "copy_last" not in cvs["summary"]
    assert cvs["summary"]["model"]["ade"] == pytest.approx(cvs["summary"]["floor"]["ade"])
    assert m["schema"] == "magvit3d-evaluation" and m["lpips"]["available"] and "RANDOM" in m["lpips"]["backbone"]
    assert m["scene_extent"]["value"] > 0 and "diagonal" in m["scene_extent"]["definition"]
    assert m["mp4"] == "written"
    ref = m["probe"]["reference"]
    assert ref["split"] == "test" and ref["clips"] == len(test) and ref["2d_error"]["n"] == len(test) * 3 * FRAMES
    block = m["runs"][0]["tasks"]["predict"]
    s = block["summary"]
    assert s["clips"] == len(test) == len(block["clips"])
    assert s["model"]["psnr"] == 100.0 and s["model"]["ssim"] == pytest.approx(1.0)
    assert s["model"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    for k in ("ade", "fde", "ade_pct", "reprojection_px", "family_accuracy"):
        assert s["model"][k] == pytest.approx(s["floor"][k]), k
    assert set(s) >= {"model", "floor", "copy_last", "constant_velocity", "by_family", "paired"}
    # object-region PSNR, detection, paired differences, per family
    assert s["model"]["object_psnr"] == 100.0 and s["copy_last"]["object_psnr"] < 100.0
    assert m["object_region"] == {**m["object_region"], "margin_px": 4, "available": True}
    assert s["model"]["detection_rate"] == s["floor"]["detection_rate"] and 0 <= s["visible_rate"] <= 1
    ci = s["paired"]["copy_last"]["object_psnr"]
    assert ci["n"] == len(test) and ci["low"] <= ci["mean"] <= ci["high"] and ci["mean"] > 0
    assert s["paired"]["constant_velocity"]["ade_pct"]["n"] == len(test)
    assert set(s["paired"]) == {"copy_last", "constant_velocity"}                   # 6 train clips: no MLP
    fams = sorted(set(test.index["labels"]["family"]))
    assert list(s["by_family"]) == fams and sum(f["clips"] for f in s["by_family"].values()) == len(test)
    le = m["learned_extrapolation"]["by_given_frames"]["2"]
    assert not le["available"] and "at least 8" in le["reason"] and "learned_extrapolation" not in s
    assert m["runs"][0]["label"] == {"method": "model", "given_frames": "re-decoded", "composite": False,
                                     "title": "model (transformer samples)",
                                     "details": "given frames re-decoded from their tokens"}
    clip = block["clips"][0]
    assert clip["eval_frames"] == list(range(2, FRAMES)) and clip["eval_views"] == [0, 1, 2]
    target = np.array(test.rgb[0])
    held = np.repeat(target[:, 1:2], FRAMES, 1)[:, 2:].reshape(1, -1, 32, 32, 3)
    assert clip["copy_last"]["psnr"] == pytest.approx(psnr_per_clip(held, target[:, 2:].reshape(held.shape))[0])
    assert clip["copy_last"]["ssim"] == pytest.approx(ssim_per_clip(held, target[:, 2:].reshape(held.shape))[0])
    assert abs(clip["ade_pct"] / 100 * m["scene_extent"]["value"] - clip["ade"]) < 1e-12

    links = html_links(report)
    gifs = [link for link in links if link.endswith(".gif")]
    assert len(gifs) == 2 * len(test) and any(link.endswith(".mp4") for link in links)
    for link in links:
        assert not link.startswith(("/", "http")) and ".." not in link
        assert (report / link).is_file(), link
    text = (report / "index.html").read_text()
    assert "metrics.json" in links and "PSNR" in text and "object PSNR" in text and "detection rate" in text
    assert "gen: model (transformer samples)" in text and "model \u2212 copy-last" in text
    assert "learned track extrapolation (MLP, train split) unavailable" in text
    assert "probe floor" in out and "report:" in out
    assert not list(tmp_path.glob(".tmp-*"))                                     # the temp dir was renamed


def test_evaluate_generate_task_escapes_and_reports_missing_lpips(setup, tmp_path, capsys, monkeypatch):
    """Class-conditional clips: family accuracy + reprojection only; every data string is escaped; LPIPS and MP4
    absent are said so in every output."""
    root, ds = setup
    test = load_packed(ds, "test")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    monkeypatch.setenv("PATH", "/nonexistent")
    evil = "<script>alert(1)</script>"
    recs = [ClipRecord(None, "generate", evil, "linear", 0), ClipRecord(None, "generate", "cube", "circular", 1)]
    gen = write_generated(tmp_path / "<b>gen", np.array(test.rgb[:1].repeat(2, 0)), recs,
                          {"task": "generate", "split": None, "arch": '"><img src=x onerror=alert(2)>'})
    report = tmp_path / "report"
    code, out, err = run(["evaluate", "--data", str(ds), "--generated", str(gen), "--probe", str(root / "probe"),
                          "--out", str(report), "--no-progress"], capsys)
    assert code == 0, err
    m = json.loads((report / "metrics.json").read_text())
    block = m["runs"][0]["tasks"]["generate"]
    assert set(block["summary"]["model"]) == {"family_accuracy", "reprojection_px"}
    assert block["clips"][0]["shape"] == evil and "psnr" not in block["clips"][0]
    assert not m["lpips"]["available"] and "are not in the torch hub cache" in m["lpips"]["reason"]
    assert m["mp4"].startswith("MP4 skipped")
    text = (report / "index.html").read_text()
    assert "<script>" not in text and "<img src=x" not in text and "<b>gen" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x" in text
    assert "LPIPS unavailable" in text and "MP4 skipped" in text
    assert "LPIPS unavailable" in err and "LPIPS unavailable" in out
    for link in html_links(report):
        assert (report / link.replace("%3C", "<").replace("%3E", ">")).is_file(), link


def test_evaluate_bad_inputs_exit_2_with_one_line(setup, tmp_path, capsys):
    root, ds = setup
    test = load_packed(ds, "test")
    rgb = np.array(test.rgb)
    cases = {}
    cases["shape"] = (write_gen(tmp_path / "short", test, np.ascontiguousarray(rgb[:, :, :4]), with_target=False),
                      "(V, T, H, W)")
    bad_ids = write_gen(tmp_path / "ids", test, rgb)
    meta = json.loads((bad_ids / "generated.json").read_text())
    meta["clips"][0]["sample_id"] = 9999
    (bad_ids / "generated.json").write_text(json.dumps(meta))
    cases["ids"] = (bad_ids, "9999")
    (tmp_path / "empty").mkdir()
    cases["empty"] = (tmp_path / "empty", "no generated.json")
    cases["missing"] = (tmp_path / "nope", "does not exist")
    good = write_gen(tmp_path / "good", test, rgb)
    for name, (gen, text) in cases.items():
        code, out, err = run(["evaluate", "--data", str(ds), "--generated", str(gen), "--probe", str(root / "probe"),
                              "--out", str(tmp_path / "r"), "--no-progress"], capsys)
        assert code == 2 and text in err and len(err.strip().splitlines()) == 1, (name, err)

    other = tmp_path / "probe64"  # a probe "trained" at another resolution: its config says so
    shutil.copytree(root / "probe", other)
    for cfg_path in other.glob("checkpoints/step_*/config.json"):
        cfg = json.loads(cfg_path.read_text())
        cfg["data"]["image_size"] = [64, 64]
        cfg_path.write_text(json.dumps(cfg))
    code, out, err = run(["evaluate", "--data", str(ds), "--generated", str(good), "--probe", str(other),
                          "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 2 and "trained on 64x64 frames" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_compare_generated_vs_dataset(setup, tmp_path, capsys, monkeypatch):
    root, ds = setup
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    test = load_packed(ds, "test")
    rgb = np.array(test.rgb)
    noisy = np.clip(rgb.astype(int) + np.random.default_rng(0).integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
    gen = write_gen(tmp_path / "gen", test, noisy)
    code, out, err = run(["compare", str(gen), str(ds), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert m["matched"] == len(test) and m["b"]["kind"] == "dataset (test split)"
    want = psnr_per_clip(noisy[:1].reshape(1, -1, 32, 32, 3), rgb[:1].reshape(1, -1, 32, 32, 3))[0]
    assert m["clips"][0]["psnr"] == pytest.approx(want) and m["clips"][0]["lpips"] == "unavailable"
    links = html_links(tmp_path / "cmp")
    assert sum(link.endswith(".gif") for link in links) == len(test)
    assert all((tmp_path / "cmp" / link).is_file() for link in links)
    (tmp_path / "empty").mkdir()
    code, out, err = run(["compare", str(gen), str(tmp_path / "empty"), "--out", str(tmp_path / "c2")], capsys)
    assert code == 2 and "is empty" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(["compare", str(gen), str(ds), "--split", "val", "--out", str(tmp_path / "c3")], capsys)
    assert code == 2 and "share no sample id" in err


def test_region_and_metric_helpers():
    r = ev_metrics.task_region("predict", 3, [], 3, 8)
    assert r.views == [0, 1, 2] and r.frames == [3, 4, 5, 6, 7]
    r = ev_metrics.task_region("complete-view", 0, [0, 2], 3, 8)
    assert r.views == [1] and r.frames == list(range(8))
    assert ev_metrics.task_region("generate", 0, [], 3, 8).frames == list(range(8))
    assert ev_metrics.mean_of([{"a": 1.0}, {"a": None}, {"a": 3.0}], "a") == 2.0
    assert ev_metrics.mean_of([{"a": 1.0}, {"a": "unavailable"}], "a") == "unavailable"


def test_evaluate_learned_extrapolation_labels_and_missing_masks(setup, tmp_path, monkeypatch):
    """With the minimum lowered to the fake dataset's 6 train clips the MLP baseline is fitted (on tracks that are
    the first k frames of the References tracks) and reported beside constant velocity; a run's method labels
    reach its heading; a dataset without its mask PNGs reports object-region PSNR unavailable."""
    from evaluation import evaluate as ev
    from evaluation.extrapolation import ExtrapolatorConfig
    from evaluation.probe import load_probe

    root, ds = setup
    test = load_packed(ds, "test")
    monkeypatch.setattr(ev, "MIN_TRAIN_CLIPS", 2)
    monkeypatch.setattr("evaluation.extrapolation.MIN_TRAIN_CLIPS", 2)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    d = ev.open_dataset(ds)
    probe = load_probe(root / "probe")
    sids, given = ev.given_tracks(d, probe, "train", 3, chunk=4)
    refs = ev.References(d, probe)
    np.testing.assert_allclose(given, np.stack([refs[s]["track"][:3] for s in sids]), atol=1e-5)

    gen = write_gen(tmp_path / "gen", test, np.array(test.rgb), given_frames=3)
    info = json.loads((gen / "generated.json").read_text())
    info.update(method="ceiling", given_frames="pasted", composite=True)
    (gen / "generated.json").write_text(json.dumps(info))
    m = ev.evaluate(ds, [gen], root / "probe", tmp_path / "report", progress=False, log=lambda *_: None,
                    learned_config=ExtrapolatorConfig(steps=20))
    s = m["runs"][0]["tasks"]["predict"]["summary"]
    st = m["learned_extrapolation"]["by_given_frames"]["3"]
    assert st["available"] and st["train_clips"] == len(load_packed(ds, "train")) and st["given_frames"] == 3
    assert set(s["learned_extrapolation"]) == {"ade", "ade_pct", "fde", "fde_pct"}
    assert s["paired"]["learned_extrapolation"]["ade_pct"]["n"] == len(test)
    assert all("learned_extrapolation" in f for f in s["by_family"].values())
    label = m["runs"][0]["label"]
    assert (label["method"], label["given_frames"], label["composite"]) == ("ceiling", "pasted", True)
    text = (tmp_path / "report" / "index.html").read_text()
    assert "tokenizer ceiling (true tokens decoded)" in text and "given frames pasted from the renders" in text
    assert "learned extrapolation" in text and "ceiling \u2212 learned extrapolation" in text

    bare = tmp_path / "bare"                                  # packed arrays without the rendered PNGs
    shutil.copytree(ds, bare, ignore=shutil.ignore_patterns("samples"))
    m = ev.evaluate(bare, [gen], root / "probe", tmp_path / "report2", progress=False, log=lambda *_: None,
                    learned_config=ExtrapolatorConfig(steps=5))
    assert not m["object_region"]["available"] and "cannot be read" in m["object_region"]["reason"]
    s = m["runs"][0]["tasks"]["predict"]["summary"]
    assert s["model"]["object_psnr"] is None and s["paired"]["copy_last"]["object_psnr"]["n"] == 0
    assert "Object-region PSNR unavailable" in (tmp_path / "report2" / "index.html").read_text()
