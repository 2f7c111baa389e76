"""The render's worker pool (datagen.render.WorkerPool) with stand-in worker processes: `python -c` scripts that
speak the worker's protocol (a ready line, then one reply line per request) or die or hang where a Blender worker
might. No Blender; each stand-in starts in a few tens of milliseconds. The coordinator above the pool is tested with
a fake pool in test_render_coordinator.py; RenderWorker's reply reading in test_faults_data.py."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from datagen.render import RenderWorker, WorkerCrashed, WorkerPool, WorkerStartFailed

# argv: reply fd, mode. The ready reply says where the worker runs; each done reply echoes the request.
STAND_IN = r"""
import json, os, sys, time
fd, mode = int(sys.argv[1]), sys.argv[2]
def reply(msg):
    os.write(fd, (json.dumps(msg) + "\n").encode())
with open("starts", "a") as f:   # the cwd is the pool's log folder
    f.write("x")
starts = os.path.getsize("starts")
print(f"stand-in {os.getpid()} start {starts}", flush=True)
if mode == "die-at-start" or (mode == "die-twice-at-start" and starts <= 2):
    sys.exit(5)
reply({"event": "ready", "device": "CPU", "blender": "stand-in", "pid": os.getpid(), "cwd": os.getcwd(),
       "tmpdir": os.environ.get("TMPDIR"), "argv": sys.argv[3:]})
if mode == "exit-after-ready":
    sys.exit(0)
for line in sys.stdin:
    request = json.loads(line)
    if mode == "hang":
        time.sleep(1000)
    if mode == "crash":
        os.write(fd, b'{"event": "do')   # a reply cut off by the death
        os._exit(9)
    reply({"event": "done", "sample_id": request["spec"]["sample_id"], "out_dir": request["out_dir"],
           "pid": os.getpid(), "seconds": 0.0})
"""


def stand_in(mode: str) -> type[RenderWorker]:
    class StandIn(RenderWorker):
        @staticmethod
        def command(reply_fd, device, threads, allow_software_eevee):
            return [sys.executable, "-c", STAND_IN, str(reply_fd), mode, device, str(threads)]

    return StandIn


def pool_of(tmp_path: Path, mode: str, size: int = 1, **kwargs) -> WorkerPool:
    return WorkerPool(size, device="cpu", threads=2, log_dir=tmp_path / "ds" / "logs",
                      worker_cls=stand_in(mode), **kwargs)


def starts(pool: WorkerPool) -> int:
    return len((pool.log_dir / "starts").read_text())


@pytest.fixture
def pools():
    """Pools made by a test; whatever a failing test leaves running is killed."""
    made: list[WorkerPool] = []
    yield made
    for pool in made:
        pool.kill_all()
        pool.shutdown()


def test_a_slot_starts_its_worker_when_asked_and_keeps_it_for_every_sample(tmp_path, pools):
    pool = pool_of(tmp_path, "ok", size=2, tag=".shard-1-of-4")
    pools.append(pool)
    assert pool.workers == [None, None]   # nothing starts before a slot needs it
    ready = pool.ready(1)
    assert ready["event"] == "ready" and ready["argv"] == ["cpu", "2"] and pool.workers[0] is None
    # the worker runs in the dataset's logs folder, with the pool's temp dir as TMPDIR (so nothing lands elsewhere)
    assert Path(ready["cwd"]) == pool.log_dir.absolute() and ready["tmpdir"] == str(pool.tmp_dir.absolute())
    assert pool.tmp_dir == pool.log_dir / "blender-tmp.shard-1-of-4"
    assert pool.ready(1) is ready   # a ready slot is not started again
    replies = [pool.render(1, {"sample_id": sid}, tmp_path / "out") for sid in (3, 7)]
    assert [r["sample_id"] for r in replies] == [3, 7] and {r["pid"] for r in replies} == {ready["pid"]}
    assert replies[0]["out_dir"] == str((tmp_path / "out").absolute())
    assert starts(pool) == 1
    log = pool.log_path(1)
    assert log == pool.log_dir / "render.shard-1-of-4-worker1.log"
    assert f"stand-in {ready['pid']} start 1" in log.read_text()
    proc = pool.workers[1].proc
    pool.shutdown()
    assert proc.returncode == 0 and not pool.tmp_dir.exists()   # closed stdin: it exited on its own


def test_a_worker_that_dies_while_it_starts_is_replaced(tmp_path, pools):
    pool = pool_of(tmp_path, "die-twice-at-start")
    pools.append(pool)
    assert pool.ready(0)["event"] == "ready" and starts(pool) == 3
    assert pool.render(0, {"sample_id": 0}, tmp_path)["event"] == "done"


def test_workers_that_keep_dying_while_they_start_retire_the_slot_in_one_line(tmp_path, pools):
    pool = pool_of(tmp_path, "die-at-start")
    pools.append(pool)
    with pytest.raises(WorkerStartFailed) as e:
        pool.ready(0)
    message = str(e.value)
    assert message.startswith("render workers died or hung 3 times in a row before they were ready; last: "
                              "render worker (pid ") and "\n" not in message
    assert f"died with exit code 5; log: {pool.log_path(0).absolute()}" in message
    assert "start 3" in message   # the log's last lines are those of the last worker
    assert starts(pool) == 3 and pool.workers == [None]


@pytest.mark.parametrize("mode,says", [("hang", "gave no reply within 0.5 s (hung?); killed it"),
                                       ("crash", "died with exit code 9")])
def test_a_worker_that_hangs_or_dies_in_a_sample_is_gone_and_the_slot_gets_a_new_one(tmp_path, pools, mode, says):
    pool = pool_of(tmp_path, mode, sample_timeout_s=0.5)
    pools.append(pool)
    first = pool.ready(0)["pid"]
    proc = pool.workers[0].proc
    t0 = time.monotonic()
    with pytest.raises(WorkerCrashed) as e:
        pool.render(0, {"sample_id": 4}, tmp_path)
    assert says in str(e.value) and f"(pid {first})" in str(e.value)
    assert e.value.sent   # the worker had the sample: the attempt counts
    if mode == "hang":
        assert 0.5 <= time.monotonic() - t0 < 10
        assert proc.returncode == -signal.SIGKILL
    assert proc.returncode is not None and pool.workers == [None]   # reaped, and the slot is empty
    assert pool.ready(0)["pid"] != first and starts(pool) == 2


def test_a_worker_that_died_before_it_got_the_sample_was_not_sent_it(tmp_path, pools):
    pool = pool_of(tmp_path, "exit-after-ready")
    pools.append(pool)
    pool.ready(0)
    pool.workers[0].proc.wait()
    with pytest.raises(WorkerCrashed, match="died with exit code 0") as e:
        pool.render(0, {"sample_id": 2}, tmp_path)
    assert not e.value.sent and pool.workers == [None]


def test_kill_all_kills_every_worker_at_once(tmp_path, pools):
    pool = pool_of(tmp_path, "hang", size=3)
    pools.append(pool)
    for k in (0, 2):
        pool.ready(k)
    procs = [pool.workers[0].proc, pool.workers[2].proc]
    pool.kill_all()
    assert [p.wait(timeout=10) for p in procs] == [-signal.SIGKILL] * 2
    pool.shutdown()
    assert not pool.tmp_dir.exists()


def test_close_lets_one_slots_worker_exit_cleanly(tmp_path, pools):
    pool = pool_of(tmp_path, "ok", size=2)
    pools.append(pool)
    for k in (0, 1):
        pool.ready(k)
    proc, other = pool.workers[0].proc, pool.workers[1].proc
    pool.close(0)
    assert proc.returncode == 0 and pool.workers[0] is None and other.poll() is None
    pool.close(0)   # an empty slot: nothing to do
    assert pool.render(1, {"sample_id": 1}, tmp_path)["event"] == "done"
