"""The magvit3d command line on a fake dataset (no Blender): verify, pack, preview, help, and bad input."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakes import make_fake_dataset

REPO = Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "datagen.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.fixture()
def fake(tmp_path):
    return make_fake_dataset(tmp_path / "ds", num_samples=4, resolution=32, frames=3)


def test_verify_pack_preview_commands(fake, tmp_path):
    out = cli("verify", fake, "--no-progress")
    assert out.returncode == 0 and "ok: 4 samples" in out.stdout, out.stderr
    out = cli("pack", fake, "--no-progress")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.strip().splitlines())
    assert set(lines) == {"train", "val", "test"}
    assert sum(int(v.split()[0]) for v in lines.values()) == 4
    # 4 samples at 0.8/0.1/0.1: every split keeps at least one -> 2/1/1
    assert lines["train"].split()[0] == "2" and "(2, 3, 3, 32, 32, 3)" in lines["train"]
    assert lines["val"].split()[0] == "1" and lines["test"].split()[0] == "1"
    out = cli("preview", fake, "--sample", 2, "--out", tmp_path / "p")
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "p.png").size[1] > 3 * 32 and Image.open(tmp_path / "p.gif").n_frames == 3


def test_verify_fails_with_exit_1_listing_the_sample(fake):
    shutil.rmtree(fake / "samples" / "000001")
    out = cli("verify", fake, "--no-progress")
    assert out.returncode == 1
    assert "failing sample ids: [1]" in out.stderr


@pytest.mark.parametrize("args,needle", [
    (["preview", "{ds}", "--sample", "9"], "sample id 9"),
    (["verify", "{tmp}/nowhere"], "nowhere"),
    (["pack", "{tmp}/nowhere"], "nowhere"),
    (["render", "{tmp}/x", "--frobnicate"], "--frobnicate"),
    (["render", "{tmp}/x", "--workers", "0"], "--workers"),
    (["render", "{tmp}/x", "--set", "render"], "KEY=VALUE"),
])
def test_bad_input_one_line_exit_2(fake, tmp_path, args, needle):
    out = cli(*[a.format(ds=fake, tmp=tmp_path) for a in args])
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("magvit3d: error:") and needle in lines[0], out.stderr
    assert not (tmp_path / "x").exists()


def test_help_explains_every_command():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("render", "verify", "pack", "preview"):
        assert command in out.stdout
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "Usage: magvit3d " + command in sub.stdout
    assert "--shard" in cli("render", "--help").stdout
