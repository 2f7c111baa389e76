"""Faults in data generation must never cost finished work or leave a dataset that looks fine but isn't.

Every fault here is injected on purpose; the table of fault | how | outcome | what is lost (nothing):
1. Blender worker processes SIGKILLed at random moments (also while starting), and the whole render SIGKILLed,
   run after run until a run finishes: every sample exists once, no finished sample is ever rendered again, verify
   passes, no temp directory is left, and no Blender temp dir leaks into TMPDIR.
2. A Blender crash (os.abort) inside one sample, via MAGVIT3D_FAULT_CRASH_SAMPLE (blender_scenes/worker.py): the
   sample is reported by id, the worker is replaced, the other samples finish, and a rerun finishes it. A Blender
   hang inside one sample, via MAGVIT3D_FAULT_HANG_SAMPLE: the worker is killed after --sample-timeout, no worker
   process is left running, and otherwise the same outcome as a crash; a worker that hangs while it starts (a stand-in
   process, no Blender) counts as a failed start; a worker's reply is read with a deadline, a line at a time.
3. A full disk: RLIMIT_FSIZE in the render/pack subprocess (Python ignores SIGXFSZ, so writes fail with EFBIG), below
   meta.json's size (the orchestrator's write fails) or below a PNG's (Blender's write is cut short and Blender says
   'Saved' anyway) or below dataset.json's (a first run; the rerun must still be accepted); ENOSPC at fsync in pack.
   One line on stderr, exit 1, samples and packed arrays from before intact.
4. Corrupt inputs the existing tests (test_verify_pack_preview.py) do not cover: through the CLI, a meta.json of the
   wrong types, a malformed packed index.
5. Safety: script auto-execution stays off in the worker, no .blend is opened, and a render + pack + verify writes
   nothing outside the dataset directory (HOME, TMPDIR, the working directory and the repository stay as they were;
   a relative dataset path once sent the worker's PNGs into the repository).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from datagen import dataset as ds
from datagen.config import UserError
from datagen.pack import index_path, load_packed, pack_dataset, rgb_path
from datagen.verify import verify_dataset
from fakes import make_fake_dataset

REPO = Path(__file__).resolve().parent.parent
FAULT_ENV = "MAGVIT3D_FAULT_CRASH_SAMPLE"
HANG_ENV = "MAGVIT3D_FAULT_HANG_SAMPLE"
ERROR_LINE = re.compile(r"^magvit3d: error: \S.*$")


def cli(*args, env=None, fsize_limit=None, cwd=REPO, timeout=120) -> subprocess.CompletedProcess:
    def limit():  # runs in the child before exec: every process of the command inherits the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run([sys.executable, "-m", "datagen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, preexec_fn=limit if fsize_limit else None)


def render_args(root, n, *extra):
    return ["render", "--out", root, "-c", "tiny", "-n", n, "--set", "render.frames=2", "--no-progress", *extra]


def one_error_line(stderr: str) -> str:
    """The single 'magvit3d: error:' line of a failed command (notices aside), with no traceback anywhere."""
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("notice:")]
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), stderr
    return lines[0]


def stamps(root) -> dict[int, tuple]:
    """Per complete sample: its directory's inode, meta.json's mtime and a hash of meta.json. A sample rendered
    again would appear by a new rename (new inode) with a new meta.json."""
    out = {}
    for sid in ds.complete_sample_ids(root):
        d = ds.sample_dir(root, sid)
        meta = d / "meta.json"
        out[sid] = (d.stat().st_ino, meta.stat().st_mtime_ns, hashlib.sha256(meta.read_bytes()).hexdigest())
    return out


def assert_unchanged(before: dict, after: dict, label: str) -> None:
    changed = sorted(sid for sid in before if after.get(sid) != before[sid])
    assert not changed, f"{label}: finished samples {changed} were rendered again or lost"


def worker_pids(parent: int) -> list[int]:
    """Blender worker processes whose parent is `parent` (a /proc scan; no psutil)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"blender_scenes.worker" in cmd:
            pids.append(int(p.name))
    return pids


def rendering(root: Path, since: float) -> bool:
    """A sample's temp directory made by the current run (not one left by a killed run) exists."""
    for p in (root / "samples").glob(ds.TMP_PREFIX + "*"):
        try:
            if p.stat().st_ctime > since:
                return True
        except FileNotFoundError:
            pass
    return False


def kill(pid: int, sig=signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def clean_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "MAGVIT3D_"))}
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), **extra)
    return env


# --- 1. random kills of workers and of the whole render ----------------------------------------------------------

@pytest.mark.blender
def test_random_worker_and_render_kills_never_cost_finished_work(tmp_path):
    root, n = tmp_path / "ds", 12
    env = clean_env(tmp_path)
    args = render_args(root, n, "-j", "2")
    rng = random.Random(7)
    seen: dict[int, tuple] = {}
    faults, replaced = [], 0  # faults: (run, what), for the record
    # per run: kill a worker while it starts | kill workers at random moments | SIGKILL the whole render
    plan = [("starting", "render"), ("workers", "render"), ("render",), ("workers",), (), (), ()]
    for run, actions in enumerate(plan):
        t_run = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", *map(str, args)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        out: dict = {}
        reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
        reader.start()
        deadline, pids = time.time() + 60, []
        if "starting" in actions:  # before its bpy import is done: it never says ready
            while proc.poll() is None and time.time() < deadline and not (pids := worker_pids(proc.pid)):
                time.sleep(0.005)
            if proc.poll() is None and pids and kill(pids[0]):
                faults.append((run, f"SIGKILL worker {pids[0]} while it starts"))
        if "workers" in actions:  # at a random moment while samples are being rendered
            kills = rng.randint(2, 3)
            while kills and proc.poll() is None and time.time() < deadline:
                if not rendering(root, since=t_run):
                    time.sleep(0.005)
                    continue
                time.sleep(rng.uniform(0.0, 0.3))
                if (pids := worker_pids(proc.pid)) and kill(pid := rng.choice(pids)):
                    faults.append((run, f"SIGKILL worker {pid} while rendering"))
                    kills -= 1
        if "render" in actions:
            goal = len(ds.complete_sample_ids(root)) + rng.randint(1, 2)
            while proc.poll() is None and time.time() < deadline and len(ds.complete_sample_ids(root)) < goal:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the render and its workers: no chance to clean up
                faults.append((run, "SIGKILL the render's process group"))
        reader.join(timeout=90)
        code = proc.wait()
        if code in (0, 1):  # finished, or finished with samples that failed twice: never a crash of the orchestrator
            assert "Traceback" not in out["stderr"] and "internal error" not in out["stderr"], out["stderr"]
            if code == 1:
                assert "failed twice" in one_error_line(out["stderr"])
            summary_path = root / "render_summary.json"
            if summary_path.exists() and summary_path.stat().st_mtime > t_run:
                replaced += json.loads(summary_path.read_text())["workers_replaced"]
        else:
            assert code == -signal.SIGKILL, f"run {run} {actions}: exit {code}: {out['stderr']}"
        now = stamps(root)
        print(f"run {run} {actions}: exit {code}, {len(now)} of {n} samples complete")
        assert_unchanged(seen, now, f"run {run} {actions}")
        seen.update(now)
        if code == 0 and not actions:
            break
    print(f"faults injected: {faults}; workers replaced in finished runs: {replaced}")
    assert sum("worker" in f for _, f in faults) >= 3, faults
    assert sum("process group" in f for _, f in faults) >= 2, faults
    assert code == 0, out["stderr"]
    # every id exactly once, nothing else (no temp directory that could pass for a sample)
    assert sorted(p.name for p in (root / "samples").iterdir()) == [ds.sample_name(i) for i in range(n)]
    assert verify_dataset(root, progress=False)["ok"]
    # SIGKILLed workers leave Blender session directories behind; they are in the dataset's logs, removed by the
    # next run, never in the user's TMPDIR
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not list((root / "logs").glob("blender-tmp*"))


@pytest.mark.blender
def test_blender_crash_in_one_sample_is_reported_replaced_and_the_rest_finish(tmp_path):
    root = tmp_path / "ds"
    crash = cli(*render_args(root, 4, "-j", "1"), env=clean_env(tmp_path, **{FAULT_ENV: "2"}))
    assert crash.returncode == 1
    line = one_error_line(crash.stderr)
    assert "failed twice: [2]" in line
    summary = json.loads((root / "render_summary.json").read_text())
    assert [f["sample_id"] for f in summary["failed"]] == [2] and summary["retried"] == [2]
    assert "died with exit code -6" in summary["failed"][0]["error"]  # SIGABRT, as a crashing Blender
    assert summary["workers_replaced"] == 2 and summary["rendered"] == 3
    assert ds.complete_sample_ids(root) == {0, 1, 3}
    assert not list((root / "samples").glob(ds.TMP_PREFIX + "*"))  # its partial output is gone
    rep = verify_dataset(root, progress=False)
    assert rep["missing_ids"] == [2] and {e["sample_id"] for e in rep["errors"]} == {2}
    before = stamps(root)

    again = cli(*render_args(root, 4), env=clean_env(tmp_path))
    assert again.returncode == 0, again.stderr
    assert json.loads((root / "render_summary.json").read_text())["rendered"] == 1
    assert_unchanged(before, stamps(root), "rerun after the crash")
    assert verify_dataset(root, progress=False)["ok"]


def is_worker(pid: int) -> bool:
    """A live (not reaped) Blender worker process has this pid."""
    try:
        return b"blender_scenes.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def processes_in(folder: Path) -> list[int]:
    """Processes whose working directory is in `folder` (render workers run in the dataset's logs folder)."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and Path(os.readlink(p / "cwd")).is_relative_to(folder):
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


@pytest.mark.blender
def test_blender_hang_in_one_sample_is_killed_reported_replaced_and_the_rest_finish(tmp_path):
    # a tiny sample renders in ~0.2 s in the worker (2-core machine, ~2 s for the whole 4-sample run): 10 s is ample
    root, timeout = tmp_path / "ds", 10
    t0 = time.monotonic()
    hang = cli(*render_args(root, 4, "-j", "1", "--sample-timeout", timeout),
               env=clean_env(tmp_path, **{HANG_ENV: "2"}))
    seconds = time.monotonic() - t0
    assert hang.returncode == 1, hang.stderr
    assert "failed twice: [2]" in one_error_line(hang.stderr)
    assert seconds >= 2 * timeout  # both attempts waited for the timeout
    retry, gave_up = (ln for ln in hang.stdout.splitlines() if ln.startswith("sample 2 failed"))
    for text in (retry, gave_up):
        assert re.search(rf"render worker \(pid \d+\) gave no reply within {timeout} s \(hung\?\); killed it; "
                         rf"log: {re.escape(str(root / 'logs'))}", text), hang.stdout
    summary = json.loads((root / "render_summary.json").read_text())
    assert [f["sample_id"] for f in summary["failed"]] == [2] and summary["retried"] == [2]
    assert f"gave no reply within {timeout} s (hung?); killed it" in summary["failed"][0]["error"]
    assert summary["workers_replaced"] == 2 and summary["rendered"] == 3 and summary["sample_timeout_s"] == timeout
    assert ds.complete_sample_ids(root) == {0, 1, 3}
    assert not list((root / "samples").glob(ds.TMP_PREFIX + "*"))
    hung = [int(pid) for pid in re.findall(r"\(pid (\d+)\) gave no reply", hang.stdout)]
    assert len(set(hung)) == 2 and not any(is_worker(pid) for pid in hung)  # killed and reaped
    assert processes_in(root) == []  # no worker of the run survives it
    rep = verify_dataset(root, progress=False)
    assert rep["missing_ids"] == [2] and {e["sample_id"] for e in rep["errors"]} == {2}
    before = stamps(root)

    again = cli(*render_args(root, 4), env=clean_env(tmp_path))
    assert again.returncode == 0, again.stderr
    summary = json.loads((root / "render_summary.json").read_text())
    assert summary["rendered"] == 1 and summary["sample_timeout_s"] == 600
    assert_unchanged(before, stamps(root), "rerun after the hang")
    verify = cli("verify", "--data", root, "--no-progress")
    assert verify.returncode == 0, verify.stderr


def scripted_worker(log_path: Path, script: str):
    """A RenderWorker whose process is `python -c SCRIPT REPLY_FD` instead of Blender: no bpy, milliseconds."""
    from datagen.render import RenderWorker

    class Scripted(RenderWorker):
        @staticmethod
        def command(reply_fd, *_):
            return [sys.executable, "-c", script, str(reply_fd)]

    return Scripted("cpu", 1, log_path)


def wait_for_log(worker, text: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while text not in worker.log_tail() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert text in worker.log_tail(), worker.log_tail()


REPLY = "import os, sys, time; fd = int(sys.argv[1]); "


def test_worker_that_gives_no_reply_is_killed_after_the_timeout(tmp_path):
    from datagen.render import WorkerCrashed

    # half a reply, then a deadlock: a line not yet ended is no reply
    worker = scripted_worker(tmp_path / "logs" / "w.log", REPLY + "os.write(fd, b'{\"event\": \"rea'); "
                             "print('stuck', flush=True); time.sleep(1000)")
    try:
        wait_for_log(worker, "stuck")  # the half reply is written: what follows does not depend on timing
        pid, t0 = worker.proc.pid, time.monotonic()
        with pytest.raises(WorkerCrashed) as e:
            worker.wait_ready(0.5)
        assert 0.5 <= time.monotonic() - t0 < 10
        assert str(e.value) == (f"render worker (pid {pid}) gave no reply within 0.5 s (hung?); killed it; "
                                f"log: {worker.log_path} | last log lines: stuck")
        assert e.value.sent
        assert worker.proc.returncode == -signal.SIGKILL and not Path(f"/proc/{pid}").exists()  # killed, reaped
    finally:
        worker.close()


def test_worker_replies_are_read_a_line_at_a_time_with_a_deadline(tmp_path):
    from datagen.render import WorkerCrashed

    # the ready reply in two writes, then the first sample's reply in the same write as the ready's end; then a hang
    script = (REPLY + "os.write(fd, b'{\"event\": \"rea'); time.sleep(0.3); "
              "os.write(fd, b'dy\"}\\n{\"event\": \"done\", \"sample_id\": 0}\\n'); time.sleep(1000)")
    worker = scripted_worker(tmp_path / "logs" / "w.log", script)
    try:
        assert worker.wait_ready(30) == {"event": "ready"}
        t0 = time.monotonic()
        assert worker.render({"sample_id": 0}, tmp_path / "out", timeout=30) == {"event": "done", "sample_id": 0}
        assert time.monotonic() - t0 < 5  # from the bytes read before, without waiting
        with pytest.raises(WorkerCrashed, match=r"gave no reply within 0.3 s \(hung\?\); killed it") as e:
            worker.render({"sample_id": 1}, tmp_path / "out", timeout=0.3)
        assert e.value.sent  # the request went out: the attempt counts
        assert worker.proc.returncode == -signal.SIGKILL
    finally:
        worker.close()


def test_worker_that_dies_mid_reply_is_still_a_death(tmp_path):
    from datagen.render import WorkerCrashed

    worker = scripted_worker(tmp_path / "logs" / "w.log", REPLY + "os.write(fd, b'{\"event\": \"ready\"'); "
                             "sys.exit(7)")
    try:
        with pytest.raises(WorkerCrashed, match=r"\) died with exit code 7; log: "):
            worker.wait_ready(30)
    finally:
        worker.close()


def test_worker_that_hangs_while_it_starts_counts_as_a_failed_start(tmp_path, monkeypatch):
    from datagen import render
    from datagen.config import load_config
    from datagen.spec import DatasetConfig

    started: list = []

    class Hanging(render.RenderWorker):
        @staticmethod
        def command(reply_fd, *_):
            return [sys.executable, "-c", "import time; time.sleep(1000)"]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self.proc)

    monkeypatch.setattr(render, "RenderWorker", Hanging)
    monkeypatch.setattr(render, "READY_TIMEOUT_S", 0.3)
    root = tmp_path / "ds"
    with pytest.raises(render.WorkerStartFailed) as e:
        render.render_dataset(load_config(DatasetConfig, "dataset", "tiny", []), root, workers=1, progress=False,
                              log=lambda m: None)
    assert "render workers died or hung 3 times in a row before they were ready" in str(e.value)
    assert "gave no reply within 0.3 s (hung?); killed it" in str(e.value) and "\n" not in str(e.value)
    assert len(started) == render.MAX_START_FAILURES
    assert all(p.returncode == -signal.SIGKILL for p in started)
    # the log the message names is there to read (it used to be deleted with the rest); nothing else is written
    named = Path(re.search(r"log: (\S+\.log)", str(e.value)).group(1))
    assert named.is_file() and named.parent == (root / "logs").absolute()
    assert sorted(p.name for p in root.iterdir()) == ["logs"]
    assert not list((root / "logs").glob("blender-tmp*"))


@pytest.mark.parametrize("device,cycles", [("cuda", "gpu"), ("cpu", "cpu"), ("auto", "auto"), ("gpu", "gpu")])
def test_render_and_demo_translate_the_device_word_for_cycles(tmp_path, monkeypatch, device, cycles):
    """Every command says auto|cpu|cuda; Cycles' worker says auto|cpu|gpu (any GPU backend). `demo --device cuda` used
    to pass 'cuda' to the render workers, which refused it three times. (gpu: render's old spelling.) A stand-in
    worker refuses to start, naming the device it was given; nothing is written."""
    from datagen import render
    from datagen.config import load_config
    from datagen.spec import DatasetConfig
    from evaluation.pipeline import DemoPlan, run_demo

    class Reporting(render.RenderWorker):
        @staticmethod
        def command(reply_fd, device, *_):
            return [sys.executable, "-c", REPLY + "os.write(fd, ('{\"event\": \"error\", \"error\": \"worker "
                    "device=%s\"}\\n' % sys.argv[2]).encode())", str(reply_fd), device]

    monkeypatch.setattr(render, "RenderWorker", Reporting)
    cfg = load_config(DatasetConfig, "dataset", "tiny", [])
    with pytest.raises(UserError, match=f"^worker device={cycles}$"):
        render.render_dataset(cfg, tmp_path / "ds", device=device, progress=False, log=lambda m: None)
    if device != "gpu":   # the demo only takes the three words
        with pytest.raises(UserError, match=f"^worker device={cycles}$"):
            run_demo(DemoPlan("tiny", tmp_path / "demo", device=device), progress=False, log=lambda m: None)
        assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["demo_state.json"]
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_render_rejects_a_sample_timeout_not_above_zero(tmp_path, value):
    root = tmp_path / "ds"
    out = cli(*render_args(root, 2, "--sample-timeout", value), env=clean_env(tmp_path))
    assert out.returncode == 2
    assert "--sample-timeout" in one_error_line(out.stderr) and "> 0" in out.stderr
    assert not root.exists()


@pytest.mark.blender
def test_a_second_render_of_the_same_shard_is_refused_and_touches_nothing(tmp_path):
    """Two renders of one shard into one dataset would delete each other's partial samples and Blender temp dirs:
    the second is refused (exit 2, naming the holder's pid) while the first holds the shard's lock, another shard
    renders meanwhile, and a lock whose holder was killed is free again."""
    root = tmp_path / "ds"
    first = cli(*render_args(root, 6, "--shard", "2/3"))
    assert first.returncode == 0, first.stderr
    partial = ds.tmp_sample_dir(root, 0)   # what a running render of shard 0/3 has in flight
    partial.mkdir(parents=True)
    (partial / "frame.png").write_bytes(b"in progress")
    blender_tmp = root / "logs" / "blender-tmp.shard-0-of-3"
    blender_tmp.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from datagen.render import shard_lock; "
        "lock = shard_lock(Path(sys.argv[2]), (0, 3)); lock.__enter__(); print('held', flush=True); time.sleep(600)"),
        str(REPO), str(root / "logs" / "render.shard-0-of-3.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = cli(*render_args(root, 6, "--shard", "0/3"))
        assert refused.returncode == 2
        line = one_error_line(refused.stderr)
        assert "another render of shard 0/3" in line and f"pid {holder.pid}" in line, line
        assert (partial / "frame.png").read_bytes() == b"in progress" and blender_tmp.is_dir()
        other = cli(*render_args(root, 6, "--shard", "1/3"))   # another shard is not blocked
        assert other.returncode == 0, other.stderr
        assert ds.complete_sample_ids(root) == {1, 2, 4, 5}
        assert (partial / "frame.png").read_bytes() == b"in progress" and blender_tmp.is_dir()
    finally:
        holder.kill()
        holder.wait()
    resumed = cli(*render_args(root, 6, "--shard", "0/3"))  # the killed holder's lock is gone with it
    assert resumed.returncode == 0, resumed.stderr
    assert ds.complete_sample_ids(root) == set(range(6))
    assert not partial.exists() and not blender_tmp.exists()
    assert verify_dataset(root, progress=False)["ok"]


# --- 2. a full disk (a file size limit) ---------------------------------------------------------------------------

@pytest.mark.blender
@pytest.mark.parametrize("bites", ["meta.json", "png"])
def test_render_on_a_full_disk_fails_in_one_line_and_keeps_finished_samples(tmp_path, bites):
    root, n = tmp_path / "ds", 4
    first = cli(*render_args(root, n, "--shard", "0/2"))
    assert first.returncode == 0, first.stderr
    before = stamps(root)
    assert set(before) == {0, 2}
    sample = ds.sample_dir(root, 0)
    pngs = [p.stat().st_size for p in sample.rglob("*.png")]
    rgb = min(p.stat().st_size for p in sample.glob("view*/rgb/*.png"))
    meta, spec = (sample / "meta.json").stat().st_size, (sample / "spec.json").stat().st_size
    if bites == "meta.json":   # every PNG and spec.json fit, meta.json does not: the orchestrator's write fails
        assert max(pngs + [spec]) < meta
        limit = (max(pngs + [spec]) + meta) // 2
    else:                      # an RGB PNG does not fit: Blender's write is cut short (and it says 'Saved')
        limit = rgb // 2

    out = cli(*render_args(root, n), fsize_limit=limit)
    assert out.returncode == 1, out.stderr
    line = one_error_line(out.stderr)
    assert re.search(r"(File too large|written truncated)", line) and str(root) in line
    assert "meta.json" in line if bites == "meta.json" else ".png" in line
    assert "completed samples are kept" in line
    assert_unchanged(before, stamps(root), "after the full disk")
    assert set(stamps(root)) == {0, 2}  # nothing half-written was committed as a sample
    assert not list((root / "samples").glob(ds.TMP_PREFIX + "*"))
    rep = verify_dataset(root, progress=False)
    assert rep["missing_ids"] == [1, 3] and all(e["error"].endswith("missing") for e in rep["errors"]), rep["errors"]

    again = cli(*render_args(root, n))  # space is back: the rerun finishes the rest
    assert again.returncode == 0, again.stderr
    assert_unchanged(before, stamps(root), "rerun after the full disk")
    assert verify_dataset(root, progress=False)["ok"]


@pytest.mark.blender
def test_render_that_cannot_write_dataset_json_can_be_rerun(tmp_path):
    root = tmp_path / "ds"
    out = cli(*render_args(root, 2), fsize_limit=2048)  # dataset.json is ~5 kB
    assert out.returncode == 1
    assert f"{root / 'dataset.json'}: File too large" in one_error_line(out.stderr)
    assert sorted(p.name for p in root.iterdir()) == ["logs"]  # no samples/ without a dataset.json
    again = cli(*render_args(root, 2))
    assert again.returncode == 0, again.stderr
    assert verify_dataset(root, progress=False)["ok"]


def packed_files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "packed").iterdir())}


def test_pack_on_a_full_disk_fails_in_one_line_and_keeps_the_old_pack(tmp_path):
    root = make_fake_dataset(tmp_path / "ds", num_samples=4, resolution=32, frames=3)
    # nothing packed yet: no array may appear at its final path
    out = cli("pack", "--data", root, "--no-progress", fsize_limit=4096)
    assert out.returncode == 1
    line = one_error_line(out.stderr)
    assert f"{rgb_path(root, 'train')}: File too large" in line and "pack stopped" in line
    assert list((root / "packed").iterdir()) == []

    pack_dataset(root, progress=False)
    before = packed_files(root)
    out = cli("pack", "--data", root, "--no-progress", fsize_limit=4096)
    assert out.returncode == 1 and "File too large" in one_error_line(out.stderr)
    assert packed_files(root) == before  # byte for byte, and no temp file beside them
    for split in ("train", "val", "test"):
        assert load_packed(root, split).rgb.dtype == np.uint8


def test_pack_enospc_at_fsync_keeps_the_old_pack(tmp_path, monkeypatch):
    """A disk that fills up late (delayed allocation) reports ENOSPC at fsync: still one clean error."""
    import errno

    root = make_fake_dataset(tmp_path / "ds", num_samples=4, resolution=32, frames=3)
    pack_dataset(root, progress=False)
    before = packed_files(root)
    real_fsync = os.fsync

    def full_fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "_rgb.npy.tmp-" in name:  # the packed array's temp file, not the index
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(ds.WriteFailed) as e:
        pack_dataset(root, progress=False)
    assert e.value.filename == str(rgb_path(root, "train")) and "No space left on device" in e.value.strerror
    assert "\n" not in str(e.value)
    assert packed_files(root) == before


# --- 3. corrupt inputs not covered by test_verify_pack_preview.py -------------------------------------------------

@pytest.fixture
def fake(tmp_path):
    return make_fake_dataset(tmp_path / "ds", num_samples=4, resolution=32, frames=3)


def test_verify_cli_names_the_corrupt_files(fake):
    png = ds.frame_path(ds.sample_dir(fake, 1), "view0", "rgb", 1)
    png.write_bytes(png.read_bytes()[:-30])
    meta = ds.sample_dir(fake, 2) / "meta.json"
    meta.write_text(meta.read_text()[:100])
    wrong = ds.load_meta(fake, 3)
    wrong["image_size"] = 32  # valid JSON, wrong type: reported, not a crash
    ds.write_json_atomic(ds.sample_dir(fake, 3) / "meta.json", wrong)
    out = cli("verify", "--data", fake, "--no-progress")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert any(f"sample 1: rgb image {png} does not decode" in ln for ln in lines), out.stderr
    assert any(f"sample 2: meta.json {meta} is not valid JSON" in ln for ln in lines), out.stderr
    assert any("sample 3: meta.json has frames=3 image_size=32" in ln for ln in lines), out.stderr
    assert lines[-1].endswith("failing sample ids: [1, 2, 3]")


def test_pack_cli_on_a_truncated_png_is_one_line_and_writes_no_array(fake):
    sid = ds.load_dataset_json(fake)["splits"]["train"][0]
    png = ds.frame_path(ds.sample_dir(fake, sid), "view2", "rgb", 0)
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    out = cli("pack", "--data", fake, "--no-progress")
    assert out.returncode == 2
    assert str(png) in one_error_line(out.stderr)
    assert not rgb_path(fake, "train").exists() and not list((fake / "packed").glob(".*"))


@pytest.mark.parametrize("index", ["[]", '{"image_size": 32}', "truncated"])
def test_load_packed_rejects_a_malformed_index_naming_it(fake, index):
    pack_dataset(fake, progress=False)
    p = index_path(fake, "val")
    p.write_text(p.read_text()[:50] if index == "truncated" else index)
    with pytest.raises(UserError) as e:
        load_packed(fake, "val")
    assert str(p) in str(e.value) and "\n" not in str(e.value)


# --- 4. safety ------------------------------------------------------------------------------------------------------

def test_blender_code_never_opens_a_blend_file():
    """Only Blender's built-in factory scene is ever loaded: no call that opens, appends or links a .blend."""
    sources = {p.name: p.read_text() for p in (REPO / "blender_scenes").glob("*.py")}
    for name, text in sources.items():
        for call in ("open_mainfile", "libraries.load", "wm.append", "wm.link", "load_post", "recover_"):
            assert call not in text, f"{name} uses {call}"
        homefiles = re.findall(r"read_homefile\(([^)]*)\)", text)
        assert all("use_factory_startup=True" in args for args in homefiles), (name, homefiles)
    assert "use_scripts_auto_execute = False" in sources["worker.py"] + sources["scene.py"]


@pytest.mark.blender
def test_worker_reports_script_auto_execution_off(tmp_path):
    from datagen.render import RenderWorker
    from datagen.spec import DatasetConfig, build_spec
    from datagen.config import from_dict

    worker = RenderWorker("cpu", 1, tmp_path / "logs" / "w.log", tmp_dir=tmp_path / "logs" / "tmp")
    try:
        ready = worker.wait_ready()
        assert ready["event"] == "ready"
        assert ready["scripts_auto_execute"] is False and ready["blend_file"] == ""
        cfg = from_dict(DatasetConfig, {"dataset": {"num_samples": 1},
                                        "render": {"resolution": 32, "frames": 2, "samples": 1, "denoiser": "none"}})
        (tmp_path / "out").mkdir()
        done = worker.render(build_spec(cfg, 0), tmp_path / "out")
        assert done["event"] == "done", done
        assert done["scripts_auto_execute"] is False and done["blend_file"] == ""  # after loading the scene too
    finally:
        worker.close()


def repo_files() -> set[str]:
    """The repository's top level and the non-Python files of the packages that render (the workers used to run
    with the repository as working directory). Python sources other sessions may add are not counted."""
    out = {p.name for p in REPO.iterdir()}
    for pkg in ("blender_scenes", "datagen"):
        out |= {str(p) for p in (REPO / pkg).rglob("*") if "__pycache__" not in p.parts and p.suffix != ".py"}
    return out


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) + ("/" if p.is_dir() else "") for p in folder.rglob("*"))


@pytest.mark.blender
def test_render_pack_verify_write_nothing_outside_the_dataset(tmp_path):
    """HOME, TMPDIR and the working directory are fresh; the dataset path is relative to the working directory.
    Allowed outside: the empty freedesktop thumbnail folders Blender creates under $HOME/.cache/thumbnails at start
    (standard in any real HOME; no file in them)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = clean_env(tmp_path)
    repo_before = repo_files()
    for args in (render_args("ds", 3, "-j", "2"), ["verify", "--data", "ds", "--no-progress"],
                 ["pack", "--data", "ds", "--no-progress"]):
        out = cli(*args, env=env, cwd=cwd)
        assert out.returncode == 0, (args, out.stderr)
    assert ds.complete_sample_ids(cwd / "ds") == {0, 1, 2}
    assert len(load_packed(cwd / "ds", "train")) >= 1
    assert tree(cwd) == ["ds/"] + [f"ds/{p}" for p in tree(cwd / "ds")]
    assert tree(tmp_path / "tmp") == []
    home = tree(tmp_path / "home")
    assert all(p.startswith(".cache/") and p.endswith("/") for p in home), home  # directories only
    assert all(p in (".cache/", ".cache/thumbnails/") or p.startswith(".cache/thumbnails/") for p in home), home
    assert repo_files() - repo_before == set()
    assert not (REPO / "ds").exists()
    # inside the dataset: only the documented layout (no worker temp dirs, no stray files)
    top = sorted(p.name for p in (cwd / "ds").iterdir())
    assert top == ["dataset.json", "logs", "packed", "render_summary.json", "samples"], top
    logs = sorted(p.name for p in (cwd / "ds" / "logs").iterdir())
    assert "render.lock" in logs and all(p.endswith(".log") for p in logs if p != "render.lock"), logs
