"""Faults injected into training runs: Ctrl-C, SIGKILL, a nan/inf loss, corrupt checkpoints, a full disk (file too
large) while checkpointing, and a malicious pickle in the optimizer state. Each must cost no finished work and never
leave a run that looks fine but isn't. Runs on a tiny fake dataset (tests/fakes.py) with the tiny presets.

Fault -> how it is injected -> what must happen:
- Ctrl-C -> SIGINT to the process group of a real `magvit3d train-*` (the tokenizer with a DataLoader worker), and
  a second SIGINT mid-step -> the last finished step is saved, exit 130, it loads and --resume continues; a second
  signal saves nothing (the step in flight may be half applied).
- SIGKILL -> while a checkpoint is being written (its .tmp dir exists) -> latest.json still names the previous
  complete checkpoint; --resume ignores and removes the .tmp dir, finishes, and logs every step once.
- nan/inf -> an absurd train.lr (tokenizer, transformer); a 3e38 px label in the packed index (probe) -> one line
  naming the step and the last good checkpoint, exit 2, nothing saved after it; nan weights are never saved.
- corrupt checkpoint -> missing tensor, wrong shape, truncated file, malformed config.json / latest.json ->
  every command that loads it: one line naming the file, exit 2, nothing written.
- disk full -> RLIMIT_FSIZE in the training subprocess (writes fail with EFBIG) -> one line naming the file,
  exit 1, the previous checkpoint intact and loadable; --resume finishes once there is room.
- pickle -> a train_state.pt whose unpickling would call os.mkdir, and a truncated one -> refused
  (weights_only=True), one line, exit 2, the directory is never created; no source file loads pickles.
"""
from __future__ import annotations

import ast
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from datagen.cli import main
from datagen.config import Interrupted
from datagen.pack import pack_dataset
from evaluation.probe import load_probe, load_run_config as probe_config, train_probe
from fakes import make_fake_dataset
from training import checkpoint as ckpt
from training.generate import load_transformer
from training.loop import TrainingDiverged
from training.tokenize import load_tokenizer, tokenize_dataset
from training.train_tokenizer import load_run_config as tokenizer_config, train_tokenizer
from training.train_transformer import load_run_config as transformer_config, train_transformer

REPO = Path(__file__).resolve().parent.parent
QUIET = dict(progress=False, log=lambda m: None, device="cpu")
# the same overrides on the command line and in-process (a resumed run must have the same config)
TOK = ["train.steps=6", "train.batch_size=2", "train.ckpt_every=2", "train.log_every=1", "train.val_every=100",
       "train.val_clips=2", "model.channels=8", "model.norm_groups=4"]
TRANS = ["train.steps=6", "train.ckpt_every=2", "train.log_every=1", "train.val_every=100", "train.val_clips=2"]
PROBE = ["train.steps=6", "train.ckpt_every=2", "train.log_every=1", "train.val_every=100", "train.val_frames=16"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def sets(items):
    return [a for item in items for a in ("--set", item)]


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A packed fake dataset (16x16, 4 frames) and a finished tiny tokenizer (with its token cache), transformer and
    probe run on it, each with checkpoints at steps 4 and 6."""
    root = tmp_path_factory.mktemp("faults")
    ds = make_fake_dataset(root / "ds", num_samples=8, resolution=16, frames=4,
                           dataset={"splits": {"train": 0.5, "val": 0.25, "test": 0.25}})
    pack_dataset(ds, progress=False)
    train_tokenizer(tokenizer_config("tiny", TOK), ds, root / "tok", **QUIET)
    tokenize_dataset(root / "tok", ds, progress=False)
    train_transformer(transformer_config("tiny", TRANS), root / "tok", root / "trans", **QUIET)
    train_probe(probe_config("tiny", PROBE), ds, root / "probe", **QUIET)
    return {"ds": ds, "tok": root / "tok", "trans": root / "trans", "probe": root / "probe"}


def cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code or 0, capsys.readouterr().err


def error_line(err: str) -> str:
    """The CLI's error: exactly one line 'magvit3d: error: ...' and no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("magvit3d: error:")]
    assert len(lines) == 1, err
    return lines[0]


def latest_step(run: Path) -> int:
    return json.loads((run / "checkpoints" / "latest.json").read_text())["step"]


def logged_steps(run: Path, strict: bool = True) -> list[int]:
    """Training steps in RUN/metrics.jsonl; strict: every line must be a complete JSON row (not strict: a kill
    mid-write may have left a partial last line)."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise
    return [r["step"] for r in rows if r.get("split") is None]


def all_finite(ckpt_dir: Path) -> bool:
    return all(bool(torch.isfinite(v).all()) for f in ckpt_dir.glob("*.safetensors")
               for v in load_file(str(f)).values() if v.is_floating_point())


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- Ctrl-C -------------------------------------------------------------------------------------------------------

def test_ctrl_c_to_the_process_group_saves_the_last_step_and_exits_130(runs, tmp_path):
    """What a terminal's Ctrl-C does: SIGINT to every process of the foreground group (here including the tokenizer's
    DataLoader worker). The three training commands run at once; each must save the step it finished, exit 130
    without a traceback, and the checkpoint must load and resume."""
    long = ["train.steps=100000", "train.ckpt_every=100000", "train.val_every=100000"]
    commands = {
        "tok": ["train-tokenizer", "--data", runs["ds"], "-c", "tiny", *sets(TOK + long + ["train.workers=1"])],
        "trans": ["train-transformer", "--tokens", runs["tok"], "-c", "tiny", *sets(TRANS + long)],
        "probe": ["train-probe", "--data", runs["ds"], "-c", "tiny", *sets(PROBE + long)],
    }
    procs = {}
    for name, args in commands.items():
        cmd = [sys.executable, "-m", "datagen.cli", *map(str, args), "--out", str(tmp_path / name), "--no-progress"]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True)
    try:
        pending, deadline = set(procs), time.time() + 240
        while pending and time.time() < deadline:
            for name in list(pending):
                metrics = tmp_path / name / "metrics.jsonl"
                if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                    os.killpg(procs[name].pid, signal.SIGINT)
                    pending.discard(name)
                assert procs[name].poll() is None, procs[name].communicate()[1]
            time.sleep(0.05)
        assert not pending, f"{pending} never logged two steps"
        errs = {name: p.communicate(timeout=120)[1] for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for name, p in procs.items():
        run, err = tmp_path / name, errs[name]
        assert p.returncode == 130, err
        # one message, and the advice in it is the one that works (the same command alone is refused)
        lines = [ln for ln in err.splitlines() if "interrupt" in ln or "resume" in ln]
        assert lines == [f"magvit3d: interrupted at step {latest_step(run)}; checkpoint saved in "
                         f"{run / 'checkpoints'}; rerun the same command with --resume to continue"], err
        assert "Traceback" not in err, err
        assert latest_step(run) == max(logged_steps(run)) >= 2  # exactly the last finished step
    # the checkpoints load with the commands' own loaders, and --resume continues from them
    assert load_tokenizer(tmp_path / "tok")[1]["step"] == latest_step(tmp_path / "tok")
    assert load_transformer(tmp_path / "trans")[1]["step"] == latest_step(tmp_path / "trans")
    assert load_probe(tmp_path / "probe").config["step"] == latest_step(tmp_path / "probe")
    before = latest_step(tmp_path / "probe")
    again = train_probe(probe_config("tiny", PROBE + long), runs["ds"], tmp_path / "probe", resume=True,
                        max_steps_this_run=1, **QUIET)
    assert again["step"] == before + 1
    # without --resume the same command is refused, with the way to continue in its one line
    refused = subprocess.run([sys.executable, "-m", "datagen.cli", *map(str, commands["trans"]), "--out",
                              str(tmp_path / "trans"), "--no-progress"], cwd=REPO, env=ENV, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr, refused.stderr


def test_a_second_ctrl_c_interrupts_mid_step_and_saves_nothing(tmp_path):
    """The first signal only asks the loop to stop at the next step boundary; a second one interrupts at once, in
    the middle of whatever runs (maybe an optimizer step): then nothing is saved, the last checkpoint stays latest."""
    from training.loop import GracefulStop, checkpoint_on_interrupt

    class Bar:
        def close(self):
            pass

    before = signal.getsignal(signal.SIGINT)
    saved, logs, stop = [], [], GracefulStop()
    with pytest.raises(Interrupted) as interrupted:
        with checkpoint_on_interrupt(stop, Bar(), None, lambda: saved.append(1), lambda: 3, logs.append, run=tmp_path):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes: the first signal only sets the flag
                pass
            assert stop.requested and not stop.immediate
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
            raise AssertionError("the second signal did not interrupt")
    assert saved == [] and stop.immediate
    assert logs == []  # the message is the exception's, printed once by the CLI (or replaced by the demo's)
    assert str(interrupted.value) == (f"interrupted in the middle of step 4; nothing saved; no checkpoint was saved in "
                                      f"{tmp_path / 'checkpoints'} before it; rerun the same command with --resume to "
                                      f"continue from there")
    assert signal.getsignal(signal.SIGINT) is before


# --- SIGKILL ------------------------------------------------------------------------------------------------------

def test_sigkill_while_checkpointing_loses_only_unsaved_steps_and_resume_finishes(runs, tmp_path):
    run = tmp_path / "r"
    items = ["train.steps=12", "train.batch_size=2", "train.ckpt_every=1", "train.log_every=1", "train.val_every=100",
             "train.val_clips=2", "model.channels=8", "model.norm_groups=4"]
    cmd = [sys.executable, "-m", "datagen.cli", "train-tokenizer", "--data", str(runs["ds"]), "--out", str(run),
           "-c", "tiny", "--no-progress", *sets(items)]
    root = run / "checkpoints"

    def saving() -> bool:
        with os.scandir(root) as entries:
            return any(e.name.startswith(".tmp-step_") for e in entries)

    def kill_during_a_save(resume: bool, after: int) -> bool:
        """Run (or resume) until checkpoint `after` exists, then SIGKILL the moment the next checkpoint's temp
        directory appears; True when the kill landed (the run had not finished)."""
        proc = subprocess.Popen(cmd + ["--resume"] * resume, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 240
            while proc.poll() is None and time.time() < deadline:
                try:
                    if latest_step(run) >= after:
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.01)
            while proc.poll() is None and time.time() < deadline:
                if saving():
                    proc.kill()
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        return proc.returncode == -signal.SIGKILL

    # the kill must land before the rename; if the save finished first (a descheduled poller), kill the next one
    for attempt in range(3):
        killed = kill_during_a_save(resume=attempt > 0, after=3 if attempt == 0 else latest_step(run) + 1)
        assert killed, "the run finished before it could be killed"
        if saving():
            break
    leftovers = [p for p in root.iterdir() if p.name.startswith(".tmp-step_")]
    assert leftovers, "the kill never landed during a save"
    saved = latest_step(run)
    assert saved >= max(logged_steps(run, strict=False)) - 1  # at most the step being saved is lost (ckpt_every 1)
    latest = ckpt.latest_checkpoint(run)
    assert {p.name for p in latest.iterdir()} == {"model.safetensors", "ema.safetensors", "config.json",
                                                  "train_state.pt"}
    assert load_tokenizer(run)[1]["step"] == saved and all_finite(latest)
    # resume continues from the last complete checkpoint to the end; the half-written one is never read
    logs = []
    summary = train_tokenizer(tokenizer_config("tiny", items), runs["ds"], run, resume=True, progress=False,
                              log=logs.append, device="cpu")
    assert f"resuming {run} from step {saved}" in logs
    assert summary["step"] == 12 and summary["finished"]
    assert not any(root.glob(".tmp-step_*"))
    assert logged_steps(run) == list(range(1, 13))  # every step logged exactly once


# --- nan / inf ----------------------------------------------------------------------------------------------------

NAN_LINE = re.compile(r"(?:probe loss|loss) is (nan|inf|-inf) at step (\d+); last good checkpoint: "
                      r"step (\d+) in (\S+) ")
GRAD_LINE = re.compile(r"the gradient norm of the (?:probe )?loss is (nan|inf) at step (\d+); last good checkpoint: "
                       r"step (\d+) in (\S+) ")


def check_diverged(run: Path, err: str, ckpt_every: int) -> None:
    line = error_line(err)
    m = NAN_LINE.search(line) or GRAD_LINE.search(line)
    assert m, line
    bad, good, where = int(m.group(2)), int(m.group(3)), Path(m.group(4))
    assert good == (bad - 1) // ckpt_every * ckpt_every and good >= 1, line
    assert latest_step(run) == good and where == run / "checkpoints" / f"step_{good:06d}"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*"))[-1] == where.name  # nothing newer saved
    assert not any((run / "checkpoints").glob(".tmp-*"))
    assert all_finite(where)
    assert max(logged_steps(run)) == bad - 1  # the diverged step was never logged as trained


def test_nan_loss_tokenizer_stops_with_the_step_and_keeps_the_last_good_checkpoint(runs, tmp_path, capsys):
    run = tmp_path / "r"
    handler = signal.getsignal(signal.SIGINT)
    code, err = cli(capsys, "train-tokenizer", "--data", runs["ds"], "--out", run, "-c", "tiny", "--no-progress",
                    *sets(TOK + ["train.steps=40", "train.lr=300"]))
    assert code == 2
    check_diverged(run, err, ckpt_every=2)
    assert signal.getsignal(signal.SIGINT) is handler  # the training's Ctrl-C handler is gone again
    # the kept checkpoint is usable: --resume loads it and diverges again at the same step (deterministic on CPU)
    code, err2 = cli(capsys, "train-tokenizer", "--data", runs["ds"], "--out", run, "-c", "tiny", "--no-progress",
                     "--resume", *sets(TOK + ["train.steps=40", "train.lr=300"]))
    assert code == 2 and error_line(err2) == error_line(err)


def test_nan_transformer_absurd_lr(runs, tmp_path, capsys):
    run = tmp_path / "r"
    code, err = cli(capsys, "train-transformer", "--tokens", runs["tok"], "--out", run, "-c", "tiny", "--no-progress",
                    *sets(TRANS + ["train.steps=30", "train.lr=1000"]))
    assert code == 2
    check_diverged(run, err, ckpt_every=2)


def test_nan_probe_from_a_corrupt_label_in_the_data(runs, tmp_path, capsys):
    """A 2D centre of 3e38 px in the packed index (finite, so it passes as visible) overflows the loss to inf in the
    one batch that holds it; the batch of each step is a permutation seeded by the epoch (probe.batch_indices)."""
    ds = tmp_path / "ds"
    shutil.copytree(runs["ds"], ds)
    path = ds / "packed" / "train_index.json"
    index = json.loads(path.read_text())
    V, T = len(index["views"]), index["frames"]
    order = torch.randperm(len(index["sample_ids"]) * V * T, generator=torch.Generator().manual_seed(0))
    n, rest = divmod(int(order[20]), V * T)  # batch size 16: position 20 is in the second step's batch
    assert index["visibility"][n][rest // T][rest % T]
    index["centers_2d"][n][rest // T][rest % T] = [3e38, 3e38]
    path.write_text(json.dumps(index))
    run = tmp_path / "r"
    code, err = cli(capsys, "train-probe", "--data", ds, "--out", run, "-c", "tiny", "--no-progress",
                    *sets(PROBE + ["train.ckpt_every=1"]))
    assert code == 2 and "probe loss is inf at step 2; last good checkpoint: step 1" in err, err
    check_diverged(run, err, ckpt_every=1)


def test_non_finite_weights_are_never_saved_even_on_the_way_out(tmp_path):
    """The last line of defence (every save, the on-exit one included): weights holding nan are refused and the
    previous checkpoint stays the latest."""
    model = torch.nn.Linear(3, 2)
    ckpt.save_checkpoint(tmp_path, 5, {"kind": "test"}, {"model": model.state_dict()})
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"refusing to save the checkpoint of step 6: the model tensor "
                                               r"'weight' holds nan/inf; last good checkpoint: step 5 in "):
        ckpt.save_checkpoint(tmp_path, 6, {"kind": "test"}, {"model": model.state_dict()})
    assert latest_step(tmp_path) == 5 and not (tmp_path / "checkpoints" / "step_000006").exists()
    assert not any((tmp_path / "checkpoints").glob(".tmp-*"))


# --- corrupt checkpoints ------------------------------------------------------------------------------------------

def _rewrite(path: Path, change) -> None:
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def drop_tensor(d: Path) -> str:
    for f in d.glob("*.safetensors"):
        _rewrite(f, lambda s: s.pop(sorted(s)[0]))
    return ".safetensors"


def wrong_shape(d: Path) -> str:
    def change(s):
        k = next(k for k in sorted(s) if s[k].ndim >= 1)
        s[k] = torch.zeros(*(n + 1 for n in s[k].shape), dtype=s[k].dtype)
    for f in d.glob("*.safetensors"):
        _rewrite(f, change)
    return ".safetensors"


def truncate(d: Path) -> str:
    for f in d.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ".safetensors"


def bad_config(d: Path) -> str:
    path = d / "config.json"
    path.write_text(path.read_text()[:-40])
    return "config.json"


def config_not_an_object(d: Path) -> str:
    (d / "config.json").write_text("[1, 2, 3]")
    return "config.json"


def bad_pointer(d: Path) -> str:
    (d.parent / "latest.json").write_text('{"step": 6}')
    return "latest.json"


CORRUPTIONS = [drop_tensor, wrong_shape, truncate, bad_config, config_not_an_object, bad_pointer]
NEEDLES = {drop_tensor: "lacks 1", wrong_shape: "has shape", truncate: "unreadable", bad_config: "not valid JSON",
           config_not_an_object: "malformed", bad_pointer: "malformed"}


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_a_corrupt_checkpoint_is_one_line_exit_2_for_every_command_that_loads_it(runs, tmp_path, capsys, corrupt):
    ds = runs["ds"]
    tok, trans, probe = (copy_run(runs[k], tmp_path / k) for k in ("tok", "trans", "probe"))
    (tmp_path / "gen").mkdir()
    out = tmp_path / "out"
    commands = [
        (tok, ["train-tokenizer", "--data", ds, "--out", tok, "-c", "tiny", "--resume", *sets(TOK)]),
        (tok, ["tokenize", "--run", tok, "--data", ds]),
        (tok, ["reconstruct", "--run", tok, "--data", ds, "--out", out]),
        (trans, ["train-transformer", "--tokens", runs["tok"], "--out", trans, "-c", "tiny", "--resume", *sets(TRANS)]),
        (trans, ["generate", "--transformer", trans, "--task", "generate", "--out", out]),
        (probe, ["train-probe", "--data", ds, "--out", probe, "-c", "tiny", "--resume", *sets(PROBE)]),
        (probe, ["evaluate", "--data", ds, "--generated", tmp_path / "gen", "--probe", probe, "--out", out]),
    ]
    for run in (tok, trans, probe):
        name = corrupt(ckpt.latest_checkpoint(run))
    for run, args in commands:
        quiet = [] if args[0] == "reconstruct" else ["--no-progress"]  # reconstruct has no progress bar
        code, err = cli(capsys, *args, *quiet)
        line = error_line(err)
        assert code == 2, (args[0], err)
        assert str(run / "checkpoints") in line and name in line and NEEDLES[corrupt] in line, (args[0], line)
        assert not out.exists(), args[0]
    for run, src in ((tok, runs["tok"]), (trans, runs["trans"]), (probe, runs["probe"])):
        assert logged_steps(run) == logged_steps(src)  # a failed resume logged nothing


def test_a_truncated_or_tampered_optimizer_state_is_refused_without_running_it(runs, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    probe = copy_run(runs["probe"], tmp_path / "probe")
    state = ckpt.latest_checkpoint(probe) / "train_state.pt"
    torch.save({"optimizer": Payload()}, state)
    # the payload is live: unpickling it with plain pickle (in another process, without torch) runs os.mkdir
    code = ("import pickle, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); "
            "pickle.loads(z.read(next(n for n in z.namelist() if n.endswith('data.pkl'))))")
    subprocess.run([sys.executable, "-c", code, str(state)], check=True, capture_output=True)
    assert marker.is_dir()
    marker.rmdir()
    args = ["train-probe", "--data", runs["ds"], "--out", probe, "-c", "tiny", "--resume", "--no-progress",
            *sets(PROBE)]
    code, err = cli(capsys, *args)
    line = error_line(err)
    assert code == 2 and str(state) in line and "refused to unpickle" in line, line
    assert not marker.exists()
    state.write_bytes(ckpt.latest_checkpoint(runs["probe"]).joinpath("train_state.pt").read_bytes()[:300])
    code, err = cli(capsys, *args)
    assert code == 2 and str(state) in error_line(err) and "truncated" in err, err


# --- full disk ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("failing", ["model.safetensors", "train_state.pt"])
def test_a_write_failing_with_efbig_stops_with_one_line_and_keeps_the_previous_checkpoint(runs, tmp_path, failing):
    """The per-file size limit lets every file but `failing` (safetensors' writer, or torch.save's) be written:
    the checkpoint of step 4 fails half-way, with the files before it already in its temp directory."""
    run = tmp_path / "r"
    train_tokenizer(tokenizer_config("tiny", TOK), runs["ds"], run, max_steps_this_run=2, **QUIET)
    assert latest_step(run) == 2
    sizes = {p.name: p.stat().st_size for p in ckpt.latest_checkpoint(run).iterdir()}
    assert sizes["train_state.pt"] > sizes["model.safetensors"] + 4096
    limit = sizes["model.safetensors"] // 2 if failing == "model.safetensors" else sizes["model.safetensors"] + 4096

    def small_files():  # in the child only: any write past `limit` bytes fails with EFBIG (SIGXFSZ is ignored)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "datagen.cli", "train-tokenizer", "--data", str(runs["ds"]), "--out", str(run),
           "-c", "tiny", "--resume", "--no-progress", *sets(TOK)]
    out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
                         preexec_fn=small_files)
    assert out.returncode == 1, out.stderr  # a failure of the machine, not bad input
    line = error_line(out.stderr)
    assert re.search(rf"error: {re.escape(str(run))}/checkpoints/\.tmp-step_000004-\d+/{re.escape(failing)}: could not "
                     r"write the checkpoint of step 4 \(File too large\); the previous checkpoint \(step 2, "
                     rf"{re.escape(str(run))}/checkpoints/step_000002\) is intact$", line), line
    assert latest_step(run) == 2 and not any((run / "checkpoints").glob(".tmp-*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002"]
    assert load_tokenizer(run)[1]["step"] == 2 and all_finite(ckpt.latest_checkpoint(run))
    # with space again, --resume finishes from the kept checkpoint; every step is logged once
    summary = train_tokenizer(tokenizer_config("tiny", TOK), runs["ds"], run, resume=True, **QUIET)
    assert summary["step"] == 6 and summary["finished"]
    assert logged_steps(run) == list(range(1, 7))


# --- no pickled code is ever loaded -------------------------------------------------------------------------------

def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, f = [], node.func
        while isinstance(f, ast.Attribute):
            parts.insert(0, f.attr)
            f = f.value
        name = ".".join([f.id, *parts]) if isinstance(f, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords}
        if name == "torch.load":
            safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not safe:
                found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads",
                      "cloudpickle.load", "cloudpickle.loads", "joblib.load", "torch.jit.load"):
            found.append((node.lineno, name))
        elif name in ("np.load", "numpy.load"):
            flag = kw.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append((node.lineno, "np.load(allow_pickle=True)"))
    return found


def test_no_source_file_loads_pickled_code():
    sources = [p for d in ("datagen", "blender_scenes", "training", "evaluation", "benchmarks", "tests")
               for p in (REPO / d).rglob("*.py")]
    assert len(sources) > 30
    bad = [f"{p.relative_to(REPO)}:{line}: {what}" for p in sources
           for line, what in _unsafe_loads(ast.parse(p.read_text(), str(p)))]
    assert not bad, bad
    # the scan finds what it looks for
    sample = ("import torch, pickle\ntorch.load(f)\ntorch.load(f, weights_only=False)\npickle.loads(b)\n"
              "torch.load(f, map_location='cpu', weights_only=True)\ntorch.jit.load(f)\n")
    assert sorted(line for line, _ in _unsafe_loads(ast.parse(sample))) == [2, 3, 4, 6]
