"""Soak benchmark: does memory stay flat over a long render in ONE Blender worker and a long tokenizer training?

    .venv/bin/python benchmarks/soak.py --out DIR [--samples 300] [--resolution 32] [--frames 4] [--steps 2000]
                                        [--train-config tiny] [--interval 0.5] [--warmup 0.1] [--no-write]

1. Render: datagen.render.render_dataset with workers=1 renders --samples clips of the tiny dataset preset (at
   --resolution, --frames; its 4 spp + OIDN) into DIR/dataset. The one worker process (blender_scenes.worker, a
   child of this process) keeps bpy loaded for all of them. Its VmRSS (/proc/PID/status) is sampled every
   --interval seconds, with progress = complete sample directories / --samples. A replaced worker (a crash)
   would invalidate the soak and is reported.
2. Pack the dataset (datagen.pack).
3. Train: `magvit3d train-tokenizer` (--train-config, default the tiny preset, with train.steps = --steps and
   train.workers = 1, so a DataLoader worker process is part of it) as a subprocess on DIR/dataset, into
   DIR/tokenizer. Sampled: VmRSS of the training process, and the PSS (proportional set size, so pages shared
   with the forked loader worker count once) of it plus all its descendants (the loader worker, re-created every
   epoch); progress = the last step in DIR/tokenizer/metrics.jsonl / --steps.

Per phase: RSS at the start (the first sample), after warm-up (mean of the samples with progress in
[warmup, warmup + 0.05]), at the end (mean of the samples with progress >= 0.95), the peak after warm-up, and
growth = end / after-warm-up - 1; the goal is growth <= 10%. Everything goes to DIR/soak.json (with every sample)
and, unless --no-write, to the "soak" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, today, write_section  # noqa: E402

GOAL_PCT = 10.0


def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    """VmRSS (or another /proc/PID/status field, e.g. RssAnon: the heap, without mapped files) in KiB; None once
    the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0


def pss_kb(pid: int) -> int | None:
    """Proportional set size in KiB (/proc/PID/smaps_rollup): shared pages split between their users, so the PSS of
    a process and its forked children adds up without counting copy-on-write pages twice. None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0


def children_of(pid: int) -> list[int]:
    """Direct children of pid (from /proc/*/stat: the field after the parenthesised command is state, then ppid)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        found += kids
        todo += kids
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Sampler(threading.Thread):
    """Every `interval` s: seconds, progress, VmRSS of the main process and PSS of it + its descendants, in KiB.
    main() gives the pid to watch (None: not started yet), progress() a fraction in [0, 1]."""

    def __init__(self, main, progress, interval: float):
        super().__init__(daemon=True)
        self.main, self.progress, self.interval = main, progress, interval
        self.rows: list[dict] = []
        self.pids: set[int] = set()
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.stop.is_set():
            pid = self.main()
            if pid is not None:
                own = rss_kb(pid)
                if own is not None:
                    self.pids.add(pid)
                    total = sum(r for r in map(pss_kb, [pid, *descendants(pid)]) if r)
                    self.rows.append({"t": round(time.perf_counter() - self.t0, 2),
                                      "progress": round(self.progress(), 4), "rss_kb": own,
                                      "anon_kb": rss_kb(pid, "RssAnon") or 0, "pss_total_kb": total})
            self.stop.wait(self.interval)


def summarize(rows: list[dict], key: str, warmup: float) -> dict:
    """start / after warm-up / end / peak-after-warm-up RSS in MiB and the growth in % (see the module doc)."""
    def mean(sel):
        vals = [r[key] for r in sel]
        return sum(vals) / len(vals) if vals else None

    warm = [r for r in rows if warmup <= r["progress"] < warmup + 0.05] or \
        [min((r for r in rows if r["progress"] >= warmup), key=lambda r: r["progress"], default=rows[-1])]
    end = [r for r in rows if r["progress"] >= 0.95] or rows[-max(1, len(rows) // 20):]
    after = [r for r in rows if r["progress"] >= warmup] or rows
    mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
    w, e = mean(warm), mean(end)
    before = [r for r in rows if r["progress"] < warmup] or rows[:1]
    return {"start_mib": mib(rows[0][key]), "peak_during_warmup_mib": mib(max(r[key] for r in before)),
            "after_warmup_mib": mib(w), "end_mib": mib(e), "peak_after_warmup_mib": mib(max(r[key] for r in after)),
            "growth_pct": round(100 * (e / w - 1), 2), "samples": len(rows)}


def last_step(metrics: Path) -> int:
    """The step of the last complete row of metrics.jsonl (read from the end; 0 when there is none)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def soak_render(out: Path, args) -> dict:
    from datagen.config import load_config
    from datagen.render import render_dataset
    from datagen.spec import DatasetConfig

    cfg = load_config(DatasetConfig, "dataset", "tiny", [
        f"dataset.num_samples={args.samples}", f"render.resolution={args.resolution}", f"render.frames={args.frames}",
        'dataset.splits={train = 0.9, val = 0.05, test = 0.05}', *args.overrides])
    root = out / "dataset"
    me = os.getpid()

    def worker_pid():
        pids = [p for p in children_of(me) if "blender_scenes.worker" in cmdline(p)]
        return pids[0] if pids else None

    def progress():
        d = root / "samples"
        return sum(1 for p in d.iterdir() if p.name.isdigit()) / args.samples if d.is_dir() else 0.0

    sampler = Sampler(worker_pid, progress, args.interval)
    sampler.start()
    t0 = time.perf_counter()
    summary = render_dataset(cfg, root, workers=1, progress=False, log=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if summary["rendered"] + summary["already_complete"] < args.samples or summary["failed"]:
        raise SystemExit(f"render incomplete: {summary}")
    rows = sampler.rows
    return {"samples": args.samples, "rendered_now": summary["rendered"], "seconds": round(seconds, 1),
            "worker_pids": sorted(sampler.pids), "workers_replaced": summary["workers_replaced"],
            "settings": {"resolution": args.resolution, "frames": args.frames, "views": len(cfg.cameras.rig),
                         "samples_per_pixel": cfg.render.samples, "denoiser": cfg.render.denoiser},
            "rss": summarize(rows, "rss_kb", args.warmup), "anon": summarize(rows, "anon_kb", args.warmup),
            "rows": rows}


def soak_train(out: Path, args) -> dict:
    run = out / "tokenizer"
    if run.exists():
        raise SystemExit(f"{run} exists; choose another --out or remove it")
    cmd = [sys.executable, "-m", "datagen.cli", "train-tokenizer", "--data", str(out / "dataset"), "--out", str(run),
           "-c", args.train_config, "--set", f"train.steps={args.steps}", "--set", "train.workers=1",
           "--device", "cpu", "--no-progress", *[a for s in args.train_overrides for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(lambda: proc.pid, lambda: last_step(run / "metrics.jsonl") / args.steps, args.interval)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}): {stderr[-2000:]}")
    rows = [r for r in sampler.rows if r["rss_kb"]]
    return {"steps": args.steps, "config": args.train_config, "seconds": round(seconds, 1),
            "command": " ".join(cmd[1:]), "result": stdout.strip().splitlines()[-1] if stdout.strip() else "",
            "rss_process": summarize(rows, "rss_kb", args.warmup),
            "anon_process": summarize(rows, "anon_kb", args.warmup),
            "pss_with_children": summarize(rows, "pss_total_kb", args.warmup), "rows": rows}


def verdict(block: dict) -> str:
    return "ok" if block["growth_pct"] <= GOAL_PCT else f"FAILS the {GOAL_PCT:.0f}% goal"


def markdown(result: dict, command: str) -> str:
    r, t = result.get("render"), result.get("train")
    lines = ["## Memory soak (`benchmarks/soak.py`)", "",
             f"Machine: {result['machine']}; no GPU. Date: {result['date']}. Command: `{command}`.",
             f"RSS = VmRSS (PSS where noted) from /proc, sampled every {result['interval_s']} s. After warm-up = mean over progress "
             f"{result['warmup']:.0%}-{result['warmup'] + 0.05:.0%}; end = mean over progress >= 95%; "
             f"growth = end / after warm-up - 1 (goal <= {GOAL_PCT:.0f}%).", ""]
    lines += ["| process | work | wall | start | after warm-up | end | peak after warm-up | growth |",
              "|---|---|---|---|---|---|---|---|"]

    def row(name, work, seconds, s):
        return (f"| {name} | {work} | {seconds:.0f} s | {s['start_mib']} MiB | {s['after_warmup_mib']} MiB | "
                f"{s['end_mib']} MiB | {s['peak_after_warmup_mib']} MiB | {s['growth_pct']:+.1f}% ({verdict(s)}) |")
    if r:
        st = r["settings"]
        lines.append(row("Blender worker (1 process)", f"{r['samples']} clips, {st['views']} views x {st['frames']} "
                         f"frames, {st['resolution']}x{st['resolution']}, {st['samples_per_pixel']} spp + "
                         f"{st['denoiser']}", r["seconds"], r["rss"]))
    if t:
        lines.append(row("tokenizer training (main process)", f"{t['steps']} steps, {t['config']} preset, "
                         f"train.workers=1", t["seconds"], t["rss_process"]))
        lines.append(row("training + loader worker (PSS sum)", "same run", t["seconds"], t["pss_with_children"]))
    lines.append("")
    anon = [f"{name} {b['after_warmup_mib']} -> {b['end_mib']} MiB ({b['growth_pct']:+.1f}%)"
            for name, b in (("Blender worker", (r or {}).get("anon")), ("training process", (t or {}).get("anon_process")))
            if b]
    if anon:
        lines.append("Anonymous memory only (RssAnon: heap and other private memory, no mapped files), after warm-up "
                     "-> end: " + "; ".join(anon) + ".")
    if r:
        lines.append(f"Render: worker pid(s) {r['worker_pids']}, workers replaced: {r['workers_replaced']}.")
    if r:
        lines.append(f"The Blender worker's peak during warm-up (its first {r['samples'] * result['warmup']:.0f} "
                     f"clips): {r['rss']['peak_during_warmup_mib']} MiB; it settles after that.")
    if t and t.get("result"):
        lines.append(f"Training ended with: `{t['result']}`")
    if result.get("load_avg"):
        lines.append(f"Load average (1 min) at start / end: {result['load_avg']['start']} / {result['load_avg']['end']}"
                     " (wall times include whatever else ran on the machine).")
    if result.get("note"):
        lines.append(result["note"])
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (dataset, tokenizer run, soak.json)")
    ap.add_argument("--samples", type=int, default=300, help="clips rendered by the one Blender worker")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="dataset config override KEY=VALUE")
    ap.add_argument("--steps", type=int, default=2000, help="tokenizer training steps")
    ap.add_argument("--train-config", default="tiny", help="tokenizer preset (tiny, demo) or TOML file")
    ap.add_argument("--train-set", dest="train_overrides", action="append", default=[],
                    help="tokenizer config override KEY=VALUE")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of each run counted as warm-up")
    ap.add_argument("--skip-render", action="store_true", help="reuse DIR/dataset (no render soak)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rewrite the BENCHMARKS.md section from DIR/soak.json (e.g. after a --note)")
    ap.add_argument("--note", default="", help="a line added to the BENCHMARKS.md section (e.g. about the load)")
    args = ap.parse_args()
    out = args.out.resolve()
    if args.report_only:
        result = json.loads((out / "soak.json").read_text())
        for key, block in (("render", "rss"), ("train", "rss_process"), ("train", "pss_with_children")):
            if key in result:  # recompute with this version's summary (soak.json keeps every sample)
                field = {"rss": "rss_kb", "rss_process": "rss_kb", "pss_with_children": "pss_total_kb"}[block]
                rows = result[key]["rows"]
                if rows and field in rows[0]:
                    result[key][block] = summarize(rows, field, result["warmup"])
        if args.note:
            result["note"] = args.note
        (out / "soak.json").write_text(json.dumps(result, indent=1))
        command = result.get("command", f"python benchmarks/soak.py --out {args.out}").replace(" --no-write", "")
        md = markdown(result, command)
        print(md)
        if not args.no_write:
            write_section("soak", md)
        return
    out.mkdir(parents=True, exist_ok=True)

    # what produced the numbers (--no-write and --note only change where they are written)
    argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--no-write" and "--note" not in sys.argv[i:i + 2]]
    command = "python benchmarks/soak.py " + " ".join(argv)
    result = {"machine": machine(), "date": today(), "command": command, "interval_s": args.interval,
              "warmup": args.warmup, "goal_growth_pct": GOAL_PCT, "note": args.note,
              "load_avg": {"start": round(os.getloadavg()[0], 2)}}
    if not args.skip_render:
        result["render"] = soak_render(out, args)
        print(f"render: {json.dumps(result['render']['rss'])}", file=sys.stderr)
    from datagen.pack import pack_dataset

    pack_dataset(out / "dataset", progress=False)
    if not args.skip_train:
        result["train"] = soak_train(out, args)
        print(f"train: {json.dumps(result['train']['rss_process'])} / with children "
              f"{json.dumps(result['train']['pss_with_children'])}", file=sys.stderr)
    result["load_avg"]["end"] = round(os.getloadavg()[0], 2)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    md = markdown(result, command)
    print(md)
    if not args.no_write:
        write_section("soak", md)
    blocks = [b for b in (result.get("render", {}).get("rss"), result.get("train", {}).get("rss_process"))
              if b is not None]
    sys.exit(0 if all(b["growth_pct"] <= GOAL_PCT for b in blocks) else 1)


if __name__ == "__main__":
    main()
