"""The tokenizer training loop on a fake packed dataset (no Blender): learning, bit-exact resume, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.config import UserError
from datagen.pack import pack_dataset, rgb_path
from conftest import torchrun_failure
from fakes import make_fake_dataset
from training.train_tokenizer import load_run_config, lr_at, train_tokenizer

REPO = Path(__file__).resolve().parent.parent
QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = make_fake_dataset(tmp_path_factory.mktemp("tok") / "ds", num_samples=6, resolution=16, frames=4)
    pack_dataset(root, progress=False)
    return root


def tiny(**overrides):
    items = ["train.steps=12", "train.batch_size=2", "train.log_every=1", "train.val_every=6", "train.ckpt_every=3",
             "train.val_clips=2", "train.warmup_steps=2", "model.channels=8", "model.norm_groups=4"]
    return load_run_config("tiny", items + [f"{k}={v}" for k, v in overrides.items()])


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(packed, tmp_path):
    straight = train_tokenizer(tiny(), packed, tmp_path / "a", **QUIET)
    assert straight["step"] == 12 and straight["finished"]
    first = train_tokenizer(tiny(), packed, tmp_path / "b", max_steps_this_run=5, **QUIET)
    assert first["step"] == 5 and not first["finished"]
    second = train_tokenizer(tiny(), packed, tmp_path / "b", resume=True, **QUIET)
    assert second["step"] == 12
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in range(6, 13)] == [b[s] for s in range(6, 13)]  # bit for bit on the CPU


def test_training_lowers_the_reconstruction_loss_and_logs_validation(packed, tmp_path):
    train_tokenizer(tiny(**{"train.steps": 30, "train.lr": 3e-3}), packed, tmp_path / "r", **QUIET)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    recon = [r["recon"] for r in rows if "recon" in r]
    assert sum(recon[-5:]) / 5 < 0.7 * sum(recon[:5]) / 5
    val = [r for r in rows if r.get("split") == "val"]
    assert [r["step"] for r in val] == [6, 12, 18, 24, 30]
    assert all(0 < r["usage"] <= 1 and r["perplexity"] >= 1 and 0 < r["psnr"] < 100 for r in val)
    ckpt = tmp_path / "r" / "checkpoints"
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 30
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/psnr")] == [6, 12, 18, 24, 30]
    assert len(events.Scalars("train/recon")) == 30
    assert {p.name for p in (ckpt / "step_000030").iterdir()} == {"model.safetensors", "ema.safetensors",
                                                                  "config.json", "train_state.pt"}


def test_random_crop_is_aligned_reproducible_and_inside():
    import torch

    from training.data import random_crop

    x = torch.arange(2 * 1 * 8 * 6 * 6).view(2, 1, 8, 6, 6)
    a, b = random_crop(x, 4, 4, 2, seed=7), random_crop(x, 4, 4, 2, seed=7)
    assert a.shape == (2, 1, 4, 4, 4) and torch.equal(a, b)
    for i in range(2):
        t0 = int(a[i, 0, 0, 0, 0] - x[i, 0, 0, 0, 0]) // 36
        y0 = (int(a[i, 0, 0, 0, 0] - x[i, 0, 0, 0, 0]) % 36) // 6
        x0 = int(a[i, 0, 0, 0, 0] - x[i, 0, 0, 0, 0]) % 6
        assert t0 % 2 == 0 and t0 + 4 <= 8 and y0 + 4 <= 6 and x0 + 4 <= 6
        assert torch.equal(a[i], x[i, :, t0:t0 + 4, y0:y0 + 4, x0:x0 + 4])
    assert torch.equal(random_crop(x, 0, 0, 2, seed=1), x)            # 0 keeps the whole clip
    seen = {int(random_crop(x, 4, 4, 2, seed=s)[0, 0, 0, 0, 0]) for s in range(20)}
    assert len(seen) > 3                                               # windows move with the seed


def test_training_on_crops_runs_and_validates_on_whole_clips(packed, tmp_path):
    s = train_tokenizer(tiny(**{"train.crop_size": 8, "train.crop_frames": 2}), packed, tmp_path / "c", **QUIET)
    assert s["finished"] and s["last_validation"]["psnr"] > 0


def test_lr_schedule_warms_up_then_decays():
    t = tiny().train
    assert lr_at(0, t) == pytest.approx(t.lr / 2)
    assert lr_at(1, t) == pytest.approx(t.lr)
    assert lr_at(t.steps, t) == pytest.approx(t.lr * t.min_lr_ratio)
    assert lr_at(2, t) > lr_at(7, t) > lr_at(11, t)


def test_existing_run_needs_resume_and_the_same_config(packed, tmp_path):
    train_tokenizer(tiny(**{"train.steps": 3}), packed, tmp_path / "r", **QUIET)
    with pytest.raises(UserError, match="pass --resume"):
        train_tokenizer(tiny(**{"train.steps": 3}), packed, tmp_path / "r", **QUIET)
    with pytest.raises(UserError, match=r"different model config \(codebook_size: 64 vs 32\)"):
        train_tokenizer(tiny(**{"train.steps": 3, "model.codebook_size": 32}), packed, tmp_path / "r", resume=True, **QUIET)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "datagen.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.mark.parametrize("extra,needle", [
    (["--set", 'model.quantizer="xyz"'], "unknown quantizer 'xyz'; allowed: vq, lfq, fsq"),
    (["--set", "model.channel_mult=[1,1,1,1,1,1]", "--set", "model.temporal_downsample=[false,false,false,false,false]"],
     "resolution 16 is not divisible by the spatial downsampling factor 32"),
    (["--set", "train.sptes=3"], "unknown config key 'train.sptes'"),
    (["--set", "train.crop_size=5"], "train.crop_size = 5: must be 0 (whole frames) or a multiple of the spatial"),
    (["--set", "train.crop_size=32"], "train.crop_size 32 / crop_frames 0 exceed the dataset's 16x16x4 clips"),
])
def test_bad_input_one_line_exit_2(packed, tmp_path, extra, needle):
    out = cli("train-tokenizer", "--data", packed, "--out", tmp_path / "r", "-c", "tiny", "--no-progress", *extra)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("magvit3d: error:") and needle in lines[0], out.stderr
    assert not (tmp_path / "r").exists()


def test_truncated_packed_array_is_one_line_exit_2(packed, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(packed, copy)
    path = rgb_path(copy, "train")
    path.write_bytes(path.read_bytes()[:-100])
    out = cli("train-tokenizer", "--data", copy, "--out", tmp_path / "r", "-c", "tiny", "--no-progress")
    assert out.returncode == 2
    assert "train_rgb.npy" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_tokenize_writes_the_int16_cache_and_reconstruct_the_grids(packed, tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from datagen.pack import load_packed
    from training.data import to_model_range
    from training.tokenize import load_tokenizer, reconstruct_samples, tokenize_dataset

    run = tmp_path / "r"
    train_tokenizer(tiny(**{"train.steps": 3}), packed, run, **QUIET)
    summary = tokenize_dataset(run, packed, progress=False)
    model, _ = load_tokenizer(run)
    for split, info in summary.items():
        tokens = np.load(info["tokens"])
        clips = load_packed(packed, split)
        assert tokens.dtype == np.int16 and tokens.shape == (len(clips), 3, 2, 8, 8)
        assert tokens.min() >= 0 and tokens.max() < model.cfg.codebook_size
        x = to_model_range(torch.from_numpy(np.array(clips.rgb[0])).permute(0, 4, 1, 2, 3))
        assert np.array_equal(tokens[0], model.encode(x)[1].numpy())
        index = json.loads((run / "tokens" / f"{split}_index.json").read_text())
        assert index["sample_ids"] == clips.sample_ids and index["tokenizer_step"] == 3
    sid = load_packed(packed, "train").sample_ids[0]
    png, gif = reconstruct_samples(run, packed, tmp_path / "recon", [sid], split="train")
    assert Image.open(png).size == (4 * 16, 2 * 3 * 16)   # T*W wide, (original + reconstruction) x V views high
    assert Image.open(gif).n_frames == 4
    with pytest.raises(UserError, match="not in the train split"):
        reconstruct_samples(run, packed, tmp_path / "recon", [999], split="train")


def test_tokenize_refuses_a_dataset_of_another_size(packed, tmp_path):
    from training.tokenize import tokenize_dataset

    run = tmp_path / "r"
    train_tokenizer(tiny(**{"train.steps": 2}), packed, run, **QUIET)
    other = make_fake_dataset(tmp_path / "big", num_samples=3, resolution=24, frames=4)
    pack_dataset(other, progress=False)
    with pytest.raises(UserError, match="24x24x4 clips; the tokenizer was trained on 16x16x4"):
        tokenize_dataset(run, other, progress=False)


def test_tokenize_with_code_hysteresis_records_it_and_needs_fsq(packed, tmp_path):
    from training.tokenize import tokenize_dataset

    run = tmp_path / "r"    # the tiny preset is VQ
    train_tokenizer(tiny(**{"train.steps": 2}), packed, run, **QUIET)
    with pytest.raises(UserError, match="--code-hysteresis needs an FSQ tokenizer; .* uses vq"):
        tokenize_dataset(run, packed, hysteresis=0.5, progress=False)
    with pytest.raises(UserError, match=r"--code-hysteresis 1.5: must be in \[0, 1\)"):
        tokenize_dataset(run, packed, hysteresis=1.5, progress=False)
    fsq = tmp_path / "f"
    train_tokenizer(tiny(**{"train.steps": 2, "model.quantizer": '"fsq"', "model.fsq_levels": "[4, 4, 4]"}), packed, fsq,
                    **QUIET)
    tokenize_dataset(fsq, packed, hysteresis=0.5, progress=False)
    index = json.loads((fsq / "tokens" / "train_index.json").read_text())
    assert index["code_hysteresis"] == 0.5 and index["code_levels"] == [4, 4, 4]


@pytest.mark.parametrize("preset,clip,grid", [("tiny", (4, 32, 32), (2, 16, 16)), ("demo", (16, 64, 64), (4, 8, 8)),
                                              ("full", (16, 128, 128), (4, 16, 16))])
def test_presets_load_and_give_the_planned_token_grid(preset, clip, grid):
    cfg = load_run_config(preset)
    cfg.validate()
    assert cfg.model.latent_shape(*clip) == grid
    if preset == "full":
        assert 1024 <= cfg.model.codebook_size <= 2048


def test_perceptual_loss_without_weights_is_reported_and_skipped(packed, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    notes = []
    summary = train_tokenizer(tiny(**{"train.steps": 2, "train.perceptual_weight": 0.5}), packed, tmp_path / "r",
                              progress=False, log=notes.append)
    assert summary["perceptual_loss"] == "off"
    assert any("LPIPS unavailable" in n and "alexnet-owt-7be5be79.pth" in n for n in notes)


def test_perceptual_loss_with_a_weights_file_is_used(packed, tmp_path):
    import torch
    import torchvision

    weights = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)  # random, but the right file layout
    base = {"train.steps": 2, "train.perceptual_weight": 1.0, "train.lpips_weights": f'"{weights}"'}
    fake = make_fake_dataset(tmp_path / "ds32", num_samples=4, resolution=32, frames=4)  # LPIPS needs >= 31 px
    pack_dataset(fake, progress=False)
    summary = train_tokenizer(tiny(**base), fake, tmp_path / "r", **QUIET)
    assert summary["perceptual_loss"] == "lpips"
    with_lpips = losses(tmp_path / "r")
    train_tokenizer(tiny(**{**base, "train.perceptual_weight": 0.0}), fake, tmp_path / "r0", **QUIET)
    assert with_lpips[1] > losses(tmp_path / "r0")[1]  # same seed and batch: the difference is the LPIPS term


def test_discriminator_starts_late_and_resumes_bit_exact(packed, tmp_path):
    gan = {"train.disc_weight": 0.1, "train.disc_start": 4, "train.disc_channels": 8, "train.steps": 8}
    train_tokenizer(tiny(**gan), packed, tmp_path / "a", **QUIET)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    adv_steps = [r["step"] for r in rows if "d_loss" in r]
    assert adv_steps == [5, 6, 7, 8]  # the step index at logging is 1-based: step 4 is the 5th update
    latest = tmp_path / "a" / "checkpoints" / "step_000008"
    assert (latest / "disc.safetensors").exists()
    from safetensors.torch import load_file

    lecam = load_file(str(latest / "disc.safetensors"))
    assert float(lecam["lecam.real_ema"]) != 0.0 and float(lecam["lecam.fake_ema"]) != 0.0
    train_tokenizer(tiny(**gan), packed, tmp_path / "b", max_steps_this_run=6, **QUIET)
    train_tokenizer(tiny(**gan), packed, tmp_path / "b", resume=True, **QUIET)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [a[s] for s in range(7, 9)] == [b[s] for s in range(7, 9)]


def test_ddp_under_torchrun_on_cpu(packed, tmp_path):
    """The same command under torchrun: 2 gloo ranks, each a slice of the global batch; rank 0 writes the run."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "datagen.cli", "train-tokenizer", "--data", str(packed), "--out", str(run), "-c", "tiny",
           "--no-progress", "--set", "train.steps=4", "--set", "train.batch_size=2", "--set", "train.val_every=4",
           "--set", "train.ckpt_every=2", "--set", "train.log_every=1", "--set", "model.channels=8", "--set", "model.norm_groups=4"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, torchrun_failure(out.stderr)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 4 and summary["step"] == 4
    assert sorted(losses(run)) == [1, 2, 3, 4]
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 4


def test_ema_averages_the_autoencoder_but_copies_the_codebook():
    import torch

    from training.tokenizer import VideoTokenizer
    from training.train_tokenizer import ema_update

    cfg = tiny().model
    ema, model = VideoTokenizer(cfg), VideoTokenizer(cfg)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    ema_update(ema, model, decay=0.9)
    for name, p in model.named_parameters():
        e, b = dict(ema.named_parameters())[name], before[name]
        if name.startswith("quantizer."):
            assert torch.equal(e, p)
        else:
            assert torch.allclose(e, 0.9 * b + 0.1 * p, atol=1e-6)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_stops_at_a_step_boundary_with_a_checkpoint(packed, tmp_path, sig):
    import signal
    import time

    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "datagen.cli", "train-tokenizer", "--data", str(packed), "--out", str(run), "-c",
           "tiny", "--no-progress", "--set", "train.steps=100000", "--set", "train.log_every=1",
           "--set", "train.ckpt_every=100000", "--set", "train.val_every=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists()
                                           and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    logged = max(losses(run))
    saved = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert saved == logged >= 3  # the checkpoint is exactly the last completed step


def test_without_a_val_split_validation_is_labelled_train_and_says_so(tmp_path):
    data = make_fake_dataset(tmp_path / "ds", num_samples=2, resolution=16, frames=4)   # val and test stay empty
    pack_dataset(data, progress=False)
    lines = []
    summary = train_tokenizer(tiny(**{"train.steps": 2, "train.val_every": 2}), data, tmp_path / "r",
                              progress=False, log=lines.append)
    assert summary["last_validation"]["split"] == "train"
    assert any(line.startswith("notice:") and "has no val split" in line for line in lines)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows if "split" in r] == ["train"]
