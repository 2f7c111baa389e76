"""The triangulation probe: pixel convention of the soft-argmax, crops and flips; a tiny probe trains (its 2D error
drops), resumes bit for bit, is checkpointed as safetensors + JSON, and refuses frames of another resolution."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datagen.cli import main
from datagen.config import UserError
from datagen.pack import load_packed, pack_dataset
from evaluation.probe import (ProbeNet, ProbeTrainSection, augment, bilinear_target, crop_at, error_stats,
                              load_probe, load_run_config, predict_frames, soft_argmax, train_probe)
from conftest import torchrun_failure
from fakes import make_fake_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_fake_dataset(tmp_path_factory.mktemp("probe") / "ds", num_samples=8, resolution=32, frames=4)
    pack_dataset(root, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A tiny probe trained through the CLI (datagen/presets/probe/tiny.toml)."""
    out = tmp_path_factory.mktemp("probe") / "run"
    with pytest.raises(SystemExit) as e:
        main(["train-probe", "--data", str(dataset), "--out", str(out), "--config", "tiny", "--no-progress"])
    assert e.value.code in (0, None)
    return out


def test_soft_argmax_pixel_convention():
    """A heatmap peaked on cell (i, j) at stride s gives ((j + 0.5) s, (i + 0.5) s); offsets move it by up to a cell;
    the bilinear target's expectation is the centre itself."""
    logits = torch.full((1, 4, 6), -1e4)
    logits[0, 1, 3] = 0
    np.testing.assert_allclose(soft_argmax(logits, None, 4)[0].numpy(), [14.0, 6.0])
    off = torch.zeros(1, 2, 4, 6)
    off[0, 0, 1, 3] = 100.0                                                    # tanh -> +1 cell in u
    np.testing.assert_allclose(soft_argmax(logits, off, 4)[0].numpy(), [18.0, 6.0], atol=1e-5)
    uv = torch.tensor([[9.3, 5.1], [0.5, 23.9]])
    target = bilinear_target(uv, 4, 6, 4)
    np.testing.assert_allclose(target.sum((1, 2)).numpy(), 1.0, rtol=1e-6)
    got = soft_argmax(torch.log(target.clamp(min=1e-30)), None, 4)
    np.testing.assert_allclose(got[0].numpy(), [9.3, 5.1], atol=1e-4)       # inside the grid of cell centres
    np.testing.assert_allclose(got[1].numpy(), [2.0, 14.0], atol=1e-4)      # beyond it: clamped to the border cells


def test_crop_and_flip_keep_the_pixel_convention():
    x = torch.arange(2 * 3 * 20 * 24, dtype=torch.float32).reshape(2, 3, 20, 24)
    crops, origin = crop_at(x, torch.tensor([[10.2, 7.9], [1.0, 19.0]]), 8)
    assert crops.shape == (2, 3, 8, 8) and origin.tolist() == [[6.0, 4.0], [-3.0, 15.0]]
    assert torch.equal(crops[0], x[0, :, 4:12, 6:14])
    assert torch.equal(crops[1, :, :5, 3:], x[1, :, 15:20, 0:5])             # inside the frame
    assert torch.equal(crops[1, :, :5, 0], x[1, :, 15:20, 0])                # replicated left edge
    assert torch.equal(crops[1, :, 5:, 3:], x[1, :, 19:20, 0:5].expand(3, 3, 5))  # replicated bottom edge

    img = torch.zeros(1, 3, 8, 8)
    img[0, :, 2, 5] = 1.0                                                     # pixel (row 2, col 5): centre (5.5, 2.5)
    t = ProbeTrainSection(flip=True, rot90=True, jitter=0, blur_prob=0, noise=0)
    for seed in range(30):
        y, uv = augment(img, torch.tensor([[5.5, 2.5]]), t, torch.Generator().manual_seed(seed))
        i, j = divmod(int(y[0, 0].argmax()), 8)
        assert (j + 0.5, i + 0.5) == tuple(uv[0].tolist())


def test_tiny_probe_trains_and_error_drops(dataset, trained):
    probe = load_probe(trained)
    val = load_packed(dataset, "val")
    gt, vis = val.array("centers_2d"), val.array("visibility", bool)
    trained_err = error_stats(probe.predict(val.rgb)["uv"], gt, vis)
    torch.manual_seed(0)
    untrained = ProbeNet(load_run_config("tiny").model)
    untrained_err = error_stats(predict_frames(untrained, val.rgb)["uv"], gt, vis)
    assert trained_err["mean_px"] < 0.5 * untrained_err["mean_px"], (trained_err, untrained_err)

    summary = json.loads((trained / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 60 and summary["image_size"] == [32, 32]
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "median_px" in r]
    assert [r["step"] for r in val_rows] == [30, 60] and val_rows[-1]["median_px"] == summary["last_validation"]["median_px"]
    ckpt = trained / "checkpoints" / "step_000060"
    assert (ckpt / "model.safetensors").is_file()
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["kind"] == "probe" and cfg["data"]["image_size"] == [32, 32]

    out = probe.predict(val.rgb[:1])
    assert out["uv"].shape == (1, 3, 4, 2) and out["sigma"].shape == (1, 3, 4)
    assert np.all(out["sigma"] > 0) and np.all((out["confidence"] > 0) & (out["confidence"] <= 1))


def test_resume_is_bit_exact(dataset, tmp_path):
    cfg = load_run_config("tiny", ["train.steps=20", "train.val_every=10", "train.ckpt_every=10"])
    whole = train_probe(cfg, dataset, tmp_path / "whole", progress=False)
    with pytest.raises(UserError, match="already holds a probe run"):
        train_probe(cfg, dataset, tmp_path / "whole", progress=False)
    train_probe(cfg, dataset, tmp_path / "split", progress=False, max_steps_this_run=10)
    resumed = train_probe(cfg, dataset, tmp_path / "split", resume=True, progress=False, log=lambda m: None)
    assert resumed["step"] == whole["step"] == 20
    a, b = load_probe(tmp_path / "whole").model.state_dict(), load_probe(tmp_path / "split").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = train_probe(cfg, dataset, tmp_path / "split", resume=True, progress=False, log=lambda m: None)
    assert again["step"] == 20 and again["last_validation"]["median_px"] == whole["last_validation"]["median_px"]
    changed = load_run_config("tiny", ["train.steps=20", "train.lr=1e-3"])
    with pytest.raises(UserError, match="different train config"):
        train_probe(changed, dataset, tmp_path / "split", resume=True, progress=False)


def test_probe_refuses_other_resolutions_and_non_runs(trained, tmp_path):
    probe = load_probe(trained)
    with pytest.raises(UserError, match="trained on 32x32 frames; the input is 64x64"):
        probe.predict(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(UserError, match="does not exist"):
        load_probe(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no probe checkpoint"):
        load_probe(tmp_path / "empty")


def test_train_probe_bad_config_is_one_line(dataset, tmp_path, capsys):
    for args, text in ((["--set", "model.crop=10"], "multiple of"),
                       (["--set", "model.coarse.heatmap_stride=3"], "heatmap_stride = 3"),
                       (["--config", "nosuch"], "unknown probe preset 'nosuch'")):
        with pytest.raises(SystemExit) as e:
            main(["train-probe", "--data", str(dataset), "--out", str(tmp_path / "r"), "--config", "tiny", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and text in err and len(err.strip().splitlines()) == 1, err


def test_probe_ddp_under_torchrun_on_cpu(dataset, tmp_path):
    """train-probe under torchrun: 2 gloo ranks, each its own slice of the batch; rank 0 writes the run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "datagen.cli", "train-probe", "--data", str(dataset), "--out", str(run), "-c", "tiny",
           "--no-progress", "--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "train.val_every=4",
           "--set", "train.ckpt_every=2", "--set", "train.log_every=1", "--set", "train.val_frames=16"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, torchrun_failure(out.stderr)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4 and summary["finished"] and summary["last_validation"]["n"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "split" not in r] == [1, 2, 3, 4]   # logged once, by rank 0
    assert load_probe(run).config["step"] == 4


def test_probe_trains_on_a_tokenizers_reconstructions_too(dataset, tmp_path):
    """train.reconstructions = a tokenizer run: the training frames are the renders plus that tokenizer's decoded
    clips, with the same centres; a path that is not a run is a one-line error before any training."""
    from evaluation.configs import load_probe_config
    from evaluation.probe import ProbeTask, load_frames
    from training.configs import load_tokenizer_config
    from training.tokenize import load_tokenizer, reconstruct_clips
    from training.train_tokenizer import train_tokenizer

    tok = tmp_path / "tok"
    train_tokenizer(load_tokenizer_config("tiny", ["train.steps=2", "train.val_clips=1", "train.batch_size=2"]),
                    dataset, tok, progress=False, log=lambda *a: None)
    renders = load_frames(dataset, "train")
    task = ProbeTask(load_probe_config("tiny", [f"train.reconstructions={tok}"]), dataset)
    n = len(renders)
    assert len(task.train_set) == 2 * n
    assert torch.equal(task.train_set.frames[:n], renders.frames)
    assert torch.equal(task.train_set.uv[n:], renders.uv) and torch.equal(task.train_set.visible[n:], renders.visible)
    rgb = load_packed(dataset, "train").rgb
    N, V, T, H, W, _ = rgb.shape
    expected = reconstruct_clips(load_tokenizer(tok)[0], np.asarray(rgb).reshape(N * V, T, H, W, 3), "cpu")
    assert np.array_equal(task.train_set.frames[n:].numpy(), expected.reshape(N * V * T, H, W, 3))
    assert not torch.equal(task.train_set.frames[n:], renders.frames)     # a 2-step tokenizer is far from exact
    with pytest.raises(UserError, match="train.reconstructions = .*nope.*not a directory"):
        ProbeTask(load_probe_config("tiny", [f"train.reconstructions={tmp_path / 'nope'}"]), dataset)
