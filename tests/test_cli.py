"""The magvit3d command line on a fake dataset (no Blender): verify, pack, preview, config show, help, the naming
scheme (and the old spellings it replaced), and bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen.config import to_dict
from fakes import make_fake_dataset

REPO = Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "datagen.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.fixture()
def fake(tmp_path):
    return make_fake_dataset(tmp_path / "ds", num_samples=4, resolution=32, frames=3)


def test_verify_pack_preview_commands(fake, tmp_path):
    out = cli("verify", "--data", fake, "--no-progress")
    assert out.returncode == 0 and "ok: 4 samples" in out.stdout, out.stderr
    out = cli("pack", "--data", fake, "--no-progress")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.strip().splitlines())
    assert set(lines) == {"train", "val", "test"}
    assert sum(int(v.split()[0]) for v in lines.values()) == 4
    # 4 samples at 0.8/0.1/0.1: every split keeps at least one -> 2/1/1
    assert lines["train"].split()[0] == "2" and "(2, 3, 3, 32, 32, 3)" in lines["train"]
    assert lines["val"].split()[0] == "1" and lines["test"].split()[0] == "1"
    out = cli("preview", "--data", fake, "--sample", 2, "--out", tmp_path / "p")
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "p.png").size[1] > 3 * 32 and Image.open(tmp_path / "p.gif").n_frames == 3


def test_verify_fails_with_exit_1_listing_the_sample(fake):
    shutil.rmtree(fake / "samples" / "000001")
    out = cli("verify", "--data", fake, "--no-progress")
    assert out.returncode == 1
    assert "failing sample ids: [1]" in out.stderr


def test_verify_json_is_all_of_stdout(fake):
    """`verify --json | jq` must parse: the JSON document is the whole stdout, passing or failing."""
    out = cli("verify", "--data", fake, "--json", "--no-progress")
    assert out.returncode == 0 and json.loads(out.stdout)["ok"] is True and out.stderr == "", out
    shutil.rmtree(fake / "samples" / "000001")
    out = cli("verify", "--data", fake, "--json", "--no-progress")
    report = json.loads(out.stdout)
    assert out.returncode == 1 and report["ok"] is False and "failing sample ids: [1]" in out.stderr


def test_pack_says_when_a_split_is_empty(tmp_path):
    """2 clips for 3 splits: val and test stay empty, which used to pass without a word."""
    ds = make_fake_dataset(tmp_path / "ds", num_samples=2, resolution=32, frames=3)
    out = cli("pack", "--data", ds, "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ("warning: the val and test splits are empty: 2 clip(s) for 3 splits; training validates on "
                          "val and generate/evaluate/reconstruct read test, so render at least 3 clips (-n 3) or "
                          "change dataset.splits\n"), out.stderr


@pytest.mark.parametrize("args,needle", [
    (["preview", "--data", "{ds}", "--sample", "9"], "sample id 9"),
    (["verify", "--data", "{tmp}/nowhere"], "nowhere"),
    (["pack", "--data", "{tmp}/nowhere"], "nowhere"),
    (["pack"], "Missing option '--data'."),
    (["pack", "--data", "{ds}", "{ds}"], "got both '--data' {ds} and a positional {ds}; give '--data' once"),
    (["render", "--out", "{tmp}/x", "--frobnicate"], "--frobnicate"),
    (["render", "--out", "{tmp}/x", "--workers", "0"], "--workers"),
    (["render", "--out", "{tmp}/x", "--set", "render"], "KEY=VALUE"),
    (["render", "-c", "tiny"], "Missing option '--out'."),
    (["render", "--out", "{tmp}/x", "--device", "gpu0"], "'gpu0' is not one of 'auto', 'cpu', 'cuda'"),
    (["render", "--out", "{tmp}/x", "-n", "x"], "Invalid value for '--num' / '-n': 'x' is not a valid integer"),
    (["render", "--out", "{tmp}/x", "--set", "cameras.rig=[{{name=\"a\", position=[2.0, 0.0, -0.5]}}, "
                                             "{{name=\"b\", position=[0.0, 2.0, 1.0]}}]"],
     "camera 'a' position z = -0.5 is at or below the ground"),
    (["train-tokenizer", "--data", "{ds}", "--out", "{tmp}/x", "--device", "tpu"],
     "Invalid value for '--device': 'tpu' is not one of 'auto', 'cpu', 'cuda'."),
    (["config", "show", "model"], "'model' is not one of 'dataset', 'tokenizer', 'transformer', 'probe'"),
    (["config", "show", "tokenizer", "-c", "huge"], "unknown tokenizer preset 'huge'; allowed: 2d, 2d-fast, demo, demo-textured, full, study, tiny"),
    (["config", "show", "probe", "--set", "train.stepz=1"], "unknown config key 'train.stepz' (did you mean 'steps'?)"),
])
def test_bad_input_one_line_exit_2(fake, tmp_path, args, needle):
    out = cli(*[a.format(ds=fake, tmp=tmp_path) for a in args])
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    needle = needle.format(ds=fake)
    assert len(lines) == 1 and lines[0].startswith("magvit3d: error:") and needle in lines[0], out.stderr
    assert not (tmp_path / "x").exists() and out.stdout == ""


PIPELINE = ["render", "verify", "pack", "preview", "train-tokenizer", "reconstruct", "tokenize", "train-transformer",
            "generate", "train-probe", "evaluate", "compare", "demo", "config"]


def test_help_lists_the_commands_in_pipeline_order_each_with_an_example():
    out = cli("--help")
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.split("Commands:\n", 1)[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == PIPELINE
    for command in PIPELINE[:-1] + ["config show"]:
        sub = cli(*command.split(), "--help")
        assert sub.returncode == 0 and sub.stdout.startswith("Usage: magvit3d " + command), sub.stdout
        example = sub.stdout.split("Example:\n", 1)[1]   # the examples run this very command
        assert example.splitlines()[0].strip().startswith(f"magvit3d {command} "), (command, example)
    assert "--shard" in cli("render", "--help").stdout


OLD_SPELLINGS = {"render": ["--num-samples"], "evaluate": ["--max-clips"], "compare": ["--max-clips"],
                 "demo": ["--preset", "--workdir"]}


@pytest.mark.parametrize("command", PIPELINE[:-1])
def test_every_command_uses_the_one_naming_scheme_and_hides_the_old_spellings(command):
    from datagen.cli import cli as group
    import click

    help_text = cli(command, "--help").stdout
    for old in OLD_SPELLINGS.get(command, []):
        assert old not in help_text
    params = {o: p for p in group.get_command(click.Context(group), command).params for o in p.opts}
    for old in OLD_SPELLINGS.get(command, []):
        assert old in params, old   # still accepted
    if "--device" in params:
        assert params["--device"].type.choices == ("auto", "cpu", "cuda"), command
    assert "DATASET" not in help_text.splitlines()[0]   # no positional dataset in the usage line any more
    for option in ("--dataset", "--output", "--workdir", "--preset", "--num-samples", "--max-clips"):
        assert option not in help_text, (command, option)


def test_old_spellings_still_work(fake, tmp_path):
    """For one release: `verify DATASET`, `pack DATASET`, `preview DATASET` (now --data), `render --num-samples`,
    `evaluate/compare --max-clips`, `demo --preset/--workdir` (now -n, -c, --out) run as before."""
    assert cli("verify", fake, "--no-progress").returncode == 0
    assert cli("pack", fake, "--no-progress").returncode == 0
    out = cli("preview", fake, "--sample", 1, "--out", tmp_path / "p")
    assert out.returncode == 0 and (tmp_path / "p.png").is_file(), out.stderr
    bad = cli("render", tmp_path / "r", "--num-samples", "0", "-c", "tiny")   # positional DATASET + old count
    assert bad.returncode == 2 and "dataset.num_samples = 0" in bad.stderr and not (tmp_path / "r").exists()
    bad = cli("demo", "--preset", "tiny", "--workdir", tmp_path / "w", "--set", "tokenizer.train.steps=-1")
    assert bad.returncode == 2 and "train.steps" in bad.stderr and not (tmp_path / "w").exists(), bad.stderr


@pytest.mark.parametrize("kind", ["dataset", "tokenizer", "transformer", "probe"])
def test_config_show_prints_every_key_as_toml_that_reads_back(kind, tmp_path):
    from evaluation.pipeline import load_stage_config

    out = cli("config", "show", kind, "-c", "tiny", "--set", "train.seed=7" if kind != "dataset" else "dataset.seed=7")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith(f"# magvit3d config show {kind} -c tiny --set ")
    shown = tomllib.loads(out.stdout)
    expected = to_dict(load_stage_config(kind, "tiny", ["train.seed=7" if kind != "dataset" else "dataset.seed=7"]))
    if kind == "dataset":   # shown all the same, though to_dict leaves them out at their defaults (see to_dict)
        assert shown["ground"].pop("contrast_range") == [1.0, 1.0]
        assert shown.pop("scene") == {"kind": "3d"}
        assert shown["cameras"].pop("projection") == "perspective" and shown["cameras"].pop("ortho_scale") == 2.0
        assert shown["trajectories"].pop("sine_amplitude_range") == [0.1, 0.25]
        assert shown["trajectories"].pop("sine_cycles_range") == [1.0, 2.0]
    assert shown == expected   # every key with its value: the preset's, the override's, or the default
    (tmp_path / "shown.toml").write_text(out.stdout)
    assert to_dict(load_stage_config(kind, str(tmp_path / "shown.toml"))) == expected   # and -c takes it back
