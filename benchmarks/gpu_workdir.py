"""Copy a demo workdir's rendered dataset into a new workdir that `magvit3d demo` resumes after `pack`.

    python benchmarks/gpu_workdir.py SRC DST [--keep-frames]

For checking the training stages on a machine that cannot render (no bpy there, e.g. a GPU node whose Python is not
3.11): render and pack on one machine, copy this to the other, then `magvit3d demo -c PRESET --out DST --device cuda`
runs every stage from the tokenizer on. DST gets SRC's dataset/ and the render / verify / pack entries of its
demo_state.json; the stages after them are left out, so they run again. Nothing after `pack` reads the rendered RGB
PNGs (training and evaluation read the packed arrays, masks and metadata), so they are left out unless --keep-frames:
the 3D demo's dataset is 323 MB with them, 150 MB without. DST must not exist; it is written under a temporary name
and renamed when complete.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.pipeline import STATE_FILE  # noqa: E402

KEPT_STAGES = ("render", "verify", "pack")


def copy_rendered_workdir(src: Path, dst: Path, keep_frames: bool = False) -> dict:
    """Write dst as described in the module docstring; returns {"stages": [...], "bytes": N}."""
    state = json.loads((src / STATE_FILE).read_text())
    missing = [s for s in KEPT_STAGES if not state.get("stages", {}).get(s, {}).get("done")]
    if missing:
        raise SystemExit(f"{src}: stage(s) {', '.join(missing)} not done; run `magvit3d demo --out {src}` first")
    if dst.exists():
        raise SystemExit(f"{dst} exists; choose a new directory")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ignore = None if keep_frames else shutil.ignore_patterns("rgb")
    shutil.copytree(src / "dataset", tmp / "dataset", ignore=ignore)
    state["stages"] = {k: v for k, v in state["stages"].items() if k in KEPT_STAGES}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    tmp.rename(dst)
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    return {"stages": list(state["stages"]), "bytes": size}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a demo workdir whose render, verify and pack stages are done")
    ap.add_argument("dst", type=Path, help="the new workdir (must not exist)")
    ap.add_argument("--keep-frames", action="store_true", help="also copy the rendered RGB PNGs")
    a = ap.parse_args()
    r = copy_rendered_workdir(a.src, a.dst, a.keep_frames)
    print(f"{a.dst}: stages {', '.join(r['stages'])} done, {r['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
