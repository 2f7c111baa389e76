"""Where a transformer's copy window points when the object moves (model.copy_window, train.pointer_weight).

    .venv/bin/python benchmarks/copy_window.py --tokens TOKENIZER_RUN RUN [RUN ...] [--split test] [--write]

For each transformer run (all with a copy window, trained on the token cache TOKENIZER_RUN/tokens or one made by
the same tokenizer): the split's clips go in as the sampler's first step sees them, the given latent frames
(tasks.predict_frames of the run) and every later token masked. On the tokens within one cell of the object's cell
in each predicted latent frame, where the object's displacement since the last given frame fits in the window
(training.train_transformer.pointer_targets, from the dataset's object positions):

- gate: the mean probability the token's distribution gives to the window (vs the vocabulary);
- offset right: how often the window's most likely offset is the object's displacement (reversed);
- slope / correlation of the window's expected offset on the true one, per axis: 1 / 1 would be a window that
  moves the object all the way, 0 / 0 one that ignores the motion.

Printed as a markdown table; with --write also into BENCHMARKS.md (section "Copy window: where it points").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, today, write_section  # noqa: E402
from training.generate import load_transformer  # noqa: E402
from training.sampling import condition, given_latent_frames, given_mask  # noqa: E402
from training.token_cache import check_compatible, load_token_cache  # noqa: E402
from training.train_transformer import pointer_targets  # noqa: E402

SECTION = "copy-window"   # the BENCHMARKS.md markers; the heading is in the body


@torch.no_grad()
def window_statistics(run: Path, tokens: Path, split: str) -> dict:
    model, saved = load_transformer(run)
    if not model.window:
        raise SystemExit(f"{run}: model.copy_window is 0; this benchmark reads the copy window")
    cache = load_token_cache(tokens, split)
    check_compatible(saved["tokens"], cache.source, str(run))
    L = model.layout
    latent = given_latent_frames(saved["tasks"]["predict_frames"], cache.source, "tasks.predict_frames")
    seq = L.to_sequence(torch.from_numpy(cache.tokens.astype(np.int64)))
    inputs = seq.masked_fill(~given_mask(L, "predict", len(seq), latent_frames=latent), L.mask_id)
    cond = condition(L, "predict", batch=len(seq))
    gates, right, expected, true = [], [], [], []
    offsets = torch.tensor(model.offsets, dtype=torch.float32)          # (D, 2): dy, dx
    for i in range(0, len(seq), 16):
        _, extras = model(inputs[i:i + 16], cond[i:i + 16], extras=True)
        target = pointer_targets(model, inputs[i:i + 16], torch.from_numpy(cache.cells[i:i + 16]))
        known = target >= 0
        shift = torch.softmax(extras["shift"][known], -1)
        gates.append(torch.sigmoid(extras["gate"][known]))
        right.append(shift.argmax(-1) == target[known])
        expected.append(shift @ offsets)
        true.append(offsets[target[known]])
    gate, right = torch.cat(gates), torch.cat(right).float()
    expected, true = torch.cat(expected).numpy(), torch.cat(true).numpy()
    out = {"run": str(run), "tokens": len(gate), "gate": gate.mean().item(), "offset_right": right.mean().item()}
    for axis, name in enumerate(("dy", "dx")):
        x, y = true[:, axis], expected[:, axis]
        out[f"slope_{name}"] = float(np.polyfit(x, y, 1)[0]) if x.std() > 0 else float("nan")
        out[f"corr_{name}"] = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return out


def table(rows: list[dict]) -> str:
    lines = ["| run | tokens scored | gate | offset right | slope dy / dx | correlation dy / dx |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['run']}` | {r['tokens']} | {r['gate']:.2f} | {r['offset_right']:.0%} | "
                     f"{r['slope_dy']:.2f} / {r['slope_dx']:.2f} | {r['corr_dy']:.2f} / {r['corr_dx']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="transformer runs with a copy window")
    ap.add_argument("--tokens", type=Path, required=True, help="token cache (tokenizer run or its tokens directory)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--write", action="store_true", help=f"also write BENCHMARKS.md section {SECTION!r}")
    args = ap.parse_args()
    rows = [window_statistics(run, args.tokens, args.split) for run in args.runs]
    body = table(rows)
    print(body)
    if args.write:
        command = " ".join(["benchmarks/copy_window.py", "--tokens", str(args.tokens), "--split", args.split,
                            *map(str, args.runs)])
        write_section(SECTION, f"## Copy window: where it points (`benchmarks/copy_window.py`)\n\n{machine()}, "
                               f"{today()}. `{command}`; the {args.split} split, every future token masked.\n\n"
                               f"{body}\n")


if __name__ == "__main__":
    main()
