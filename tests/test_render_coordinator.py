"""The render's coordinator (datagen.render.Coordinator, plan_render, render_dataset) with a fake worker pool: no
Blender, no processes. The fake pool writes a sample's PNGs as a worker would (tests/fakes.py) or fails the way
a script says, attempt by attempt, so retries, worker replacement, retired slots, resume and the summary are
checked exactly. The pool itself, with stand-in worker processes, is tested in test_render_pool.py."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from datagen import dataset as ds
from datagen import render
from datagen.config import UserError
from datagen.render import Coordinator, WorkerCrashed, WorkerStartFailed, new_summary, plan_render
from datagen.verify import verify_dataset
from fakes import fake_config, write_fake_frames

READY = {"event": "ready", "device": "CPU", "blender": "fake-5.0"}


class FakePool:
    """WorkerPool's methods, without processes. `script[sid]` lists the outcome of each attempt at sample sid
    (default: done):
        done          the frame PNGs are written into the sample's temp dir, the reply is done
        failed        the worker replies failed (as for a scene the renderer rejects)
        crash         the worker dies after it got the sample, leaving a partial PNG (WorkerCrashed, sent)
        unsent        the worker had died before it got the sample (WorkerCrashed, not sent)
        no-pngs       the worker says done but wrote nothing
        truncated     the PNGs are written and one is cut short (a full disk under Blender)
        hang          the worker gives no reply until kill_all()
        bug           an unexpected exception in the pool
    Slots in `refuse` never get a worker started (WorkerStartFailed). A started worker makes `tmp_dir` (as
    Blender makes its session dir in TMPDIR)."""

    def __init__(self, size: int = 1, script: dict | None = None, refuse=(), on_render=None,
                 tmp_dir: Path | None = None):
        self.size, self.tmp_dir = size, tmp_dir
        self.script = {sid: list(outcomes) for sid, outcomes in (script or {}).items()}
        self.refuse, self.on_render = set(refuse), on_render
        self.alive = [False] * size
        self.started = [0] * size           # workers started per slot
        self.attempts: list[tuple[int, int]] = []  # (slot, sample id) per render call
        self.refused = threading.Event()    # a slot has retired
        self.killed = threading.Event()
        self.shut_down = False
        self.lock = threading.Lock()

    def ready(self, k: int) -> dict:
        if not self.alive[k]:
            if k in self.refuse:
                self.refused.set()
                raise WorkerStartFailed(f"render workers died or hung 3 times in a row before they were ready; "
                                        f"last: slot {k}")
            self.started[k] += 1
            self.alive[k] = True
            if self.tmp_dir:
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return dict(READY)

    def render(self, k: int, spec: dict, out_dir: Path) -> dict:
        assert self.alive[k] and out_dir.is_dir() and not any(out_dir.iterdir())  # a fresh temp dir, every time
        sid = spec["sample_id"]
        with self.lock:
            self.attempts.append((k, sid))
            outcomes = self.script.get(sid)
            outcome = outcomes.pop(0) if outcomes else "done"
        if self.on_render:
            self.on_render(k, sid)
        if outcome in ("done", "truncated"):
            write_fake_frames(out_dir, spec)
            if outcome == "truncated":
                png = ds.frame_path(out_dir, "view1", "rgb", 0)
                png.write_bytes(png.read_bytes()[:40])
            return {"event": "done", "sample_id": sid, "seconds": 0.5}
        if outcome == "no-pngs":
            return {"event": "done", "sample_id": sid, "seconds": 0.5}
        if outcome == "failed":
            return {"event": "failed", "sample_id": sid, "error": f"texture 'plasma' of sample {sid} is unknown"}
        if outcome in ("crash", "unsent", "hang"):
            if outcome == "crash":
                (out_dir / "view0").mkdir()
                (out_dir / "view0" / "partial.png").write_bytes(b"\x89PNG")
            if outcome == "hang":
                assert self.killed.wait(30)
            self.alive[k] = False
            raise WorkerCrashed(f"render worker (pid 4242) died with exit code -6 in sample {sid}",
                                sent=outcome != "unsent")
        if outcome == "bug":
            raise ValueError(f"no such thing in sample {sid}")
        raise AssertionError(outcome)

    def close(self, k: int) -> None:
        self.alive[k] = False

    def kill_all(self) -> None:
        self.killed.set()

    def shutdown(self) -> None:
        self.shut_down = True
        self.remove_tmp()

    def remove_tmp(self) -> None:
        if self.tmp_dir and self.tmp_dir.exists():
            self.tmp_dir.rmdir()


def planned(tmp_path: Path, num_samples: int = 4):
    """A plan for a fresh dataset of `num_samples` tiny clips, with its samples/ folder made."""
    root = tmp_path / "ds"
    plan = plan_render(fake_config(num_samples=num_samples), root, (0, 1))
    (root / "samples").mkdir(parents=True)
    return plan


def run(plan, pool) -> tuple[dict, Coordinator]:
    coordinator = Coordinator(plan, pool, new_summary(plan, 600.0), progress=False)
    coordinator.run()
    return coordinator.summary, coordinator


def no_temp_dirs(root: Path) -> bool:
    return not list((root / "samples").glob(ds.TMP_PREFIX + "*"))


def test_every_sample_is_committed_once_with_its_spec_and_meta(tmp_path):
    plan = planned(tmp_path, 5)
    pool = FakePool(size=2)
    summary, coordinator = run(plan, pool)
    assert ds.complete_sample_ids(plan.root) == set(range(5)) and no_temp_dirs(plan.root)
    assert sorted(sid for _, sid in pool.attempts) == list(range(5))   # each rendered once
    assert summary["rendered"] == 5 and summary["failed"] == [] and summary["retried"] == []
    assert summary["workers_replaced"] == 0 and coordinator.sample_seconds == [0.5] * 5
    for sid in range(5):
        d = ds.sample_dir(plan.root, sid)
        assert json.loads((d / "spec.json").read_text()) == plan.specs[sid]
        assert ds.load_meta(plan.root, sid)["sample_id"] == sid
    assert pool.shut_down and pool.alive == [False, False]  # every slot closed its worker, then the pool shut down


def test_a_failing_sample_is_retried_once_then_reported_while_the_rest_finish(tmp_path, capsys):
    plan = planned(tmp_path)
    summary, _ = run(plan, FakePool(script={1: ["failed", "failed"]}))
    assert summary["retried"] == [1] and summary["rendered"] == 3
    assert summary["failed"] == [{"sample_id": 1, "error": "texture 'plasma' of sample 1 is unknown"}]
    assert ds.complete_sample_ids(plan.root) == {0, 2, 3} and no_temp_dirs(plan.root)
    out = capsys.readouterr().out.splitlines()
    assert "sample 1 failed, retrying once: texture 'plasma' of sample 1 is unknown" in out
    assert "sample 1 failed twice, giving up: texture 'plasma' of sample 1 is unknown" in out


def test_a_worker_that_dies_in_a_sample_is_replaced_and_the_retry_starts_clean(tmp_path):
    plan = planned(tmp_path)
    pool = FakePool(script={2: ["crash", "done"]})
    summary, _ = run(plan, pool)
    assert summary["retried"] == [2] and summary["failed"] == [] and summary["workers_replaced"] == 1
    assert pool.started == [2]   # the dead worker's slot got a new one
    assert ds.complete_sample_ids(plan.root) == set(range(4)) and no_temp_dirs(plan.root)
    assert not (ds.sample_dir(plan.root, 2) / "view0" / "partial.png").exists()  # the crash's partial output


def test_a_death_in_both_attempts_reports_the_workers_message(tmp_path):
    plan = planned(tmp_path, 2)
    summary, _ = run(plan, FakePool(script={0: ["crash", "crash"]}))
    assert summary["failed"] == [{"sample_id": 0, "error": "render worker (pid 4242) died with exit code -6 in "
                                                          "sample 0"}]
    assert summary["workers_replaced"] == 2 and ds.complete_sample_ids(plan.root) == {1} and no_temp_dirs(plan.root)


def test_a_worker_that_died_before_it_got_the_sample_costs_no_attempt(tmp_path):
    plan = planned(tmp_path, 2)
    pool = FakePool(script={0: ["unsent", "unsent", "unsent"]})
    summary, _ = run(plan, pool)
    assert summary["retried"] == [] and summary["failed"] == [] and summary["rendered"] == 2
    assert summary["workers_replaced"] == 3 and pool.started == [4]
    assert [sid for _, sid in pool.attempts].count(0) == 4


@pytest.mark.parametrize("outcome,error", [("no-pngs", "the render worker reported sample 0 done, but 18 frame "
                                                       "PNGs are missing, e.g. "),
                                           ("failed", "texture 'plasma' of sample 0 is unknown")])
def test_a_done_reply_without_its_pngs_counts_as_a_failed_attempt(tmp_path, outcome, error):
    plan = planned(tmp_path, 2)
    summary, _ = run(plan, FakePool(script={0: ["no-pngs", outcome]}))
    assert summary["retried"] == [0] and [f["sample_id"] for f in summary["failed"]] == [0]
    assert summary["failed"][0]["error"].startswith(error)
    assert not ds.sample_dir(plan.root, 0).exists() and no_temp_dirs(plan.root)


def test_a_slot_whose_workers_do_not_start_retires_and_the_others_render_everything(tmp_path, capsys):
    plan = planned(tmp_path, 4)

    def slot0_waits_for_the_retirement(k, sid):  # so slot 0 is still working when slot 1 gives its job back
        if k == 0:
            assert pool.refused.wait(30)

    pool = FakePool(size=2, refuse={1}, on_render=slot0_waits_for_the_retirement)
    summary, _ = run(plan, pool)
    assert ds.complete_sample_ids(plan.root) == set(range(4)) and summary["failed"] == []
    assert {k for k, _ in pool.attempts} == {0}
    assert "render worker slot 1 stopped: render workers died or hung 3 times" in capsys.readouterr().out


def test_when_every_slot_retires_the_run_ends_with_the_start_failure(tmp_path):
    plan = planned(tmp_path, 3)
    pool = FakePool(size=2, refuse={0, 1})
    with pytest.raises(WorkerStartFailed, match="died or hung 3 times in a row"):
        run(plan, pool)
    assert pool.attempts == [] and ds.complete_sample_ids(plan.root) == set() and no_temp_dirs(plan.root)
    assert pool.shut_down


def test_a_full_disk_stops_the_run_with_its_one_line_and_keeps_committed_samples(tmp_path):
    plan = planned(tmp_path, 4)
    pool = FakePool(script={2: ["truncated"]})
    with pytest.raises(ds.WriteFailed) as e:
        run(plan, pool)
    assert "written truncated by the render worker" in str(e.value) and "\n" not in str(e.value)
    assert e.value.filename == str(ds.frame_path(ds.tmp_sample_dir(plan.root, 2), "view1", "rgb", 0))
    assert ds.complete_sample_ids(plan.root) == {0, 1}   # one slot: samples in order, 3 never started
    assert no_temp_dirs(plan.root) and pool.killed.is_set() and pool.shut_down


def test_an_unexpected_error_in_a_slot_ends_the_run_as_an_internal_error(tmp_path):
    plan = planned(tmp_path, 2)
    with pytest.raises(RuntimeError, match=r"^render orchestration failed: ValueError: no such thing in sample 1$"):
        run(plan, FakePool(script={1: ["bug"]}))
    assert ds.complete_sample_ids(plan.root) == {0} and no_temp_dirs(plan.root)


def test_ctrl_c_kills_the_workers_and_drops_the_samples_in_flight(tmp_path):
    """Slot 1 hangs in sample 1 (its temp dir exists) when Ctrl-C arrives with sample 0's done event."""
    plan = planned(tmp_path, 2)
    in_flight = threading.Event()

    def sample_0_after_sample_1_started(k, sid):
        if sid == 0:
            assert in_flight.wait(30)
        else:
            in_flight.set()

    pool = FakePool(size=2, script={1: ["hang"]}, on_render=sample_0_after_sample_1_started)

    class CtrlC(Coordinator):
        def _record(self, kind, sid, payload, bar):
            super()._record(kind, sid, payload, bar)
            if kind == "done":
                assert ds.tmp_sample_dir(plan.root, 1).is_dir()
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CtrlC(plan, pool, new_summary(plan, 600.0), progress=False).run()
    assert pool.killed.is_set() and pool.shut_down
    assert ds.complete_sample_ids(plan.root) == {0} and no_temp_dirs(plan.root)


# --- plan_render and render_dataset around the coordinator ------------------------------------------------------

def test_plan_skips_the_shards_complete_samples_and_builds_specs_for_the_rest(tmp_path):
    cfg = fake_config(num_samples=7)
    root = tmp_path / "ds"
    (root / "samples").mkdir(parents=True)
    ds.write_json_atomic(root / "dataset.json", ds.build_dataset_json(cfg, "fake"))
    for sid in (1, 2, 4):
        ds.sample_dir(root, sid).mkdir()
    ds.tmp_sample_dir(root, 5).mkdir()   # a partial sample is not complete
    plan = plan_render(cfg, root, (1, 3))
    assert plan.ids == [1, 4] and plan.done_before == {1, 4} and plan.todo == [] and plan.has_dataset_json
    plan = plan_render(cfg, root, (2, 3))
    assert plan.ids == [2, 5] and plan.done_before == {2} and plan.todo == [5]
    assert plan.specs[5]["sample_id"] == 5 and plan.tag == ".shard-2-of-3"


def test_plan_refuses_a_folder_that_is_not_this_dataset(tmp_path):
    cfg = fake_config()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no dataset.json"):
        plan_render(cfg, tmp_path / "other", (0, 1))
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="exists and is not a directory"):
        plan_render(cfg, tmp_path / "file", (0, 1))


class FakePools:
    """Stands in for the WorkerPool class in render_dataset: each run gets a FakePool made with `settings`."""

    def __init__(self):
        self.made: list[FakePool] = []
        self.settings: dict = {}

    def __call__(self, size, **kwargs) -> FakePool:
        assert kwargs["log_dir"].name == "logs" and kwargs["sample_timeout_s"] == 600.0
        self.made.append(FakePool(size, tmp_dir=kwargs["log_dir"] / "blender-tmp", **self.settings))
        return self.made[-1]


@pytest.fixture
def fake_pools(monkeypatch) -> FakePools:
    pools = FakePools()
    monkeypatch.setattr(render, "WorkerPool", pools)
    return pools


def test_render_with_a_fake_pool_resumes_and_keeps_its_summary(tmp_path, fake_pools):
    cfg, root, messages = fake_config(num_samples=4), tmp_path / "ds", []

    def lock_held(k, sid):   # the shard's lock file names the render's pid while samples are rendered
        assert (root / "logs" / "render.lock").read_text() == f"{os.getpid()}\n"

    fake_pools.settings.update(script={2: ["failed", "failed"]}, on_render=lock_held)
    first = render.render_dataset(cfg, root, workers=2, progress=False, log=messages.append)
    assert first["rendered"] == 3 and [f["sample_id"] for f in first["failed"]] == [2] and first["retried"] == [2]
    assert first["workers"] == 2 and first["device"] == "CPU" and first["blender"] == "fake-5.0"
    assert json.loads((root / "render_summary.json").read_text()) == first
    assert ds.load_dataset_json(root)["blender_version"] == "fake-5.0"
    report = verify_dataset(root, progress=False)
    assert report["missing_ids"] == [2] and {e["sample_id"] for e in report["errors"]} == {2}

    fake_pools.settings.update(script={})
    (ds.tmp_sample_dir(root, 2) / "view0").mkdir(parents=True)   # what a killed render leaves
    again = render.render_dataset(cfg, root, workers=2, progress=False, log=messages.append)
    assert "removed 1 partial sample directory left by an interrupted run" in messages
    rerun = fake_pools.made[-1]
    assert [sid for _, sid in rerun.attempts] == [2] and rerun.size == 1   # one sample left: one worker
    assert again["already_complete"] == 3 and again["rendered"] == 1 and again["failed"] == []
    assert verify_dataset(root, progress=False)["ok"]

    done = render.render_dataset(cfg, root, progress=False, log=messages.append)
    assert len(fake_pools.made) == 2 and done["rendered"] == 0 and done["seconds"] == 0.0   # no pool at all
    assert messages[-1] == f"all 4 samples of shard 0/1 are already complete in {root}"
    assert not list((root / "logs").glob("blender-tmp*")) and no_temp_dirs(root)


@pytest.mark.parametrize("case", ["no GPU for cuda", "eevee without a GPU"])
def test_render_whose_first_worker_cannot_render_this_config_writes_nothing(tmp_path, monkeypatch, case):
    class NoGpu(FakePool):
        def ready(self, k):
            if case == "no GPU for cuda":
                raise UserError("--device cuda: no GPU found for Cycles")
            return super().ready(k)   # device CPU

    pools = FakePools()
    monkeypatch.setattr(render, "WorkerPool", lambda size, **kw: pools.made.append(NoGpu(size)) or pools.made[-1])
    cfg = fake_config(render={"engine": "eevee"} if case.startswith("eevee") else {})
    with pytest.raises(UserError, match="no GPU found" if case == "no GPU for cuda" else "needs a GPU context"):
        render.render_dataset(cfg, tmp_path / "ds", device="cuda", progress=False, log=print)
    assert not (tmp_path / "ds").exists() and pools.made[0].attempts == [] and pools.made[0].alive == [False]
