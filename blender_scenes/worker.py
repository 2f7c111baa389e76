"""A long-lived render worker: imports bpy once, then renders one scene spec after another.

Started by datagen.render, by default one per two cores (`-j` sets the count), each rendering with
cores / workers threads:
    python -m blender_scenes.worker --device auto --reply-fd N --threads 2
Requests arrive on stdin, one JSON object per line: {"spec": {...}, "out_dir": "..."}.
Replies go to file descriptor N (stdout belongs to Blender's own log output), one JSON object per line:
    {"event": "ready", "blender": "5.0.1", "device": "CPU", "devices": [], "notice": ...}   once, at start
    {"event": "done", "sample_id": 7, "seconds": 1.2, "render": 1.1, ...}                     per request
    {"event": "failed", "sample_id": 7, "error": "..."}                                        per request
    {"event": "error", "error": "..."}                                                          setup failed; exits 3
The worker exits when stdin closes, and dies with its parent (Linux).

Safety: Blender's auto-execution of scripts embedded in .blend files stays off (the ready and done replies report
`scripts_auto_execute`, always false), and no .blend file is ever opened: every sample starts from Blender's
built-in empty factory scene (the done reply's `blend_file` is "").

Fault injection (for tests of the orchestrator's crash and hang handling; never set in normal use):
    MAGVIT3D_FAULT_CRASH_SAMPLE=3[,7,...]   the worker renders sample 3, then dies with os.abort() before replying,
                                            as a Blender crash in the middle of that sample would (partial output
                                            is left in the sample's temporary directory).
    MAGVIT3D_FAULT_HANG_SAMPLE=2[,5,...]    the worker, given sample 2, sleeps forever instead of rendering it and
                                            replying, as a Blender deadlock or a stalled GPU driver would (the
                                            orchestrator kills it after its per-sample timeout, --sample-timeout).

Also usable on its own, e.g. under a user's own Blender:
    blender --background --python blender_scenes/worker.py -- --spec spec.json --out DIR [--device auto]
    python -m blender_scenes.worker --spec spec.json --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script (e.g. by Blender's --python): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies, so a killed job leaves no orphan renders."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _parse(argv):
    p = argparse.ArgumentParser(prog="blender_scenes.worker", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--reply-fd", type=int, default=None, help="file descriptor for JSON replies (server mode)")
    p.add_argument("--spec", help="render this one spec file and exit")
    p.add_argument("--out", help="output directory for --spec")
    p.add_argument("--threads", type=int, default=0, help="render threads (0 = all cores)")
    p.add_argument("--allow-software-eevee", action="store_true")
    return p.parse_args(argv)


FAULT_CRASH_ENV = "MAGVIT3D_FAULT_CRASH_SAMPLE"
FAULT_HANG_ENV = "MAGVIT3D_FAULT_HANG_SAMPLE"


def _fault_ids(env: str) -> set[int]:
    text = os.environ.get(env, "").strip()
    return {int(x) for x in text.split(",") if x.strip()} if text else set()


def _hang_forever() -> None:
    """Never return and never reply, as a deadlocked Blender would (killed by the orchestrator's timeout)."""
    while True:
        time.sleep(60)


def _crash_now() -> None:
    """Die the way a crashing Blender does (SIGABRT), without leaving a core file behind."""
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    os.abort()


def safety_state() -> dict:
    """What the parent checks about Blender's script safety: auto-execution off, no .blend file loaded."""
    import bpy

    return {"scripts_auto_execute": bool(bpy.context.preferences.filepaths.use_scripts_auto_execute),
            "blend_file": bpy.data.filepath}


def render_request(spec: dict, out_dir: str, device: str, threads: int = 0, allow_software_eevee: bool = False) -> dict:
    from blender_scenes import scene

    if spec["render"]["engine"] == "eevee" and device == "CPU" and not allow_software_eevee:
        raise scene.RenderSetupError(
            "EEVEE needs a GPU context; without one bpy falls back to software GL at ~20 s per 128x128 frame. "
            "Use --engine cycles, or pass --allow-software-eevee to accept that cost")
    if spec.get("sample_id") in _fault_ids(FAULT_HANG_ENV):
        _hang_forever()
    t0 = time.perf_counter()
    cameras = scene.build_scene(spec, device, threads)
    t1 = time.perf_counter()
    timings = scene.render_views(spec, cameras, out_dir)
    if spec.get("sample_id") in _fault_ids(FAULT_CRASH_ENV):
        _crash_now()
    safety = safety_state()
    if safety["scripts_auto_execute"] or safety["blend_file"]:
        raise RuntimeError(f"unsafe Blender state after building the scene: {safety}")
    return {"build_seconds": t1 - t0, **timings, "seconds": time.perf_counter() - t0, **safety}


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    args = _parse(argv)
    reply_file = os.fdopen(args.reply_fd, "w", buffering=1) if args.reply_fd is not None else sys.stdout

    def reply(**msg):
        reply_file.write(json.dumps(msg) + "\n")
        reply_file.flush()

    _die_with_parent()
    try:
        import bpy
        from blender_scenes import scene
        # Never run scripts embedded in .blend files (we never load any, but keep the door shut).
        bpy.context.preferences.filepaths.use_scripts_auto_execute = False
        dev = scene.select_cycles_device(args.device)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which prints it as one line
        # a RenderSetupError is written for the user (no GPU, ...); anything else (bpy failed to import) keeps its type
        reply(event="error", error=str(e) if type(e).__name__ == "RenderSetupError" else f"{type(e).__name__}: {e}")
        return 3

    if args.spec:
        with open(args.spec) as f:
            spec = json.load(f)
        out = render_request(spec, args.out or ".", dev["device"], args.threads, args.allow_software_eevee)
        print(json.dumps({"event": "done", "sample_id": spec.get("sample_id"), **out}))
        return 0

    reply(event="ready", blender=bpy.app.version_string, pid=os.getpid(), **dev, **safety_state())
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        sid = req["spec"].get("sample_id")
        try:
            out = render_request(req["spec"], req["out_dir"], dev["device"], args.threads, args.allow_software_eevee)
            reply(event="done", sample_id=sid, **out)
        except Exception as e:  # noqa: BLE001 - one sample failing must not take the worker down
            traceback.print_exc()
            reply(event="failed", sample_id=sid, error=f"{type(e).__name__}: {e}".splitlines()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
