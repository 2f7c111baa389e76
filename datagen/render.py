"""Render orchestration: long-lived Blender worker processes, sharding, resume, retries, progress, summary.

Each worker (blender_scenes.worker) imports bpy once and renders sample after sample. A sample is rendered
into samples/.tmp-NNNNNN, its meta.json written there, then the directory is renamed into place, so a
sample directory is complete or absent and a re-run simply skips the ones that exist.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from datagen import dataset as ds
from datagen.config import UserError
from datagen.spec import DatasetConfig, build_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0
MAX_ATTEMPTS = 2  # a failed sample is retried once


class WorkerCrashed(RuntimeError):
    pass


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

    def __init__(self, device: str, threads: int, log_path: Path, allow_software_eevee: bool = False):
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-m", "blender_scenes.worker", "--device", device, "--reply-fd", str(write_fd),
               "--threads", str(threads)]
        if allow_software_eevee:
            cmd.append("--allow-software-eevee")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=(write_fd,), env=env, cwd=str(REPO_ROOT))
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")
        self.info: dict = {}

    def _read(self) -> dict:
        line = self.replies.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerCrashed(f"render worker (pid {self.proc.pid}) died with exit code {code}; "
                                f"log: {self.log_path}{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return (" | last log lines: " + " / ".join(lines[-n:])) if lines else ""

    def wait_ready(self) -> dict:
        msg = self._read()
        if msg.get("event") == "error":
            self.close()
            raise UserError(msg["error"])
        self.info = msg
        return msg

    def render(self, spec: dict, out_dir: Path) -> dict:
        try:
            self.proc.stdin.write((json.dumps({"spec": spec, "out_dir": str(out_dir)}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            code = self.proc.wait()
            raise WorkerCrashed(f"render worker (pid {self.proc.pid}) died with exit code {code}{self.log_tail()}")
        return self._read()

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


def _finish_sample(root: Path, spec: dict, tmp: Path, views: list[str], frames: int) -> None:
    """Write spec.json + meta.json into the temp dir and rename it into place (the commit point)."""
    masks = ds.mask_stats(tmp, views, frames)
    ds.write_json_atomic(tmp / "spec.json", spec, indent=None)
    ds.write_json_atomic(tmp / "meta.json", ds.build_meta(spec, masks))
    os.replace(tmp, ds.sample_dir(root, spec["sample_id"]))


def render_dataset(cfg: DatasetConfig, root: str | os.PathLike, *, device: str = "auto", workers: int | None = None,
                   shard: tuple[int, int] = (0, 1), allow_software_eevee: bool = False, progress: bool = True,
                   log=print) -> dict:
    """Render the (shard of the) dataset into `root`, skipping complete samples. Returns the summary dict,
    also written to root/render_summary[.shard-I-of-N].json."""
    from tqdm import tqdm

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"output path {root} exists and is not a directory")
    existing = ds.check_same_config(root, cfg)
    if root.is_dir() and existing is None and any(p for p in root.iterdir() if p.name != "logs"):
        raise UserError(f"output directory {root} is not empty and holds no dataset.json; choose an empty directory")
    ids = shard_ids(cfg.dataset.num_samples, shard)
    done_before = ds.complete_sample_ids(root) & set(ids)
    todo = [i for i in ids if i not in done_before]
    # Specs first: a config that can't produce a valid scene fails here, before anything is written.
    specs = {i: build_spec(cfg, i) for i in todo}
    views = [c.name for c in cfg.cameras.rig]
    frames = cfg.render.frames
    shard_tag = "" if shard == (0, 1) else f".shard-{shard[0]}-of-{shard[1]}"
    t_start = time.perf_counter()

    n_workers = max(1, min(workers or default_workers(), max(1, len(todo))))
    threads = max(1, cpu_count() // n_workers)
    log_dir = root / "logs"

    def start_worker(k: int) -> RenderWorker:
        w = RenderWorker(device, threads, log_dir / f"render{shard_tag}-worker{k}.log", allow_software_eevee)
        w.wait_ready()
        return w

    summary = {"dataset": str(root), "shard": f"{shard[0]}/{shard[1]}", "requested": len(ids),
               "already_complete": len(done_before), "rendered": 0, "failed": [], "retried": [],
               "workers_replaced": 0}
    if not todo:  # (a dataset.json exists here: a non-empty directory without one was refused above)
        log(f"all {len(ids)} samples of shard {shard[0]}/{shard[1]} are already complete in {root}")
        summary.update(seconds=0.0, clips_per_s=None, device=None)
        return summary

    # Start one worker and learn the device before writing anything: `--device gpu` with no GPU fails here.
    root_existed, logs_existed = root.exists(), log_dir.exists()

    def leave_nothing_behind():  # bad input writes nothing, not even the worker's log
        if not root_existed and root.exists():
            shutil.rmtree(root)
        elif not logs_existed and log_dir.exists():
            shutil.rmtree(log_dir)

    try:
        first = start_worker(0)
    except UserError:
        leave_nothing_behind()
        raise
    info = first.info
    if cfg.render.engine == "eevee" and info.get("device") == "CPU" and not allow_software_eevee:
        first.close()
        leave_nothing_behind()
        raise UserError("--engine eevee needs a GPU context and none was found; bpy would fall back to software GL "
                        "at ~20 s per 128x128 frame. Use --engine cycles, or --allow-software-eevee to accept that")
    if info.get("notice"):
        log(f"notice: {info['notice']}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "samples").mkdir(exist_ok=True)
    if existing is None:
        ds.write_json_atomic(root / "dataset.json", ds.build_dataset_json(cfg, info["blender"]))
    stale = ds.remove_stale_tmp(root, todo)
    if stale:
        log(f"removed {stale} partial sample director{'y' if stale == 1 else 'ies'} left by an interrupted run")

    jobs: queue.Queue = queue.Queue()
    for i in todo:
        jobs.put((i, 1))
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    pool: list[RenderWorker | None] = [first] + [None] * (n_workers - 1)
    sample_seconds: list[float] = []

    def slot(k: int) -> None:
        worker = pool[k]
        try:
            while not stop.is_set():
                try:
                    sid, attempt = jobs.get_nowait()
                except queue.Empty:
                    return
                if worker is None:
                    worker = pool[k] = start_worker(k)
                tmp = ds.tmp_sample_dir(root, sid)
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
                try:
                    reply = worker.render(specs[sid], tmp)
                except WorkerCrashed as e:
                    reply = {"event": "failed", "error": str(e)}
                    worker.close()
                    worker = pool[k] = None
                    results.put(("replaced", sid, None))
                if reply.get("event") == "done":
                    _finish_sample(root, specs[sid], tmp, views, frames)
                    results.put(("done", sid, reply))
                    continue
                shutil.rmtree(tmp, ignore_errors=True)
                if attempt < MAX_ATTEMPTS:
                    jobs.put((sid, attempt + 1))
                    results.put(("retry", sid, reply.get("error")))
                else:
                    results.put(("failed", sid, reply.get("error")))
        except BaseException as e:  # noqa: BLE001 - surfaced by the main thread
            results.put(("crash", None, f"{type(e).__name__}: {e}"))

    threads_list = [threading.Thread(target=slot, args=(k,), daemon=True) for k in range(n_workers)]
    for th in threads_list:
        th.start()
    bar = tqdm(total=len(ids), initial=len(done_before), unit="clip", disable=not progress, dynamic_ncols=True,
               desc=f"render{'' if shard == (0, 1) else f' shard {shard[0]}/{shard[1]}'}")
    finished = 0
    t_loop = time.perf_counter()
    try:
        while finished < len(todo):
            kind, sid, payload = results.get()
            if kind == "done":
                finished += 1
                summary["rendered"] += 1
                sample_seconds.append(payload["seconds"])
                bar.update(1)
                bar.set_postfix(clips_per_s=f"{summary['rendered'] / (time.perf_counter() - t_loop):.2f}")
            elif kind == "retry":
                summary["retried"].append(sid)
                bar.write(f"sample {sid} failed, retrying once: {payload}")
            elif kind == "failed":
                finished += 1
                summary["failed"].append({"sample_id": sid, "error": payload})
                bar.write(f"sample {sid} failed twice, giving up: {payload}")
            elif kind == "replaced":
                summary["workers_replaced"] += 1
            elif kind == "crash":
                raise RuntimeError(f"render orchestration failed: {payload}")
    except BaseException:  # Ctrl-C or a crashed thread: stop everything, drop partial samples
        stop.set()
        for w in pool:
            if w is not None:
                w.proc.kill()
        for th in threads_list:
            th.join(timeout=5)
        ds.remove_stale_tmp(root, todo)
        raise
    finally:
        bar.close()
        stop.set()
        for th in threads_list:
            th.join(timeout=5)
        for w in pool:
            if w is not None and w.proc.poll() is None:
                w.close()

    seconds = time.perf_counter() - t_start
    clips = summary["rendered"]
    summary.update({
        "seconds": round(seconds, 3),
        "clips_per_s": round(clips / seconds, 4) if seconds > 0 else None,
        "camera_frames_per_s": round(clips * len(views) * frames / seconds, 3) if seconds > 0 else None,
        "mean_sample_seconds_in_worker": round(sum(sample_seconds) / len(sample_seconds), 4) if sample_seconds else None,
        "device": info.get("device"), "blender": info.get("blender"), "workers": n_workers,
        "threads_per_worker": threads,
    })
    ds.write_json_atomic(root / f"render_summary{shard_tag}.json", summary)
    return summary
