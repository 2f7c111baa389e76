"""Evaluation of one-view (2D) datasets: the 2D/3D decision, the image-plane track metrics on a constructed case with
a known answer (an oracle probe that returns the exported centres), and `magvit3d evaluate` end to end on a fake
one-view dataset with a tiny trained probe: metrics.json keys and values, an HTML report without 3D fields."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from datagen.cli import main
from evaluation import evaluate as ev
from evaluation.extrapolation import ExtrapolatorConfig
from evaluation.probe import load_run_config, train_probe
from fakes import FAMILIES_2D_FAKE, make_fake_2d_dataset
from training.generated import ClipRecord, write_generated

FRAMES, SIZE, GIVEN = 8, 32, 4


@pytest.fixture(scope="module")
def data2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval2d")
    return root, make_fake_2d_dataset(root / "ds", num_samples=16, resolution=SIZE, frames=FRAMES)


class OracleProbe:
    """A probe without error: the exported centres of whichever rendered clip (or its first frames) it is shown,
    sigma 0.5 px."""

    def __init__(self, ds: ev.Dataset):
        self.ds = ds

    def predict(self, frames) -> dict:
        uv = []
        for clip in np.asarray(frames):
            T = clip.shape[1]
            sid = next(s for s in self.ds.where if np.array_equal(self.ds.clip(s)[:, :T], clip))
            uv.append(self.ds.field(sid, "centers_2d")[:, :T])
        uv = np.stack(uv)
        return {"uv": uv, "sigma": np.full(uv.shape[:-1], 0.5), "confidence": np.full(uv.shape[:-1], 0.8)}


def test_is_2d_dataset():
    assert ev.is_2d_dataset({"config": {"scene": {"kind": "2d"}}, "views": ["a"]})
    assert ev.is_2d_dataset({"config": {"scene": {"kind": "2d"}}, "views": ["a", "b"]})   # the config says so
    assert ev.is_2d_dataset({"config": {}, "views": ["front"]})                            # one view: no DLT
    assert not ev.is_2d_dataset({"config": {"render": {}}, "views": ["a", "b", "c"]})


def test_2d_track_metrics_known_answer(data2d):
    """A generated clip whose probe centres are the true centres + (3, 4) px: ADE = FDE = 5 px, 5/32 = 15.6% of the
    width; the floor (the oracle on the render) 0; copy-last the mean distance from the last given centre; constant
    velocity exact on a line and not on a circle; the floor's 2D fit finds the family; no 3D field anywhere."""
    _, root = data2d
    ds = ev.open_dataset(root)
    assert ds.tracks.kind == "2d" and ds.tracks.scale == SIZE
    refs = ev.References(ds, OracleProbe(ds))
    test = ds.splits["test"]
    for k, sid in enumerate(test.sample_ids):
        shape, family = ds.labels(sid)
        rec = ClipRecord(sid, "predict", shape, family, 0, given_frames=GIVEN)
        c = ds.field(sid, "centers_2d")                                       # (1, T, 2)
        det = {"uv": c + [3.0, 4.0], "sigma": np.full(c.shape[:-1], 0.5)}
        row, arrays = ev.evaluate_clip(k, rec, ds.clip(sid), det, ds, refs, ds.tracks.scale, None)
        assert row["ade"] == pytest.approx(5.0) and row["fde"] == pytest.approx(5.0)
        assert row["ade_pct"] == pytest.approx(100 * 5 / SIZE) and row["fde_pct"] == pytest.approx(100 * 5 / SIZE)
        assert row["floor"]["ade"] == pytest.approx(0.0, abs=1e-12) and row["floor"]["fit_family"] == family
        want = np.linalg.norm(c[0, GIVEN:] - c[0, GIVEN - 1], axis=-1).mean()
        assert row["copy_last"]["ade"] == pytest.approx(want) and want > 1.0
        cv = row["constant_velocity"]["ade"]
        assert cv == pytest.approx(0.0, abs=1e-9) if family == "linear" else cv > 0.5, (family, cv)
        assert arrays["track"].shape == (FRAMES, 2) and arrays["constant_velocity"].shape == (FRAMES, 2)
        assert not {"reprojection_px", "probe_2d_error_px"} & (set(row) | set(row["floor"]))
    ref = ev.probe_reference(ds, refs, "test", ds.tracks.scale)
    assert ref["ade"] == 0.0 and ref["family_accuracy"] == 1.0 and ref["family_accuracy_gt_centres"] == 1.0
    assert "reprojection_px" not in ref and "family_accuracy_gt_positions" not in ref


def test_2d_learned_extrapolation_on_centres(data2d):
    """The learned baseline of a 2D dataset is fitted on the train split's probe centres (k, 2) -> the true centres
    after them (with the oracle: the given tracks ARE the centres)."""
    _, root = data2d
    ds = ev.open_dataset(root)
    oracle = OracleProbe(ds)
    sids, given = ev.given_tracks(ds, oracle, "train", GIVEN, chunk=3)
    np.testing.assert_array_equal(given, ds.splits["train"].array("centers_2d")[:, 0, :GIVEN])
    learned = ev.LearnedExtrapolation(ds, oracle, ds.tracks.scale, cfg=ExtrapolatorConfig(steps=30),
                                      log=lambda *_: None)
    model = learned.get(GIVEN)
    assert model is not None and model.dim == 2 and model.info["train_clips"] == len(sids) == 8
    assert model.extrapolate(ds.tracks.gt(sids[0])).shape == (FRAMES, 2)


def _links(report):
    return re.findall(r'(?:src|href)="([^"]+)"', (report / "index.html").read_text())


def test_evaluate_2d_end_to_end(data2d, tmp_path, capsys):
    """`magvit3d evaluate` on a one-view dataset with a tiny probe (60 steps): predict clips equal to the renders
    (model == floor, PSNR at its cap) and class-conditional clips; the 2D keys, values recomputed from the probe, the
    paired intervals, and an HTML report titled 2D without reprojection, scene extent or NaN."""
    from evaluation.probe import load_probe

    tmp, root = data2d
    train_probe(load_run_config("tiny"), root, tmp / "probe", progress=False)
    ds = ev.open_dataset(root)
    test = ds.splits["test"]
    rgb = np.array(test.rgb)
    labels = test.index["labels"]
    recs = [ClipRecord(int(s), "predict", labels["shape"][k], labels["family"][k], k, given_frames=GIVEN)
            for k, s in enumerate(test.sample_ids)]
    info = {"task": "predict", "split": "test", "dataset_config_hash": ds.info["config_hash"], "arch": "fake"}
    gen = write_generated(tmp_path / "gen", rgb, recs, info, target=rgb)
    cc = [ClipRecord(None, "generate", labels["shape"][k], labels["family"][k], k) for k in range(len(test))]
    gen_cc = write_generated(tmp_path / "gen-cc", rgb, cc, {**info, "task": "generate", "split": None})
    report = tmp_path / "report"
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--data", str(root), "--generated", str(gen), "--generated", str(gen_cc), "--probe",
              str(tmp / "probe"), "--out", str(report), "--no-progress"])
    out = capsys.readouterr()
    assert (e.value.code or 0) == 0, out.err
    assert "2D evaluation (one view)" in out.out and "% of the image width" in out.out

    m = json.loads((report / "metrics.json").read_text())
    assert m["tracks"]["kind"] == "2d" and m["image_width"] == {**m["image_width"], "value": SIZE, "units": "px"}
    assert "scene_extent" not in m
    ref = m["probe"]["reference"]
    assert "reprojection_px" not in ref and ref["family_accuracy_gt_centres"] == 1.0      # clean centres: the ceiling
    assert ref["2d_error"]["n"] == len(test) * FRAMES
    s = m["runs"][0]["tasks"]["predict"]["summary"]
    assert set(s["model"]) == {"psnr", "ssim", "lpips", "object_psnr", "ade", "ade_pct", "fde", "fde_pct",
                               "detection_rate", "family_accuracy"}
    assert set(s["floor"]) == {"ade", "ade_pct", "fde", "fde_pct", "detection_rate", "family_accuracy"}
    assert set(s) >= {"copy_last", "constant_velocity", "learned_extrapolation", "paired", "by_family"}
    assert s["model"]["psnr"] == 100.0 and s["model"]["object_psnr"] == 100.0
    for key in ("ade", "ade_pct", "fde", "family_accuracy", "detection_rate"):
        assert s["model"][key] == pytest.approx(s["floor"][key]), key
    # the numbers again, from the probe itself: model ADE over the predicted frames, copy-last from frame GIVEN - 1
    uv = load_probe(tmp / "probe").predict(rgb)["uv"][:, 0]
    c = test.array("centers_2d")[:, 0]
    ade = np.linalg.norm(uv[:, GIVEN:] - c[:, GIVEN:], axis=-1).mean(1)
    held = np.linalg.norm(uv[:, GIVEN - 1:GIVEN] - c[:, GIVEN:], axis=-1).mean(1)
    assert s["model"]["ade"] == pytest.approx(ade.mean(), rel=1e-6)
    assert s["model"]["ade_pct"] == pytest.approx(100 * ade.mean() / SIZE, rel=1e-6)
    assert s["copy_last"]["ade"] == pytest.approx(held.mean(), rel=1e-6)
    ci = s["paired"]["copy_last"]["ade_pct"]
    assert ci["n"] == len(test) and ci["mean"] == pytest.approx(100 * (ade - held).mean() / SIZE, rel=1e-6)
    assert set(s["paired"]) == {"copy_last", "constant_velocity", "learned_extrapolation"}
    assert list(s["by_family"]) == sorted(FAMILIES_2D_FAKE)
    assert m["learned_extrapolation"]["by_given_frames"][str(GIVEN)]["available"]
    clip = m["runs"][0]["tasks"]["predict"]["clips"][0]
    assert clip["eval_frames"] == list(range(GIVEN, FRAMES)) and clip["eval_views"] == [0]
    assert not {"reprojection_px", "probe_2d_error_px"} & set(clip)
    g = m["runs"][1]["tasks"]["generate"]
    assert set(g["summary"]["model"]) == {"family_accuracy"} and "reprojection_px" not in g["clips"][0]
    want = np.mean([r["fit_family"] == r["family"] for r in g["clips"]])
    assert g["summary"]["model"]["family_accuracy"] == pytest.approx(want)

    text = (report / "index.html").read_text()
    assert "<title>magvit3d evaluation (2D)</title>" in text and "% of the image width" in text
    assert "ADE px" in text and "constant velocity (2D)" in text and "2D plot (image coordinates, px)" in text
    assert "GT centres: the fit&#x27;s ceiling" in text and "one view (front)" in text
    for absent in ("reprojection", "Scene extent", "world units", "rows: views", "NaN", "nan<"):
        assert absent not in text, absent
    assert not re.search(r"\b3D\b", text)                                    # (MAGVIT3D_OFFLINE may appear)
    links = _links(report)
    assert sum(link.endswith(".gif") for link in links) == 2 * len(test)
    assert sum(link.endswith("_trajectory.png") for link in links) == 2 * len(test)
    assert all((report / link).is_file() for link in links)
