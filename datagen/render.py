"""Render orchestration: long-lived Blender worker processes, sharding, resume, retries, progress, summary.

Three layers, each testable alone: RenderWorker is one Blender worker process (a request on its stdin, a reply line
on a pipe, read with a deadline); WorkerPool keeps one worker per slot (starts, replaces, kills hung ones);
Coordinator decides what happens to each sample (a thread per slot, retries, the summary and the progress bar).
plan_render picks the samples (resume: complete ones are skipped) and render_dataset ties it all together.

Each worker (blender_scenes.worker) imports bpy once and renders sample after sample. A sample is rendered
into samples/.tmp-NNNNNN, its PNGs checked for completeness, its meta.json written there, then the directory is
renamed into place, so a sample directory is complete or absent and a re-run simply skips the ones that exist.

Faults: a worker that dies (crash, SIGKILL, OOM killer) is replaced and its sample retried (MAX_ATTEMPTS in all,
then reported by id while the other samples go on); a worker that dies before it got its sample costs the sample
no attempt; one that keeps dying before it is ready retires its slot (MAX_START_FAILURES). A worker that hangs
(a Blender deadlock, a stalled GPU driver) is treated the same way: one that gives no reply within the per-sample
timeout (`sample_timeout_s`, `--sample-timeout`, 600 s by default) is SIGKILLed and counts as a death in that
sample (replaced, sample retried); one that is not ready within READY_TIMEOUT_S is killed and counts as a failed
start. A full disk or a file size limit stops the run with datagen.dataset.WriteFailed (an OSError naming the file:
one line on the CLI), leaving the samples completed so far intact. Workers run with the dataset's logs folder as
working directory and temp dir (TMPDIR), so nothing they write lands outside the dataset, even when they are killed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from datagen import dataset as ds
from datagen.config import Interrupted, UserError
from datagen.spec import DatasetConfig, build_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0  # a worker not ready this long after its start (bpy import, scene setup) is killed
SAMPLE_TIMEOUT_S = 600.0  # default: a worker that gives no reply to a sample this long is killed (hung)
MAX_ATTEMPTS = 2  # a failed sample is retried once
MAX_START_FAILURES = 3  # a slot whose workers die (or hang) this many times in a row before they are ready retires
RESUME = "completed samples are kept; free space and rerun the same command to resume"
# the user's device words (every command's --device) -> the worker's Cycles device; cuda means any GPU backend
CYCLES_DEVICES = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}


class WorkerCrashed(RuntimeError):
    """The worker process died, or hung and was killed. `sent` is False when it died before it received the
    request."""

    def __init__(self, message: str, sent: bool = True):
        super().__init__(message)
        self.sent = sent


class WorkerStartFailed(UserError):
    """Render workers keep dying before they are ready (one line on the CLI)."""


class SampleOutputError(RuntimeError):
    """The worker reported a sample done, but frame PNGs are missing: the sample counts as failed (and is retried)."""


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} is not I/N (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def shard_ids(num_samples: int, shard: tuple[int, int]) -> list[int]:
    """Samples of shard I of N: every N-th id starting at I (balanced across families and shards)."""
    i, n = shard
    return list(range(i, num_samples, n))


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """One worker per two cores, each rendering with two threads. Measured on the 2-core machine
    (BENCHMARKS.md): 1 worker x 2 threads renders the demo 15-20% faster than 2 workers x 1 thread."""
    return max(1, cpu_count() // 2)


class RenderWorker:
    """One Blender worker process and its reply pipe."""

    def __init__(self, device: str, threads: int, log_path: Path, allow_software_eevee: bool = False,
                 tmp_dir: Path | None = None):
        read_fd, write_fd = os.pipe()
        cmd = self.command(write_fd, device, threads, allow_software_eevee)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.log_path = Path(log_path).absolute()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if tmp_dir is not None:  # Blender's session temp dir (blender_XXXXXX) goes here, also when it is killed
            Path(tmp_dir).mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(Path(tmp_dir).absolute())
            env["XDG_CACHE_HOME"] = env["TMPDIR"]  # else Blender makes ~/.cache/thumbnails/... in $HOME
        # cwd: the log folder, so nothing relative (a core file, a crash log) lands outside the output
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=(write_fd,), env=env, cwd=str(self.log_path.parent))
        os.close(write_fd)
        # unbuffered: every read() is one os.read, so poll() on the fd sees all data not yet in self._pending
        self.replies = os.fdopen(read_fd, "rb", buffering=0)
        self._pending = bytearray()  # bytes read from the pipe that do not end a line yet
        self.info: dict = {}

    @staticmethod
    def command(reply_fd: int, device: str, threads: int, allow_software_eevee: bool) -> list[str]:
        """The worker's command line (tests replace it with a stand-in that writes to `reply_fd`, or never does)."""
        cmd = [sys.executable, "-m", "blender_scenes.worker", "--device", device, "--reply-fd", str(reply_fd),
               "--threads", str(threads)]
        return cmd + (["--allow-software-eevee"] if allow_software_eevee else [])

    def _read(self, timeout: float | None = None) -> dict:
        """The worker's next reply line as a dict. A worker that gives none within `timeout` seconds (None: wait
        forever) is SIGKILLed; then, as when it died (end of file, a line cut off), WorkerCrashed is raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.replies.fileno(), select.POLLIN)
        while b"\n" not in self._pending:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill_hung(timeout)
                # slices of at most an hour: poll() takes an int of milliseconds (a huge timeout would overflow)
                if not poller.poll(max(1, math.ceil(min(left, 3600.0) * 1000))):
                    continue
            chunk = self.replies.read(65536)
            if not chunk:  # end of file
                break
            self._pending += chunk
        line, newline, rest = bytes(self._pending).partition(b"\n")
        self._pending = bytearray(rest)
        try:
            msg = json.loads(line) if newline else None
        except ValueError:
            msg = None
        if not isinstance(msg, dict):  # end of file, or a reply cut off by the worker's death
            self.proc.kill()
            code = self.proc.wait()
            raise WorkerCrashed(f"render worker (pid {self.proc.pid}) died with exit code {code}; "
                                f"log: {self.log_path}{self.log_tail()}")
        return msg

    def _kill_hung(self, timeout: float):
        self.proc.kill()
        self.proc.wait()
        raise WorkerCrashed(f"render worker (pid {self.proc.pid}) gave no reply within {timeout:g} s (hung?); "
                            f"killed it; log: {self.log_path}{self.log_tail()}")

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return (" | last log lines: " + " / ".join(lines[-n:])) if lines else ""

    def wait_ready(self, timeout: float | None = READY_TIMEOUT_S) -> dict:
        """The worker's ready reply. WorkerCrashed when it dies, or gives no reply within `timeout` (then killed)."""
        msg = self._read(timeout)
        if msg.get("event") == "error":
            self.close()
            raise UserError(msg["error"])
        self.info = msg
        return msg

    def render(self, spec: dict, out_dir: Path, timeout: float | None = SAMPLE_TIMEOUT_S) -> dict:
        """Render one sample: the worker's done/failed reply. WorkerCrashed when the worker dies, or gives no reply
        within `timeout` seconds (then it is killed; `sent` is True: the attempt counts)."""
        try:
            # absolute: the worker runs in the log folder, not in this process's working directory
            request = {"spec": spec, "out_dir": str(Path(out_dir).absolute())}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            code = self.proc.wait()
            raise WorkerCrashed(f"render worker (pid {self.proc.pid}) died with exit code {code}{self.log_tail()}",
                                sent=False) from None
        return self._read(timeout)

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.replies.close()


class WorkerPool:
    """The Blender workers of one render, one per slot. A slot's worker is started when the slot needs one (at first,
    and after its last one died), must be ready within READY_TIMEOUT_S (one that dies or hangs while it starts is
    replaced, MAX_START_FAILURES times in a row at most), renders one sample at a time with a reply deadline
    (`sample_timeout_s`: a hung worker is killed), and is dropped when it dies. One thread uses each slot;
    kill_all() may come from another."""

    def __init__(self, size: int, *, device: str, threads: int, log_dir: Path, tag: str = "",
                 allow_software_eevee: bool = False, sample_timeout_s: float = SAMPLE_TIMEOUT_S,
                 worker_cls: type[RenderWorker] | None = None):
        self.size = size
        self.device, self.threads, self.allow_software_eevee = device, threads, allow_software_eevee
        self.log_dir, self.tag = Path(log_dir), tag
        self.tmp_dir = self.log_dir / f"blender-tmp{tag}"  # the workers' TMPDIR; removed at the end of the run
        self.sample_timeout_s = sample_timeout_s
        self.worker_cls = worker_cls or RenderWorker  # tests give a stand-in process instead of Blender
        self.workers: list[RenderWorker | None] = [None] * size

    def log_path(self, k: int) -> Path:
        return self.log_dir / f"render{self.tag}-worker{k}.log"

    def ready(self, k: int) -> dict:
        """The ready reply of slot k's worker, started first when the slot has none. WorkerStartFailed when
        MAX_START_FAILURES workers in a row die or hang before they are ready; UserError when the worker refuses its
        setup (e.g. no GPU for --device cuda)."""
        if self.workers[k] is None:
            self.workers[k] = self._start(k)
        return self.workers[k].info

    def _start(self, k: int) -> RenderWorker:
        for failures in range(1, MAX_START_FAILURES + 1):
            w = self.worker_cls(self.device, self.threads, self.log_path(k), self.allow_software_eevee,
                                tmp_dir=self.tmp_dir)
            try:
                w.wait_ready(READY_TIMEOUT_S)
                return w
            except WorkerCrashed as e:
                w.close()
                if failures == MAX_START_FAILURES:
                    raise WorkerStartFailed(f"render workers died or hung {failures} times in a row before they "
                                            f"were ready; last: {e}") from None
        raise AssertionError("unreachable")

    def render(self, k: int, spec: dict, out_dir: Path) -> dict:
        """Slot k's ready worker renders one sample into out_dir: its done/failed reply. WorkerCrashed when the worker
        dies or gives no reply within sample_timeout_s (then it is killed); either way the slot is empty after, and
        ready(k) starts a new worker."""
        worker = self.workers[k]
        try:
            return worker.render(spec, out_dir, timeout=self.sample_timeout_s)
        except WorkerCrashed:
            worker.close()
            self.workers[k] = None
            raise

    def close(self, k: int) -> None:
        """Let slot k's worker exit cleanly (its stdin closes; Blender removes its own temp dir)."""
        worker, self.workers[k] = self.workers[k], None
        if worker is not None:
            worker.close()

    def kill_all(self) -> None:
        """SIGKILL every worker at once (Ctrl-C, or the run failed): no sample in flight is waited for."""
        for w in list(self.workers):
            if w is not None:
                w.proc.kill()

    def shutdown(self) -> None:
        """Close the workers still running and remove the workers' temp dir (what killed ones left there)."""
        for w in list(self.workers):
            if w is not None and w.proc.poll() is None:
                w.close()
        self.remove_tmp()

    def remove_tmp(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

def _finish_sample(root: Path, spec: dict, tmp: Path, views: list[str], frames: int) -> None:
    """Check the worker's PNGs, write spec.json + meta.json into the temp dir and rename it into place (the commit
    point). Blender says 'Saved' even when a write was cut short (disk full, file size limit), so every frame PNG
    must be there and end with its IEND chunk before the sample may appear."""
    kinds = ["rgb", "mask"] + (["depth"] if spec["render"].get("depth") else [])
    missing, truncated = ds.incomplete_pngs(tmp, views, kinds, frames)
    if truncated:
        raise ds.WriteFailed(errno.EIO, f"written truncated by the render worker, with {len(truncated) - 1} more PNGs "
                             f"of sample {spec['sample_id']} (disk full, quota or file size limit?); render stopped; "
                             f"{RESUME}", str(truncated[0]))
    if missing:
        raise SampleOutputError(f"the render worker reported sample {spec['sample_id']} done, but {len(missing)} "
                                f"frame PNGs are missing, e.g. {missing[0]}")
    try:
        masks = ds.mask_stats(tmp, views, frames)
    except (SyntaxError, ValueError, OSError) as e:  # PIL: a mask that ends well but does not decode
        if isinstance(e, OSError) and e.errno in ds.WRITE_ERRNOS:
            raise
        raise SampleOutputError(f"a mask of sample {spec['sample_id']} does not decode: {e}") from None
    ds.write_json_atomic(tmp / "spec.json", spec, indent=None)
    ds.write_json_atomic(tmp / "meta.json", ds.build_meta(spec, masks))
    os.replace(tmp, ds.sample_dir(root, spec["sample_id"]))


@contextlib.contextmanager
def shard_lock(path: Path, shard: tuple[int, int]):
    """Hold an exclusive flock on `path` (created with its folder) for the with-block; UserError when another
    process holds it. Two renders of the same shard into one dataset would delete each other's partial samples and
    Blender temp dirs. flock is per machine; on a network filesystem it holds only where the filesystem supports it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"another render of shard {shard[0]}/{shard[1]} (pid {holder}) is writing to "
                            f"{path.parent.parent}; wait for it to finish, or render another --shard") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock



@dataclasses.dataclass
class RenderPlan:
    """What one render of a shard does. Resume: the shard's samples that are complete already are skipped."""
    root: Path
    shard: tuple[int, int]
    ids: list[int]                  # the shard's sample ids
    done_before: set[int]           # complete before this run: not rendered again
    specs: dict[int, dict]          # the scene spec of every sample to render, in render order
    views: list[str]
    frames: int
    has_dataset_json: bool = False  # root holds the dataset.json of this config already

    @property
    def todo(self) -> list[int]:
        return list(self.specs)

    @property
    def tag(self) -> str:
        """The shard's part of the file names: summary, lock, worker logs and temp dir."""
        return "" if self.shard == (0, 1) else f".shard-{self.shard[0]}-of-{self.shard[1]}"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"


def plan_render(cfg: DatasetConfig, root: Path, shard: tuple[int, int]) -> RenderPlan:
    """The samples of `shard` still to render into `root`, with their specs. UserError, before anything is written,
    when root is not a directory, holds another config's dataset or other files, or a spec cannot be built."""
    if root.exists() and not root.is_dir():
        raise UserError(f"output path {root} exists and is not a directory")
    existing = ds.check_same_config(root, cfg)
    if root.is_dir() and existing is None and any(p for p in root.iterdir() if p.name != "logs"):
        raise UserError(f"output directory {root} is not empty and holds no dataset.json; choose an empty directory")
    ids = shard_ids(cfg.dataset.num_samples, shard)
    done_before = ds.complete_sample_ids(root) & set(ids)
    # Specs first: a config that can't produce a valid scene fails here, before anything is written.
    specs = {i: build_spec(cfg, i) for i in ids if i not in done_before}
    return RenderPlan(root, shard, ids, done_before, specs, [c.name for c in cfg.cameras.rig], cfg.render.frames,
                      has_dataset_json=existing is not None)


def new_summary(plan: RenderPlan, sample_timeout_s: float) -> dict:
    """The summary's counts before the render; the Coordinator fills them in."""
    return {"dataset": str(plan.root), "shard": f"{plan.shard[0]}/{plan.shard[1]}", "requested": len(plan.ids),
            "already_complete": len(plan.done_before), "rendered": 0, "failed": [], "retried": [],
            "workers_replaced": 0, "sample_timeout_s": sample_timeout_s}


class Coordinator:
    """Renders the samples of a plan through a worker pool (WorkerPool, or a fake with its methods). One thread per
    slot takes the next (sample, attempt) from a queue, has the pool render it into the sample's temp dir, and
    commits it (_finish_sample), queues it once more (MAX_ATTEMPTS in all) or reports it; a worker that died before it
    got the sample costs no attempt. The calling thread turns the slots' events into the summary and the progress
    bar, and raises what stops the run (a full disk, workers that no longer start, Ctrl-C)."""

    def __init__(self, plan: RenderPlan, pool, summary: dict, progress: bool = True):
        self.plan, self.pool, self.summary, self.progress = plan, pool, summary, progress
        self.jobs: queue.Queue = queue.Queue()    # (sample id, attempt)
        self.events: queue.Queue = queue.Queue()  # (kind, sample id or slot, payload) from the slots
        self.stop = threading.Event()
        self.sample_seconds: list[float] = []     # the worker's own time per rendered sample
        self.finished = 0                         # samples rendered or given up
        self.slots_alive = pool.size
        self.retired: WorkerStartFailed | None = None  # why the last slot that stopped early stopped

    def run(self) -> None:
        """Render every sample of the plan; returns when each is committed or reported in summary["failed"].
        Whatever stops the run early kills the workers and removes the partial samples first. The pool is shut down
        after (its workers closed, their temp dir removed)."""
        for sid in self.plan.todo:
            self.jobs.put((sid, 1))
        slots = [threading.Thread(target=self._slot, args=(k,), daemon=True) for k in range(self.pool.size)]
        for th in slots:
            th.start()
        bar = self._bar()
        try:
            while self.finished < len(self.plan.todo):
                self._record(*self.events.get(), bar)
        except BaseException:  # Ctrl-C or a crashed slot: stop everything, drop partial samples
            self.stop.set()
            self.pool.kill_all()
            _join(slots)
            ds.remove_stale_tmp(self.plan.root, self.plan.todo)
            raise
        finally:
            bar.close()
            self.stop.set()
            _join(slots)
            self.pool.shutdown()

    def _bar(self):
        from tqdm import tqdm

        shard = self.plan.shard
        return tqdm(total=len(self.plan.ids), initial=len(self.plan.done_before), unit="clip",
                    disable=not self.progress, dynamic_ncols=True,
                    desc=f"render{'' if shard == (0, 1) else f' shard {shard[0]}/{shard[1]}'}")

    # --- the slots' threads ---

    def _slot(self, k: int) -> None:
        """Slot k's thread: render samples from the queue until it is empty, the run stops or the slot retires."""
        try:
            while not self.stop.is_set():
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    return
                if not self._ready(k, job):
                    return
                self._render(k, *job)
        except BaseException as e:  # noqa: BLE001 - surfaced by the main thread
            self.events.put(("crash", None, e))
        finally:  # out of work: let this slot's worker exit cleanly (Blender removes its temp dir)
            self.pool.close(k)
            self.events.put(("slot-exit", k, None))

    def _ready(self, k: int, job: tuple[int, int]) -> bool:
        """Slot k has a ready worker (a new one after a death); False when no worker would start: the slot retires
        and its job goes back to the queue for the others."""
        try:
            self.pool.ready(k)
            return True
        except WorkerStartFailed as e:
            self.jobs.put(job)
            self.events.put(("retired", k, e))
            return False
        except BaseException:
            self.jobs.put(job)
            raise

    def _render(self, k: int, sid: int, attempt: int) -> None:
        """One attempt at sample `sid` on slot k: committed, queued again, or given up."""
        tmp = ds.tmp_sample_dir(self.plan.root, sid)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            reply = self.pool.render(k, self.plan.specs[sid], tmp)
        except WorkerCrashed as e:
            self.events.put(("replaced", sid, None))
            if not e.sent:  # it died before it got this sample: no attempt used
                shutil.rmtree(tmp, ignore_errors=True)
                self.jobs.put((sid, attempt))
                return
            reply = {"event": "failed", "error": str(e)}
        if reply.get("event") == "done":
            try:
                _finish_sample(self.plan.root, self.plan.specs[sid], tmp, self.plan.views, self.plan.frames)
                self.events.put(("done", sid, reply))
                return
            except SampleOutputError as e:
                reply = {"event": "failed", "error": str(e)}
        shutil.rmtree(tmp, ignore_errors=True)
        if attempt < MAX_ATTEMPTS:
            self.jobs.put((sid, attempt + 1))
            self.events.put(("retry", sid, reply.get("error")))
        else:
            self.events.put(("failed", sid, reply.get("error")))

    # --- the calling thread ---

    def _record(self, kind: str, sid: int | None, payload, bar) -> None:
        """One event of a slot into the summary, the bar and its messages; raises what ends the run."""
        if kind == "done":
            self.finished += 1
            self.summary["rendered"] += 1
            self.sample_seconds.append(payload["seconds"])
            bar.update(1)  # (tqdm shows the rate; the final line gives clips/s and camera-frames/s)
        elif kind == "retry":
            self.summary["retried"].append(sid)
            bar.write(f"sample {sid} failed, retrying once: {payload}")
        elif kind == "failed":
            self.finished += 1
            self.summary["failed"].append({"sample_id": sid, "error": payload})
            bar.write(f"sample {sid} failed twice, giving up: {payload}")
        elif kind == "replaced":
            self.summary["workers_replaced"] += 1
        elif kind == "retired":
            self.retired = payload
            bar.write(f"render worker slot {sid} stopped: {payload}")
        elif kind == "slot-exit":
            self.slots_alive -= 1
            if self.slots_alive == 0 and self.finished < len(self.plan.todo):
                if self.retired is not None:
                    raise self.retired
                raise RuntimeError(f"all render workers stopped with {len(self.plan.todo) - self.finished} "
                                   f"samples left")
        elif kind == "crash":
            if isinstance(payload, (UserError, OSError)):  # a full disk, workers that won't start: one line
                raise payload
            raise RuntimeError(f"render orchestration failed: {type(payload).__name__}: {payload}") from payload


def _join(threads: list[threading.Thread]) -> None:
    for th in threads:
        th.join(timeout=5)


def render_dataset(cfg: DatasetConfig, root: str | os.PathLike, *, device: str = "auto", workers: int | None = None,
                   shard: tuple[int, int] = (0, 1), allow_software_eevee: bool = False, progress: bool = True,
                   log=print, sample_timeout_s: float = SAMPLE_TIMEOUT_S) -> dict:
    """Render the (shard of the) dataset into `root`, skipping complete samples. Returns the summary dict,
    also written to root/render_summary[.shard-I-of-N].json. A failed write (disk full, quota, file size limit)
    raises datagen.dataset.WriteFailed (one line); the samples completed before stay as they are. A worker that
    gives no reply to a sample within `sample_timeout_s` seconds is killed and the sample retried (once)."""
    try:
        with ds.write_errors("render", RESUME), contextlib.ExitStack() as held:
            return _render_dataset(cfg, root, device=device, workers=workers, shard=shard,
                                   allow_software_eevee=allow_software_eevee, progress=progress, log=log,
                                   sample_timeout_s=sample_timeout_s, held=held)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the complete samples in {root} are kept; rerun the same command to render "
                          f"the rest") from None


def _render_dataset(cfg: DatasetConfig, root: str | os.PathLike, *, device: str, workers: int | None,
                    shard: tuple[int, int], allow_software_eevee: bool, progress: bool, log,
                    sample_timeout_s: float = SAMPLE_TIMEOUT_S, held: contextlib.ExitStack) -> dict:
    """The render itself; `held` keeps the shard lock until the caller's with-block ends."""
    if not sample_timeout_s > 0:  # also NaN
        raise UserError(f"sample timeout {sample_timeout_s!r} s: need a number > 0")
    cycles_device = _cycles_device(device)
    plan = plan_render(cfg, Path(root), shard)
    summary = new_summary(plan, sample_timeout_s)
    if not plan.todo:  # (a dataset.json exists here: a non-empty directory without one was refused above)
        log(f"all {len(plan.ids)} samples of shard {shard[0]}/{shard[1]} are already complete in {plan.root}")
        summary.update(seconds=0.0, clips_per_s=None, device=None)
        return summary
    t_start = time.perf_counter()
    n_workers, threads = worker_counts(workers, len(plan.todo))
    pool = WorkerPool(n_workers, device=cycles_device, threads=threads, log_dir=plan.log_dir, tag=plan.tag,
                      allow_software_eevee=allow_software_eevee, sample_timeout_s=sample_timeout_s)
    info = _open_dataset(cfg, plan, pool, held, allow_software_eevee, log)
    coordinator = Coordinator(plan, pool, summary, progress)
    coordinator.run()
    summary.update(_rates(time.perf_counter() - t_start, summary["rendered"], len(plan.views) * plan.frames,
                          coordinator.sample_seconds))
    summary.update({"device": info.get("device"), "blender": info.get("blender"), "workers": n_workers,
                    "threads_per_worker": threads})
    ds.write_json_atomic(plan.root / f"render_summary{plan.tag}.json", summary)
    empty = ds.empty_splits_warning(ds.split_ids(cfg.dataset.num_samples, cfg.dataset.splits, cfg.dataset.seed),
                                    cfg.dataset.splits)
    if empty:   # said once the render worked, so that a failed one stays one line
        log(f"warning: {empty}")
    return summary


def _cycles_device(device: str) -> str:
    """The worker's Cycles device for the user's --device word (UserError for another word)."""
    if device not in CYCLES_DEVICES:
        raise UserError(f"unknown device {device!r}; allowed: auto, cpu, cuda")
    return CYCLES_DEVICES[device]


def worker_counts(workers: int | None, samples: int) -> tuple[int, int]:
    """(workers, render threads per worker): -j (else default_workers()), at most one per sample to render; the
    cores are shared among them."""
    n = max(1, min(workers or default_workers(), max(1, samples)))
    return n, max(1, cpu_count() // n)


def _open_dataset(cfg: DatasetConfig, plan: RenderPlan, pool: WorkerPool, held: contextlib.ExitStack,
                  allow_software_eevee: bool, log) -> dict:
    """Take the shard's lock, start the first worker and learn the device, then write dataset.json and samples/.
    Bad input (no GPU for --device cuda or for EEVEE) leaves nothing behind. Returns the first worker's ready reply."""
    root, log_dir = plan.root, plan.log_dir
    root_existed, logs_existed = root.exists(), log_dir.exists()
    # The lock comes before anything of an earlier run is cleaned up: that might be a render of this shard still
    # running. (It is the one file written before the device check; leave_nothing_behind removes it with logs/.)
    held.enter_context(shard_lock(log_dir / f"render{plan.tag}.lock", plan.shard))
    pool.remove_tmp()  # left by a killed run of this shard: Blender session dirs of killed workers

    def leave_nothing_behind():  # bad input writes nothing, not even the worker's log
        if not root_existed and root.exists():
            shutil.rmtree(root)
        elif not logs_existed and log_dir.exists():
            shutil.rmtree(log_dir)
        else:
            pool.remove_tmp()

    info = _first_worker(cfg, pool, allow_software_eevee, leave_nothing_behind)
    if info.get("notice"):
        log(f"notice: {info['notice']}")
    root.mkdir(parents=True, exist_ok=True)
    if not plan.has_dataset_json:  # before samples/: a failed write here leaves a directory the rerun still accepts
        ds.write_json_atomic(root / "dataset.json", ds.build_dataset_json(cfg, info["blender"]))
    (root / "samples").mkdir(exist_ok=True)
    stale = ds.remove_stale_tmp(root, plan.todo)
    if stale:
        log(f"removed {stale} partial sample director{'y' if stale == 1 else 'ies'} left by an interrupted run")
    return info


def _first_worker(cfg: DatasetConfig, pool: WorkerPool, allow_software_eevee: bool, leave_nothing_behind) -> dict:
    """Start slot 0's worker before the dataset is written: its ready reply names the device, so `--device cuda`
    with no GPU, or EEVEE without one, fails here."""
    try:
        info = pool.ready(0)
    except WorkerStartFailed:
        # Not bad input but a broken worker: the message names its log, so DATASET/logs stays for the user to read.
        pool.remove_tmp()
        raise
    except UserError:
        leave_nothing_behind()
        raise
    if cfg.render.engine == "eevee" and info.get("device") == "CPU" and not allow_software_eevee:
        pool.close(0)
        leave_nothing_behind()
        raise UserError("--engine eevee needs a GPU context and none was found; bpy would fall back to software GL "
                        "at ~20 s per 128x128 frame. Use --engine cycles, or --allow-software-eevee to accept that")
    return info


def _rates(seconds: float, clips: int, camera_frames_per_clip: int, sample_seconds: list[float]) -> dict:
    """The summary's timings of a render that took `seconds` for `clips` clips."""
    mean_in_worker = sum(sample_seconds) / len(sample_seconds) if sample_seconds else None
    return {
        "seconds": round(seconds, 3),
        "clips_per_s": round(clips / seconds, 4) if seconds > 0 else None,
        "camera_frames_per_s": round(clips * camera_frames_per_clip / seconds, 3) if seconds > 0 else None,
        "mean_sample_seconds_in_worker": None if mean_in_worker is None else round(mean_in_worker, 4),
    }
