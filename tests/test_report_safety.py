"""What `magvit3d evaluate` / `compare` (and `generate`'s clip pictures) write, and where, when the data is hostile
or the disk is full:

- every string from data (dataset / probe / generated directory names, shape and family labels, view names,
  generated.json fields) is HTML-escaped in index.html: no live <script>, no attribute breaker, only known attributes;
- a sample id or label that looks like a path (`../`, absolute) never makes a command write outside --out: ids must be
  integers (one-line error otherwise), labels are sanitized into file names;
- the commands write nothing into the working directory or $HOME (matplotlib's caches included);
- --out is replaced whole, so it may not be an input, a folder holding one, the cwd, or a non-empty non-report;
- with the file size limit hit (RLIMIT_FSIZE: writes fail with EFBIG), the command says so in one line, exits
  non-zero, and leaves no half-written report: the previous report at --out is intact, no temp dirs remain.
"""
from __future__ import annotations

import html
import json
import os
import resource
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from datagen.cli import main
from datagen.pack import load_packed, pack_dataset
from evaluation.probe import load_run_config, train_probe
from fakes import make_fake_dataset
from training.generated import ClipRecord, write_generated

SCRIPT = Path(sys.executable).parent / "magvit3d"
SCRIPT_TAG = "<script>alert(1)</script>"
BREAKER = '" onerror="alert(2)'
EVIL_DIR = '<script>alert(1)<b x="1" onerror="alert(3)'      # a directory name: no '/'
EVIL_SHAPE = {"cube": f"cube{SCRIPT_TAG}", "cylinder": f"cyl{BREAKER}", "cone": "cone'><img src=x onerror=alert(4)>"}
EVIL_FAMILY = {"linear": f"lin{BREAKER}", "circular": f"circ{SCRIPT_TAG}", "helical": "hel</td><script>x()</script>",
               "parabolic": "par<iframe src=javascript:alert(5)>"}
ALLOWED_ATTRIBUTES = {"src", "href", "width", "height", "alt", "class", "lang", "charset"}
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code", "b", "br", "a", "img",
                "div", "table", "thead", "tbody", "tr", "th", "td", "details", "summary"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A packed fake dataset whose directory name, view names and shape / family labels are hostile, a one-step
    probe in a hostile directory, and a generated dir (also hostile) that matches the dataset."""
    root = tmp_path_factory.mktemp("safety")
    ds = make_fake_dataset(root / EVIL_DIR / "ds", num_samples=6, resolution=32, frames=4)
    pack_dataset(ds, progress=False)
    info = json.loads((ds / "dataset.json").read_text())
    info["views"] = [f"{v}{BREAKER}" for v in info["views"]]
    (ds / "dataset.json").write_text(json.dumps(info))
    for index in (ds / "packed").glob("*_index.json"):
        meta = json.loads(index.read_text())
        meta["labels"]["shape"] = [EVIL_SHAPE[s] for s in meta["labels"]["shape"]]
        meta["labels"]["family"] = [EVIL_FAMILY[f] for f in meta["labels"]["family"]]
        index.write_text(json.dumps(meta))
    probe = root / EVIL_DIR / "probe"
    train_probe(load_run_config("tiny", ["train.steps=1", "train.val_every=1", "train.ckpt_every=1",
                                         "train.warmup_steps=0", "train.val_frames=4"]),
                ds, probe, device="cpu", progress=False, log=lambda m: None)
    test = load_packed(ds, "test")
    gen = write_gen(root / EVIL_DIR / "gen", test, {"arch": f"masked{SCRIPT_TAG}", "steps": BREAKER,
                                                    "temperature": "<img src=x onerror=alert(6)>"})
    return root, ds, probe, gen


def write_gen(out: Path, split, info: dict, records=None) -> Path:
    recs = records or [ClipRecord(int(s), "predict", split.index["labels"]["shape"][k],
                                  split.index["labels"]["family"][k], k, given_frames=2)
                       for k, s in enumerate(split.sample_ids)]
    rgb = np.array(split.rgb)[:len(recs)] if len(recs) <= len(split) else \
        np.repeat(np.array(split.rgb[:1]), len(recs), 0)
    return write_generated(out, rgb, recs, {"task": recs[0].task, "split": split.split,
                                            "dataset_config_hash": split.index["config_hash"], **info},
                           target=rgb if all(r.sample_id is not None for r in recs) else None)


class TagCollector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attributes = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value) for name, value in attrs]

    handle_startendtag = handle_starttag


def assert_html_safe(path: Path) -> str:
    text = path.read_text()
    assert "<script" not in text.lower() and "<iframe" not in text.lower(), "live tag from data"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text or "&lt;script&gt;alert(1)&lt;b" in text
    assert '" onerror=' not in text and "' onerror" not in text and "'><img" not in text
    parser = TagCollector()
    parser.feed(text)
    assert set(parser.tags) <= ALLOWED_TAGS, set(parser.tags) - ALLOWED_TAGS
    assert {name for _, name, _ in parser.attributes} <= ALLOWED_ATTRIBUTES, parser.attributes
    for tag, name, value in parser.attributes:
        if name in ("src", "href"):   # relative links inside the report
            assert not value.startswith(("/", "javascript:", "http")) and ".." not in value, (tag, value)
            assert (path.parent / __import__("urllib.parse").parse.unquote(value)).is_file(), value
    return text


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_script(args, cwd: Path, home: Path, limit_bytes: int | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("MAGVIT3D_DEBUG", "MPLCONFIGDIR", "XDG_CACHE_HOME",
                                                             "XDG_CONFIG_HOME", "TORCH_HOME")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", PATH="/usr/bin:/bin")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300, preexec_fn=limit if limit_bytes is not None else None)


def run_main(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return (e.value.code or 0), out.out, out.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("notice:")]
    assert len(lines) == 1 and lines[0].startswith("magvit3d: error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------------

def test_evaluate_and_compare_escape_every_data_string_and_leave_cwd_and_home_alone(world, tmp_path, capsys):
    """The real entry point, in an empty cwd with an empty HOME: both reports are safe HTML, and nothing but --out
    (and nothing at all in cwd / HOME) is written."""
    root, ds, probe, gen = world
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    before = tree(root)
    report = tmp_path / f"report{BREAKER}"
    proc = run_script(["evaluate", "--data", ds, "--generated", gen, "--probe", probe, "--out", report,
                       "-n", "2", "--no-progress"], cwd, home)
    assert proc.returncode == 0, proc.stderr
    text = assert_html_safe(report / "index.html")
    labels = load_packed(ds, "test").index["labels"]
    shown = [*labels["shape"], *labels["family"], *json.loads((ds / "dataset.json").read_text())["views"],
             f"masked{SCRIPT_TAG}", "<img src=x onerror=alert(6)>", BREAKER, str(ds), str(probe)]
    for value in shown:                      # each hostile string is there, as text
        assert html.escape(value, quote=True) in text, value
    cmp = tmp_path / "cmp"                   # compare in-process (the subprocess above covers the entry point)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("HOME", str(home))
        code, _, err = run_main(["compare", gen, ds, "--out", cmp, "-n", "2"], capsys)
    assert code == 0, err
    assert_html_safe(cmp / "index.html")
    assert not list(cwd.iterdir()) and not list(home.iterdir()), (list(cwd.rglob("*")), list(home.rglob("*")))
    assert tree(root) == before                               # the inputs are untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cwd", "home", report.name, "cmp"])


@pytest.mark.parametrize("bad_id", ["../../../escaped", "/tmp/abs", 1.5, -3, True])
def test_a_sample_id_that_is_not_an_integer_is_refused(world, tmp_path, capsys, bad_id):
    root, ds, probe, gen = world
    meta = json.loads((gen / "generated.json").read_text())
    meta["clips"][0]["sample_id"] = bad_id
    hostile = tmp_path / "gen"
    hostile.mkdir()
    for name in ("generated_rgb.npy", "target_rgb.npy"):
        (hostile / name).symlink_to(gen / name)
    (hostile / "generated.json").write_text(json.dumps(meta))
    before = tree(tmp_path)
    for args in (["evaluate", "--data", ds, "--generated", hostile, "--probe", probe, "--out", tmp_path / "r",
                  "--no-progress"], ["compare", hostile, ds, "--out", tmp_path / "r"]):
        code, out, err = run_main(args, capsys)
        assert code == 2 and "sample_id" in one_error_line(err), err
        assert tree(tmp_path) == before


def test_path_like_labels_of_class_conditional_clips_stay_inside_out(world, tmp_path, capsys):
    """Class-conditional clips are named after their shape / family: labels with '/', '..' or an absolute path
    become plain file names inside --out (evaluate) and inside the clips folder (generate's pictures)."""
    from training.generate import write_clip_visuals

    root, ds, probe, _ = world
    test = load_packed(ds, "test")
    recs = [ClipRecord(None, "generate", "../../../../../escaped", "linear", 0),
            ClipRecord(None, "generate", str(tmp_path / "absolute"), "/../circular", 1)]
    gen = write_gen(tmp_path / "work" / "gen", test, {}, records=recs)
    out = tmp_path / "work" / "report"
    before = tree(tmp_path)
    code, _, err = run_main(["evaluate", "--data", ds, "--generated", gen, "--probe", probe, "--out", out,
                             "--no-progress"], capsys)
    assert code == 0, err
    new = tree(tmp_path) - before
    assert new and all(p.startswith("work/report") for p in new), sorted(new)
    assert len(list((out / "clips").rglob("*.gif"))) == 2
    assert_html_safe(out / "index.html")

    folder = tmp_path / "pictures" / "clips"
    write_clip_visuals(folder, np.zeros((2, 3, 4, 32, 32, 3), np.uint8), None, recs)
    written = sorted(p for p in (tmp_path / "pictures").rglob("*") if p.is_file())
    assert len(written) == 4 and all(p.parent == folder for p in written), written
    assert not (tmp_path / "absolute.png").exists() and not list(tmp_path.parent.glob("escaped*"))


@pytest.mark.parametrize("target", ["dataset", "parent of the dataset", "generated", "probe", "non-empty", "cwd"])
def test_out_that_would_destroy_something_is_refused(world, tmp_path, capsys, monkeypatch, target):
    """--out is replaced whole: never an input, a folder holding one, the cwd, or a directory that is not a report."""
    root, ds, probe, gen = world
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(other)
    out = {"dataset": ds, "parent of the dataset": ds.parent, "generated": gen, "probe": probe, "non-empty": other,
           "cwd": Path(".")}[target]
    before_inputs, before_other = tree(root), tree(other)
    for args in (["evaluate", "--data", ds, "--generated", gen, "--probe", probe, "--out", out, "--no-progress"],
                 ["compare", gen, ds, "--out", out]):
        code, _, err = run_main(args, capsys)
        line = one_error_line(err)
        assert code == 2 and "--out" in line, err
    assert tree(root) == before_inputs and tree(other) == before_other


def test_a_previous_report_is_replaced_atomically(world, tmp_path, capsys):
    root, ds, probe, gen = world
    out = tmp_path / "cmp"
    assert run_main(["compare", gen, ds, "--out", out, "-n", "1"], capsys)[0] == 0
    first = json.loads((out / "metrics.json").read_text())
    (out / "stale.txt").write_text("from the last run")
    code, _, err = run_main(["compare", gen, ds, "--out", out, "-n", "0"], capsys)
    assert code == 0, err
    assert not (out / "stale.txt").exists() and not list((out / "clips").iterdir())
    assert json.loads((out / "metrics.json").read_text())["matched"] == first["matched"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]      # no .tmp-* / .old-* left beside it


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_full_disk_one_line_error_and_the_previous_report_intact(world, tmp_path, capsys, command):
    """RLIMIT_FSIZE = 4 KiB: the first larger file of the report fails with EFBIG (Python ignores SIGXFSZ)."""
    root, ds, probe, gen = world
    out = tmp_path / "report"
    args = {"evaluate": ["evaluate", "--data", ds, "--generated", gen, "--probe", probe, "--out", out,
                         "-n", "1", "--no-progress"],
            "compare": ["compare", gen, ds, "--out", out, "-n", "1"]}[command]
    code, _, err = run_main(args, capsys)                  # a complete report first
    assert code == 0, err
    previous = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any(len(b) > 4096 for b in previous.values())   # so the limit below does bite
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    proc = run_script(args, cwd, home, limit_bytes=4096)
    assert proc.returncode != 0
    line = one_error_line(proc.stderr)
    assert "File too large" in line and str(out) in line and "previous report there is unchanged" in line, line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "home", "report"]   # no .tmp-* / .old-*
    assert not list(cwd.iterdir()) and not list(home.iterdir())

    if command == "compare":                                 # no previous report: nothing at all at --out
        fresh = tmp_path / "fresh"
        proc = run_script([a if a != out else fresh for a in args], cwd, home, limit_bytes=4096)
        assert proc.returncode != 0 and "nothing was written" in one_error_line(proc.stderr)
        assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "home", "report"]


def test_generated_dir_is_complete_or_absent(world, tmp_path):
    """write_generated (what `generate` writes): a failure while writing leaves no temporary directory and keeps
    the previous GEN."""
    root, ds, probe, gen = world
    test = load_packed(ds, "test")
    out = write_gen(tmp_path / "gen", test, {})
    previous = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(tmp):
        raise OSError(27, "File too large")
    recs = [ClipRecord(int(s), "predict", "cube", "linear", k, given_frames=2) for k, s in enumerate(test.sample_ids)]
    with pytest.raises(OSError):
        write_generated(out, np.array(test.rgb), recs, {"task": "predict"}, extra_files=full_disk)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]
